"""``casa user``: facility accounts (each one also a Unix account)."""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys

from rich.table import Table

from casa.cli.access import admin_only
from casa.cli.console import console
from casa.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``user`` command group."""
    p = sub.add_parser("user", help="add, list and remove facility users")
    us = p.add_subparsers(dest="user_command", metavar="ACTION")
    us.required = True
    add = us.add_parser("add", help="create a facility user (and its Unix account, as root)")
    add.add_argument("name", help="the login name (a Unix account of that name is made under root)")
    add.add_argument("--admin", action="store_true", help="may administer the hub")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of asking")  # fmt: skip
    add.add_argument("--generate-password", action="store_true",
                     help="generate a password and print it once")  # fmt: skip
    add.set_defaults(handler=admin_only("user add")(handle_add))
    ls = us.add_parser("list", help="the facility users")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=admin_only("user list")(handle_list))
    rm = us.add_parser("remove", help="remove a facility user (the Unix account and files stay)")
    rm.add_argument("name", help="the login name")
    rm.set_defaults(handler=admin_only("user remove")(handle_remove))


def _store(args: argparse.Namespace):
    from casa.auth.accounts import AccountStore
    from casa.config import facility_paths

    return AccountStore(facility_paths(args.home).ensure().database)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if args.generate_password or not sys.stdin.isatty():
        return secrets.token_urlsafe(12), True
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise UsageError("the two passwords differ; nothing was changed")
    return first, False


def handle_add(args: argparse.Namespace) -> int:
    """Create the account (Unix first, so a failure leaves no half-made facility user)."""
    import os

    from casa.auth.accounts import current_account, ensure_unix_account
    from casa.names import check_user_name

    check_user_name(args.name)
    store = _store(args)
    if store.get(args.name) is not None:
        raise UsageError(f"user {args.name!r} exists already ('casa user list' shows them)")
    if os.geteuid() != 0 and args.name != current_account():
        raise UsageError(
            f"casa runs as {current_account()!r}, not root: this facility serves that one "
            f"account only, so it cannot add {args.name!r}"
        )
    password, generated = _password(args)
    ensure_unix_account(args.name)
    store.add(args.name, password, admin=args.admin)
    console.print(f"added user {args.name}{' (admin)' if args.admin else ''}")
    if generated:
        console.print(f"password: {password}  (shown once; store it safely)", highlight=False)
    return 0


def handle_list(args: argparse.Namespace) -> int:
    """List accounts."""
    accounts = _store(args).list()
    if args.json:
        rows = [
            {"name": a.name, "admin": a.admin, "created": a.created.isoformat()} for a in accounts
        ]
        console.print_json(json.dumps(rows))
        return 0
    table = Table("name", "admin", "created")
    for a in accounts:
        table.add_row(a.name, "yes" if a.admin else "", a.created.isoformat(" "))
    console.print(table)
    return 0


def handle_remove(args: argparse.Namespace) -> int:
    """Remove an account."""
    _store(args).remove(args.name)
    console.print(f"removed user {args.name} (the Unix account and its home were kept)")
    return 0
