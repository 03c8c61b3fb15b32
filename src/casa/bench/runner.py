"""``casa bench`` from start to end: dataset, private facility, interleaved engines, report.

The engines run interleaved, ``for repetition: for query: for engine``, so that whatever
else the machine does affects them alike; the report gives medians over repetitions.
Before each query's ``casa-cold`` run the cache is stopped, its disk emptied and started
again (:meth:`BenchFacility.cold_cache`); ``casa-warm`` then repeats the run, finding
every block in the cache. Every engine's histograms must equal ``casa-cold``'s bin for
bin (flow bins included), or the bench stops with an AnalysisError naming the query and
histogram.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from casa.bench.command_line import command_line_figures, warm_run_figures
from casa.bench.dataset import BenchDataset, ensure_dataset
from casa.bench.engines import (
    Measurement,
    WarmCoffea,
    check_equal,
    run_casa,
    run_coffea,
    run_limit,
    run_rdf,
)
from casa.bench.wan import WanSpec
from casa.errors import AnalysisError, CasaError, UsageError

#: The bench's default seed (the same files every time).
BENCH_SEED = 2012
#: What ``--smoke`` runs unless other options say otherwise.
SMOKE = {
    "events": 20_000,
    "files": 1,
    "queries": ("dimuon", "adl1"),
    "repeat": 1,
    "workers": 1,
    "wide_events": 5_000,
    "wide_files": 1,
}
#: What a full bench runs unless other options say otherwise.
FULL = {
    "events": 2_000_000,
    "files": 4,
    "queries": ("dimuon", *(f"adl{i}" for i in range(1, 9))),
    "repeat": 3,
    "workers": 2,
    "wide_events": 200_000,
    "wide_files": 2,
}
DEFINITIONS = {
    "events_per_second": "the dataset's events over the median wall time of an engine's runs",
    "casa-cold": "run_analysis on the facility's gateway cluster through the cache, right after "
    "the cache was stopped, its disk emptied and started again; from the call (connecting "
    "to the running, warm cluster included) to the merged histograms",
    "casa-warm": "the same run again at once: every block is in the cache; the workers' "
    "column cache is neither read nor filled (every basket is decompressed again)",
    "casa-columns": "the same run again with the workers' column cache, which casa-cold "
    "filled (the column cache is emptied before each casa-cold run)",
    "coffea": "coffea.processor.Runner with FuturesExecutor(workers=W) on the local files, "
    "in this process, as a fresh script runs it: preprocessing and process pools included",
    "coffea-warm": "the same Runner as a warm session has it: one pool of W processes for "
    "the whole bench and coffea's metadata cache, both used by an untimed run first (no "
    "preprocessing, no pool start-up)",
    "rdf": "RDataFrame on W threads in a fresh process: loading, helpers, JIT and event loop",
    "rdf-warm": "the same query again in that process right after: helpers compiled, "
    "ImplicitMT's thread pool up; a new graph, its event loop and its histograms",
    "casa_over_rdf_warm": "events/s of casa-warm over rdf-warm (warm against warm)",
    "casa_over_coffea_warm": "events/s of casa-warm over coffea-warm (warm against warm)",
    "casa_over_limit": "events/s of casa-warm (no column cache) over the decompression limit",
    "columns_over_rdf_warm": "events/s of casa-columns over rdf-warm",
    "columns_over_coffea_warm": "events/s of casa-columns over coffea-warm",
    "columns_over_limit": "events/s of casa-columns over the decompression limit",
    "casa_over_rdf_cold": "events/s of casa-warm over rdf (RDataFrame started cold)",
    "casa_over_coffea_cold": "events/s of casa-warm over coffea (a fresh script)",
    "cold_over_warm": "events/s of casa-cold over casa-warm (what an empty cache costs)",
    "geometric_means": "each ratio's geometric mean over the queries measured",
    "memory": "per query, of the casa-warm runs (no column cache): each worker's resident "
    "memory right before a run (base_mb, the largest), the largest growth of a worker's "
    "peak (VmHWM) over its base during a run, one chunk's decompressed columns (the "
    "query's decompressed bytes over the chunks) and growth_over_chunk, their ratio",
    "coffea_warm_up_seconds": "the untimed first run of plain coffea's warm session (its "
    "processes started, coffea imported, the files' entries cached)",
    "limit": "reading and decompressing the query's baskets on W processes (start-up excluded)",
    "time_to_first_histogram_seconds": "median wall time of casa-warm: from calling "
    "run_analysis on an up facility with a warm cluster to the complete histograms",
    "time_to_first_histogram_columns_seconds": "the same for casa-columns (a query whose "
    "columns the workers hold already)",
    "first_chunk_seconds": "from the call to the first chunk reported finished (casa-warm)",
    "up_seconds": "Supervisor.up() of every service (as 'casa up') until all are healthy",
    "new_cluster_seconds": "gateway.new_cluster + scale(W) until W workers are connected",
    "scale_seconds": "after scaling down to 1 worker: scale(W) until W workers are connected",
    "warm_up_seconds": "importing coffea, uproot and casa's processors on the new workers, "
    "then one untimed run of the first query: the cluster the measurements use has run before",
    "peak_worker_memory_mb": "the largest peak resident set (VmHWM, reset before each run) "
    "of any worker during the query's casa runs",
}


@dataclass
class BenchOptions:
    """Everything ``casa bench`` was asked to do."""

    events: int
    files: int
    codec: str
    queries: tuple[str, ...]
    workers: int
    repeat: int
    out: Path
    chunksize: int
    seed: int = BENCH_SEED
    wan: WanSpec | None = None
    smoke: bool = False
    #: Events and files of the wide-file benchmark (casa.bench.wide); 0 events: none.
    wide_events: int = 0
    wide_files: int = 1

    def validate(self) -> None:
        """UsageError naming the first bad option."""
        from casa.bench.rdf import INSTALL_HINT, QUERIES, rdf_available

        unknown = [q for q in self.queries if q not in QUERIES]
        if unknown or not self.queries:
            raise UsageError(
                f"--queries {','.join(self.queries)!r} names no or unknown queries "
                f"({', '.join(unknown) or 'none given'}): choose from {', '.join(QUERIES)}"
            )
        for name in ("events", "files", "workers", "repeat", "chunksize"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if self.wide_events < 0:
            raise UsageError(f"--wide-events must be 0 or more (got {self.wide_events})")
        if self.wide_events and self.wide_files > self.wide_events:
            raise UsageError(f"--wide-events must be at least {self.wide_files}")
        if self.files > self.events:
            raise UsageError(f"--files ({self.files}) cannot exceed --events ({self.events})")
        if not rdf_available():
            raise UsageError(f"casa bench compares with RDataFrame, and {INSTALL_HINT}")
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} exists and is not a folder")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["out"] = str(self.out)
        out["queries"] = list(self.queries)
        out["wan"] = asdict(self.wan) if self.wan else None
        return out


def run_bench(options: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole bench; write ``bench.json`` and ``bench.png`` into ``options.out``."""
    from casa.analysis.runner import quiet_schema_warnings
    from casa.bench.report import (
        geometric_means,
        machine_info,
        summarize,
        write_chart,
        write_json,
    )

    options.validate()
    options.out.mkdir(parents=True, exist_ok=True)
    quiet_schema_warnings()
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "options": options.to_json(),
        "machine": machine_info(),
        "definitions": dict(DEFINITIONS),
    }
    report["command_line"] = command_line_figures()
    for figure in report["command_line"].values():
        log(f"'{figure['command']}' answers in {figure['seconds']:.2f} s")
    log(f"dataset: {options.events:,} events in {options.files} file(s), {options.codec}")
    dataset = ensure_dataset(
        options.out / "data", options.events, options.files, options.codec, options.seed
    )
    report["dataset"] = dataset.to_json()
    log(
        f"dataset {'reused' if dataset.reused else 'generated'}: {dataset.bytes / 1e6:.1f} MB "
        f"in {options.out / 'data'}"
    )
    wide = None
    if options.wide_events:
        from casa.bench.wide import DEFINITIONS as WIDE_DEFINITIONS
        from casa.bench.wide import ensure_wide_dataset

        report["definitions"].update(WIDE_DEFINITIONS)
        wide = ensure_wide_dataset(
            options.out / "wide-data", options.wide_events, options.wide_files, options.seed
        )
        report["wide_dataset"] = wide.to_json()
        log(
            f"wide dataset {'reused' if wide.reused else 'generated'}: {wide.events:,} events, "
            f"{wide.bytes / 1e6:.1f} MB ({wide.codec}) in {options.out / 'wide-data'}"
        )
    runs: list[Measurement] = []
    equal: dict[str, dict[str, int]] = {q: {} for q in options.queries}
    try:
        report["facility"] = _on_facility(options, dataset, runs, equal, log, wide)
    except CasaError as e:
        # What was measured so far, for the record; the error itself goes to the caller.
        equal_so_far = False if isinstance(e, AnalysisError) else None
        report["checks"] = {"histograms_equal": equal_so_far, "error": str(e)}
        report["machine"]["load_average_end"] = list(os.getloadavg())
        report["runs"] = [r.to_json() for r in runs]
        write_json(options.out / "bench.json", report)
        raise
    report["command_line"].update(report["facility"].pop("command_line", {}))
    report["wide"] = report["facility"].pop("wide", None)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["checks"] = {
        "histograms_equal": True,
        "reference": "casa-cold",
        "bins_compared": sum(sum(e.values()) for e in equal.values()),
    }
    report["queries"] = summarize(runs, options.workers)
    report["geometric_means"] = geometric_means(report["queries"])
    for query, engines in equal.items():
        report["queries"][query]["histograms_equal"] = {e: True for e in engines}
    report["runs"] = [r.to_json() for r in runs]
    chart = options.out / "bench.png"
    write_chart(chart, report)
    report["outputs"] = {"json": str(options.out / "bench.json"), "chart": str(chart)}
    write_json(options.out / "bench.json", report)
    return report


