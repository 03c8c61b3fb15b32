"""``casa cluster``: the caller's Dask Gateway clusters."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from casa.cli.console import console
from casa.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``cluster`` command group."""
    p = sub.add_parser("cluster", help="list, scale and stop your Dask Gateway clusters")
    cl = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    cl.required = True
    ls = cl.add_parser("list", help="your clusters")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=handle_list)
    scale = cl.add_parser("scale", help="set a cluster's number of workers")
    scale.add_argument("name")
    scale.add_argument("workers", type=int)
    scale.set_defaults(handler=handle_scale)
    stop = cl.add_parser("stop", help="stop a cluster, or all of yours")
    stop.add_argument("name", nargs="?")
    stop.add_argument("--all", action="store_true")
    stop.set_defaults(handler=handle_stop)


def _gateway(args: argparse.Namespace):
    from casa.compute.gateway import gateway_client
    from casa.facility import facility_context

    return gateway_client(facility_context(args.home, args.config))


def _known(gateway, name: str) -> None:
    names = [c.name for c in gateway.list_clusters()]
    if name not in names:
        mine = ", ".join(names) if names else "you have none"
        raise UsageError(f"you have no cluster named {name!r} ({mine})")


def handle_list(args: argparse.Namespace) -> int:
    """Show the caller's clusters."""
    with _gateway(args) as gateway:
        reports = gateway.list_clusters()
        rows = [
            {
                "name": c.name,
                "status": c.status.name.lower(),
                "workers": _workers(gateway, c.name),
                "dashboard": c.dashboard_link,
                "options": dict(c.options),
                "started": c.start_time.isoformat(timespec="seconds") if c.start_time else None,
            }
            for c in reports
        ]
    if args.json:
        console.print_json(json.dumps(rows))
        return 0
    if not rows:
        console.print("you have no clusters; 'casa run --cluster gateway' starts one")
        return 0
    table = Table("name", "status", "workers", "dashboard", "started")
    for r in rows:
        table.add_row(r["name"], r["status"], str(r["workers"]), r["dashboard"] or "-",
                      r["started"] or "-")  # fmt: skip
    console.print(table)
    return 0


def _workers(gateway, name: str) -> int:
    cluster = gateway.connect(name)
    try:
        return len(cluster.scheduler_info.get("workers", {}))
    finally:
        cluster.close(shutdown=False)


def handle_scale(args: argparse.Namespace) -> int:
    """Scale one of the caller's clusters."""
    from casa.compute.base import Scaling
    from casa.compute.gateway import apply_scaling

    if args.workers < 0:
        raise UsageError("the number of workers cannot be negative")
    with _gateway(args) as gateway:
        _known(gateway, args.name)
        cluster = gateway.connect(args.name)
        try:
            apply_scaling(cluster, Scaling(workers=args.workers))
        finally:
            cluster.close(shutdown=False)
    console.print(f"cluster {args.name} scaled to {args.workers} worker(s)")
    return 0


def handle_stop(args: argparse.Namespace) -> int:
    """Stop one or all of the caller's clusters."""
    if bool(args.name) == bool(args.all):
        raise UsageError("name one cluster, or give --all")
    with _gateway(args) as gateway:
        names = [c.name for c in gateway.list_clusters()] if args.all else [args.name]
        if not args.all:
            _known(gateway, args.name)
        from casa.compute.gateway import close_kept_connections

        close_kept_connections()
        for name in names:
            gateway.stop_cluster(name)
    console.print(f"stopped {', '.join(names)}" if names else "you had no clusters")
    return 0
