"""Who may run which command: the facility's admin runs it, its users use it.

The admin is root or the account that owns the facility's state directory (the one that ran
``casa up``). Every other account on the machine (a user in the lab's terminal, or logged in
by SSH) is one of the facility's users: their ``casa`` lists, shows and exports the datasets
they may read (from their export of the catalog, :class:`casa.data.exports.ExportedCatalog`),
runs analyses, and manages their own tokens and clusters through the issuer and the gateway,
which know them by their account. Commands that change the facility refuse them in one
sentence, before they touch anything.
"""

from __future__ import annotations

import argparse
import functools
import os
import pwd

from casa.config import facility_paths
from casa.errors import UsageError

#: What a facility user's casa does, named in every refusal.
USERS_COMMANDS = (
    "'casa datasets list/show/export', 'casa run', 'casa cluster ...', 'casa env ...' and "
    "'casa token ...'"
)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def require_admin(args: argparse.Namespace, command: str) -> None:
    """UsageError naming the admin when the caller is one of the facility's users."""
    paths = facility_paths(args.home)
    if paths.run_by_caller():
        return
    admin = _name(paths.home.stat().st_uid)
    raise UsageError(
        f"'casa {command}' is for the facility's admin ({admin}, who runs the facility in "
        f"{paths.home}), not for your account {_name(os.geteuid())}: ask them, or use "
        f"{USERS_COMMANDS}"
    )


def admin_only(command: str):
    """A handler that first checks :func:`require_admin` for ``casa COMMAND``."""

    def wrap(handler):
        @functools.wraps(handler)
        def checked(args: argparse.Namespace) -> int:
            require_admin(args, command)
            return handler(args)

        return checked

    return wrap
