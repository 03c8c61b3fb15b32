"""One measurement of one query on each engine the bench compares.

- ``casa-cold``/``casa-warm``: casa's runner on the facility's gateway cluster, reading
  ``root://`` through the cache (emptied before ``casa-cold``, filled by it for
  ``casa-warm``); ``casa-warm`` leaves the workers' column cache alone, so it decompresses
  every basket as plain coffea does;
- ``casa-columns``: the same again with the column cache that ``casa-cold`` filled;
- ``coffea``: the same processor with plain coffea on the local files, as a user's fresh
  script runs it (preprocessing and process pools included);
- ``coffea-warm``: plain coffea as a warm session runs it: the same process pool for the
  whole bench, already used, and coffea's metadata cache filled (no preprocessing);
- ``rdf``: ROOT's RDataFrame (:mod:`casa.bench.rdf`) in a fresh process (JIT included);
- ``rdf-warm``: the same query again in that process: helpers compiled, thread pool up;
- ``limit``: the decompression limit (:mod:`casa.bench.readlimit`).

Every engine's time is wall-clock time from the call to the histograms (or, for the limit,
to the last decompressed basket); events/s is the dataset's events over that time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from casa.errors import AnalysisError
from casa.workarounds import quiet_coffea

#: The engines, in the order they run for each query and repetition.
ENGINES: tuple[str, ...] = (
    "casa-cold",
    "casa-warm",
    "casa-columns",
    "coffea",
    "coffea-warm",
    "rdf",
    "rdf-warm",
    "limit",
)


@dataclass
class Measurement:
    """One engine's run of one query in one repetition."""

    engine: str
    query: str
    repetition: int
    events: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        """Events over the wall time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "engine": self.engine,
            "query": self.query,
            "repetition": self.repetition,
            "events": self.events,
            "seconds": self.seconds,
            "events_per_second": self.events_per_second,
            **self.details,
        }


def flow_counts(output: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each histogram of a processor's output as counts with under- and overflow."""
    return {name: np.asarray(h.values(flow=True), dtype=float) for name, h in output.items()}


def check_equal(
    query: str, reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], engine: str
) -> int:
    """AnalysisError naming the query and histogram unless ``other`` equals ``reference``.

    Returns the number of bins compared.
    """
    if set(reference) != set(other):
        raise AnalysisError(
            f"{query}: {engine} filled the histograms {sorted(other)}, casa on the facility "
            f"{sorted(reference)}"
        )
    bins = 0
    for name, want in reference.items():
        got = np.asarray(other[name], dtype=float)
        if got.shape != want.shape:
            raise AnalysisError(
                f"{query}: histogram {name!r} has {got.size} bins (flow included) in {engine} "
                f"and {want.size} in casa on the facility"
            )
        differing = np.flatnonzero(got != want)
        if differing.size:
            i = int(differing[0])
            raise AnalysisError(
                f"{query}: histogram {name!r} differs between {engine} and casa on the facility "
                f"in {differing.size} bin(s); the first, flow-indexed bin {i}, holds {got[i]:g} "
                f"in {engine} and {want[i]:g} in casa"
            )
        bins += want.size
    return bins


def run_casa(
    query: str,
    files: Sequence[Any],
    ctx: Any,
    workers: int,
    chunksize: int,
    probe: Any,
    engine: str,
    repetition: int,
    column_cache: bool = True,
    processor: Any = None,
) -> tuple[Measurement, dict[str, np.ndarray]]:
    """casa's runner on the facility's gateway cluster, through the cache (``processor``,
    or the built-in one named ``query``).

    ``seconds`` runs from the call of ``run_analysis`` (connecting to the running cluster
    included) to its merged output; ``details`` adds the runner's own wall time, the time
    to the first finished chunk, each worker's peak memory and the column cache's hits and
    misses during the run.
    """
    from casa.analysis.registry import load_processor
    from casa.analysis.runner import run_analysis
    from casa.compute.base import Scaling
    from casa.compute.gateway import GatewayBackend

    marks: dict[str, float] = {}

    def on_start(chunks: int, events: int, dashboard: str | None) -> None:
        marks.setdefault("ready", time.perf_counter())

    def on_progress(chunks: int, events: int) -> None:
        if chunks:
            marks.setdefault("first_chunk", time.perf_counter())

    probe.reset_peak_memory()
    base = probe.resident_memory_mb()
    cache_before = probe.column_cache_totals()
    started = time.perf_counter()
    result = run_analysis(
        processor if processor is not None else load_processor(query),
        "bench",
        list(files),
        GatewayBackend(ctx, Scaling(workers=workers)),
        chunksize=chunksize,
        on_start=on_start,
        on_progress=on_progress,
        column_cache=column_cache,
    )
    seconds = time.perf_counter() - started
    peaks = probe.peak_memory_mb()
    cache_after = probe.column_cache_totals()
    expected = sum(f.events for f in files)
    if result.events != expected or result.chunks_repeated or result.skipped:
        raise AnalysisError(
            f"{query}: casa on the facility counted {result.events:,} events of {expected:,} "
            f"({len(result.chunks_repeated)} chunk(s) counted twice, {len(result.skipped)} "
            "skipped)"
        )
    details = {
        "runner_seconds": result.wall_seconds,
        "connect_seconds": marks.get("ready", started) - started,
        "first_chunk_seconds": marks.get("first_chunk", started + seconds) - started,
        "chunks": result.chunks,
        "bytes_read": result.bytes_read,
        "workers": result.workers,
        "peak_worker_memory_mb": peaks,
        "base_worker_memory_mb": base,
        "peak_memory_method": probe.method,
        "column_cache": result.extra.get("column_cache", False),
        "column_cache_hits": cache_after["hits"] - cache_before["hits"],
        "column_cache_misses": cache_after["misses"] - cache_before["misses"],
        "column_cache_bytes": cache_after["bytes"],
    }
    measurement = Measurement(engine, query, repetition, result.events, seconds, details)
    return measurement, flow_counts(result.output)


