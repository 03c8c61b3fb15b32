"""``casa run`` end to end: outputs, user processors, and the errors users meet."""

from __future__ import annotations

import json
import pickle
import re

import awkward as ak
import hist
import numpy as np
import uproot

from casa.generate.generator import generate_file

USER_PROCESSOR = '''
import awkward as ak
import hist
from coffea import processor


class MyMuons(processor.ProcessorABC):
    """A processor written for plain coffea."""

    def process(self, events):
        h = hist.Hist.new.Reg(50, 0, 100, name="pt").Double()
        h.fill(pt=ak.flatten(events.Muon.pt))
        return {"muon_pt": h, "n": processor.value_accumulator(int, len(events))}

    def postprocess(self, accumulator):
        accumulator["postprocessed"] = True
        return accumulator


class Broken(processor.ProcessorABC):
    def process(self, events):
        raise ValueError("boom: my analysis has a bug")

    def postprocess(self, accumulator):
        return accumulator
'''


def test_run_writes_all_outputs(casa, gen_dir, tmp_path):
    out = tmp_path / "out"
    r = casa("run", "dimuon", "--files", gen_dir, "--out", out, "--executor", "iterative",
             "--chunksize", "5000", check=True)  # fmt: skip
    assert "mass" in r.out and "24,000 events" in r.out
    # Said from the first moment: each step before the chunks start; then the time waited.
    for step in ("loading the analysis dimuon", "reading the files' trees",
                 "starting (this process reads the chunks)"):  # fmt: skip
        assert step in r.err, r.err
    waited = re.search(r"you waited ([\d.]+) s in all: ([\d.]+) s to load, start the "
                       r"workers and write the outputs, ([\d.]+) s processing", r.out)  # fmt: skip
    assert waited, r.out
    summary = json.loads((out / "summary.json").read_text())
    assert float(waited[1]) >= float(waited[3]) >= round(summary["wall_seconds"], 1) - 0.05
    assert summary["analysis"] == "dimuon" and summary["events"] == 24_000
    assert sorted(summary["events_per_file"].values()) == [8_000, 8_000, 8_000]
    assert summary["executor"] == "iterative" and summary["workers"] == 1
    assert summary["chunks"] == 6 and summary["chunks_counted_twice"] == []
    assert summary["bytes_read"] > 0 and summary["wall_seconds"] > 0
    assert summary["events_per_second"] > 0
    assert set(summary["versions"]) == {"casa", "coffea"}
    with open(out / "result.pkl", "rb") as f:
        result = pickle.load(f)
    h = result["mass"]
    assert h.values().sum() > 100
    root_hist = uproot.open(out / "histograms.root")["mass"]
    assert root_hist.classname.startswith("TH1")
    assert np.array_equal(root_hist.values(), h.values())
    assert np.allclose(root_hist.axis().edges(), h.axes[0].edges)
    assert (out / "mass.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    peak = h.axes[0].centers[np.argmax(h.values())]
    assert 89 <= peak <= 93


def test_dataset_commands_and_run_by_name(casa, gen_dir, tmp_path):
    casa("datasets", "add", "gen", gen_dir, check=True)
    listed = json.loads(casa("datasets", "list", "--json", check=True).out)
    assert [(d["name"], d["events"], d["n_files"]) for d in listed] == [("gen", 24_000, 3)]
    shown = json.loads(casa("datasets", "show", "gen", "--json", check=True).out)
    assert [f["events"] for f in shown["files"]] == [8_000] * 3
    exported = tmp_path / "fileset.json"
    casa("datasets", "export", "gen", "--out", exported, check=True)
    assert set(json.loads(exported.read_text())) == {"gen"}
    out = tmp_path / "out"
    casa("run", "adl1", "--dataset", "gen", "--out", out, "--executor", "futures",
         "--workers", "2", check=True)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "gen" and summary["events"] == 24_000
    assert summary["executor"] == "futures" and summary["workers"] == 2
    casa("datasets", "remove", "gen", check=True)
    casa("datasets", "import", exported, check=True)
    assert casa("datasets", "show", "gen", check=True).code == 0


def test_bad_file_leaves_catalog_unchanged(casa, gen_dir, tmp_path):
    casa("datasets", "add", "first", gen_dir / "events_0000.root", check=True)
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"not root at all")
    r = casa("datasets", "add", "second", gen_dir / "events_0001.root", bad)
    assert r.code == 4
    assert "bad.root is not a ROOT file" in r.err
    assert "Traceback" not in r.err
    listed = json.loads(casa("datasets", "list", "--json", check=True).out)
    assert [d["name"] for d in listed] == ["first"]


