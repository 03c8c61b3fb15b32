"""Fileset metadata reaches the analysis on the local executors (iterative, futures, dask):
``casa datasets import`` of a coffea fileset with
``metadata`` (process, cross-section, generated events) and ``steps``, then ``casa run`` of a
processor whose weights and bookkeeping come from ``events.metadata``, checked against numpy."""

from __future__ import annotations

import json
import pickle

import numpy as np
import uproot

#: A processor of the kind physicists bring: it weights each event by xsec * lumi / nevts
#: from the fileset's metadata and notes which process and variation it saw.
WEIGHTED_PROCESSOR = """
import hist
from coffea import processor

LUMI = 1000.0  # 1/pb


class WeightedMET(processor.ProcessorABC):
    def process(self, events):
        meta = events.metadata
        weight = meta["xsec"] * LUMI / meta["nevts"]
        h = hist.Hist.new.Reg(40, 0, 200, name="met").Weight()
        h.fill(met=events.MET.pt, weight=weight)
        return {
            "met": h,
            "events": {meta["process"]: len(events)},
            "variation": {meta["variation"]},
            "chunks": {(meta["dataset"], meta["filename"], meta["entrystart"], meta["entrystop"])},
            "tags": {tuple(meta["tags"])},
        }

    def postprocess(self, accumulator):
        return accumulator
"""

LUMI = 1000.0
METADATA = {
    "ttbar": {"process": "ttbar", "variation": "nominal", "xsec": 831.76, "nevts": 4_000_000,
              "tags": ["top", "signal"]},
    "wjets": {"process": "wjets", "variation": "scale_up", "xsec": 61526.7, "nevts": 2_500,
              "tags": ["w"]},
}  # fmt: skip


def _met(path, start=0, stop=None) -> np.ndarray:
    with uproot.open(path) as f:
        return f["Events"]["MET_pt"].array(library="np", entry_start=start, entry_stop=stop)


def test_metadata_weights_every_executor_and_steps_choose_the_entries(casa, gen_dir, tmp_path):
    f0, f1, f2 = (str(gen_dir / f"events_000{i}.root") for i in range(3))
    with uproot.open(f0) as f:
        uuid0 = str(f.file.uuid)
    steps = [[0, 1_500], [1_500, 3_000], [6_000, 8_000]]  # entries 3,000-6,000 left out
    fileset = {
        "ttbar": {
            "files": {
                f0: {"object_path": "Events", "steps": steps, "num_entries": 8_000, "uuid": uuid0},
                f1: "Events",
            },
            "metadata": METADATA["ttbar"],
        },
        "wjets": {"files": [f2], "metadata": METADATA["wjets"]},
    }
    (tmp_path / "fileset.json").write_text(json.dumps(fileset))
    imported = casa("datasets", "import", tmp_path / "fileset.json", check=True)
    assert "imported dataset ttbar" in imported.out and "metadata process" in imported.out
    (tmp_path / "weighted.py").write_text(WEIGHTED_PROCESSOR)

    expected_met = {
        "ttbar": np.concatenate([_met(f0, 0, 3_000), _met(f0, 6_000, 8_000), _met(f1)]),
        "wjets": _met(f2),
    }
    expected_chunks = {
        "ttbar": {("ttbar", f0, a, b) for a, b in steps}
        | {("ttbar", f1, 0, 4_000), ("ttbar", f1, 4_000, 8_000)},
        "wjets": {("wjets", f2, 0, 4_000), ("wjets", f2, 4_000, 8_000)},
    }
    for name, executor in (("ttbar", "iterative"), ("wjets", "futures"), ("ttbar", "dask")):
        out = tmp_path / f"{name}-{executor}"
        casa("run", f"{tmp_path / 'weighted.py'}:WeightedMET", "--dataset", name,
             "--executor", executor, "--workers", "2", "--chunksize", "4000", "--out", out,
             "--no-plots", check=True)  # fmt: skip
        result = pickle.loads((out / "result.pkl").read_bytes())
        meta = METADATA[name]
        met = expected_met[name]
        weight = meta["xsec"] * LUMI / meta["nevts"]
        counts, _ = np.histogram(met[met < 200], bins=np.linspace(0, 200, 41))  # 200: overflow
        h = result["met"]
        assert np.allclose(h.values(), counts * weight, rtol=1e-12, atol=0)
        assert np.allclose(h.variances(), counts * weight**2, rtol=1e-12, atol=0)
        assert np.isclose(h.sum(flow=True).value, len(met) * weight, rtol=1e-12)
        assert result["events"] == {meta["process"]: len(met)}
        assert result["variation"] == {meta["variation"]}
        assert result["tags"] == {tuple(meta["tags"])}
        # Chunks follow the fileset's steps where it gave them, --chunksize elsewhere.
        assert result["chunks"] == expected_chunks[name]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["events"] == len(met)


def test_import_refuses_metadata_that_is_not_an_object_and_changes_nothing(casa, gen_dir, tmp_path):
    f0 = str(gen_dir / "events_0000.root")
    casa("datasets", "add", "kept", f0, check=True)
    before = casa("datasets", "export", check=True).out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fine": [f0], "odd": {"files": [f0], "metadata": [1, 2]}}))
    refused = casa("datasets", "import", bad)
    assert refused.code == 4
    assert "the metadata of dataset 'odd' is a list, not an object" in " ".join(refused.err.split())
    assert casa("datasets", "export", check=True).out == before
