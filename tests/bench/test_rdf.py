"""RDataFrame's versions of the built-in analyses fill exactly the casa processors' histograms.

ROOT runs only in child processes (``python -m casa.bench.rdf``), as ``casa bench`` runs it:
ROOT's thread pool can be sized once per process, and importing ROOT into the test process
would install its signal handlers there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from casa.analysis.processors import BUILTIN_PROCESSORS
from casa.analysis.processors.objects import BTAG_FIELDS, MET_COLLECTIONS
from casa.analysis.registry import load_processor
from casa.analysis.runner import run_analysis
from casa.bench import rdf
from casa.bench.rdf import (
    HISTOGRAMS,
    QUERIES,
    RDFResult,
    rdf_available,
    rdf_url,
    run_rdf,
    run_rdf_queries_subprocess,
    run_rdf_subprocess,
)
from casa.cluster.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.data.generator import generate_dataset
from casa.errors import DataError, UsageError

pytestmark = pytest.mark.filterwarnings(
    "ignore:Missing cross-reference:RuntimeWarning",
)

EVENTS = 20_000


def require_root() -> None:
    """Skip without ROOT, unless on CI (CI is set), where ROOT must be installed."""
    if rdf_available():
        return
    if os.environ.get("CI"):
        pytest.fail("ROOT cannot be imported on CI: install it with pip install 'casa[bench]'")
    pytest.skip("ROOT is not installed: pip install 'casa[bench]' (make test installs it)")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A generated dataset of 20,000 events in 2 files."""
    out = tmp_path_factory.mktemp("bench-rdf")
    generate_dataset(out, EVENTS, 2, seed=5, workers=1)
    return [str(p) for p in sorted(out.glob("*.root"))]


@pytest.fixture(scope="module")
def casa_outputs(files: list[str]) -> dict[str, dict]:
    """Each built-in processor's histograms on the dataset, run by casa's runner."""
    infos = [inspect_root_file(Path(f), "Events") for f in files]
    return {
        q: run_analysis(load_processor(q), "t", infos, IterativeBackend(), chunksize=7_000).output
        for q in QUERIES
    }


@pytest.fixture(scope="module")
def rdf_results(files: list[str]) -> dict[str, RDFResult]:
    """Every query run by RDataFrame on 2 threads, one after the other in one child process."""
    require_root()
    return {r.query: r for r in run_rdf_queries_subprocess(QUERIES, files, threads=2)}


def test_queries_are_the_builtin_analyses_with_their_binning(casa_outputs):
    """RDataFrame runs every built-in analysis, with the processors' histograms and bins."""
    assert set(QUERIES) == set(BUILTIN_PROCESSORS)
    for query, output in casa_outputs.items():
        assert set(output) == set(HISTOGRAMS[query])
        for name, histogram in output.items():
            bins, lo, hi = HISTOGRAMS[query][name]
            edges = histogram.axes[0].edges
            assert (len(edges) - 1, edges[0], edges[-1]) == (bins, lo, hi)
    assert tuple(f"Jet_{f}" for f in BTAG_FIELDS) == rdf.BTAG_BRANCHES
    assert tuple(MET_COLLECTIONS) == rdf.MET_COLLECTIONS


@pytest.mark.parametrize("query", QUERIES)
def test_rdf_histograms_equal_casa_processors(query, rdf_results, casa_outputs):
    """Every bin, under- and overflow included, is the same count as the casa processor's."""
    result = rdf_results[query]
    assert result.events == EVENTS
    assert result.threads == 2
    assert set(result.histograms) == set(casa_outputs[query])
    for name, histogram in casa_outputs[query].items():
        want = histogram.values(flow=True)
        got = result.histograms[name]
        assert got.shape == want.shape
        differing = np.flatnonzero(got != want)
        assert differing.size == 0, (
            f"{query}/{name}: flow-indexed bins {differing.tolist()} hold "
            f"{got[differing].tolist()} in RDataFrame, {want[differing].tolist()} in casa"
        )
        assert want.sum() > 0, f"{query}/{name} is empty: the test data prove nothing"
    assert result.wall_seconds > 0
    assert 0 < result.jit_seconds < result.wall_seconds
    assert 0 < result.loop_seconds < result.wall_seconds