def _coffea_runner(executor: Any, chunksize: int, metadata_cache: dict) -> Any:
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    return processor.Runner(
        executor=executor, schema=NanoAODSchema, chunksize=chunksize, metadata_cache=metadata_cache
    )


def run_coffea(
    query: str, paths: Sequence[str], events: int, workers: int, chunksize: int, repetition: int
) -> tuple[Measurement, dict[str, np.ndarray]]:
    """Plain coffea, as a user's fresh script runs it: ``Runner`` with ``FuturesExecutor``.

    Includes coffea's own preprocessing (opening every file to count its entries) and the
    process pools it starts; ``details["preprocess_seconds"]`` is the preprocessing alone,
    timed in a second, separate call after the run.
    """
    from coffea import processor

    from casa.analysis.registry import load_processor

    def new_runner() -> Any:
        # A cache of its own: coffea's default one lives as long as this process, so every
        # run after the first would skip the preprocessing a user's fresh script does.
        executor = processor.FuturesExecutor(workers=workers, status=False)
        return _coffea_runner(executor, chunksize, {})

    fileset = {"bench": list(paths)}
    with quiet_coffea():
        started = time.perf_counter()
        output = new_runner()(fileset, load_processor(query), treename="Events")
        seconds = time.perf_counter() - started
        # What the preprocessing inside that call costs, measured by itself afterwards
        # (with a new Runner: the first one remembers the files' entries now).
        started = time.perf_counter()
        list(new_runner().preprocess(fileset, treename="Events"))
        preprocess = time.perf_counter() - started
    details = {"preprocess_seconds": preprocess}
    measurement = Measurement("coffea", query, repetition, events, seconds, details)
    return measurement, flow_counts(output)


class WarmCoffea:
    """Plain coffea in a warm session: one process pool of ``workers`` processes for the
    whole bench and one metadata cache, both used once (:meth:`warm_up`) before any run
    is timed, as a physicist's notebook has them after its first run."""

    def __init__(self, paths: Sequence[str], workers: int, chunksize: int) -> None:
        import concurrent.futures

        from coffea import processor

        self.fileset = {"bench": list(paths)}
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
        self.metadata_cache: dict = {}
        self.runner = _coffea_runner(
            processor.FuturesExecutor(pool=self.pool, workers=workers, status=False),
            chunksize,
            self.metadata_cache,
        )

    def __enter__(self) -> WarmCoffea:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def warm_up(self, query: str) -> float:
        """One untimed run (processes started, coffea imported, entries cached); its seconds."""
        from casa.analysis.registry import load_processor

        started = time.perf_counter()
        with quiet_coffea():
            self.runner(self.fileset, load_processor(query), treename="Events")
        return time.perf_counter() - started

    def run(
        self, query: str, events: int, repetition: int
    ) -> tuple[Measurement, dict[str, np.ndarray]]:
        """The query on the warm pool, from the call to the merged histograms."""
        from casa.analysis.registry import load_processor

        with quiet_coffea():
            started = time.perf_counter()
            output = self.runner(self.fileset, load_processor(query), treename="Events")
            seconds = time.perf_counter() - started
        measurement = Measurement("coffea-warm", query, repetition, events, seconds)
        return measurement, flow_counts(output)


def run_rdf(
    query: str, paths: Sequence[str], workers: int, repetition: int
) -> list[tuple[Measurement, dict[str, np.ndarray]]]:
    """RDataFrame on ``workers`` threads in a fresh process: ``rdf`` (cold: loading, helpers,
    JIT and event loop), then ``rdf-warm``, the same query again in that process."""
    from casa.bench.rdf import run_rdf_queries_subprocess

    results = run_rdf_queries_subprocess([query, query], list(paths), threads=workers)
    out = []
    for engine, result in zip(("rdf", "rdf-warm"), results, strict=True):
        details = {"jit_seconds": result.jit_seconds, "loop_seconds": result.loop_seconds}
        measurement = Measurement(
            engine, query, repetition, result.events, result.wall_seconds, details
        )
        out.append((measurement, result.histograms))
    return out


def run_limit(query: str, paths: Sequence[str], workers: int, repetition: int) -> Measurement:
    """The decompression limit of the query's baskets on ``workers`` processes."""
    from casa.bench.readlimit import measure_read_limit

    result = measure_read_limit(query, list(paths), workers)
    details = {
        "uncompressed_bytes": result.uncompressed_bytes,
        "compressed_bytes": result.compressed_bytes,
        "baskets": result.baskets,
        "mb_per_second": result.mb_per_second,
        "zlib_library": result.zlib_library,
    }
    return Measurement("limit", query, repetition, result.events, result.wall_seconds, details)