def _on_facility(
    options: BenchOptions,
    dataset: BenchDataset,
    runs: list[Measurement],
    equal: dict[str, dict[str, int]],
    log: Callable[[str], None],
    wide: BenchDataset | None = None,
) -> dict[str, Any]:
    """Start the facility, measure it and every engine, stop it; return the facility figures."""
    from casa.bench.cluster import ClusterProbe
    from casa.bench.facility import DATASET, bearer_token, bench_facility
    from casa.bench.wan import wan_link

    figures: dict[str, Any] = {"wan": None}
    workers, paths = options.workers, dataset.paths
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(wan_link(options.wan)) if options.wan else None
        if link is not None:
            figures["wan"] = link.to_json()
            log(f"WAN link: origin at {link.namespace_address} in {link.namespace} ({link.qdisc})")
        facility = stack.enter_context(bench_facility(link))
        figures["home"] = str(facility.home)
        log(f"starting a private facility in {facility.home}")
        figures["up_seconds"], figures["up_report"] = facility.up()
        log(f"facility up in {figures['up_seconds']:.2f} s")
        files, figures["store_seconds"] = facility.store(dataset)
        stack.enter_context(bearer_token(facility.token()))
        probe = stack.enter_context(ClusterProbe(facility.ctx))
        figures["new_cluster_seconds"] = probe.new_cluster(workers)
        figures["scale_seconds"] = probe.scale_up(workers)
        imports = probe.warm_up()
        first, _ = run_casa(
            options.queries[0], files, facility.ctx, workers, options.chunksize, probe, "warm-up", 0
        )
        figures["warm_up_seconds"] = imports + first.seconds
        figures["worker_zlib_library"] = probe.zlib_libraries()
        coffea = stack.enter_context(WarmCoffea(paths, workers, options.chunksize))
        figures["coffea_warm_up_seconds"] = coffea.warm_up(options.queries[0])
        log(
            f"cluster {probe.cluster.name}: ready in {figures['new_cluster_seconds']:.2f} s"
            + (
                f", 1 -> {workers} workers in {figures['scale_seconds']:.2f} s"
                if figures["scale_seconds"] is not None
                else ""
            )
        )
        figures["cold_cache_restart_seconds"] = restarts = []
        figures["cold_cache_method"] = (
            "before each casa-cold run the cache service is stopped, its disk emptied and "
            "the service started again (memory and disk cold); the origin's files stay in "
            "the operating system's page cache"
        )

        def record(m: Measurement) -> None:
            runs.append(m)
            log(
                f"[{m.repetition}/{options.repeat}] {m.query:<6} {m.engine:<12} "
                f"{m.seconds:8.2f} s  {m.events_per_second / 1e6:8.3f} M events/s"
            )

        for repetition in range(1, options.repeat + 1):
            for query in options.queries:
                restarts.append(facility.cold_cache())
                probe.clear_column_cache()
                before = facility.cache_bytes()
                args = (query, files, facility.ctx, workers, options.chunksize, probe)
                cold, reference = run_casa(*args, "casa-cold", repetition)
                cold.details["cache_bytes_before"] = before
                cold.details["cache_bytes_after"] = facility.cache_bytes()
                record(cold)
                warm, counts = run_casa(*args, "casa-warm", repetition, column_cache=False)
                record(warm)
                _compare(equal, query, reference, counts, "casa-warm")
                columns, counts = run_casa(*args, "casa-columns", repetition)
                record(columns)
                _compare(equal, query, reference, counts, "casa-columns")
                plain, counts = run_coffea(
                    query, paths, dataset.events, workers, options.chunksize, repetition
                )
                record(plain)
                _compare(equal, query, reference, counts, "coffea")
                plain, counts = coffea.run(query, dataset.events, repetition)
                record(plain)
                _compare(equal, query, reference, counts, "coffea-warm")
                for rdf, counts in run_rdf(query, paths, workers, repetition):
                    record(rdf)
                    if rdf.events != dataset.events:
                        raise AnalysisError(
                            f"{query}: RDataFrame saw {rdf.events:,} events of {dataset.events:,}"
                        )
                    _compare(equal, query, reference, counts, rdf.engine)
                record(run_limit(query, paths, workers, repetition))
        if wide is not None:
            from casa.bench.wide import wide_figures

            figures["wide"], wide_runs = wide_figures(
                facility, wide, probe, workers, options.chunksize, options.repeat, log
            )
            figures["wide"]["runs"] = [r.to_json() for r in wide_runs]
        # A whole 'casa run' as a user types it, on the warm cluster (the same environment's:
        # the command reuses it).
        whole = warm_run_figures(
            facility.home, DATASET, dataset.events, options.queries[0], workers,
            options.out / "warm-run", repeat=1 if options.smoke else 3,
        )  # fmt: skip
        figures["command_line"] = whole
        for figure in whole.values():
            log(f"'{figure['command']}': {figure['seconds']:.2f} s")
        # The delivery service: one skim, the same again (from its cache), and uproot alone.
        from casa.bench.delivery import delivery_figures

        figures["delivery"] = skim = delivery_figures(
            facility.ctx, DATASET, paths, workers, sum(f.bytes for f in dataset.files)
        )
        log(
            f"delivery: {skim['seconds']:.2f} s for {skim['events_read']:,} events "
            f"({skim['events_per_second'] / 1e6:.2f} M events/s, "
            f"{skim['input_mb_per_second']:.0f} MB/s), uproot {skim['uproot_seconds']:.2f} s; "
            f"the same request again, from the cache: {skim['cached_seconds']:.2f} s"
        )
    return figures


def _compare(
    equal: dict[str, dict[str, int]], query: str, reference: dict, counts: dict, engine: str
) -> None:
    """Check ``engine``'s histograms against casa's and note the bins compared."""
    equal[query][engine] = equal[query].get(engine, 0) + check_equal(
        query, reference, counts, engine
    )
