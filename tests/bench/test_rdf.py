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

import awkward as ak
import numpy as np
import pytest
import uproot

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
from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.errors import DataError, UsageError
from casa.generate.generator import generate_dataset

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


def collection(rows: list[list[dict]]) -> ak.Array:
    """Per-event lists of objects as float32 kinematics (and int32 charge)."""
    names = sorted({name for event in rows for obj in event for name in obj})
    columns = {}
    for name in names:
        dtype = np.int32 if name == "charge" else np.float32
        values = ak.Array([[obj[name] for obj in event] for event in rows])
        columns[name] = ak.values_astype(values, dtype)
    return ak.zip(columns)


def lepton(pt: float, eta: float, phi: float, charge: int, mass: float = 0.1) -> dict:
    """One muon or electron."""
    return {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "charge": charge}


def jet(pt: float, eta: float, phi: float, btag: float, mass: float = 5.0) -> dict:
    """One jet."""
    return {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btag": btag}


@pytest.fixture(scope="module")
def ties_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Events made to hit exact ties and bin edges, where the first candidate must win.

    1. Trijets (0, 1, 2) and (0, 1, 3) have exactly the same mass, closest to 172.5 GeV;
       jets 2 and 3 differ only in b-tag (0.3 and 0.9): the first trijet gives 0.3.
    2. A muon pair is the only SFOS pair; the two electrons left have the same pT, different
       phi: the first one gives mT.
    3. The same with a muon and an electron left over (the muon forms a pair farther from
       the Z): the muon comes first.
    4. MET and jet pTs exactly on bin edges (58, 114, 116 GeV), where hist and ROOT's
       FindBin disagree; a lone 58 GeV jet gives sum_pt = 58.
    """
    z_muons = [lepton(50, 0.0, 0.0, 1), lepton(40, 0.3, 2.5, -1)]  # m = 86 GeV
    muons = [[], z_muons, [*z_muons, lepton(30, 0.0, 1.0, 1)], [], []]
    electrons = [[], [lepton(30, 0.0, 1.0, 1), lepton(30, 0.1, -2.0, 1)], [lepton(30, 0, -2, 1)]]
    electrons += [[], []]
    tied_trijets = [jet(50, 0.0, 0.0, 0.1), jet(60, 0.5, 2.0, 0.2), jet(50, -0.5, -2.0, 0.3)]
    tied_trijets.append(jet(50, -0.5, -2.0, 0.9))
    edges = [jet(116, 0.2, 0.0, 0.5), jet(114, 0.2, 2.0, 0.5), jet(58, 0.2, -2.0, 0.5)]
    jets = [tied_trijets, [], [], edges, [jet(58, 0.0, 0.0, 0.5)]]
    n = len(jets)
    data = {
        "run": np.ones(n, np.uint32),
        "luminosityBlock": np.ones(n, np.uint32),
        "event": np.arange(1, n + 1, dtype=np.uint64),
        "MET_pt": np.array([20, 50, 50, 58, 116], np.float32),
        "MET_phi": np.array([0, 0, 0, 1, 1], np.float32),
        "Muon": collection(muons),
        "Electron": collection(electrons),
        "Jet": collection(jets),
    }
    types = {k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in data.items()}
    path = tmp_path_factory.mktemp("bench-ties") / "ties.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", types).extend(data)
    return str(path)


def test_ties_and_bin_edges_as_casa(ties_file):
    """On exact ties the first candidate wins, and edge values fill hist's bins, in both."""
    require_root()
    info = [inspect_root_file(Path(ties_file), "Events")]
    results = run_rdf_queries_subprocess(QUERIES, [ties_file], threads=1)
    for result in results:
        output = run_analysis(load_processor(result.query), "t", info, IterativeBackend()).output
        for name, histogram in output.items():
            np.testing.assert_array_equal(
                result.histograms[name], histogram.values(flow=True), err_msg=result.query
            )
    by_query = {r.query: r.histograms for r in results}
    # The first of the tied trijets (b-tag 0.3, bin [0.30, 0.31)) was chosen, not 0.9.
    assert by_query["adl6"]["trijet_btag"][1 + 30] == 1
    assert by_query["adl6"]["trijet_btag"].sum() == 2
    assert by_query["adl8"]["mt"].sum() == 2
    # 58 GeV falls into hist's [56, 58) bin (flow index 29), where ROOT's FindBin would not.
    assert by_query["adl7"]["sum_pt"][29] == 1
    assert by_query["adl1"]["met"][29] == 1


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
