"""What a bench reports: medians and ratios per query, the machine, a table and a chart."""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from casa.bench.engines import ENGINES, Measurement

#: How each engine is named in tables and charts.
LABELS = {
    "casa-cold": "casa, cold cache",
    "casa-warm": "casa, warm cache",
    "casa-columns": "casa, warm cache and columns",
    "coffea": "plain coffea, fresh script",
    "coffea-warm": "plain coffea, warm session",
    "rdf": "RDataFrame, fresh process",
    "rdf-warm": "RDataFrame, second loop",
    "limit": "decompression limit",
}
#: Column headings of the tables.
SHORT = {
    "casa-cold": "casa cold",
    "casa-warm": "casa warm",
    "casa-columns": "casa cols",
    "coffea": "coffea",
    "coffea-warm": "coffea warm",
    "rdf": "RDF",
    "rdf-warm": "RDF warm",
    "limit": "limit",
}
#: Ratios reported per query: name -> (numerator engine, denominator engine, heading), on
#: events/s; warm against warm first.
RATIOS = {
    "casa_over_rdf_warm": ("casa-warm", "rdf-warm", "casa/RDF warm"),
    "casa_over_coffea_warm": ("casa-warm", "coffea-warm", "casa/coffea warm"),
    "casa_over_limit": ("casa-warm", "limit", "casa/limit"),
    "columns_over_rdf_warm": ("casa-columns", "rdf-warm", "cols/RDF warm"),
    "columns_over_coffea_warm": ("casa-columns", "coffea-warm", "cols/coffea warm"),
    "columns_over_limit": ("casa-columns", "limit", "cols/limit"),
    "casa_over_rdf_cold": ("casa-warm", "rdf", "casa/RDF cold"),
    "casa_over_coffea_cold": ("casa-warm", "coffea", "casa/coffea cold"),
    "cold_over_warm": ("casa-cold", "casa-warm", "cold/warm"),
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def root_version() -> str | None:
    """ROOT's version from its headers (importing ROOT would start its interpreter here)."""
    spec = importlib.util.find_spec("ROOT")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        text = _read(os.path.join(location, "include", "ROOT", "RVersion.hxx"))
        parts = [
            re.search(rf"#define ROOT_VERSION_{k} (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")
        ]
        if all(parts):
            major, minor, patch = (int(m[1]) for m in parts if m)
            return f"{major}.{minor:02d}.{patch:02d}"
    return _version("root")


def xrootd_version() -> str | None:
    """The XRootD server's version (``xrootd -v``)."""
    binary = shutil.which("xrootd")
    if binary is None:
        return None
    proc = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    m = re.search(r"v?(\d+\.\d+[\w.\-]*)", proc.stdout + proc.stderr)
    return m[1] if m else None


def machine_info() -> dict[str, Any]:
    """The CPU, cores, memory, kernel, load and software versions of this machine."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return {
        "cpu_model": model[1].strip() if model else platform.processor() or None,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(int(memory[1]) * 1024 / 1e9, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
        "versions": {
            "casa": _version("casa"),
            "coffea": _version("coffea"),
            "uproot": _version("uproot"),
            "awkward": _version("awkward"),
            "dask": _version("dask"),
            "distributed": _version("distributed"),
            "dask-gateway": _version("dask-gateway"),
            "ROOT": root_version(),
            "xrootd": xrootd_version(),
            "xrootd-python": _version("xrootd"),
        },
    }


def summarize(runs: Sequence[Measurement], workers: int) -> dict[str, dict[str, Any]]:
    """Per query: each engine's median time and rates, the ratios, first-histogram time, memory."""
    queries: dict[str, dict[str, Any]] = {}
    for query in dict.fromkeys(r.query for r in runs):
        mine = [r for r in runs if r.query == query]
        limit_bytes = [r.details["uncompressed_bytes"] for r in mine if r.engine == "limit"]
        decompressed = statistics.median(limit_bytes) if limit_bytes else None
        engines: dict[str, Any] = {}
        for engine in ENGINES:
            times = [r.seconds for r in mine if r.engine == engine]
            if not times:
                continue
            events = next(r.events for r in mine if r.engine == engine)
            median = statistics.median(times)
            rate = events / median if median > 0 else 0.0
            engines[engine] = {
                "seconds": times,
                "median_seconds": median,
                "events_per_second": rate,
                "events_per_second_per_core": rate / workers,
                "decompressed_mb_per_second": decompressed / 1e6 / median
                if decompressed and median > 0
                else None,
            }
        ratios = {
            name: engines[a]["events_per_second"] / engines[b]["events_per_second"]
            for name, (a, b, _) in RATIOS.items()
            if a in engines and b in engines and engines[b]["events_per_second"] > 0
        }
        warm = [r for r in mine if r.engine == "casa-warm"]
        columns = [r for r in mine if r.engine == "casa-columns"]
        casa = [r for r in mine if r.engine.startswith("casa")]
        peaks = [max(r.details["peak_worker_memory_mb"].values(), default=0.0) for r in casa]
        queries[query] = {
            "events": mine[0].events,
            "decompressed_bytes": decompressed,
            "engines": engines,
            "ratios": ratios,
            "time_to_first_histogram_seconds": statistics.median(r.seconds for r in warm)
            if warm
            else None,
            "time_to_first_histogram_columns_seconds": statistics.median(r.seconds for r in columns)
            if columns
            else None,
            "first_chunk_seconds": statistics.median(r.details["first_chunk_seconds"] for r in warm)
            if warm
            else None,
            "column_cache_hits": {
                engine: sum(
                    r.details.get("column_cache_hits", 0) for r in mine if r.engine == engine
                )
                for engine in ("casa-cold", "casa-warm", "casa-columns")
            },
            "peak_worker_memory_mb": max(peaks) if peaks else None,
            "memory": memory_per_chunk(warm, decompressed),
        }
    return queries


def memory_per_chunk(runs: Sequence[Measurement], decompressed: float | None) -> dict | None:
    """How far the workers' peak memory grew over their base in ``runs`` (casa without the
    column cache), against one chunk's decompressed columns: ``growth_over_chunk`` at most
    1.5 is issue 18's target."""
    growths = []
    for r in runs:
        base = r.details.get("base_worker_memory_mb") or {}
        peaks = r.details.get("peak_worker_memory_mb") or {}
        growths += [peaks[w] - base[w] for w in peaks if w in base]
    chunks = [r.details.get("chunks") for r in runs if r.details.get("chunks")]
    if not growths or not chunks or not decompressed:
        return None
    chunk_mb = decompressed / 1e6 / statistics.median(chunks)
    base_mb = max(
        max((r.details.get("base_worker_memory_mb") or {}).values(), default=0.0) for r in runs
    )
    return {
        "base_mb": base_mb,
        "largest_growth_mb": max(growths),
        "chunk_decompressed_mb": chunk_mb,
        "growth_over_chunk": max(growths) / chunk_mb if chunk_mb > 0 else None,
    }


def geometric_means(queries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each ratio's geometric mean over the queries that have it."""
    means = {}
    for name in RATIOS:
        values = [q["ratios"][name] for q in queries.values() if q["ratios"].get(name, 0) > 0]
        if values:
            means[name] = math.exp(sum(math.log(v) for v in values) / len(values))
    return means


def write_json(path: Path, report: dict[str, Any]) -> None:
    """``bench.json``, indented."""
    path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.0f} k"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_tables(console: Console, report: dict[str, Any]) -> None:
    """Per query: events/s of every engine, per core, MB/s and ratios; then the facility."""
    workers = report["options"]["workers"]
    rates = Table(title=f"events/s, median of {report['options']['repeat']} ({workers} worker(s))")
    rates.add_column("query")
    for engine in ENGINES:
        rates.add_column(SHORT[engine], justify="right")
    for query, q in report["queries"].items():
        rates.add_row(
            query, *[_rate(q["engines"].get(e, {}).get("events_per_second")) for e in ENGINES]
        )
    console.print(rates)

    derived = Table(
        title="ratios of events/s, warm against warm first; per core; decompressed MB/s"
    )
    derived.add_column("query")
    for _, _, heading in RATIOS.values():
        derived.add_column(heading, justify="right")
    derived.add_column("casa warm /core", justify="right")
    derived.add_column("MB/s casa warm", justify="right")
    derived.add_column("MB/s limit", justify="right")
    for query, q in report["queries"].items():
        warm = q["engines"].get("casa-warm", {})
        limit = q["engines"].get("limit", {})
        derived.add_row(
            query,
            *[_ratio(q["ratios"].get(name)) for name in RATIOS],
            _rate(warm.get("events_per_second_per_core")),
            _mb(warm.get("decompressed_mb_per_second")),
            _mb(limit.get("decompressed_mb_per_second")),
        )
    means = report.get("geometric_means", {})
    if means:
        derived.add_row(
            "geo. mean", *[_ratio(means.get(name)) for name in RATIOS], "", "", "", style="bold"
        )
    console.print(derived)

    facility = report["facility"]
    figures = Table(title="the facility")
    figures.add_column("figure")
    figures.add_column("seconds", justify="right")
    for label, key in (
        ("casa up, until every service is healthy", "up_seconds"),
        (f"a new cluster with {workers} worker(s) ready", "new_cluster_seconds"),
        (f"scaling from 1 to {workers} worker(s)", "scale_seconds"),
        ("first run on the new cluster (warm-up, untimed below)", "warm_up_seconds"),
    ):
        value = facility.get(key)
        figures.add_row(label, "-" if value is None else f"{value:.2f}")
    console.print(figures)
    if report.get("command_line"):
        commands = Table(title="the command line (whole commands, median)")
        for col in ("command", "seconds", "target"):
            commands.add_column(col, justify="left" if col == "command" else "right")
        for figure in report["command_line"].values():
            target = figure.get("target")
            commands.add_row(figure["command"], f"{figure['seconds']:.2f}",
                             "-" if target is None else f"< {target:.2f}")  # fmt: skip
        console.print(commands)
    skim = facility.get("delivery")
    if skim:
        delivered = Table(title="delivery: one skim through the service's API (its own time)")
        for col in ("figure", "value"):
            delivered.add_column(col, justify="left" if col == "figure" else "right")
        delivered.add_row(
            f"skim of {skim['events_read']:,} events in {skim['files']} file(s), "
            "request to Complete",
            f"{skim['seconds']:.2f} s",
        )
        delivered.add_row("events/s, read", _rate(skim["events_per_second"]))
        delivered.add_row("compressed MB/s, read", f"{skim['input_mb_per_second']:.0f}")
        delivered.add_row(
            f"uproot alone, same query and files, {skim['workers']} processes",
            f"{skim['uproot_seconds']:.2f} s",
        )
        delivered.add_row("the same request again (shared cache)",
                          f"{skim['cached_seconds']:.2f} s")  # fmt: skip
        console.print(delivered)
    wide = report.get("wide")
    if wide:
        print_wide(console, wide, workers)
    limit_libraries = sorted({r["zlib_library"] for r in report.get("runs", [])
                              if r["engine"] == "limit" and "zlib_library" in r})  # fmt: skip
    if facility.get("worker_zlib_library") and limit_libraries:
        console.print(
            f"ZLIB baskets decompressed with {facility['worker_zlib_library']} on casa's "
            f"workers, {', '.join(limit_libraries)} in the limit; plain coffea uses Python's "
            "zlib, as a user's script does"
        )

    per_query = Table(title="per query on the facility (warm cluster)")
    for col in (
        "query",
        "first histogram, warm cache (s)",
        "with warm columns (s)",
        "first chunk (s)",
        "peak MB/worker",
        "growth / chunk",
    ):
        per_query.add_column(col, justify="left" if col == "query" else "right")
    for query, q in report["queries"].items():
        per_query.add_row(
            query,
            _seconds(q["time_to_first_histogram_seconds"]),
            _seconds(q.get("time_to_first_histogram_columns_seconds")),
            _seconds(q["first_chunk_seconds"]),
            "-" if q["peak_worker_memory_mb"] is None else f"{q['peak_worker_memory_mb']:.0f}",
            _ratio((q.get("memory") or {}).get("growth_over_chunk")),
        )
    console.print(per_query)


def print_wide(console: Console, wide: dict[str, Any], workers: int) -> None:
    """The wide-file benchmark beside the 200 Gbps challenge's figures per worker."""
    table = Table(
        title=f"wide files: {wide['events']:,} events, {wide['branches']} branches "
        f"({wide['codec']}), {wide['branches_read']} read and materialised, {workers} worker(s)"
    )
    for col in ("engine", "seconds", "k events/s /worker", "compressed MB/s /worker",
                "decompressed MB/s", "x challenge rate"):  # fmt: skip
        table.add_column(col, justify="left" if col == "engine" else "right")
    for engine, e in wide["engines"].items():
        table.add_row(
            engine,
            f"{e['median_seconds']:.2f}",
            f"{e['events_per_second_per_worker'] / 1e3:.1f}",
            f"{e['compressed_mb_per_second_per_worker']:.1f}",
            f"{e['decompressed_mb_per_second']:.0f}",
            f"{e['challenge_rate_ratio']:.2f}",
        )
    challenge = wide["challenge"]
    table.add_row(
        "200 Gbps challenge (CMS NanoAOD via XCache)", "-",
        f"{challenge['events_per_second_per_worker'] / 1e3:.1f}",
        f"{challenge['compressed_mb_per_second_per_worker']:.1f}", "-", "1.00",
    )  # fmt: skip
    console.print(table)
    console.print(
        f"wide: casa warm at {wide['casa_over_limit']:.2f} of the decompression limit, "
        f"with warm columns {wide['columns_over_limit']:.2f}; histograms equal uproot's"
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_chart(path: Path, report: dict[str, Any]) -> None:
    """A PNG of events/s per engine per query (bars, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    queries = list(report["queries"])
    engines = [e for e in ENGINES if any(e in q["engines"] for q in report["queries"].values())]
    width = 0.8 / max(len(engines), 1)
    x = np.arange(len(queries))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(queries) + 2), 5.0))
    for i, engine in enumerate(engines):
        rates = [
            report["queries"][q]["engines"].get(engine, {}).get("events_per_second", 0.0)
            for q in queries
        ]
        ax.bar(x + (i - (len(engines) - 1) / 2) * width, rates, width, label=LABELS[engine])
    ax.set_xticks(x, queries)
    ax.set_yscale("log")
    ax.set_ylabel("events / s")
    options = report["options"]
    ax.set_title(
        f"{options['events']:,} events, {options['files']} file(s), {options['codec']}, "
        f"{options['workers']} worker(s)"
    )
    ax.legend(fontsize="small", ncols=min(len(engines), 3), loc="upper center",
              bbox_to_anchor=(0.5, -0.1))  # fmt: skip
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
