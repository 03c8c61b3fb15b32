"""Each user's own Python environment, on top of the facility's: ``pip install`` without an admin.

The facility's environment (``/opt/casa-user-env`` under root) is the admin's and read only.
A user's environment (``~/.casa/envs/default``, made by the hub at their first spawn) is a
virtual environment of the same Python whose ``site-packages`` holds what the user installs
and a ``.pth`` file adding the facility's ``site-packages`` after it (as a site directory:
its own ``.pth`` files are read too). Everything the facility has is importable, what the
user installs comes first, and ``pip`` there installs only what the facility lacks (it sees
the facility's packages as installed). The facility's commands (``casa``,
``jupyterhub-singleuser``, ``dask-worker``, ...) are copied into its ``bin/`` with their
first line naming the user's Python, so the lab, the terminal, ``casa run`` and the
gateway's workers started from it all see the user's packages.

The lab runs from the user's environment; their gateway clusters' workers run from the
environment of the process that created the cluster (its ``sys.prefix``, given as the
``python_env`` cluster option, :func:`casa.compute.gateway.caller_environment`), which the
gateway checks with :func:`check_cluster_env`.
"""

from __future__ import annotations

import ast
import os
import pwd
import re
import subprocess
from pathlib import Path

from casa.errors import ServiceError

#: A user's environments, under their home.
ENVS_FOLDER = Path(".casa") / "envs"
#: The one the hub makes at a user's first spawn.
DEFAULT_ENV = "default"
#: The spawn page's name for the facility's environment alone (none of the user's packages).
FACILITY_ENV = "facility"
#: What an environment's name may be (a folder name under ``~/.casa/envs``).
ENV_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The file in a user's ``site-packages`` that puts the facility's after it.
LAYER_FILE = "_casa_facility_env.pth"
#: Commands of the facility's environment not copied (the venv has its own).
OWN_COMMANDS = {"python", "python3", "pip", "pip3", "activate", "activate.csh", "activate.fish",
                "Activate.ps1"}  # fmt: skip


def site_packages(prefix: Path) -> Path:
    """``prefix``'s ``lib/pythonX.Y/site-packages`` (the one holding packages)."""
    found = sorted((prefix / "lib").glob("python3*/site-packages"))
    if not found:
        raise ServiceError(
            f"{prefix} is not a Python environment: it has no lib/python3*/site-packages"
        )
    return found[0]


def user_env_path(account: pwd.struct_passwd, name: str = DEFAULT_ENV) -> Path:
    """Where ``account``'s environment ``name`` is."""
    return Path(account.pw_dir) / ENVS_FOLDER / name


def is_layered_on(env: Path, base: Path) -> bool:
    """Whether ``env`` is a user's environment on top of ``base`` (and ready to use)."""
    try:
        layer = (site_packages(env) / LAYER_FILE).read_text()
    except (OSError, ServiceError):
        return False
    return layer == _layer(base) and (env / "bin" / "jupyterhub-singleuser").exists()


def check_env_name(name: str) -> str:
    """``name`` if it can name a user's environment; ValueError in words otherwise."""
    if not ENV_NAME.fullmatch(name) or name == FACILITY_ENV:
        raise ValueError(
            f"{name!r} cannot name an environment: use letters, digits, '_', '.' and '-' "
            f"(at most 64, starting with a letter or digit), other than {FACILITY_ENV!r}"
        )
    return name


def user_envs(home: Path, base: Path) -> list[str]:
    """The names of the environments under ``home`` on top of ``base``, ``default`` first."""
    folder = home / ENVS_FOLDER
    try:
        names = sorted(p.name for p in folder.iterdir() if ENV_NAME.fullmatch(p.name))
    except OSError:
        return []
    ready = [n for n in names if n != FACILITY_ENV and is_layered_on(folder / n, base)]
    return sorted(ready, key=lambda n: (n != DEFAULT_ENV, n))


def base_of(prefix: Path) -> Path:
    """The facility's environment under ``prefix`` (a user's layered one), else ``prefix``."""
    try:
        layer = (site_packages(prefix) / LAYER_FILE).read_text()
    except (OSError, ServiceError):
        return prefix
    _, opened, argument = layer.strip().partition("site.addsitedir(")
    try:
        return Path(ast.literal_eval(argument.removesuffix(")"))).parents[2] if opened else prefix
    except (ValueError, SyntaxError, IndexError):
        return prefix


