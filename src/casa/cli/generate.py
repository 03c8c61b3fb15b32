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
        "layout of the CMS ADL benchmark file (--layout adl) or of full CMS NanoAOD, over a "
        "thousand branches (--layout nanoaod-wide), with a manifest.json of sizes and checksums.",
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
        "--layout",
        choices=("adl", "nanoaod-wide"),
        default="adl",
        help="branches to write: adl, the ADL benchmark file's few dozen (default), or "
        "nanoaod-wide, those plus about 1,500 more shaped like real NanoAOD",
    )
    p.add_argument(
        "--codec",
        default=None,
        metavar="CODEC",
        help="compression: zlib:1, lz4:4, zstd:5, lzma:9 (any level 1-9); default zlib:1 "
        "for --layout adl, zstd:5 for nanoaod-wide",
    )
    p.add_argument("--workers", type=int, default=None, metavar="W", help="parallel processes")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Generate the files and print where they are."""
    from casa.generate.generator import default_codec, generate_dataset, parse_codec

    codec = args.codec or default_codec(args.layout)
    parse_codec(codec)
    with event_progress("Generating", args.events, err_console) as advance:
        manifest = generate_dataset(
            args.out,
            args.events,
            args.files,
            args.seed,
            codec,
            workers=args.workers,
            progress=advance,
            layout=args.layout,
        )
    size = sum(f["bytes"] for f in manifest["files"])
    console.print(
        f"wrote {manifest['events']:,} events in {len(manifest['files'])} file(s), "
        f"{size / 1e6:.1f} MB, to {args.out} (manifest.json lists them)"
    )
    return 0
