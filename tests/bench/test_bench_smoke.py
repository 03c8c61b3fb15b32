"""``casa bench``: the whole bench on a private facility, and the pieces it is made of.

The smoke run starts a real facility (issuer, XRootD origin and cache, Dask Gateway, hub)
on free ports in its own state directory, and runs every engine. Nothing here asserts a
time: only that every measurement exists, is positive, and that every engine filled the
same histograms.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from casa.bench.engines import ENGINES, Measurement, check_equal
from casa.bench.report import summarize
from casa.bench.wan import WanSpec, choose_subnet
from casa.cli import build_parser
from casa.errors import AnalysisError, UsageError
from casa.generate.generator import manifest_matches

SMOKE_QUERIES = {"dimuon", "adl1"}


def require_xrootd() -> None:
    """Skip without the XRootD server, unless on CI (CI is set), where it must be installed."""
    if shutil.which("xrootd") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("xrootd is not installed on CI: make test installs Debian's xrootd-server")
    pytest.skip("xrootd is not installed: make test installs Debian's xrootd-server")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """``casa bench --smoke`` run once as a command: its folder, bench.json and output."""
    require_xrootd()
    out = tmp_path_factory.mktemp("bench-smoke") / "out"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "casa", "bench", "--smoke", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"casa bench --smoke failed:\n{proc.stdout}\n{proc.stderr}"
    return out, json.loads((out / "bench.json").read_text()), proc.stdout


def test_smoke_measures_every_engine_on_every_query(smoke):
    """Each query has each engine, with positive events/s, and equal histograms throughout."""
    _, report, _ = smoke
    assert set(report["queries"]) == SMOKE_QUERIES
    for query, summary in report["queries"].items():
        assert summary["events"] == 20_000
        assert set(summary["engines"]) == set(ENGINES), query
        for engine, figures in summary["engines"].items():
            assert figures["events_per_second"] > 0, (query, engine)
            assert figures["median_seconds"] > 0, (query, engine)
        assert summary["histograms_equal"] == {
            "casa-warm": True,
            "casa-columns": True,
            "coffea": True,
            "coffea-warm": True,
            "rdf": True,
            "rdf-warm": True,
        }
        assert summary["decompressed_bytes"] > 0
        assert summary["engines"]["limit"]["decompressed_mb_per_second"] > 0
        assert set(summary["ratios"]) == {
            "casa_over_rdf_warm",
            "casa_over_coffea_warm",
            "casa_over_limit",
            "columns_over_rdf_warm",
            "columns_over_coffea_warm",
            "columns_over_limit",
            "casa_over_rdf_cold",
            "casa_over_coffea_cold",
            "cold_over_warm",
        }
        engines = summary["engines"]
        ratio = engines["casa-warm"]["events_per_second"] / engines["rdf-warm"]["events_per_second"]
        assert summary["ratios"]["casa_over_rdf_warm"] == pytest.approx(ratio)
        assert summary["time_to_first_histogram_seconds"] > 0
        assert summary["peak_worker_memory_mb"] > 0
        # Memory: a worker's peak against its base before the run and one chunk's columns.
        memory = summary["memory"]
        assert 0 < memory["base_mb"] <= summary["peak_worker_memory_mb"]
        assert memory["chunk_decompressed_mb"] > 0 and memory["growth_over_chunk"] >= 0
    assert report["checks"]["histograms_equal"] is True
    assert report["checks"]["bins_compared"] > 0
    pairs = sorted((r["query"], r["engine"], r["repetition"]) for r in report["runs"])
    assert pairs == sorted((q, e, 1) for q in SMOKE_QUERIES for e in ENGINES)
    assert set(report["geometric_means"]) == set(summary["ratios"])


def test_smoke_warm_anchors_are_warm(smoke):
    """RDataFrame's second loop skips its helpers' compilation (less wall time than the
    cold one beyond the loop); coffea's warm session skips preprocessing (no
    preprocess_seconds) after an untimed first run of its pool."""
    _, report, stdout = smoke
    runs = {(r["query"], r["engine"]): r for r in report["runs"]}
    for query in SMOKE_QUERIES:
        cold, warm = runs[query, "rdf"], runs[query, "rdf-warm"]
        assert warm["jit_seconds"] < cold["jit_seconds"], (query, cold, warm)
        assert "preprocess_seconds" in runs[query, "coffea"]
        assert "preprocess_seconds" not in runs[query, "coffea-warm"]
    assert report["facility"]["coffea_warm_up_seconds"] > 0
    assert "casa/RDF warm" in stdout and "geo. mean" in stdout


def test_smoke_cold_runs_start_from_an_empty_cache(smoke):
    """Before each casa-cold run the cache's disk is empty; the run fills it."""
    _, report, _ = smoke
    cold = [r for r in report["runs"] if r["engine"] == "casa-cold"]
    assert len(cold) == len(SMOKE_QUERIES)
    for run in cold:
        assert run["cache_bytes_before"] == 0
        assert run["cache_bytes_after"] > 0