def _layer(base: Path) -> str:
    """The layer file's line: the facility's ``site-packages`` as a site directory, so that
    its own ``.pth`` files (editable installs among them) are read too."""
    return f"import site; site.addsitedir({str(site_packages(base))!r})\n"


def create_layered_env(env: Path, base: Path) -> Path:
    """Make ``env`` a virtual environment on top of ``base`` (run as the environment's owner).

    Idempotent: an environment made earlier keeps what was installed in it; its layer file
    and commands are written again, so a rebuilt facility environment is followed.
    """
    python = base / "bin" / "python"
    if not (env / "pyvenv.cfg").exists():
        env.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        done = subprocess.run(
            [str(python), "-m", "venv", str(env)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise ServiceError(
                f"could not make the Python environment {env}: {done.stderr.strip()[-500:]}"
            )
    (site_packages(env) / LAYER_FILE).write_text(_layer(base))
    _copy_commands(base / "bin", env / "bin", str(env / "bin" / "python"))
    return env


def _copy_commands(source: Path, target: Path, new_python: str) -> None:
    """The entry-point scripts of ``source`` (run by its Python) in ``target``, run by
    ``new_python``."""
    shebang = re.compile(rb"#!" + re.escape(str(source).encode()) + rb"/python[0-9.]*\s*$")
    for script in sorted(source.iterdir()):
        if script.name in OWN_COMMANDS or not script.is_file():
            continue
        try:
            with open(script, "rb") as f:
                first = f.readline()
                rest = f.read()
        except OSError:
            continue
        if not shebang.match(first):
            continue  # not a script of this environment's Python
        copy = target / script.name
        partial = target / f".{script.name}.partial"
        partial.write_bytes(f"#!{new_python}\n".encode() + rest)
        partial.chmod(0o755)
        os.replace(partial, copy)


def create_as(account: pwd.struct_passwd, env: Path, base: Path) -> None:
    """:func:`create_layered_env` in a process of ``account``'s own (it owns what is made)."""
    code = (
        "import sys; from pathlib import Path; from casa.lab.environments import "
        "create_layered_env; create_layered_env(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    command = [str(base / "bin" / "python"), "-c", code, str(env), str(base)]
    as_user: dict = {}
    if os.geteuid() == 0 and account.pw_uid != 0:
        as_user = {
            "user": account.pw_uid, "group": account.pw_gid, "extra_groups": [],
            "env": {"HOME": account.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        }  # fmt: skip
    done = subprocess.run(
        command, cwd=account.pw_dir, capture_output=True, text=True, timeout=300, **as_user
    )
    if done.returncode != 0:
        raise ServiceError(
            f"could not make {account.pw_name}'s Python environment {env}: "
            f"{done.stderr.strip()[-500:]}"
        )


def check_cluster_env(path: str, username: str) -> Path:
    """The environment ``path`` a cluster of ``username`` asks to run from; ValueError, in
    words, unless it is a Python environment with Dask's commands that only ``username`` (or
    root) can change."""
    prefix = Path(path)
    if not prefix.is_absolute():
        raise ValueError(f"python_env {path!r} is not an absolute path")
    prefix = prefix.resolve()
    missing = [n for n in ("pyvenv.cfg", "bin/dask-worker", "bin/dask-scheduler")
               if not (prefix / n).exists()]  # fmt: skip
    if missing:
        raise ValueError(
            f"python_env {path} is not a Python environment with Dask's commands (it lacks "
            f"{', '.join(missing)})"
        )
    try:
        allowed = {0, pwd.getpwnam(username).pw_uid}
    except KeyError:
        allowed = {0}  # a user without an account here: the facility's environments only
    for part in (prefix, prefix / "bin", prefix / "bin" / "dask-worker"):
        info = part.stat()
        if info.st_uid not in allowed or info.st_mode & 0o022:
            raise ValueError(
                f"python_env {path}: {part} may be changed by accounts other than "
                f"{username}'s and root (owner uid {info.st_uid}, mode "
                f"{info.st_mode & 0o777:04o})"
            )
    return prefix
