"""``casa.run()`` in a notebook: a processor instance, a callable processor, the schema and
tree given or taken from the dataset, on a Dask client; checked with uproot + numpy."""

from __future__ import annotations

import json

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from coffea import processor

import casa
from casa.errors import UsageError


class SumAbove(processor.ProcessorABC):
    """The sum of ``x`` above a cut, and its histogram, with the dataset's metadata."""

    def __init__(self, cut: float):
        self.cut = cut

    def process(self, events):
        x = events.x[events.x > self.cut]
        h = hist.Hist.new.Reg(10, 0, 10, name="x").Double().fill(x)
        return {"sum": float(ak.sum(x)), "x": h, "process": {events.metadata["process"]}}

    def postprocess(self, accumulator):
        return accumulator


def count_rows(events):
    """A callable processor."""
    return {"rows": len(events)}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """A catalog export as the hub gives a notebook: two flat files, their tree 'flat'."""
    rng = np.random.default_rng(3)
    files = {}
    for i, n in enumerate((400, 250)):
        path = tmp_path / f"flat_{i}.root"
        with uproot.recreate(path) as f:  # TTrees (uproot writes a dict as an RNTuple)
            for tree, x in (("flat", rng.uniform(0, 10, n)), ("other", np.full(n // 5, 9.5))):
                f.mktree(tree, {"x": x.dtype})
                f[tree].extend({"x": x})
        files[str(path)] = {"object_path": "flat", "num_entries": n}
    export = {"flat": {"files": files, "metadata": {"process": "signal"}, "schema": "BaseSchema"}}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(export))
    monkeypatch.setenv("CASA_CATALOG", str(path))
    return files


def test_run_takes_an_instance_and_the_datasets_schema(client, catalog):
    out = casa.run(SumAbove(4.0), "flat", client, chunksize=100)
    x = np.concatenate([uproot.open(p)["flat"]["x"].array(library="np") for p in catalog])
    assert np.isclose(out["sum"], x[x > 4.0].sum())
    expected, _ = np.histogram(x[x > 4.0], np.linspace(0, 10, 11))
    assert np.array_equal(out["x"].values(), expected)
    assert out["process"] == {"signal"}


def test_run_takes_a_tree_a_schema_and_a_callable(client, catalog):
    out = casa.run(count_rows, "flat", client, treename="other", schema="BaseSchema")
    assert out["rows"] == sum(uproot.open(p)["other"].num_entries for p in catalog)
    with pytest.raises(UsageError, match="unknown schema 'Flat'"):
        casa.run(count_rows, "flat", client, schema="Flat")


def test_run_uses_every_worker(catalog):
    """3 chunks on 2 workers: both run some (coffea alone would put all 3 on the worker that
    holds the processor, tests/compute/test_chunks_use_every_worker.py)."""
    from distributed import Client, get_task_stream

    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        casa.run(SumAbove(4.0), "flat", c, chunksize=200)  # warm-up
        with get_task_stream(client=c) as stream:
            out = casa.run(SumAbove(4.0), "flat", c, chunksize=200)
    per_worker: dict[str, int] = {}
    for task in stream.data:
        if "SumAbove" in str(task["key"]):
            per_worker[task["worker"]] = per_worker.get(task["worker"], 0) + 1
    assert sorted(per_worker.values()) == [1, 2], per_worker
    x = np.concatenate([uproot.open(p)["flat"]["x"].array(library="np") for p in catalog])
    assert np.isclose(out["sum"], x[x > 4.0].sum())
