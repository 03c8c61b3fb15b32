"""``casa env``: the caller's own Python environments, on top of the facility's.

Each is a folder of ``~/.casa/envs`` (:mod:`casa.lab.environments`): the hub makes
``default`` at the first login; ``casa env create NAME`` makes another, which the spawn page
then offers. What ``pip install`` puts into one reaches the kernels of a server started from
it and the workers of the clusters those kernels create.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from casa.cli.console import console
from casa.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``env`` command group."""
    p = sub.add_parser(
        "env", help="your own Python environments (pip install there; choose one at spawn)"
    )
    en = p.add_subparsers(dest="env_command", metavar="ACTION")
    en.required = True
    ls = en.add_parser("list", help="your environments and the facility's they build on")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=handle_list)
    create = en.add_parser(
        "create", help="a new environment of yours on top of the facility's (~/.casa/envs/NAME)"
    )
    create.add_argument("name", help="letters, digits, '_', '.' and '-'")
    create.set_defaults(handler=handle_create)


def _facility_env() -> Path:
    """The facility's environment: the one this casa's environment is layered on, or its own."""
    from casa.lab.environments import base_of

    return base_of(Path(sys.prefix))


def handle_list(args: argparse.Namespace) -> int:
    """The caller's environments, the one this command runs from marked."""
    from casa.lab.environments import ENVS_FOLDER, user_envs

    base = _facility_env()
    here = Path(sys.prefix).resolve()
    envs = Path.home() / ENVS_FOLDER
    rows = [
        {"name": name, "path": str(envs / name), "current": (envs / name).resolve() == here}
        for name in user_envs(Path.home(), base)
    ]
    if args.json:
        print(json.dumps({"facility": str(base), "environments": rows}, indent=1))
        return 0
    if not rows:
        console.print(
            f"you have no environment of your own yet (the hub makes 'default' at your first "
            f"login; 'casa env create NAME' makes one); the facility's is {base}"
        )
        return 0
    for row in rows:
        mark = "  (this one)" if row["current"] else ""
        console.print(f"{row['name']}  {row['path']}{mark}", highlight=False)
    console.print(f"all on top of the facility's {base}", highlight=False)
    return 0


def handle_create(args: argparse.Namespace) -> int:
    """Make ``~/.casa/envs/NAME`` on top of the facility's environment, as the caller."""
    from casa.lab.environments import ENVS_FOLDER, check_env_name, create_layered_env, is_layered_on

    try:
        name = check_env_name(args.name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = _facility_env()
    if not (base / "pyvenv.cfg").exists():
        raise UsageError(
            f"the facility's Python {base} is no virtual environment, so nothing can be "
            "layered on it: install packages there, or ask the admin"
        )
    env = Path.home() / ENVS_FOLDER / name
    if is_layered_on(env, base):
        raise UsageError(f"you have an environment {name!r} already, at {env}")
    if env.exists():
        raise UsageError(
            f"{env} exists and is not an environment on top of the facility's {base}: "
            "move it away or choose another name"
        )
    try:
        create_layered_env(env, base)
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)  # a failed create leaves nothing behind
        raise
    console.print(
        f"made the environment {name} at {env}, on top of the facility's {base}.\n"
        f"  install into it: {env}/bin/pip install PACKAGE\n"
        f"  use it: stop your server (File > Hub Control Panel > Stop My Server) and start "
        f"it again: the spawn page offers {name}",
        highlight=False,
    )
    return 0