def test_bin_edges_follow_hist(rdf_results, casa_outputs):
    """Values exactly on a bin edge fill hist's bin: the data do hold such values."""
    import uproot

    met = np.concatenate(
        [uproot.open(f)["Events/MET_pt"].array(library="np") for f in rdf_results["adl1"].files]
    )
    # hist puts 58.0 into [56, 58) (58 / 200 * 100 rounds below 29), ROOT's FindBin into [58, 60).
    assert (met == 58.0).any() or (met == 114.0).any() or (met == 116.0).any()
    np.testing.assert_array_equal(
        rdf_results["adl1"].histograms["met"], casa_outputs["adl1"]["met"].values(flow=True)
    )


def test_run_rdf_subprocess_one_thread_is_cold_and_equal(files, rdf_results):
    """One query in its own process on one thread gives the same counts as on two threads."""
    require_root()
    result = run_rdf_subprocess("adl3", files, threads=1)
    assert result.query == "adl3" and result.threads == 1
    assert result.events == EVENTS
    np.testing.assert_array_equal(
        result.histograms["jet_pt"], rdf_results["adl3"].histograms["jet_pt"]
    )
    assert result.jit_seconds > 0


def test_thread_count_cannot_change_within_a_process():
    """Once ROOT's pool has 2 threads, asking for 3 in the same process is a UsageError."""
    require_root()
    script = textwrap.dedent(
        """
        from casa.bench.rdf import _import_root, _set_threads
        from casa.errors import UsageError
        ROOT = _import_root()
        _set_threads(ROOT, 2)
        try:
            _set_threads(ROOT, 3)
        except UsageError as e:
            print("refused:", e)
        _set_threads(ROOT, 1)
        print("implicit MT after 1 thread:", bool(ROOT.IsImplicitMTEnabled()))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "refused: ROOT already runs a thread pool of 2 threads" in proc.stdout
    assert "run_rdf_subprocess" in proc.stdout
    assert "implicit MT after 1 thread: False" in proc.stdout


def test_child_errors_come_back_as_casa_errors(tmp_path):
    """A missing file is a DataError, raised in the parent from the child's report."""
    require_root()
    with pytest.raises(DataError, match="no such file"):
        run_rdf_subprocess("adl1", [str(tmp_path / "missing.root")], threads=1)


def test_bad_arguments_are_usage_errors(files):
    """An unknown query, no files or no query are refused before any process starts."""
    with pytest.raises(UsageError, match="unknown query 'adl9'"):
        run_rdf_subprocess("adl9", files, threads=1)
    with pytest.raises(UsageError, match="at least one file"):
        run_rdf_subprocess("adl1", [], threads=1)
    with pytest.raises(UsageError, match="at least one query"):
        run_rdf_queries_subprocess([], files, threads=1)


def test_missing_root_says_how_to_install(monkeypatch, files):
    """Without ROOT, run_rdf names the package to install."""
    monkeypatch.setitem(sys.modules, "ROOT", None)  # makes ``import ROOT`` fail
    monkeypatch.setenv("EXTRA_CLING_ARGS", rdf.EXTRA_CLING_ARGS)  # run_rdf sets it if unset
    assert not rdf_available()
    with pytest.raises(UsageError, match=r"ROOT is not installed: pip install 'casa\[bench\]'"):
        run_rdf("adl1", files, threads=1)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("root://127.0.0.1:1094//store/a.root", "root://127.0.0.2:1094//store/a.root"),
        ("root://localhost:1094//store/a.root", "root://127.0.0.2:1094//store/a.root"),
        ("roots://LOCALHOST:9/x.root?authz=t", "roots://127.0.0.2:9/x.root?authz=t"),
        ("root://user@127.0.0.1//x.root", "root://user@127.0.0.2//x.root"),
        ("root://127.0.0.10:1094//x.root", "root://127.0.0.10:1094//x.root"),
        ("root://eos.cern.ch//x.root", "root://eos.cern.ch//x.root"),
        ("/data/localhost/x.root", "/data/localhost/x.root"),
    ],
)
def test_rdf_url_moves_loopback_hosts(url, expected):
    """127.0.0.1 and localhost root:// hosts become 127.0.0.2; everything else is unchanged."""
    assert rdf_url(url) == expected
