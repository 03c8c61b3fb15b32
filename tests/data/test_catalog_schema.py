"""The catalog's own SQLite schema: catalogs made by older casa open, and a dataset's default
coffea schema is recorded, shown and returned."""

from __future__ import annotations

import datetime
import json
import sqlite3

import pytest

from casa.data.catalog import ADDED_COLUMNS, DatasetCatalog
from casa.errors import UsageError
from casa.generate.generator import generate_dataset

#: The tables as the catalog created them before ADDED_COLUMNS (its create_all's DDL).
OLD_TABLES = """
CREATE TABLE datasets (
    id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, created DATETIME NOT NULL,
    metadata_json VARCHAR NOT NULL, PRIMARY KEY (id), UNIQUE (name)
);
CREATE TABLE files (
    id INTEGER NOT NULL, dataset_id INTEGER NOT NULL, position INTEGER NOT NULL,
    url VARCHAR NOT NULL, tree VARCHAR NOT NULL, events INTEGER NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("schema-data")
    generate_dataset(d, 2_000, 2, seed=5, workers=1)
    return d


def _columns(db, table: str) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_catalog_of_the_old_schema_opens_keeps_its_datasets_and_gains_the_columns(tmp_path):
    db = tmp_path / "casa.sqlite"
    created = datetime.datetime(2026, 1, 2, 3, 4, 5)
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_TABLES)
        conn.execute(
            "INSERT INTO datasets VALUES (1, 'old', ?, ?)",
            (created.isoformat(" "), json.dumps({"process": "ttbar"})),
        )
        conn.executemany(
            "INSERT INTO files VALUES (?, 1, ?, ?, 'Events', ?, ?)",
            [(1, 0, "/data/a.root", 100, 1_000), (2, 1, "/data/b.root", 50, 600)],
        )
    assert "schema" not in _columns(db, "datasets")

    catalog = DatasetCatalog(db)
    old = catalog.get("old")
    assert [(f.url, f.events, f.bytes, f.uuid, f.steps) for f in old.files] == [
        ("/data/a.root", 100, 1_000, None, None),
        ("/data/b.root", 50, 600, None, None),
    ]
    assert old.metadata == {"process": "ttbar"} and old.schema is None
    assert old.created == created
    for table, columns in ADDED_COLUMNS.items():
        assert set(columns) <= _columns(db, table)
    catalog.close()
    # Opening it again (the columns are there now) changes nothing.
    again = DatasetCatalog(db)
    assert again.get("old") == old
    again.close()


def test_schema_is_recorded_and_returned(tmp_path, data_dir):
    catalog = DatasetCatalog(tmp_path / "casa.sqlite")
    flat = catalog.add("flat", [str(data_dir)], schema="BaseSchema")
    plain = catalog.add("plain", [str(data_dir / "events_0000.root")])
    assert flat.schema == "BaseSchema" and plain.schema is None
    assert {d.name: d.schema for d in catalog.list()} == {"flat": "BaseSchema", "plain": None}
    exported = catalog.export_fileset()
    assert exported["flat"]["schema"] == "BaseSchema" and "schema" not in exported["plain"]
    with pytest.raises(UsageError, match="is not a schema's name"):
        catalog.add("bad", [str(data_dir)], schema="not a schema")
    assert [d.name for d in catalog.list()] == ["flat", "plain"]
    catalog.close()
