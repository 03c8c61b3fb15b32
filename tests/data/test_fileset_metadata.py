"""coffea filesets in and out of the catalog: metadata, object_path, num_entries, steps and
uuid survive export and import, reach every WorkItem and notebooks, and a bad fileset changes
nothing."""

from __future__ import annotations

import json
import os
import pickle
import pwd
import re
import sqlite3
import uuid

import cloudpickle
import pytest
import uproot

from casa.analysis.runner import plan_chunks
from casa.config import facility_paths
from casa.data.catalog import RESERVED_METADATA, DatasetCatalog
from casa.data.exports import CatalogExports, facility_catalog
from casa.errors import DataError
from casa.generate.generator import generate_dataset

META = {"process": "ttbar", "variation": "nominal", "xsec": 831.76, "nevts": 1_000_000,
        "weights": {"pdf": [1.0, 0.98]}, "is_data": False, "era": None}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fileset-data")
    generate_dataset(d, 3_000, 3, seed=8, workers=1)
    return d


@pytest.fixture(scope="module")
def files(data_dir):
    """The three files as (path, entries, ROOT UUID), read with uproot alone."""
    out = []
    for i in range(3):
        path = str(data_dir / f"events_000{i}.root")
        with uproot.open(path) as f:
            out.append((path, int(f["Events"].num_entries), str(f.file.uuid)))
    return out


def _preprocessed(files) -> dict:
    (p0, n0, u0), (p1, n1, u1), (p2, _, _) = files
    return {
        "ttbar": {
            "files": {
                p0: {"object_path": "Events", "steps": [[0, 400], [400, n0]], "num_entries": n0,
                     "uuid": u0},
                p1: {"object_path": "Events", "num_entries": n1, "uuid": u1},
            },
            "metadata": META,
            "form": None,  # coffea's preprocessing writes these too; casa ignores them
        },
        "data": {"files": {p2: "Events"}, "metadata": {"process": "data", "is_data": True}},
    }  # fmt: skip


