"""``casa datasets import`` of a fileset whose files are ``root://`` URLs of the facility:
inspected through XRootD with the user's token, metadata kept to ``events.metadata``; a file
that cannot be opened, or no token, is a sentence naming it and the catalog stays as it was."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import uproot

from casa.generate.generator import generate_dataset

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)

#: A processor written for this test: each event weighted by xsec / nevts from the metadata.
WEIGHTED = """
import hist
from coffea import processor


class Weighted(processor.ProcessorABC):
    def process(self, events):
        meta = events.metadata
        h = hist.Hist.new.Reg(20, 0, 200, name="met").Weight()
        h.fill(met=events.MET.pt, weight=meta["xsec"] / meta["nevts"])
        return {"met": h, "process": {meta["process"]: len(events)}}

    def postprocess(self, accumulator):
        return accumulator
"""
METADATA = {"process": "ttbar", "xsec": 831.76, "nevts": 50_000, "variation": "nominal"}


@pytest.fixture(scope="module")
def remote(facility, tmp_path_factory):
    """Two generated files stored as 'remote-src' (their root:// URLs through the cache),
    the local originals, and an environment holding the user's token file."""
    d = tmp_path_factory.mktemp("remote-import")
    generate_dataset(d, 6_000, 2, seed=31, workers=1)
    facility.casa("datasets", "add", "remote-src", d, "--store", check=True)
    shown = json.loads(facility.casa("datasets", "show", "remote-src", "--json", check=True).stdout)
    token = d / "token"
    token.write_text(facility.token())
    env = {"BEARER_TOKEN": "", "BEARER_TOKEN_FILE": str(token)}
    return [f["url"] for f in shown["files"]], sorted(d.glob("*.root")), env


def _catalog(facility) -> str:
    return facility.casa("datasets", "export", check=True).stdout


def test_import_of_root_urls_inspects_them_and_the_metadata_reaches_the_run(
    facility, remote, tmp_path
):
    urls, local, env = remote
    assert all(u.startswith("root://") for u in urls)
    fileset = {
        "remote-ttbar": {
            "files": {urls[0]: {"object_path": "Events"}, urls[1]: "Events"},
            "metadata": METADATA,
        }
    }
    (tmp_path / "fileset.json").write_text(json.dumps(fileset))
    facility.casa("datasets", "import", tmp_path / "fileset.json", env=env, check=True)
    shown = json.loads(
        facility.casa("datasets", "show", "remote-ttbar", "--json", check=True).stdout
    )
    assert shown["metadata"] == METADATA
    for f, path in zip(shown["files"], local, strict=True):
        with uproot.open(path) as opened:  # the originals, read locally by uproot alone
            assert f["events"] == opened["Events"].num_entries
            assert f["uuid"] == str(opened.file.uuid)
        assert f["bytes"] == path.stat().st_size and f["url"].endswith(path.name)

    (tmp_path / "weighted.py").write_text(WEIGHTED)
    met = np.concatenate([uproot.open(p)["Events"]["MET_pt"].array(library="np") for p in local])
    counts, _ = np.histogram(met[met < 200], bins=np.linspace(0, 200, 21))
    weight = METADATA["xsec"] / METADATA["nevts"]
    where = {"futures": ["--executor", "futures", "--workers", "2"],
             "gateway": ["--cluster", "gateway", "--workers", "1"]}  # fmt: skip
    try:
        for name, options in where.items():
            out = tmp_path / name
            facility.casa("run", f"{tmp_path / 'weighted.py'}:Weighted", "--dataset",
                          "remote-ttbar", *options, "--out", out, "--no-plots", env=env,
                          check=True)  # fmt: skip
            result = pickle.loads((out / "result.pkl").read_bytes())
            assert np.allclose(result["met"].values(), counts * weight, rtol=1e-12, atol=0), name
            assert result["process"] == {"ttbar": len(met)}, name
    finally:
        facility.casa("cluster", "stop", "--all")


def test_a_remote_file_that_cannot_be_opened_is_named_and_nothing_is_stored(
    facility, remote, tmp_path
):
    urls, _, env = remote
    before = _catalog(facility)
    missing = urls[0].rsplit("/", 1)[0] + "/no_such_file.root"
    fileset = {"good": [urls[0]], "bad": {"files": [missing], "metadata": {"process": "x"}}}
    (tmp_path / "fileset.json").write_text(json.dumps(fileset))
    p = facility.casa("datasets", "import", tmp_path / "fileset.json", env=env)
    err = " ".join(p.stderr.split())
    assert p.returncode == 4, p.stderr
    assert f"{missing} cannot be opened through XRootD" in err
    assert "Bearer%20" not in err, "tokens must never be printed"
    assert _catalog(facility) == before


def test_a_remote_import_without_a_token_is_refused_and_nothing_is_stored(
    facility, remote, tmp_path
):
    urls, _, _ = remote
    before = _catalog(facility)
    (tmp_path / "fileset.json").write_text(json.dumps({"tokenless": urls}))
    p = facility.casa("datasets", "import", tmp_path / "fileset.json",
                      env={"BEARER_TOKEN": "", "BEARER_TOKEN_FILE": str(tmp_path / "none")})  # fmt: skip
    err = " ".join(p.stderr.split())
    assert p.returncode == 4, p.stderr
    assert f"reading {urls[0]} needs a bearer token, and none was found" in err
    assert _catalog(facility) == before
