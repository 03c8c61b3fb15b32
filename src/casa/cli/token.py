"""``casa token issue`` and ``casa token show``."""

from __future__ import annotations

import argparse
import json
import time

from casa.cli.console import console
from casa.errors import DataError, UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_lifetime(text: str) -> int:
    """``"90"``, ``"30m"``, ``"12h"`` or ``"2d"`` as seconds."""
    text = text.strip().lower()
    try:
        if text and text[-1] in UNITS:
            return int(float(text[:-1]) * UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise UsageError(
            f"--lifetime {text!r} is not a duration such as 3600, 30m, 12h or 2d"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``token`` command group."""
    p = sub.add_parser("token", help="get and inspect your data-access bearer token")
    tk = p.add_subparsers(dest="token_command", metavar="ACTION")
    tk.required = True
    issue = tk.add_parser("issue", help="get a token from the facility issuer and store it")
    issue.add_argument("--user", help="for another user (facility account and root only)")
    issue.add_argument("--scope", action="append", metavar="SCOPE",
                       help="a WLCG scope such as storage.read:/store/data (repeatable)")  # fmt: skip
    issue.add_argument("--lifetime", help="such as 3600, 30m, 12h (default: issuer.token_lifetime)")
    issue.add_argument("--print", action="store_true", help="print the token instead of storing it")
    issue.set_defaults(handler=handle_issue)
    show = tk.add_parser("show", help="the claims of your token and its time left")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=handle_show)


def handle_issue(args: argparse.Namespace) -> int:
    """Ask the issuer, store the token where WLCG discovery finds it."""
    from casa.auth.tokens import store_token, token_store_path, unverified_claims
    from casa.facility import facility_context

    ctx = facility_context(args.home, args.config)
    lifetime = parse_lifetime(args.lifetime) if args.lifetime else None
    token = ctx.request_token(user=args.user, scopes=args.scope, lifetime=lifetime)
    if args.print:
        print(token)
        return 0
    path = store_token(token, token_store_path())
    claims = unverified_claims(token)
    console.print(
        f"token for {claims['sub']} stored in {path} (mode 0600), valid until "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(claims['exp']))}; scopes: "
        f"{claims['scope']}"
    )
    return 0


def handle_show(args: argparse.Namespace) -> int:
    """Print the discovered token's claims."""
    from casa.auth.tokens import discover_token, discovery_locations, unverified_claims

    found = discover_token()
    if found is None:
        raise DataError(
            f"no bearer token found (looked in {', '.join(discovery_locations())}); "
            "get one with 'casa token issue'"
        )
    claims = unverified_claims(found.token, found.source)
    left = int(claims.get("exp", 0) - time.time())
    if args.json:
        console.print_json(
            json.dumps({"source": found.source, "claims": claims, "seconds_left": left})
        )
        return 0
    console.print(f"token from {found.source}")
    for key in ("iss", "sub", "aud", "scope", "jti"):
        console.print(f"  {key:<6} {claims.get(key)}")
    state = f"{left // 3600} h {left % 3600 // 60} min left" if left > 0 else "[red]expired[/]"
    if "exp" not in claims:
        console.print("  exp    none: the storage refuses tokens that never expire")
        return 0
    console.print(
        f"  exp    {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(claims['exp']))} ({state})"
    )
    return 0
