"""Truncated ROOT files are refused by ``casa datasets add`` and ``import``: exit 4, one sentence
naming the file, and neither the catalog nor facility storage changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import uproot

from casa.data.catalog import DatasetCatalog
from casa.generate.generator import generate_dataset

#: Three baskets per branch (the generator writes 50,000 events a basket).
EVENTS = 150_000


def _last_basket_start(path: Path) -> int:
    tree = uproot.open(path)["Events"]
    return max(
        int(b.member("fBasketSeek")[: b.member("fWriteBasket")].max())
        for b in tree.itervalues(recursive=True)
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good file, and copies of another cut in half and cut just before its last basket."""
    d = tmp_path_factory.mktemp("damaged")
    generate_dataset(d / "gen", EVENTS * 2, 2, seed=5, workers=1)
    good, source = sorted((d / "gen").glob("*.root"))
    cuts = {"half": source.stat().st_size // 2, "last_basket": _last_basket_start(source)}
    out = {"good": good}
    for name, length in cuts.items():
        cut = d / f"{name}.root"
        shutil.copyfile(source, cut)
        with open(cut, "r+b") as f:
            f.truncate(length)
        out[name] = cut
    return out


def _state(casa) -> tuple[list[str], list[str]]:
    """The catalog's dataset names and every path under facility storage."""
    catalog = DatasetCatalog(casa.home / "casa.sqlite")
    names = [d.name for d in catalog.list()]
    catalog.close()
    storage = casa.home / "storage"
    stored = (
        sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) if storage.exists() else []
    )
    return names, stored


def _assert_refused(result, bad: Path) -> None:
    assert result.code == 4, result.err
    assert f"{bad} is truncated: basket " in result.err and "copy it again" in result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) <= 2  # one sentence (wrapped at 200 columns)


@pytest.mark.parametrize("cut", ["half", "last_basket"])
def test_truncated_file_is_refused_alone_and_beside_a_good_file(casa, files, cut, tmp_path):
    casa("datasets", "add", "before", files["good"], check=True)
    before = _state(casa)
    bad = files[cut]
    for args in (
        ("datasets", "add", "bad", bad),
        ("datasets", "add", "bad", files["good"], bad),
        ("datasets", "add", "bad", bad, "--store"),
        ("datasets", "add", "bad", files["good"], bad, "--store"),
    ):
        _assert_refused(casa(*args), bad)
        assert _state(casa) == before, args
    fileset = tmp_path / "fileset.json"
    for spec in (
        {"bad": [str(bad)]},
        {"ok": [str(files["good"])], "bad": [str(files["good"]), str(bad)]},
    ):
        fileset.write_text(json.dumps(spec))
        _assert_refused(casa("datasets", "import", fileset), bad)
        assert _state(casa) == before, spec
    # Nothing was left behind: the same name is free for the good file, stored or not.
    casa("datasets", "add", "bad", files["good"], "--store", check=True)
    names, stored = _state(casa)
    assert names == ["bad", "before"] and any(files["good"].name in s for s in stored)


def test_whole_files_still_add_and_the_cut_names_its_basket(casa, files):
    added = casa("datasets", "add", "good", files["good"], check=True)
    assert f"{EVENTS:,} events" in added.out
    r = casa("datasets", "add", "half", files["half"])
    size = files["half"].stat().st_size
    assert f"the file has {size:,} bytes" in r.err.replace("\n", " ")
    assert r.code == 4


def test_a_whole_rntuple_is_added(casa, tmp_path):
    """The basket check is for TTrees; an RNTuple (uproot's default output) is still accepted."""
    import numpy as np

    path = tmp_path / "ntuple.root"
    with uproot.recreate(path) as f:
        f["Other"] = {"x": np.arange(100)}
    casa("datasets", "add", "flat", path, "--tree", "Other", check=True)
    shown = json.loads(casa("datasets", "show", "flat", "--json", check=True).out)
    assert shown["files"][0]["events"] == 100
