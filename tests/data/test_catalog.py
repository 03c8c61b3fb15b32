"""The dataset catalog: adding, listing, removing, filesets, and errors that change nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from casa.data.catalog import DatasetCatalog
from casa.errors import DataError, UsageError
from casa.generate.generator import generate_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalog-data")
    generate_dataset(d, 9_000, 3, seed=4, workers=1)
    return d


@pytest.fixture
def catalog(tmp_path):
    c = DatasetCatalog(tmp_path / "state" / "casa.sqlite")
    yield c
    c.close()


def test_add_folder_glob_and_files(catalog, data_dir):
    d = catalog.add("folder", [str(data_dir)])
    assert len(d.files) == 3 and d.events == 9_000
    assert [f.events for f in d.files] == [3_000, 3_000, 3_000]
    assert all(f.tree == "Events" and f.bytes > 0 for f in d.files)
    assert d.bytes == sum((data_dir / f"events_{i:04d}.root").stat().st_size for i in range(3))
    g = catalog.add("glob", [str(data_dir / "events_000[01].root")])
    assert [f.url for f in g.files] == [
        str(data_dir / "events_0000.root"),
        str(data_dir / "events_0001.root"),
    ]
    one = catalog.add("one", [str(data_dir / "events_0002.root")])
    assert one.events == 3_000
    assert [x.name for x in catalog.list()] == ["folder", "glob", "one"]
    assert catalog.get("glob").files == g.files


def test_state_survives_reopening(tmp_path, data_dir):
    db = tmp_path / "casa.sqlite"
    DatasetCatalog(db).add("kept", [str(data_dir)])
    again = DatasetCatalog(db).get("kept")
    assert again.events == 9_000 and len(again.files) == 3


def test_non_root_file_names_it_and_changes_nothing(catalog, data_dir, tmp_path):
    catalog.add("before", [str(data_dir / "events_0000.root")])
    bad = tmp_path / "notes.root"
    bad.write_text("this is not a ROOT file\n")
    with pytest.raises(DataError, match=r"notes\.root is not a ROOT file"):
        catalog.add("mixed", [str(data_dir / "events_0001.root"), str(bad)])
    assert [d.name for d in catalog.list()] == ["before"]


def test_missing_tree_names_tree_and_the_trees_found(catalog, data_dir):
    with pytest.raises(DataError, match=r"has no tree 'Runs'.*holds the TTree Events"):
        catalog.add("x", [str(data_dir / "events_0000.root")], tree="Runs")
    assert catalog.list() == []


def test_missing_and_unreadable_paths(catalog, data_dir, tmp_path):
    with pytest.raises(DataError, match="nowhere.root: no such file or folder"):
        catalog.add("x", [str(tmp_path / "nowhere.root")])
    with pytest.raises(DataError, match="no file matches"):
        catalog.add("x", [str(tmp_path / "*.root")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no .root files"):
        catalog.add("x", [str(empty)])
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes((data_dir / "events_0000.root").read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated.root is truncated: its ROOT header"):
        catalog.add("x", [str(truncated)])
    assert catalog.list() == []


def test_duplicate_and_bad_names(catalog, data_dir):
    catalog.add("dup", [str(data_dir / "events_0000.root")])
    with pytest.raises(DataError, match="a dataset named 'dup' exists already"):
        catalog.add("dup", [str(data_dir / "events_0001.root")])
    assert len(catalog.get("dup").files) == 1
    with pytest.raises(UsageError, match="is not valid"):
        catalog.add("no spaces", [str(data_dir)])


def test_remove(catalog, data_dir):
    catalog.add("gone", [str(data_dir)])
    catalog.remove("gone")
    assert catalog.list() == []
    assert (data_dir / "events_0000.root").exists(), "remove leaves the files in place"
    with pytest.raises(DataError, match="no dataset named 'gone'"):
        catalog.remove("gone")
    with pytest.raises(DataError, match="no dataset named 'gone'.*catalog is empty"):
        catalog.get("gone")


def test_fileset_export_import_round_trip(tmp_path, catalog, data_dir):
    catalog.add("a", [str(data_dir / "events_0000.root")])
    catalog.add("b", [str(data_dir)])
    fileset = catalog.export_fileset()
    assert set(fileset) == {"a", "b"}
    url = str(data_dir / "events_0000.root")
    import uproot

    with uproot.open(url) as f:  # the file's own ROOT UUID, as coffea's preprocessing writes it
        file_uuid = str(f.file.uuid)
    assert fileset["a"]["files"] == {
        url: {"object_path": "Events", "num_entries": 3_000, "uuid": file_uuid}
    }
    other = DatasetCatalog(tmp_path / "other.sqlite")
    imported = other.import_fileset(json.loads(json.dumps(fileset)))
    assert [d.name for d in imported] == ["a", "b"]
    assert other.get("b").files == catalog.get("b").files


def test_import_accepts_coffea_fileset_forms(catalog, data_dir):
    f0, f1 = str(data_dir / "events_0000.root"), str(data_dir / "events_0001.root")
    catalog.import_fileset(
        {
            "as_list": [f0, f1],
            "as_mapping": {"files": {f0: "Events"}, "metadata": {"year": 2012}},
            "as_preprocessed": {"files": {f1: {"object_path": "Events", "steps": [[0, 3000]]}}},
        }
    )
    assert catalog.get("as_list").events == 6_000
    assert catalog.get("as_mapping").metadata == {"year": 2012}
    assert catalog.get("as_preprocessed").files[0].url == f1


def test_import_is_all_or_nothing(catalog, data_dir, tmp_path):
    moved = tmp_path / "moved.root"
    shutil.copy(data_dir / "events_0000.root", moved)
    fileset = {"good": [str(moved)], "bad": [str(tmp_path / "missing.root")]}
    with pytest.raises(DataError, match="missing.root: no such file"):
        catalog.import_fileset(fileset)
    with pytest.raises(DataError, match="has no 'files'"):
        catalog.import_fileset({"weird": 3})
    assert catalog.list() == []
