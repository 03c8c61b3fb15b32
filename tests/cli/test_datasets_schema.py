"""``casa datasets add/import --schema``: a dataset's default coffea schema, listed and shown."""

from __future__ import annotations

import json


def test_datasets_add_and_import_record_the_schema_and_show_it(
    casa, gen_dir, tmp_path, monkeypatch
):
    casa("datasets", "add", "flat", gen_dir, "--schema", "BaseSchema", check=True)
    fileset = tmp_path / "fileset.json"
    f0, f1 = (str(gen_dir / f"events_000{i}.root") for i in range(2))
    fileset.write_text(json.dumps({"a": [f0], "b": {"files": [f1], "schema": "NanoAODSchema"}}))
    casa("datasets", "import", fileset, "--schema", "BaseSchema", check=True)
    listed = json.loads(casa("datasets", "list", "--json", check=True).out)
    assert {d["name"]: d["schema"] for d in listed} == {
        "flat": "BaseSchema", "a": "BaseSchema", "b": "NanoAODSchema"
    }  # fmt: skip
    table = casa("datasets", "list", check=True).out
    assert "schema" in table and "BaseSchema" in table
    shown = casa("datasets", "show", "b", check=True).out
    assert "schema NanoAODSchema" in shown
    bad = casa("datasets", "add", "x", gen_dir, "--schema", "no such:thing:here")
    assert bad.code == 2 and "is not a schema's name" in bad.err
    typo = casa("datasets", "import", fileset, "--schema", "BaseSchem")
    assert typo.code == 2 and "unknown schema 'BaseSchem'" in typo.err
    own = tmp_path / "myschemas.py"
    own.write_text(
        "from coffea.nanoevents import BaseSchema\n\nclass Mine(BaseSchema):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)  # the command runs here, and names the file relative to it
    casa("datasets", "add", "own", gen_dir, "--schema", f"{own.name}:Mine", check=True)
    shown = json.loads(casa("datasets", "show", "own", "--json", check=True).out)
    assert shown["schema"] == f"{own}:Mine", "a schema file is recorded by its absolute path"
    after = json.loads(casa("datasets", "list", "--json", check=True).out)
    assert [d["name"] for d in after] == ["a", "b", "flat", "own"]
