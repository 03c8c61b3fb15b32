"""Command-line entry points: parse, call, and map casa errors to exit codes."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import traceback

from rich.markup import escape

from casa import __version__
from casa.cli import bench, cluster, datasets, demo, env, facility, generate, run, token, user
from casa.cli.console import console, err_console
from casa.config import facility_paths
from casa.errors import CasaError

COMMANDS = (generate, datasets, run, cluster, env, facility, token, user, demo, bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``casa`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="casa",
        description="casa: an analysis facility for high-energy physics that anyone can run.",
    )
    parser.add_argument("--version", action="version", version=f"casa {__version__}")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="facility state directory (default: $CASA_HOME or ~/.local/share/casa)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("CASA_CONFIG") or None,
        help="facility configuration (default: $CASA_CONFIG, else $CASA_HOME/casa.toml)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the casa command line and exit with its status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from casa.auth.certificates import trust_facility_ca

        # The facility's CA, for this process's XRootD clients and the services it starts.
        trust_facility_ca(facility_paths(args.home).certificates)
        code = args.handler(args) or 0
    except CasaError as e:
        # One sentence on one line (soft_wrap: the terminal wraps it, rich inserts no breaks).
        err_console.print(
            f"[bold red]casa: error:[/] {escape(str(e))}", highlight=False, soft_wrap=True
        )
        if e.details:
            err_console.print(e.details, highlight=False, markup=False)
        if args.debug:
            err_console.print(traceback.format_exc(), markup=False)
        code = e.exit_code
    except KeyboardInterrupt:
        err_console.print("casa: interrupted")
        code = 130
    console.file.flush()
    sys.exit(code)


def command() -> None:
    """The ``casa`` program (and ``python -m casa``): :func:`main`, then a prompt exit.

    Once the last line is printed, the interpreter would spend most of a second (0.7 s
    after a gateway run here) tearing down the modules a run imported (numba, pandas,
    dask), which no one needs. Its last exit handler, registered before any other and so
    run after all of them (logging's, multiprocessing's, the kept gateway connections'),
    and after the non-daemon threads are joined, flushes the output and ends the process
    with the command's status. An uncaught exception exits the usual way.
    """
    status: list[int] = []
    atexit.register(_end_promptly, status)
    try:
        main()
    except SystemExit as e:
        status.append(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        raise


def _end_promptly(status: list[int]) -> None:
    if not status:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams
            pass
    os._exit(status[0])