def test_smoke_column_cache_only_where_said(smoke):
    """casa-warm neither reads nor fills the column cache; casa-columns reads what casa-cold left."""
    _, report, _ = smoke
    by_engine = {}
    for run in report["runs"]:
        by_engine.setdefault(run["engine"], []).append(run)
    for run in by_engine["casa-cold"]:
        assert run["column_cache"] is True and run["column_cache_misses"] > 0
    for run in by_engine["casa-warm"]:
        assert run["column_cache"] is False
        assert run["column_cache_hits"] == run["column_cache_misses"] == 0
    for run in by_engine["casa-columns"]:
        assert run["column_cache"] is True
        assert run["column_cache_hits"] > 0 and run["column_cache_misses"] == 0


def test_smoke_records_the_facility_machine_and_chart(smoke):
    """Facility figures, machine and versions are recorded; the chart is a PNG; all is stopped."""
    out, report, stdout = smoke
    facility = report["facility"]
    assert facility["up_seconds"] > 0
    assert set(facility["up_report"]) >= {"issuer", "origin", "cache", "gateway"}
    assert facility["new_cluster_seconds"] > 0
    assert facility["scale_seconds"] is None  # one worker: nothing to scale
    assert facility["warm_up_seconds"] > 0
    # Workers and the limit decompress ZLIB with ISA-L (casa.data.codecs), and say so.
    assert facility["worker_zlib_library"] == "isal"
    limits = [r for r in report["runs"] if r["engine"] == "limit"]
    assert limits and all(r["zlib_library"] == "isal" for r in limits)
    assert "isal on casa's workers, isal in the limit" in " ".join(stdout.split())
    assert not Path(facility["home"]).exists(), "the private facility was left behind"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["memory_gb"] > 0
    assert machine["versions"]["coffea"] and machine["versions"]["ROOT"]
    assert machine["versions"]["xrootd"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "data" / "manifest.json").is_file()
    assert "events/s" in stdout and "adl1" in stdout
    # Whole commands as a user types them: a usage error, and 'casa run' on the warm
    # cluster, which it reuses (not one it starts), with its first line on screen.
    figures = report["command_line"]
    assert {"usage_error_seconds", "warm_run_seconds", "first_output_seconds"} <= set(figures)
    warm, first = figures["warm_run_seconds"], figures["first_output_seconds"]
    assert warm["reused_the_cluster"], warm
    assert 0 < warm["reported_seconds"] < warm["seconds"] and warm["target"] > 0
    assert 0 < first["seconds"] < warm["seconds"] and first["target"] == 0.5
    assert "casa run" in " ".join(stdout.split()) and "warm cluster" in stdout
    # The delivery service: a skim as uproot makes it, then the same from the shared cache.
    skim = facility["delivery"]
    assert skim["seconds"] > 0 and skim["cached_seconds"] > 0 and skim["uproot_seconds"] > 0
    assert skim["events_read"] == 20_000 and 0 < skim["events_kept"] < 20_000
    assert (skim["served_from_cache"], skim["transformed_when_cached"]) == (skim["files"], 0)
    assert "the same request again (shared cache)" in stdout


def test_smoke_measures_the_wide_files(smoke):
    """The wide-file benchmark: nanoaod-wide files (zstd), a quarter of their branches read
    on the facility with and without the column cache, equal to uproot's counts, beside the
    decompression limit and the 200 Gbps challenge's figures per worker."""
    _, report, stdout = smoke
    wide = report["wide"]
    assert wide["events"] == 5_000 and wide["codec"].startswith("zstd")
    assert wide["branches"] > 1000
    assert 0.2 < wide["branches_read"] / wide["branches"] < 0.3
    assert wide["compressed_bytes_read"] > 0
    assert wide["decompressed_bytes_read"] > wide["compressed_bytes_read"]
    assert set(wide["engines"]) == {"casa-warm", "casa-columns", "limit"}
    for engine, figures in wide["engines"].items():
        assert figures["events_per_second_per_worker"] > 0, engine
        assert figures["compressed_mb_per_second_per_worker"] > 0, engine
    assert wide["histograms_equal_uproot"] is True
    assert wide["challenge"]["events_per_second_per_worker"] == 30_700
    runs = {r["engine"]: r for r in wide["runs"]}
    assert runs["casa-warm"]["column_cache_hits"] == 0
    assert runs["casa-columns"]["column_cache_hits"] > 0
    assert "200 Gbps challenge" in stdout and "wide files" in stdout


