"""``casa demo``: generate a dataset, register it, run two analyses, show where the plots are."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from casa.cli.console import console, err_console
from casa.cli.progress import ChunkProgress, event_progress
from casa.config import facility_paths
from casa.data.catalog import DatasetCatalog
from casa.errors import DataError

DEMO_DATASET = "demo"
DEMO_EVENTS = 3_000_000
DEMO_FILES = 6
DEMO_SEED = 2012
DEMO_ANALYSES = ("dimuon", "adl5")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo",
        help="generate the demo dataset, register it and run dimuon and adl5 on it",
    )
    p.add_argument("--events", type=int, default=DEMO_EVENTS, metavar="N")
    p.add_argument("--files", type=int, default=DEMO_FILES, metavar="K")
    p.add_argument("--workers", type=int, default=2, metavar="N")
    p.add_argument("--out", default="demo-output", metavar="DIR", help="default: ./demo-output")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the demo end to end."""
    from casa.analysis.outputs import write_outputs
    from casa.analysis.registry import load_processor
    from casa.analysis.runner import run_analysis
    from casa.cli.run import print_summary
    from casa.cluster.local import LocalDaskBackend
    from casa.data.generator import MANIFEST, generate_dataset

    paths = facility_paths(args.home).ensure()
    data_dir = paths.home / "data" / DEMO_DATASET
    catalog = DatasetCatalog(paths.database)
    wanted = {"events": args.events, "files": args.files, "seed": DEMO_SEED}
    if _manifest_matches(data_dir / MANIFEST, wanted):
        console.print(f"demo data already generated in {data_dir}")
    else:
        with event_progress("Generating", args.events, err_console) as advance:
            generate_dataset(
                data_dir, args.events, args.files, DEMO_SEED, "zlib:1", progress=advance
            )
        if DEMO_DATASET in {d.name for d in catalog.list()}:
            catalog.remove(DEMO_DATASET)
    try:
        dataset = catalog.get(DEMO_DATASET)
    except DataError:
        dataset = catalog.add(DEMO_DATASET, [str(data_dir)])
        console.print(f"registered dataset {DEMO_DATASET}: {dataset.events:,} events")

    for analysis in DEMO_ANALYSES:
        out = Path(args.out) / analysis
        with ChunkProgress(analysis, err_console) as progress:
            result = run_analysis(
                load_processor(analysis),
                dataset.name,
                list(dataset.files),
                LocalDaskBackend(),
                workers=args.workers,
                on_start=progress.start,
                on_progress=progress.update,
            )
        summary = write_outputs(out, result, analysis, dataset.name)
        print_summary(str(out), summary, result.output)
    return 0


def _manifest_matches(manifest: Path, wanted: dict) -> bool:
    try:
        found = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    files_ok = all((manifest.parent / f["name"]).is_file() for f in found.get("files", []))
    return (
        files_ok
        and found.get("events") == wanted["events"]
        and len(found.get("files", [])) == wanted["files"]
        and found.get("seed") == wanted["seed"]
    )
