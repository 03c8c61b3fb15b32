"""histograms.root and summary.json for histograms of every hist storage.

Expected figures are computed from the filled values with numpy, never from hist.
"""

from __future__ import annotations

import json

import hist
import numpy as np
import pytest
import uproot

from casa.analysis.outputs import write_outputs
from casa.analysis.runner import RunResult

RNG = np.random.default_rng(11)
X = RNG.normal(5.0, 2.0, 4000)
W = RNG.uniform(0.1, 3.0, 4000)
Y = RNG.uniform(0.0, 4.0, 4000)
EDGES = np.linspace(0, 10, 21)


def _histograms() -> dict:
    ax = hist.axis.Regular(20, 0, 10, name="x")
    return {
        "counts": hist.Hist(ax, storage=hist.storage.Int64()).fill(X),
        "atomic": hist.Hist(ax, storage=hist.storage.AtomicInt64()).fill(X),
        "plain": hist.Hist(ax, storage=hist.storage.Double()).fill(X),
        "weighted": hist.Hist(ax, storage=hist.storage.Weight()).fill(X, weight=W),
        "profile": hist.Hist(ax, storage=hist.storage.Mean()).fill(X, sample=Y),
        "weighted_profile": hist.Hist(ax, storage=hist.storage.WeightedMean()).fill(
            X, sample=Y, weight=W
        ),
        "nested": {
            "counts_2d": hist.Hist(
                ax, hist.axis.Integer(0, 4, name="y"), storage=hist.storage.Int64()
            ).fill(X, Y.astype(int)),
        },  # fmt: skip
        "profile_2d": hist.Hist(ax, hist.axis.Regular(4, 0, 4), storage=hist.storage.Mean()).fill(
            X, Y, sample=Y
        ),
        "four_axes": hist.Hist(*(hist.axis.Regular(2, 0, 10) for _ in range(4))).fill(X, X, X, X),
        "multiplicity": hist.Hist(hist.axis.Integer(0, 4), storage=hist.storage.Int64()).fill(
            Y.astype(int)
        ),
        "flavour": hist.Hist(hist.axis.StrCategory(["b", "c", "light"])).fill(
            ["light"] * 5 + ["b"] * 2
        ),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "out"
    result = RunResult(
        output=_histograms(), events_per_file={"f.root": 4000}, chunks=1, chunks_repeated=[],
        skipped=[], wall_seconds=1.0, bytes_read=1, executor="iterative", workers=1,
    )  # fmt: skip
    summary = write_outputs(out, result, "test", "files", plots=False)
    assert json.loads((out / "summary.json").read_text()) == summary
    return out, summary


def _counts(x=X, weights=None):
    """Per-bin sums with flow bins, as hist and ROOT bin (upper edge exclusive)."""
    index = np.searchsorted(EDGES, x, side="right")  # 0 underflow, 21 overflow
    return np.bincount(index, weights=weights, minlength=len(EDGES) + 1)


def test_integer_histograms_are_written_as_doubles_with_every_count(written):
    out, summary = written
    f = uproot.open(out / "histograms.root")
    for name in ("counts", "atomic"):
        h = f[name]
        assert h.classname == "TH1D"
        assert np.array_equal(h.values(flow=True), _counts())
        stats = summary["histogram_stats"][name]
        assert stats["storage"] in ("Int64", "AtomicInt64")
        assert stats["entries"] == len(X) and stats["entries_kind"] == "counted"
        assert stats["sum_of_weights"] is None
    two_d = f["nested/counts_2d"]
    assert two_d.classname == "TH2D" and two_d.values(flow=True).sum() == len(X)
    assert summary["histogram_stats"]["nested/counts_2d"]["entries"] == len(X)


def test_weighted_histograms_report_sum_of_weights_and_entries_apart(written):
    out, summary = written
    stats = summary["histogram_stats"]["weighted"]
    assert stats["storage"] == "Weight"
    assert np.isclose(stats["sum_of_weights"], W.sum())
    assert np.isclose(stats["sum_of_weights_squared"], (W**2).sum())
    assert stats["entries_kind"] == "effective"
    assert np.isclose(stats["entries"], W.sum() ** 2 / (W**2).sum())
    assert not np.isclose(stats["entries"], stats["sum_of_weights"])
    inside = (X >= 0) & (X < 10)
    assert np.isclose(stats["mean"], np.average(((EDGES[:-1] + EDGES[1:]) / 2)[
        np.searchsorted(EDGES, X[inside], side="right") - 1], weights=W[inside]))  # fmt: skip
    h = uproot.open(out / "histograms.root")["weighted"]
    assert h.classname == "TH1D"
    assert np.allclose(h.values(flow=True), _counts(weights=W))
    assert np.allclose(h.variances(flow=True), _counts(weights=W**2))
    plain = summary["histogram_stats"]["plain"]
    assert plain["entries"] == len(X) and plain["sum_of_weights"] is None


def test_profiles_of_one_axis_are_tprofiles(written):
    out, summary = written
    f = uproot.open(out / "histograms.root")
    assert f["profile"].classname == "TProfile"
    n = _counts()
    sum_y = _counts(weights=Y)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(n > 0, sum_y / n, 0)
    assert np.allclose(f["profile"].values(flow=True), expected)
    assert summary["histogram_stats"]["profile"]["entries"] == len(X)
    weighted = summary["histogram_stats"]["weighted_profile"]
    assert np.isclose(weighted["sum_of_weights"], W.sum())
    assert np.isclose(weighted["entries"], W.sum() ** 2 / (W**2).sum())
    assert f["weighted_profile"].classname == "TProfile"


def test_what_cannot_be_written_is_named_with_the_reason(written):
    out, summary = written
    missing = summary["histograms_not_in_root_file"]
    assert set(missing) == {"profile_2d", "four_axes"}
    assert "profile" in missing["profile_2d"] and "one axis only" in missing["profile_2d"]
    assert "1 to 3 axes and it has 4" in missing["four_axes"]
    keys = {k.split(";")[0] for k in uproot.open(out / "histograms.root").keys()}
    assert "profile_2d" not in keys and "four_axes" not in keys
    # Everything else is in the file, and every histogram has its figures in summary.json.
    assert {"counts", "weighted", "profile", "flavour", "nested/counts_2d"} <= keys
    assert set(summary["histogram_stats"]) == set(summary["histograms"])
    assert summary["histogram_stats"]["flavour"]["peak_bin"] == "light"
    assert summary["histogram_stats"]["flavour"]["mean"] is None
    multiplicity = summary["histogram_stats"]["multiplicity"]
    counts = np.bincount(Y.astype(int), minlength=4)
    assert multiplicity["peak_bin"] == int(np.argmax(counts))
    assert np.isclose(multiplicity["mean"], np.average(np.arange(4), weights=counts))
