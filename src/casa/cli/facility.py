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
    console.print(f"skims: the ServiceX client at http://{ctx.config.host_of('delivery')}:"
                  f"{ctx.config.delivery.port} (docs/delivery.md)")  # fmt: skip
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


#: ``casa status``'s exit status when no service runs and none died (LSB's "not running").
NOT_RUNNING = 3


def handle_status(args: argparse.Namespace) -> int:
    """Show every service; exit 0 if all run and are healthy, 3 if the facility is simply
    not running (nothing started, or stopped with 'casa down'), 1 if any failed."""
    from casa.services.supervisor import NOT_STARTED

    ctx, supervisor = _supervisor(args)
    rows = supervisor.status()
    stopped = not any(r.running for r in rows) and all(r.detail == NOT_STARTED for r in rows)
    if args.json:
        console.print_json(json.dumps([r.to_dict() for r in rows]))
    else:
        table = Table("service", "port", "pid", "health", "uptime", "detail")
        for r in rows:
            if r.healthy:
                health = "[green]healthy[/]"
            elif r.detail == NOT_STARTED:
                health = "stopped"
            else:
                health = "[red]unhealthy[/]"
            uptime = duration(r.uptime) if r.uptime is not None else "-"
            table.add_row(r.name, str(r.port), str(r.pid or "-"), health, uptime, r.detail)
        console.print(table)
        if stopped:
            console.print("the facility is not running: 'casa up' starts it")
        _print_elsewhere(ctx)
    if stopped:
        return NOT_RUNNING
    return 0 if all(r.healthy for r in rows) else 1


def duration(seconds: float) -> str:
    """``45 s``, ``21 min``, ``3 h 05 min``, ``2 d 4 h``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