def test_user_processor_runs_unchanged(casa, gen_dir, tmp_path):
    code = tmp_path / "my_analysis.py"
    code.write_text(USER_PROCESSOR)
    out = tmp_path / "out"
    for executor in ("futures", "dask"):
        casa("run", f"{code}:MyMuons", "--files", gen_dir, "--out", out / executor,
             "--executor", executor, "--workers", "2", "--chunksize", "4000", check=True)  # fmt: skip
    results = [pickle.loads((out / e / "result.pkl").read_bytes()) for e in ("futures", "dask")]
    reference = uproot.concatenate([str(p) for p in sorted(gen_dir.glob("*.root"))], ["Muon_pt"])
    # hist, not np.histogram: values of exactly 100 GeV (common after NanoAOD rounding) belong
    # in the overflow, where np.histogram would put them into the last bin.
    expected = hist.Hist.new.Reg(50, 0, 100).Double().fill(ak.flatten(reference["Muon_pt"]))
    for result in results:
        assert result["n"].value == 24_000
        assert result["postprocessed"] is True
        assert np.array_equal(result["muon_pt"].values(flow=True), expected.values(flow=True))


def test_processor_errors_show_the_users_traceback(casa, gen_dir, tmp_path):
    code = tmp_path / "my_analysis.py"
    code.write_text(USER_PROCESSOR)
    r = casa("run", f"{code}:Broken", "--files", gen_dir / "events_0000.root", "--out",
             tmp_path / "o", "--executor", "futures", "--workers", "1")  # fmt: skip
    assert r.code == 5
    assert "ValueError" in r.err and "boom: my analysis has a bug" in r.err
    assert "events_0000.root entries 0-8000" in r.err
    assert "my_analysis.py" in r.err and 'raise ValueError("boom' in r.err

    r = casa("run", f"{code}:Missing", "--files", gen_dir, "--out", tmp_path / "o")
    assert (
        r.code == 5 and "has no class or function 'Missing'" in r.err and "Broken, MyMuons" in r.err
    )

    syntax = tmp_path / "syntax.py"
    syntax.write_text("def broken(:\n")
    r = casa("run", f"{syntax}:X", "--files", gen_dir, "--out", tmp_path / "o")
    assert r.code == 5 and "importing" in r.err and "SyntaxError" in r.err

    r = casa("run", "adl42", "--files", gen_dir, "--out", tmp_path / "o")
    assert r.code == 5 and "unknown analysis 'adl42'" in r.err and "adl8" in r.err


def test_missing_and_empty_inputs(casa, gen_dir, tmp_path):
    r = casa("run", "dimuon", "--dataset", "nothing", "--out", tmp_path / "o")
    assert r.code == 4 and "no dataset named 'nothing'" in r.err

    r = casa("run", "dimuon", "--files", tmp_path / "absent.root", "--out", tmp_path / "o")
    assert r.code == 4 and "absent.root: no such file" in r.err

    empty = tmp_path / "empty.root"
    generate_file(empty, 0, seed=1)
    casa("datasets", "add", "empty", empty, check=True)
    r = casa("run", "dimuon", "--dataset", "empty", "--out", tmp_path / "o")
    assert r.code == 4 and "holds no events" in r.err

    vanishing = tmp_path / "vanishing.root"
    vanishing.write_bytes((gen_dir / "events_0000.root").read_bytes())
    casa("datasets", "add", "vanishing", vanishing, check=True)
    vanishing.unlink()
    r = casa("run", "dimuon", "--dataset", "vanishing", "--out", tmp_path / "o")
    assert r.code == 4 and "vanishing.root is missing" in r.err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_generate_command(casa, tmp_path):
    out = tmp_path / "g"
    r = casa(
        "generate", "--out", out, "--events", "3000", "--files", "2", "--seed", "9", check=True
    )
    assert "3,000 events in 2 file(s)" in r.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["events"] for f in manifest["files"]] == [1500, 1500]
    r = casa("generate", "--out", out, "--events", "10", "--codec", "snappy:1")
    assert r.code == 2 and "unknown codec 'snappy:1'" in r.err
    assert casa("--help").code == 0 and "generate" in casa("--help").out


def test_python_dash_m_and_version(casa):
    r = casa("--version", check=True)
    assert r.out.startswith("casa ")
