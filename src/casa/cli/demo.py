"""``casa demo``: bring the facility up, store a generated dataset, analyse it through the cache.

Steps: ``casa up``; a token for the caller (stored where WLCG discovery finds it); the
demo dataset generated once and copied into facility storage as ``demo``; ``dimuon`` and
``adl5`` run on the caller's Dask Gateway cluster, whose workers read ``root://`` through
XCache with the caller's token; then one skim of it delivered through the ServiceX client
(``servicex.deliver``) by the delivery service. The facility stays up afterwards (``casa
status``, ``casa down``; the idle cluster stops by itself after ``gateway.idle_timeout``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from casa.cli.access import admin_only
from casa.cli.console import console, err_console
from casa.cli.progress import ChunkProgress, event_progress
from casa.errors import DataError

DEMO_DATASET = "demo"
DEMO_EVENTS = 3_000_000
DEMO_FILES = 6
DEMO_SEED = 2012
DEMO_CODEC = "zlib:1"
DEMO_ANALYSES = ("dimuon", "adl5")
#: A token with less time left than this is renewed before the demo runs.
TOKEN_MARGIN = 600


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo",
        help="start the facility, store the demo dataset, run dimuon and adl5 on your gateway "
        "cluster through the cache",
    )
    p.add_argument("--events", type=int, default=DEMO_EVENTS, metavar="N",
                   help=f"events of the demo dataset (default: {DEMO_EVENTS})")  # fmt: skip
    p.add_argument("--files", type=int, default=DEMO_FILES, metavar="K",
                   help=f"its files (default: {DEMO_FILES})")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="workers of your gateway cluster (default: 2)")  # fmt: skip
    p.add_argument("--out", default="demo-output", metavar="DIR", help="default: ./demo-output")
    p.set_defaults(handler=admin_only("demo")(handle))


def handle(args: argparse.Namespace) -> int:
    """Run the demo end to end."""
    from casa.analysis.outputs import write_outputs
    from casa.analysis.registry import load_processor
    from casa.analysis.runner import run_analysis
    from casa.cli.run import print_summary
    from casa.compute.base import Scaling
    from casa.compute.gateway import GatewayBackend
    from casa.facility import facility_context, refusal_explainer
    from casa.services.facility import facility_supervisor

    ctx = facility_context(args.home, args.config)
    report = facility_supervisor(ctx).up()
    console.print("facility up: " + ", ".join(f"{name} {what}" for name, what in report.items()))
    token_file = _ensure_token(ctx, Path(args.out))
    dataset = _ensure_dataset(ctx, args)
    for analysis in DEMO_ANALYSES:
        out = Path(args.out) / analysis
        with ChunkProgress(analysis, err_console) as progress:
            result = run_analysis(
                load_processor(analysis),
                dataset.name,
                list(dataset.files),
                GatewayBackend(ctx, Scaling(workers=args.workers)),
                on_start=progress.start,
                on_progress=progress.update,
                explain_refusal=refusal_explainer(ctx),
            )
        summary = write_outputs(out, result, analysis, dataset.name)
        print_summary(str(out), summary, result.output)
    _deliver_skim(ctx, token_file, Path(args.out))
    console.print(
        f"read through the cache: {dataset.files[0].url.rsplit('/', 1)[0]}/ ; the facility is "
        "still up ('casa status' to see it, 'casa down' to stop it)"
    )
    return 0


def _deliver_skim(ctx, token_file: Path, out: Path) -> None:
    """The events with two muons of the demo dataset, as one ``servicex.deliver`` call of
    the ServiceX client (docs/delivery.md), with a ``servicex.yaml`` in ``out``."""
    import os

    import uproot
    from servicex import dataset, deliver, query

    from casa.services.delivery.service import delivery_url

    out.mkdir(parents=True, exist_ok=True)
    config = out / "servicex.yaml"
    config.write_text(
        f"api_endpoints:\n  - endpoint: {delivery_url(ctx)}\n    name: casa\n"
        f"default-endpoint: casa\ncache-path: {(out / 'servicex-cache').absolute()}\n"
    )
    spec = {"Sample": [{
        "Name": "dimuons", "Dataset": dataset.GenericDataSet("casa", DEMO_DATASET),
        "Query": query.UprootRaw([{"treename": "Events", "filter_name": ["MET_pt", "Muon_*"],
                                   "cut": "count_nonzero(Muon_pt > 20, axis=1) >= 2"}]),
    }]}  # fmt: skip
    saved = os.environ.get("BEARER_TOKEN_FILE")
    os.environ["BEARER_TOKEN_FILE"] = str(token_file)
    try:
        began = time.monotonic()
        files = deliver(spec, config_path=str(config), progress_bar="none",
                        ignore_local_cache=True, return_exceptions=False)["dimuons"]  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop("BEARER_TOKEN_FILE", None)
        else:
            os.environ["BEARER_TOKEN_FILE"] = saved
    events = sum(uproot.open(f)["Events"].num_entries for f in files)
    console.print(
        f"delivered by the ServiceX client in {time.monotonic() - began:.1f} s: {len(files)} "
        f"skim file(s), {events:,} events with two muons, in {Path(files[0]).parent}"
    )


def _ensure_token(ctx, out: Path) -> Path:
    """A token of this facility with time left, found by WLCG discovery (minted if not);
    the file that holds it (written into ``out`` when it came from ``$BEARER_TOKEN``)."""
    from casa.auth.tokens import (
        discover_token,
        store_token,
        token_store_path,
        unverified_claims,
    )

    found = discover_token()
    if found is not None:
        claims = unverified_claims(found.token, found.source)
        if (
            claims.get("iss") == ctx.config.issuer_url
            and claims.get("exp", 0) > time.time() + TOKEN_MARGIN
            and _signed_here(ctx, found.token)
        ):
            console.print(f"using the token in {found.source}")
            if Path(found.source).is_file():
                return Path(found.source)
            out.mkdir(parents=True, exist_ok=True)
            return store_token(found.token, out / "token")
    path = store_token(ctx.request_token(), token_store_path())
    console.print(f"new token stored in {path}")
    return Path(path)


def _signed_here(ctx, token: str) -> bool:
    """Whether this facility's issuer signed ``token`` (another facility on the same host
    and port has the same issuer URL, not the same key)."""
    import jwt

    from casa.auth.tokens import verify_token

    try:
        verify_token(token, (ctx.paths.keys / "issuer.pub.pem").read_bytes())
    except (OSError, jwt.PyJWTError):
        return False
    return True


def _ensure_dataset(ctx, args: argparse.Namespace):
    """The demo dataset in facility storage, generated and copied in on first use."""
    from casa.data.files import inspect_root_file
    from casa.generate.generator import ensure_generated, manifest_matches

    catalog = ctx.catalog()
    cache_url = ctx.config.cache_url() + "/"
    source = ctx.paths.home / "data" / DEMO_DATASET
    fresh = manifest_matches(source, args.events, args.files, DEMO_SEED, DEMO_CODEC)
    try:
        dataset = catalog.get(DEMO_DATASET)
        if (
            fresh
            and all(f.url.startswith(cache_url) for f in dataset.files)
            and (dataset.events == args.events)
        ):
            console.print(f"dataset {DEMO_DATASET} is in facility storage already")
            return dataset
        catalog.remove(DEMO_DATASET)
    except DataError:
        pass
    bar = event_progress("Generating", args.events, err_console)
    with contextlib.nullcontext() if fresh else bar as advance:
        paths, _ = ensure_generated(
            source, args.events, args.files, DEMO_SEED, DEMO_CODEC, progress=advance
        )
    storage = ctx.storage()
    storage.remove(DEMO_DATASET)
    files = [inspect_root_file(p, "Events") for p in paths]
    dataset = catalog.add_files(DEMO_DATASET, storage.store(DEMO_DATASET, files))
    console.print(
        f"stored dataset {DEMO_DATASET}: {dataset.events:,} events in {len(dataset.files)} files "
        f"under /store/data/{DEMO_DATASET}"
    )
    return dataset
