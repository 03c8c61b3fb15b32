"""``casa bench``: the facility measured against plain coffea, RDataFrame and the read limit."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from casa.cli.console import console, err_console

QUERY_HELP = "dimuon,adl1,...,adl8"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    p = sub.add_parser(
        "bench",
        help="measure casa on a private facility against plain coffea, RDataFrame and the "
        "decompression limit",
        description="Generate (or reuse) a dataset, start a private facility on free ports, run "
        "every query on casa (cold and warm cache), plain coffea, RDataFrame and the "
        "decompression limit, interleaved, and write bench.json and bench.png into --out. "
        "Defaults: 2,000,000 events, 4 files, zlib:1, all nine queries, 2 workers, 3 "
        "repetitions.",
    )
    p.add_argument("--events", type=int, metavar="N", help="events in the dataset")
    p.add_argument("--files", type=int, metavar="K", help="files in the dataset")
    p.add_argument(
        "--codec",
        default="zlib:1",
        metavar="C",
        help="the files' compression: zlib:1, lz4:4, zstd:5 ... (default: zlib:1)",
    )
    p.add_argument("--queries", metavar="Q,Q,...", help=f"comma-separated: {QUERY_HELP}")
    p.add_argument("--workers", type=int, metavar="W", help="workers, threads or processes")
    p.add_argument("--repeat", type=int, metavar="R", help="repetitions (medians are reported)")
    p.add_argument("--chunksize", type=int, metavar="N", help="entries per chunk (default 500000)")
    p.add_argument("--seed", type=int, metavar="S", help="the generator's seed (default 2012)")
    p.add_argument("--out", default="bench-results", metavar="DIR",
                   help="bench.json, bench.png and the dataset (DIR/data) (default bench-results)")  # fmt: skip
    p.add_argument("--wan", metavar="RTT_MS,RATE_MBIT",
                   help="put the origin behind an emulated WAN link (needs root and tc netem)")  # fmt: skip
    p.add_argument("--wide-events", type=int, metavar="N",
                   help="events in the wide-file benchmark (nanoaod-wide files, the challenge "
                   "query); 0 leaves it out (default 200000, 5000 with --smoke)")  # fmt: skip
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run: 20,000 events, 1 file, dimuon and adl1, 1 worker, once")  # fmt: skip
    p.set_defaults(handler=handle)


def options_from(args: argparse.Namespace):
    """The bench's options: what was given, else the --smoke or full defaults."""
    from casa.analysis.runner import DEFAULT_CHUNKSIZE
    from casa.bench.runner import BENCH_SEED, FULL, SMOKE, BenchOptions
    from casa.bench.wan import WanSpec

    base = SMOKE if args.smoke else FULL
    queries = (
        tuple(dict.fromkeys(q.strip() for q in args.queries.split(",") if q.strip()))
        if args.queries is not None
        else base["queries"]
    )

    def pick(name: str):
        value = getattr(args, name)
        return base[name] if value is None else value

    return BenchOptions(
        events=pick("events"),
        files=pick("files"),
        codec=args.codec,
        queries=queries,
        workers=pick("workers"),
        repeat=pick("repeat"),
        out=Path(args.out),
        chunksize=args.chunksize if args.chunksize is not None else DEFAULT_CHUNKSIZE,
        seed=args.seed if args.seed is not None else BENCH_SEED,
        wan=WanSpec.parse(args.wan) if args.wan else None,
        smoke=args.smoke,
        wide_events=pick("wide_events"),
        wide_files=base["wide_files"],
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def handle(args: argparse.Namespace) -> int:
    """Run the bench and print its tables."""
    from casa.bench.report import print_tables
    from casa.bench.runner import run_bench

    options = options_from(args)
    # A bench stopped with SIGTERM still stops its private facility (the finally blocks run).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_bench(options, log=lambda line: err_console.print(line, highlight=False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_tables(console, report)
    machine = report["machine"]
    console.print(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gb']} GB; "
        f"load average {machine['load_average_start'][0]:.2f} at the start, "
        f"{machine['load_average_end'][0]:.2f} at the end"
    )
    console.print(
        f"every engine's histograms equal casa's ({report['checks']['bins_compared']:,} bins "
        f"compared); written: {report['outputs']['json']}, {report['outputs']['chart']}"
    )
    return 0
