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
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=handle_list)
    scale = cl.add_parser("scale", help="set a cluster's number of workers")
    scale.add_argument("name", help="the cluster (from 'casa cluster list')")
    scale.add_argument("workers", type=int, help="how many workers it should have")
    scale.set_defaults(handler=handle_scale)
    stop = cl.add_parser("stop", help="stop a cluster, or all of yours")
    stop.add_argument("name", nargs="?", help="the cluster (from 'casa cluster list')")
    stop.add_argument("--all", action="store_true", help="every cluster of yours")
    stop.set_defaults(handler=handle_stop)
    logs = cl.add_parser(
        "logs", help="the scheduler's and workers' logs of a cluster: running, stopped or failed"
    )
    logs.add_argument("name", help="the cluster (also one that stopped or failed)")
    logs.add_argument(
        "--worker", metavar="NAME", help="only this worker's (and not the scheduler's)"
    )
    logs.add_argument("--lines", type=int, default=200, metavar="N",
                      help="the last N lines of each log (default: 200; 0: all kept)")  # fmt: skip
    logs.set_defaults(handler=handle_logs)


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
        # The gateway answers before its clusters are down; once they are, their logs are
        # kept, so 'casa cluster logs' right after finds them.
        left = _wait_stopped(gateway, names)
    if left:
        console.print(
            f"asked the gateway to stop {', '.join(names)}; still stopping after "
            f"{STOP_WAIT_SECONDS:.0f} s: {', '.join(left)} ('casa cluster list' shows them)"
        )
    else:
        console.print(f"stopped {', '.join(names)}" if names else "you had no clusters")
    return 0


#: How long 'casa cluster stop' waits for the clusters to be down.
STOP_WAIT_SECONDS = 60.0


def _wait_stopped(gateway, names: list[str]) -> list[str]:
    """Wait until each cluster of ``names`` is stopped or failed; return those that are not."""
    import time

    from dask_gateway.client import ClusterStatus

    done = {ClusterStatus.STOPPED, ClusterStatus.FAILED}
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    left = list(names)
    while left and time.monotonic() < deadline:
        still = []
        for name in left:
            try:
                if gateway.get_cluster(name).status not in done:
                    still.append(name)
            except ValueError:  # the gateway no longer knows it: gone
                pass
        left = still
        if left:
            time.sleep(0.2)
    return left


def handle_logs(args: argparse.Namespace) -> int:
    """Print a cluster's logs: a running one's from its scheduler, a stopped one's as kept."""
    from casa.auth.accounts import current_account
    from casa.compute.gateway import gateway_client
    from casa.facility import facility_context
    from casa.services.gateway.logs import LOGS_FOLDER, kept_clusters, kept_logs

    if args.lines < 0:
        raise UsageError("--lines cannot be negative")
    ctx = facility_context(args.home, args.config)
    root = ctx.service_dir("gateway") / LOGS_FOLDER
    with gateway_client(ctx) as gateway:
        running = [c.name for c in gateway.list_clusters()]
        if args.name in running:
            logs = _running_logs(gateway, args.name)
        else:
            logs = kept_logs(root, current_account(), args.name)
    if logs is None:
        kept = kept_clusters(root, current_account())
        raise UsageError(
            f"you have no cluster named {args.name!r} running or with logs kept (running: "
            f"{', '.join(running) or 'none'}; stopped, with logs: {', '.join(kept[:10]) or 'none'})"
        )
    if args.worker:
        logs = {k: v for k, v in logs.items() if k == f"worker-{args.worker}"}
        if not logs:
            raise UsageError(f"cluster {args.name} has no worker {args.worker!r} with logs")
    for name, text in logs.items():
        lines = text.splitlines()
        shown = lines[-args.lines :] if args.lines else lines
        console.print(f"[bold]== {name}[/] ({len(shown)} of {len(lines)} lines)", highlight=False)
        for line in shown:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _running_logs(gateway, name: str) -> dict[str, str]:
    """The logs a running cluster's scheduler and workers keep in memory."""
    cluster = gateway.connect(name)
    try:
        with cluster.get_client(set_as_default=False) as client:
            logs = {"scheduler": _text(client.get_scheduler_logs(n=100_000))}
            workers = client.scheduler_info()["workers"]
            for address, lines in sorted(client.get_worker_logs(n=100_000).items()):
                worker = workers.get(address, {}).get("name", address)
                logs[f"worker-{worker}"] = _text(lines)
    finally:
        cluster.close(shutdown=False)
    return logs


def _text(lines) -> str:
    return "\n".join(message for _, message in lines)
