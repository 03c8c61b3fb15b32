"""``casa run`` with a user's own analysis: --arg, --schema (or the dataset's), and the
outputs of weighted and Int64 histograms, checked against uproot + numpy."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import uproot

from multi_module import expected, write_analysis

TREE = "ntuple"

ANALYSIS = '''
import hist
from coffea import processor


class WeightedPt(processor.ProcessorABC):
    """pT above a cut, weighted, and the jet multiplicity of the same events as Int64 counts."""

    def __init__(self, cut, label):
        self.cut = cut
        self.label = label

    def process(self, events):
        keep = events.pt > self.cut
        weighted = hist.Hist.new.Reg(25, 0, 250, name="pt").Weight()
        weighted.fill(pt=events.pt[keep], weight=events.weight[keep])
        njet = hist.Hist.new.Integer(0, 10, name="njet").Int64()
        njet.fill(njet=events.njet[keep])
        return {self.label: weighted, "njet": njet}
'''


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """A flat tree (no NanoAOD collections) and its analysis file."""
    d = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(8)
    n = 3000
    branches = {
        "pt": rng.exponential(50.0, n),
        "weight": rng.uniform(0.5, 2.0, n),
        "njet": rng.integers(0, 9, n).astype(np.int32),
    }
    with uproot.recreate(d / "flat.root") as f:  # a TTree (uproot writes a dict as an RNTuple)
        f.mktree(TREE, {k: v.dtype for k, v in branches.items()})
        f[TREE].extend(branches)
    (d / "weighted.py").write_text(ANALYSIS)
    return d


def test_arguments_schema_and_weighted_outputs(casa, flat, tmp_path):
    out = tmp_path / "out"
    r = casa("run", f"{flat / 'weighted.py'}:WeightedPt", "--arg", "cut=30.5", "--arg",
             "label=tight", "--schema", "BaseSchema", "--files", flat / "flat.root", "--tree",
             TREE, "--executor", "iterative", "--no-plots", "--out", out, check=True)  # fmt: skip
    raw = uproot.open(flat / "flat.root")[TREE].arrays(library="np")
    keep = raw["pt"] > 30.5
    w = raw["weight"][keep]
    summary = json.loads((out / "summary.json").read_text())
    tight = summary["histogram_stats"]["tight"]
    assert tight["storage"] == "Weight" and tight["entries_kind"] == "effective"
    assert np.isclose(tight["sum_of_weights"], w.sum())
    assert np.isclose(tight["entries"], w.sum() ** 2 / (w**2).sum())
    njet = summary["histogram_stats"]["njet"]
    assert njet["storage"] == "Int64" and njet["entries"] == int(keep.sum())
    assert summary["histograms_not_in_root_file"] == {}

    f = uproot.open(out / "histograms.root")
    edges = np.linspace(0, 250, 26)
    pt = raw["pt"][keep]
    inside = pt < 250
    expected, _ = np.histogram(pt[inside], edges, weights=w[inside])
    assert np.allclose(f["tight"].values(), expected)
    assert np.isclose(f["tight"].values(flow=True)[-1], w[~inside].sum())
    assert np.array_equal(f["njet"].values(), np.bincount(raw["njet"][keep], minlength=10))

    row = next(line for line in r.out.splitlines() if "tight" in line)
    assert f"{w.sum():,.2f}" in row and f"{w.sum() ** 2 / (w**2).sum():,.2f}*" in row
    assert "sum of weights" in r.out and "effective entries" in r.out
    njet_row = next(line for line in r.out.splitlines() if "njet" in line)
    assert f"{int(keep.sum()):,}" in njet_row and "Int64" in njet_row


def test_the_datasets_schema_is_the_default(casa, flat, tmp_path):
    casa("datasets", "add", "flat", flat / "flat.root", "--tree", TREE, "--schema",
         "BaseSchema", check=True)  # fmt: skip
    out = tmp_path / "out"
    casa("run", f"{flat / 'weighted.py'}:WeightedPt", "--arg", "cut=0", "--arg", "label=all",
         "--dataset", "flat", "--executor", "iterative", "--no-plots", "--out", out,
         check=True)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["histogram_stats"]["njet"]["entries"] == 3000
    # --schema wins over the dataset's: NanoAODSchema refuses a tree without NanoAOD's event IDs.
    r = casa("run", f"{flat / 'weighted.py'}:WeightedPt", "--arg", "cut=0", "--arg", "label=all",
             "--dataset", "flat", "--schema", "NanoAODSchema", "--executor", "iterative",
             "--no-plots", "--out", tmp_path / "nano")  # fmt: skip
    assert r.code == 5 and "missing event ID fields" in r.err
    assert "the tree lacks NanoAOD's event IDs (run, luminosityBlock, event)" in r.err
    assert "give --schema BaseSchema for a flat tree" in r.err


def test_bad_arguments_and_schemas_are_usage_errors(casa, flat, tmp_path):
    analysis = f"{flat / 'weighted.py'}:WeightedPt"
    common = ("--files", flat / "flat.root", "--tree", TREE, "--out", tmp_path / "o")
    r = casa("run", analysis, "--arg", "cut=1", "--arg", "lable=x", "--schema", "BaseSchema",
             *common)  # fmt: skip
    assert r.code == 2 and "Traceback" not in r.err
    assert "--arg lable: WeightedPt in" in r.err and "it takes cut, label" in r.err
    r = casa("run", analysis, "--arg", "cut=1", "--arg", "label=x", "--schema", "Flat", *common)
    assert r.code == 2 and "unknown schema 'Flat'" in r.err and "PHYSLITESchema" in r.err
    assert not (tmp_path / "o").exists()


def test_an_analysis_folder_too_big_for_workers_is_refused_before_any_starts(casa, flat, tmp_path):
    """A multi-module analysis beside a 60 MB file: local processes read the folder itself;
    Dask workers would need a copy, refused in one sentence before a cluster starts."""
    folder = tmp_path / "ana"
    proc = write_analysis(folder, "cli")
    with open(folder / "model.onnx", "wb") as f:
        f.truncate(60 * 1024 * 1024)  # sparse: costs no disk
    common = (f"{proc}:Scaled", "--arg", "column=pt", "--schema", "BaseSchema", "--files",
              flat / "flat.root", "--tree", TREE, "--no-plots")  # fmt: skip
    pt = uproot.open(flat / "flat.root")[TREE]["pt"].array(library="np")

    casa("run", *common, "--executor", "futures", "--workers", "2", "--out", tmp_path / "f",
         check=True)  # fmt: skip
    result = pickle.loads((tmp_path / "f" / "result.pkl").read_bytes())
    assert np.array_equal(result["x"].values(), expected(pt))
    assert set(result["package_at"]) == {str(folder / "helpers_cli")}

    r = casa("run", *common, "--executor", "dask", "--workers", "1", "--out", tmp_path / "d")
    err = " ".join(r.err.split())
    assert r.code == 5, r.err
    assert f"the analysis folder {folder} holds 60.0 MB of files for the workers" in err
    assert "the biggest is model.onnx, 60.0 MB" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()

    (folder / "model.onnx").unlink()
    casa("run", *common, "--executor", "dask", "--workers", "1", "--out", tmp_path / "d",
         check=True)  # fmt: skip
    result = pickle.loads((tmp_path / "d" / "result.pkl").read_bytes())
    assert np.array_equal(result["x"].values(), expected(pt))
    (package_at,) = result["package_at"]
    assert "casa-analysis-" in package_at and not package_at.startswith(str(folder))