def _state(db) -> list[str]:
    """Every row of the catalog database, as SQL."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def test_export_import_round_trip_keeps_everything_coffea_wrote(tmp_path, files):
    first = DatasetCatalog(tmp_path / "one.sqlite")
    first.import_fileset(json.loads(json.dumps(_preprocessed(files))))
    exported = first.export_fileset()
    (p0, n0, u0), (p1, n1, u1), (p2, n2, u2) = files
    assert exported["ttbar"] == {
        "files": {
            p0: {"object_path": "Events", "num_entries": n0, "uuid": u0,
                 "steps": [[0, 400], [400, n0]]},
            p1: {"object_path": "Events", "num_entries": n1, "uuid": u1},
        },
        "metadata": META,
    }  # fmt: skip
    assert exported["data"]["files"] == {p2: {"object_path": "Events", "num_entries": n2,
                                              "uuid": u2}}  # fmt: skip
    second = DatasetCatalog(tmp_path / "two.sqlite")
    second.import_fileset(json.loads(json.dumps(exported)))
    assert second.export_fileset() == exported
    assert second.get("ttbar").files == first.get("ttbar").files
    assert second.get("ttbar").metadata == META


def test_the_export_is_a_fileset_coffea_accepts(tmp_path, files):
    from coffea.dataset_tools.filespec import DatasetSpec

    catalog = DatasetCatalog(tmp_path / "c.sqlite")
    catalog.import_fileset(_preprocessed(files))
    for entry in catalog.export_fileset().values():
        spec = DatasetSpec(**entry)
        assert spec.metadata == entry["metadata"]
        assert set(spec.files.root) == set(entry["files"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda fs: fs["data"].update(metadata=["not", "an", "object"]),
         r"metadata of dataset 'data' is a list, not an object"),
        (lambda fs: fs["data"].update(metadata="ttbar"),
         r"metadata of dataset 'data' is a string, not an object"),
        (lambda fs: fs["data"]["metadata"].update(filename="x"),
         r"dataset 'data' uses 'filename', which coffea sets in events.metadata itself"),
        (lambda fs: fs["data"]["metadata"].update(xsec=float("nan")),
         r"metadata of dataset 'data' is not JSON"),
        (lambda fs: next(iter(fs["ttbar"]["files"].values())).update(num_entries=5),
         r"events_0000.root in dataset 'ttbar' has 1,000 entries .* the fileset says 5"),
        (lambda fs: next(iter(fs["ttbar"]["files"].values())).update(
            uuid="00000000-0000-0000-0000-000000000000"),
         r"events_0000.root in dataset 'ttbar' has the ROOT UUID .* not the file"),
        (lambda fs: next(iter(fs["ttbar"]["files"].values())).update(steps=[[0, 2_000]]),
         r"its steps reach entry 2,000, its tree Events has 1,000 entries"),
        (lambda fs: next(iter(fs["ttbar"]["files"].values())).update(steps=[[0, 600], [500, 900]]),
         r"its steps overlap at entry 500"),
        (lambda fs: next(iter(fs["ttbar"]["files"].values())).update(steps=[[5, "a"]]),
         r"steps must be a non-empty list of \[start, stop\]"),
        (lambda fs: fs["data"].update(files=[{"not": "a path"}]),
         r"the files of dataset 'data' are neither a list of paths nor an object"),
        (lambda fs: fs["data"].update(files={"/nowhere/x.root": "Events"}),
         r"/nowhere/x.root: no such file"),
        (lambda fs: fs["data"].update(files={"https://example.org/x.root": "Events"}),
         r"casa reads local files and root:// URLs"),
    ],
)  # fmt: skip
def test_a_bad_fileset_is_refused_and_leaves_the_catalog_exactly_as_it_was(
    tmp_path, files, change, message
):
    db = tmp_path / "c.sqlite"
    catalog = DatasetCatalog(db)
    catalog.add("kept", [files[2][0]], metadata={"process": "kept"})
    before = _state(db)
    fileset = json.loads(json.dumps(_preprocessed(files)))
    change(fileset)
    with pytest.raises(DataError, match=message):
        catalog.import_fileset(fileset)
    assert _state(db) == before
    assert [d.name for d in catalog.list()] == ["kept"]


def test_reserved_metadata_names_are_coffeas():
    from coffea.processor.executor import _PROTECTED_NAMES

    assert RESERVED_METADATA == _PROTECTED_NAMES


def test_every_work_item_carries_the_metadata_through_pickling(tmp_path, files):
    catalog = DatasetCatalog(tmp_path / "c.sqlite")
    catalog.import_fileset(_preprocessed(files))
    ttbar = catalog.get("ttbar")
    chunks = plan_chunks("ttbar", ttbar.files, 300, ttbar.metadata)
    (p0, n0, u0), (p1, n1, _) = files[:2]
    assert [(c.filename, c.entrystart, c.entrystop) for c in chunks] == [
        (p0, 0, 400), (p0, 400, n0),  # the fileset's steps, not --chunksize
        (p1, 0, 334), (p1, 334, 668), (p1, 668, n1),
    ]  # fmt: skip
    assert chunks[0].fileuuid == uuid.UUID(u0).bytes
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)):
        for chunk in loads(dumps(chunks)):
            assert chunk.usermeta == META
    with pytest.raises(DataError, match="uses 'dataset'"):
        plan_chunks("ttbar", ttbar.files, 300, {"dataset": "other"})


def test_notebooks_get_the_datasets_with_their_metadata(tmp_path, files, monkeypatch):
    import casa.notebook

    paths = facility_paths(tmp_path / "facility").ensure()
    catalog = facility_catalog(paths)
    catalog.import_fileset(_preprocessed(files))
    me = pwd.getpwuid(os.geteuid())
    user_file = CatalogExports(paths).write_for(catalog, me)
    written = json.loads(user_file.read_text())
    assert written["ttbar"]["metadata"] == META
    monkeypatch.setenv("CASA_CATALOG", str(user_file))
    assert casa.notebook.datasets() == catalog.export_fileset()
    assert casa.notebook.fileset("ttbar") == {"ttbar": catalog.export_fileset(["ttbar"])["ttbar"]}
    assert casa.notebook.fileset("data")["data"]["metadata"] == {"process": "data", "is_data": True}


def test_root_urls_are_inspected_as_urls_and_need_a_token(tmp_path, files, monkeypatch):
    from casa.data.files import FileInfo

    url = "root://127.0.0.1:1//store/data/sim~/events_0000.root"
    seen = []

    def inspect(where, tree):
        seen.append(where)
        return FileInfo(str(where), tree, 10, 100, None)

    catalog = DatasetCatalog(tmp_path / "c.sqlite")
    catalog.import_fileset({"remote": {"files": {url: "Events"}, "metadata": META}},
                           inspect=inspect)  # fmt: skip
    assert seen == [url] and catalog.get("remote").files[0].url == url
    before = _state(tmp_path / "c.sqlite")
    monkeypatch.setenv("BEARER_TOKEN", "")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "no-token"))
    other = url.replace("sim", "x")
    with pytest.raises(DataError, match=f"reading {re.escape(other)} needs a bearer token"):
        catalog.import_fileset({"local": [files[0][0]], "other": [other]})
    assert _state(tmp_path / "c.sqlite") == before