def test_bench_command_options():
    """--smoke fills what was not given; given options win; a bad --wan is a usage error."""
    from casa.cli.bench import options_from

    parser = build_parser()
    args = parser.parse_args(["bench", "--smoke", "--out", "x", "--queries", "adl5"])
    options = options_from(args)
    assert (options.events, options.files, options.workers, options.repeat) == (20_000, 1, 1, 1)
    assert options.wide_events == 5_000
    assert options.queries == ("adl5",)
    full = options_from(parser.parse_args(["bench", "--wan", "20,100"]))
    assert (full.events, full.files, full.workers, full.repeat) == (2_000_000, 4, 2, 3)
    assert len(full.queries) == 9 and full.wan == WanSpec(20.0, 100.0)
    assert (full.wide_events, full.wide_files) == (200_000, 2)
    none = options_from(parser.parse_args(["bench", "--smoke", "--wide-events", "0"]))
    assert none.wide_events == 0
    with pytest.raises(UsageError, match="RTT_MS,RATE_MBIT"):
        options_from(parser.parse_args(["bench", "--wan", "fast"]))
    bad = options_from(parser.parse_args(["bench", "--queries", "adl1,adl9"]))
    with pytest.raises(UsageError, match="adl9"):
        bad.validate()


def test_a_differing_histogram_names_query_and_histogram():
    """One differing bin stops the bench with an AnalysisError naming query and histogram."""
    reference = {"met": np.array([0.0, 3.0, 4.0, 0.0])}
    assert check_equal("adl1", reference, {"met": reference["met"].copy()}, "rdf") == 4
    with pytest.raises(AnalysisError, match=r"adl1: histogram 'met' differs between rdf"):
        check_equal("adl1", reference, {"met": np.array([0.0, 3.0, 5.0, 0.0])}, "rdf")
    with pytest.raises(AnalysisError, match="adl1: coffea filled the histograms"):
        check_equal("adl1", reference, {"mass": reference["met"]}, "coffea")


def test_summary_takes_medians_and_ratios():
    """Medians over repetitions; ratios of events/s; MB/s from the limit's decompressed bytes;
    geometric means of each ratio over the queries."""
    from casa.bench.report import geometric_means

    memory = {"peak_worker_memory_mb": {"w": 100.0}, "first_chunk_seconds": 0.5}
    runs = []
    for query, slow in (("adl1", 1.0), ("adl2", 4.0)):
        for rep, scale in enumerate((1.0, 3.0, 2.0), start=1):
            runs += [
                Measurement("casa-cold", query, rep, 1000, 4.0 * scale, dict(memory)),
                Measurement("casa-warm", query, rep, 1000, 2.0 * scale, dict(memory)),
                Measurement("coffea", query, rep, 1000, 8.0 * scale),
                Measurement("coffea-warm", query, rep, 1000, 4.0 * scale * slow),
                Measurement("rdf", query, rep, 1000, 1.0 * scale),
                Measurement("rdf-warm", query, rep, 1000, 0.5 * scale * slow),
                Measurement("limit", query, rep, 1000, 0.5 * scale, {"uncompressed_bytes": 2e6}),
            ]
    queries = summarize(runs, workers=2)
    q = queries["adl1"]
    assert q["engines"]["casa-warm"]["median_seconds"] == 4.0
    assert q["engines"]["casa-warm"]["events_per_second"] == 250.0
    assert q["engines"]["casa-warm"]["events_per_second_per_core"] == 125.0
    assert q["engines"]["limit"]["decompressed_mb_per_second"] == 2.0
    assert q["ratios"] == {
        "casa_over_rdf_warm": 0.25,
        "casa_over_coffea_warm": 2.0,
        "casa_over_limit": 0.25,
        "casa_over_rdf_cold": 0.5,
        "casa_over_coffea_cold": 4.0,
        "cold_over_warm": 0.5,
    }
    assert q["time_to_first_histogram_seconds"] == 4.0
    assert q["peak_worker_memory_mb"] == 100.0
    means = geometric_means(queries)
    assert means["casa_over_rdf_warm"] == pytest.approx(0.5)  # sqrt(0.25 * 1.0)
    assert means["casa_over_coffea_warm"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert means["cold_over_warm"] == pytest.approx(0.5)


def test_wan_subnet_avoids_the_hosts_networks():
    """The link's /30 overlaps no network the host uses."""
    used = [ipaddress.ip_network("10.253.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]
    subnet = choose_subnet(used, salt=0)
    assert subnet.prefixlen == 30 and not any(subnet.overlaps(u) for u in used)
    assert subnet.subnet_of(ipaddress.ip_network("10.253.0.0/16"))


def test_manifest_must_match_to_be_reused(tmp_path):
    """A dataset is reused only when events, files, codec and seed all match."""
    (tmp_path / "events_0000.root").write_bytes(b"root")
    manifest = {"events": 10, "codec": "zlib:1", "seed": 3, "files": [{"name": "events_0000.root"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert manifest_matches(tmp_path, 10, 1, 3, "zlib:1")
    assert not manifest_matches(tmp_path, 10, 1, 3, "lz4:4")
    assert not manifest_matches(tmp_path, 11, 1, 3, "zlib:1")
    assert not manifest_matches(tmp_path, 10, 1, 4, "zlib:1")
    (tmp_path / "events_0000.root").unlink()
    assert not manifest_matches(tmp_path, 10, 1, 3, "zlib:1")
