"""``casa generate``: synthetic NanoAOD-like collision data."""

from __future__ import annotations

import argparse

from casa.cli.console import console, err_console
from casa.cli.progress import event_progress


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``generate`` command."""
    p = sub.add_parser(
        "generate",
        help="write synthetic collision events as NanoAOD-like ROOT files",
        description="Write synthetic collision events (Z, top pairs, W+jets, multijet) in the "
        "layout of the CMS ADL benchmark file, with a manifest.json of sizes and checksums.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into")
    p.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        metavar="N",
        help="events in all (default: 1000000)",
    )
    p.add_argument("--files", type=int, default=1, metavar="K", help="number of files (default: 1)")
    p.add_argument(
        "--seed", type=int, default=1, metavar="S", help="same seed, same bytes (default: 1)"
    )
    p.add_argument(
        "--codec",
        default="zlib:1",
        metavar="CODEC",
        help="compression: zlib:1 (default), lz4:4, zstd:5, lzma:9 (any level 1-9)",
    )
    p.add_argument("--workers", type=int, default=None, metavar="W", help="parallel processes")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Generate the files and print where they are."""
    from casa.generate.generator import generate_dataset, parse_codec

    parse_codec(args.codec)
    with event_progress("Generating", args.events, err_console) as advance:
        manifest = generate_dataset(
            args.out,
            args.events,
            args.files,
            args.seed,
            args.codec,
            workers=args.workers,
            progress=advance,
        )
    size = sum(f["bytes"] for f in manifest["files"])
    console.print(
        f"wrote {manifest['events']:,} events in {len(manifest['files'])} file(s), "
        f"{size / 1e6:.1f} MB, to {args.out} (manifest.json lists them)"
    )
    return 0
