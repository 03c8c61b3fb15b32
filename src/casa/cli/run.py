"""``casa run``: an analysis over a dataset or files, with outputs written to a folder."""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

from rich.markup import escape
from rich.table import Table

from casa.cli.console import console, err_console
from casa.cli.progress import ChunkProgress, event_rate
from casa.compute.registry import LOCAL, backend_names
from casa.errors import UsageError
from casa.names import DEFAULT_TREE


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` command."""
    p = sub.add_parser(
        "run",
        help="run an analysis (dimuon, adl1..adl8 or path/to/file.py:Class) over a dataset",
        description="Run a coffea processor chunk by chunk and write histograms.root, "
        "result.pkl, summary.json and a PNG per histogram into --out.",
    )
    p.add_argument(
        "analysis",
        help="dimuon, adl1 ... adl8, or path/to/file.py:NAME (a ProcessorABC subclass, a "
        "function returning a processor, or a function of the events)",
    )
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument for your processor's class or factory, repeatable; VALUE is "
        "read as JSON when it is JSON (25, true, [1, 2], '\"text\"'), else as a string",
    )
    p.add_argument(
        "--schema",
        metavar="NAME",
        help="the NanoEvents schema: one of coffea's (NanoAODSchema, BaseSchema for flat "
        "trees, PHYSLITESchema, ...), or your own as module:Class or path/to/file.py:Class "
        "(default: the dataset's, else NanoAODSchema)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME", help="a dataset from the catalog")
    source.add_argument("--files", nargs="+", metavar="PATH", help="ROOT files, globs or folders")
    p.add_argument("--tree", default=DEFAULT_TREE, help="tree of --files (default: Events)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    p.add_argument(
        "--executor",
        default="futures",
        choices=LOCAL,
        help="where chunks run (default: futures, a local process pool)",
    )
    p.add_argument(
        "--cluster",
        default="local",
        choices=["local", *(n for n in backend_names() if n not in LOCAL)],
        help="local: this machine with --executor; gateway: your Dask Gateway cluster "
        "(its workers run where gateway.backend says: the gateway's host or Slurm jobs); "
        "htcondor: workers submitted from here as HTCondor jobs ([htcondor] in casa.toml); "
        "others: the backends a site registered (default: local)",
    )
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="workers (default: the number of cores locally, 2 on the gateway)")  # fmt: skip
    p.add_argument("--adapt", metavar="MIN:MAX", help="with --cluster gateway: adaptive workers")
    p.add_argument("--worker-memory", type=float, default=2.0, metavar="GIB",
                   help="with --cluster gateway: memory per worker of a new cluster (default: 2)")  # fmt: skip
    p.add_argument("--skip-bad-files", action="store_true",
                   help="leave out chunks whose data cannot be read, and list them in summary.json")  # fmt: skip
    p.add_argument(
        "--chunksize",
        type=int,
        default=None,
        metavar="N",
        help="entries per chunk (default 500000)",
    )
    p.add_argument("--no-column-cache", action="store_true",
                   help="on Dask workers, neither use nor fill the column cache "
                   "(kept between runs on the same cluster)")  # fmt: skip
    p.add_argument("--no-tree-cache", action="store_true",
                   help="on Dask workers, read each chunk's tree from its file again "
                   "instead of keeping each file's tree open between chunks")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the analysis and print a short table of its histograms."""
    began = time.monotonic()
    if args.chunksize is not None and args.chunksize < 1:
        raise UsageError(
            f"--chunksize must be at least 1 entry (got {args.chunksize}); leave it out for "
            "the default of 500000"
        )
    with ChunkProgress(args.analysis, err_console) as progress:
        # On screen before the heavy imports (coffea, awkward, dask: most of a second).
        progress.step(f"loading the analysis {args.analysis}")
        from casa.analysis.outputs import prepare_out_dir, write_outputs
        from casa.analysis.registry import load_processor, parse_processor_args
        from casa.analysis.runner import DEFAULT_CHUNKSIZE, run_analysis
        from casa.analysis.schemas import resolve_schema
        from casa.compute.base import Scaling
        from casa.compute.registry import create_backend
        from casa.data.files import expand_paths, inspect_root_file
        from casa.facility import facility_context, refusal_explainer
        from casa.workarounds import defer_import

        # coffea's DaskExecutor imports dask.dataframe at every call, distributed's Client
        # pandas for its version: neither is used unless the analysis does (0.5 s here).
        defer_import("pandas", "dask.dataframe")
        size = Scaling.parse(args.workers, args.adapt)

        @functools.cache
        def facility():  # casa.toml, parsed once, and only when the run needs the facility
            return facility_context(args.home, args.config)

        where = args.executor if args.cluster == "local" else args.cluster
        backend = create_backend(
            where, None if where in LOCAL else facility(), size, worker_memory=args.worker_memory
        )
        backend.say = progress.step
        processor = load_processor(args.analysis, parse_processor_args(args.arg))
        schema = args.schema
        if args.dataset:
            progress.step(f"reading the dataset {args.dataset} from the catalog")
            dataset = facility().catalog().get(args.dataset)
            name, files, metadata = dataset.name, list(dataset.files), dataset.metadata
            if schema is None:
                schema = dataset.schema  # recorded by 'casa datasets add/import --schema'
        else:
            progress.step("reading the files' trees")
            name, metadata = "files", None
            files = [inspect_root_file(p, args.tree) for p in expand_paths(args.files)]
        schema_class = resolve_schema(schema)
        explain = servers = None
        if any(f.url.startswith(("root://", "roots://")) for f in files):
            ctx = facility()
            explain, servers = refusal_explainer(ctx), storage_server_names(ctx.config)
        prepare_out_dir(args.out)
        progress.step(STARTING.get(where, f"starting the workers ({where})"))

        def started(chunks: int, events: int, dashboard: str | None) -> None:
            if not args.debug:
                quiet_dask_logs()
            progress.start(chunks, events, dashboard)

        result = run_analysis(
            processor,
            name,
            files,
            backend,
            chunksize=DEFAULT_CHUNKSIZE if args.chunksize is None else args.chunksize,
            metadata=metadata,
            on_start=started,
            on_progress=progress.update,
            explain_refusal=explain,
            servers=servers,
            skip_bad_files=args.skip_bad_files,
            column_cache=not args.no_column_cache,
            tree_cache=not args.no_tree_cache,
            schema=schema_class,
        )
    summary = write_outputs(args.out, result, args.analysis, name, plots=not args.no_plots)
    print_summary(args.out, summary, result.output)
    waited = time.monotonic() - began
    console.print(
        f"you waited {waited:.1f} s in all: {max(0.0, waited - summary['wall_seconds']):.1f} s "
        f"to load, start the workers and write the outputs, {summary['wall_seconds']:.1f} s "
        "processing"
    )
    return 0


#: What ``casa run`` says while its backend starts, by backend.
STARTING = {
    "iterative": "starting (this process reads the chunks)",
    "futures": "starting the worker processes",
    "dask": "starting a local Dask cluster",
    "gateway": "connecting to the Dask Gateway: your running cluster, or a new one and its workers",
    "htcondor": "submitting the workers as HTCondor jobs and waiting for them",
    "slurm": "submitting the workers as Slurm jobs and waiting for them",
}


def quiet_dask_logs() -> None:
    """Silence distributed's logs in this process (once it is imported: its import sets the
    levels): a lost scheduler is logged there as ERROR tracebacks, and casa says what
    happened in one sentence instead ('--debug' keeps them)."""
    import logging
    import sys

    if "distributed" in sys.modules:
        for name in ("distributed", "distributed.client", "dask_gateway"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def storage_server_names(config) -> dict[str, str]:
    """``HOST:PORT`` of the facility's caches and origin, with what to call each in errors."""
    names = {f"{host}:{config.cache.port}": "the cache" for host in config.cache_hosts()}
    names[f"{config.host_of('origin')}:{config.origin.port}"] = "the origin"
    return names


def print_summary(out: str, summary: dict, output: Any = None) -> None:
    """A table of the histograms (storage, entries, sum of weights, mean, peak) from the
    summary's ``histogram_stats``, and where the files went (``output`` is not needed)."""
    table = Table(title=f"{summary['analysis']} on {summary['dataset']}")
    for col in ("histogram", "storage", "entries", "sum of weights", "mean", "peak bin"):
        table.add_column(col, justify="left" if col in ("histogram", "storage") else "right")
    effective = False
    for name, stats in summary.get("histogram_stats", {}).items():
        entries = _number(stats["entries"])
        if stats["entries_kind"] == "effective":
            entries += "*"
            effective = True
        sum_w = "-" if stats["sum_of_weights"] is None else _number(stats["sum_of_weights"])
        mean = "-" if stats["mean"] is None else f"{stats['mean']:.2f}"
        peak = stats["peak_bin"]
        if peak is None:
            peak = "-"
        elif isinstance(peak, list):
            peak = f"{peak[0]:g}-{peak[1]:g}"
        table.add_row(name, stats["storage"], entries, sum_w, mean, str(peak))
    console.print(table)
    if effective:
        console.print(
            "* effective entries, (sum w)^2 / sum w^2: a Weight histogram keeps no count of "
            "its fills (with equal weights this is the count)",
            soft_wrap=True,
        )
    for name, reason in summary.get("histograms_not_in_root_file", {}).items():
        console.print(
            f"[yellow]{escape(name)} is not in histograms.root: {escape(reason)}[/]",
            soft_wrap=True,
        )
    console.print(
        f"{summary['events']:,} events in {summary['wall_seconds']:.2f} s "
        f"({event_rate(summary['events_per_second'])}) on {summary['executor']} "
        f"with {summary['workers']} worker(s)"
    )
    if summary.get("chunks_skipped"):
        first = summary["chunks_skipped"][0]
        console.print(
            f"[yellow]skipped {len(summary['chunks_skipped'])} chunk(s) that could not be read, "
            f"the first {first['file']} entries {first['entry_start']}-{first['entry_stop']} "
            "(all listed in summary.json)[/]",
            soft_wrap=True,
        )
    console.print(f"outputs in {out}: histograms.root, result.pkl, summary.json")
    for png in summary["plots"]:
        console.print(f"  plot: {os.path.join(out, png)}")


def _number(value: float) -> str:
    """``1,234`` for whole numbers, ``1,234.57`` otherwise."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
