"""``casa up``, ``casa down`` and ``casa status``."""

from __future__ import annotations

import argparse
import json
import os

from rich.table import Table

from casa.cli.access import admin_only
from casa.cli.console import console


def register(sub: argparse._SubParsersAction) -> None:
    """Add the facility commands."""
    up = sub.add_parser("up", help="start the facility's services in the background")
    up.set_defaults(handler=admin_only("up")(handle_up))
    down = sub.add_parser("down", help="stop every facility service")
    down.set_defaults(handler=admin_only("down")(handle_down))
    status = sub.add_parser("status", help="each service's port, PID, health and uptime")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=handle_status)


def _supervisor(args: argparse.Namespace):
    from casa.facility import facility_context
    from casa.services.facility import facility_supervisor

    ctx = facility_context(args.home, args.config)
    return ctx, facility_supervisor(ctx)


def handle_up(args: argparse.Namespace) -> int:
    """Start what is not running; say what was already up."""
    ctx, supervisor = _supervisor(args)
    report = supervisor.up()
    if all(v == "already running" for v in report.values()):
        console.print(f"the facility is already up ({ctx.paths.home})")
    for name, what in report.items():
        port = {s.name: s.port(ctx) for s in supervisor.services}[name]
        console.print(f"  {name:<8} {what:<16} port {port}")
    _print_elsewhere(ctx)
    console.print(
        f"data: {ctx.config.cache_url()}//store "
        f"(through the cache); get a token with 'casa token issue'"
    )
    console.print(f"notebooks: http://{ctx.config.host_of('hub')}:{ctx.config.hub.port}/ "
                  "(log in with an account from 'casa user add')")  # fmt: skip
    if os.geteuid() != 0:
        from casa.auth.accounts import current_account

        console.print(
            f"casa runs without root: the hub serves one account, {current_account()!r} "
            f"(add it once with 'casa user add {current_account()}')"
        )
    return 0


def _print_elsewhere(ctx) -> None:
    from casa.services.facility import elsewhere

    for name, hosts in elsewhere(ctx):
        console.print(f"  {name:<8} runs on {' and '.join(hosts)} (\\[site] in casa.toml)")


def handle_down(args: argparse.Namespace) -> int:
    """Stop everything."""
    _, supervisor = _supervisor(args)
    stopped = supervisor.down()
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def handle_status(args: argparse.Namespace) -> int:
    """Show every service; exit 1 if any is unhealthy."""
    ctx, supervisor = _supervisor(args)
    rows = supervisor.status()
    if args.json:
        console.print_json(json.dumps([r.to_dict() for r in rows]))
    else:
        table = Table("service", "port", "pid", "health", "uptime", "detail")
        for r in rows:
            health = "[green]healthy[/]" if r.healthy else "[red]unhealthy[/]"
            uptime = f"{r.uptime:.0f} s" if r.uptime is not None else "-"
            table.add_row(r.name, str(r.port), str(r.pid or "-"), health, uptime, r.detail)
        console.print(table)
        _print_elsewhere(ctx)
    return 0 if all(r.healthy for r in rows) else 1
