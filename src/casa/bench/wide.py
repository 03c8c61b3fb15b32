"""The wide-file benchmark: files shaped like CMS NanoAOD, read as the 200 Gbps challenge reads.

The bench's own files hold about 80 bytes per event in a few dozen branches; CMS NanoAOD
holds well over a thousand branches. This part of the bench generates ``nanoaod-wide``
files (``casa generate --layout nanoaod-wide``: 1,507 branches, ZSTD), stores them in the
bench's facility, and runs :class:`casa.bench.challenge.ChallengeProcessor` on them (a
quarter of the branches read and materialised) on the bench's warm gateway cluster through
the cache: warm cache without the column cache (``casa-warm``), then with the columns the
workers kept (``casa-columns``), each checked against uproot + numpy; and the
decompression limit of the same baskets. It reports events/s and compressed MB/s per
worker beside the challenge's published figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casa.bench.dataset import BenchDataset, ensure_dataset
from casa.bench.engines import Measurement, check_equal
from casa.errors import AnalysisError

#: The catalog name of the wide dataset in the bench's facility.
WIDE_DATASET = "bench-wide"
#: The challenge's published rates per worker (CMS NanoAOD through XCache; IRIS-HEP
#: 200 Gbps challenge, 2024): events/s and compressed MB/s.
CHALLENGE_EVENTS_PER_SECOND_PER_WORKER = 30_700
CHALLENGE_MB_PER_SECOND_PER_WORKER = 23.0
#: What the wide part's figures mean (bench.json's ``definitions``).
DEFINITIONS = {
    "wide": "nanoaod-wide files (1,507 branches, zstd) read by the challenge query: a "
    "quarter of the branches materialised; casa-warm and casa-columns as for the other "
    "queries, limit the decompression of the same baskets",
    "wide.events_per_second_per_worker": "the wide dataset's events over the median wall "
    "time, over W",
    "wide.compressed_mb_per_second_per_worker": "the compressed bytes of the query's "
    "baskets over the median wall time, over W (the challenge's 'MB/s per worker')",
}


def ensure_wide_dataset(out: Path, events: int, files: int, seed: int) -> BenchDataset:
    """The wide files in ``out``, generated or reused (their layout's codec, zstd)."""
    from casa.generate.wide import DEFAULT_CODEC, LAYOUT

    return ensure_dataset(out, events, files, DEFAULT_CODEC, seed, layout=LAYOUT)


def wide_figures(
    facility: Any,
    dataset: BenchDataset,
    probe: Any,
    workers: int,
    chunksize: int,
    repeat: int,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[Measurement]]:
    """Store ``dataset`` in the facility, run the challenge query on it; the figures, runs."""
    import uproot

    from casa.bench.challenge import ChallengeProcessor, reference_counts
    from casa.bench.engines import run_casa, run_limit
    from casa.bench.report import summarize
    from casa.generate.wide import challenge_branches

    with uproot.open(dataset.paths[0]) as f:
        all_branches = list(f["Events"].keys())
    branches = challenge_branches(all_branches)
    files, store_seconds = facility.store(dataset, WIDE_DATASET)
    started = time.perf_counter()
    reference = reference_counts(dataset.paths, branches)
    reference_seconds = time.perf_counter() - started
    processor = ChallengeProcessor(branches)
    args = (files, facility.ctx, workers, chunksize, probe)
    # Untimed: the workers' first look at these files (their form, imports) and the
    # cache's first read of them; the columns it keeps serve casa-columns.
    probe.clear_column_cache()
    run_casa("challenge", *args, "warm-up", 0, processor=processor)
    runs: list[Measurement] = []
    for repetition in range(1, repeat + 1):
        for engine, column_cache in (("casa-warm", False), ("casa-columns", True)):
            m, counts = run_casa(
                "challenge", *args, engine, repetition,
                column_cache=column_cache, processor=processor,
            )  # fmt: skip
            check_equal("challenge", reference, counts, f"{engine} (against uproot)")
            runs.append(m)
            log(f"[{repetition}/{repeat}] wide   {engine:<12} {m.seconds:8.2f} s  "
                f"{m.events_per_second / 1e3:8.1f} k events/s")  # fmt: skip
        limit = run_limit("challenge", dataset.paths, workers, repetition)
        if limit.events != dataset.events:
            raise AnalysisError(f"the wide files' limit saw {limit.events:,} events of "
                                f"{dataset.events:,}")  # fmt: skip
        runs.append(limit)
        log(f"[{repetition}/{repeat}] wide   limit        {limit.seconds:8.2f} s")
    # Medians, rates, ratios to the limit and memory as for every other query; then per
    # worker and beside the challenge.
    summary = summarize(runs, workers)["challenge"]
    compressed = statistics.median(r.details["compressed_bytes"] for r in runs
                                   if r.engine == "limit")  # fmt: skip
    engines = summary["engines"]
    for e in engines.values():
        e["events_per_second_per_worker"] = e["events_per_second"] / workers
        e["compressed_mb_per_second_per_worker"] = compressed / 1e6 / e["median_seconds"] / workers
        e["challenge_rate_ratio"] = (
            e["events_per_second_per_worker"] / CHALLENGE_EVENTS_PER_SECOND_PER_WORKER
        )
    figures = {
        "events": dataset.events,
        "files": len(dataset.files),
        "bytes": dataset.bytes,
        "codec": dataset.codec,
        "branches": len(all_branches),
        "branches_read": len(branches),
        "compressed_bytes_read": compressed,
        "decompressed_bytes_read": summary["decompressed_bytes"],
        "store_seconds": store_seconds,
        "reference_seconds": reference_seconds,
        "engines": engines,
        "casa_over_limit": summary["ratios"]["casa_over_limit"],
        "columns_over_limit": summary["ratios"]["columns_over_limit"],
        "challenge": {
            "events_per_second_per_worker": CHALLENGE_EVENTS_PER_SECOND_PER_WORKER,
            "compressed_mb_per_second_per_worker": CHALLENGE_MB_PER_SECOND_PER_WORKER,
        },
        "peak_worker_memory_mb": summary["peak_worker_memory_mb"],
        "memory": summary["memory"],
        "histograms_equal_uproot": True,
    }
    return figures, runs
