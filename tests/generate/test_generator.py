"""The generator writes NanoAOD-like files that uproot, coffea and ROOT's layout expect."""

from __future__ import annotations

import hashlib
import json
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot

from casa.errors import UsageError
from casa.generate import physics
from casa.generate.generator import (
    MANIFEST,
    generate_dataset,
    generate_file,
    parse_codec,
    split_events,
)

EXPECTED_TYPES = {
    "run": "uint32",
    "luminosityBlock": "uint32",
    "event": "uint64",
    "HLT_IsoMu24": "bool",
    "PV_npvs": "int32",
    "MET_pt": "float32",
    "MET_phi": "float32",
    "MET_sumet": "float32",
    "nMuon": "int32",
    "nElectron": "int32",
    "nJet": "int32",
    "nPhoton": "int32",
    "nTau": "int32",
}
JAGGED = {
    "Muon": {
        "pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
        "charge": "int32", "pfRelIso03_all": "float32", "pfRelIso04_all": "float32",
        "tightId": "bool", "softId": "bool", "dxy": "float32", "dz": "float32",
    },
    "Electron": {
        "pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
        "charge": "int32", "pfRelIso03_all": "float32", "cutBasedId": "bool",
        "dxy": "float32", "dz": "float32",
    },
    "Jet": {
        "pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
        "btag": "float32", "puId": "bool",
    },
    "Photon": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32"},
    "Tau": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32", "charge": "int32"},
}  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "sample.root"
    entry = generate_file(path, 60_000, seed=11)
    return path, entry


def test_branches_and_types(sample):
    path, entry = sample
    tree = uproot.open(path)["Events"]
    assert tree.num_entries == 60_000 == entry["events"]
    arrays = tree.arrays()
    for name, dtype in EXPECTED_TYPES.items():
        assert str(ak.type(arrays[name]).content) == dtype, name
    for collection, fields in JAGGED.items():
        counts = ak.to_numpy(arrays[f"n{collection}"])
        for field, dtype in fields.items():
            branch = arrays[f"{collection}_{field}"]
            assert str(ak.type(branch).content.content) == dtype, f"{collection}_{field}"
            assert np.array_equal(ak.to_numpy(ak.num(branch)), counts)
    # Objects are ordered by decreasing pt inside each event, as in NanoAOD.
    jet_pt = arrays["Jet_pt"]
    assert ak.all(jet_pt[:, :-1] >= jet_pt[:, 1:])
    assert np.all(np.diff(ak.to_numpy(arrays["event"]).astype(np.int64)) == 1)


def test_reads_with_coffea_nanoaod_schema(sample):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path, _ = sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        events = NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
        ).events()
    assert len(events) == 60_000
    muons = events.Muon
    assert set(JAGGED["Muon"]) <= set(muons.fields)
    # Vector behaviours work: the dimuon mass of opposite-charge pairs peaks at the Z.
    two = muons[ak.num(muons) == 2]
    two = two[two.charge[:, 0] != two.charge[:, 1]]
    mass = ak.to_numpy((two[:, 0] + two[:, 1]).mass)
    counts, edges = np.histogram(mass, bins=60, range=(60, 120))
    peak = edges[np.argmax(counts)]
    assert 89.0 <= peak <= 93.0, peak
    assert len(mass) > 1000


def test_physics_is_plausible(sample):
    path, _ = sample
    a = uproot.open(path)["Events"].arrays()
    n_jets = ak.to_numpy(a["nJet"])
    assert 1.5 < n_jets.mean() < 5.0
    assert 5 < np.median(ak.to_numpy(a["MET_pt"])) < 40
    assert 0.05 < ak.mean(a["HLT_IsoMu24"]) < 0.5
    # Top pairs: three-jet combinations closest to the top mass pile up near 172 GeV.
    jets = ak.zip({"pt": a["Jet_pt"], "eta": a["Jet_eta"], "phi": a["Jet_phi"], "m": a["Jet_mass"]})
    jets = jets[ak.num(jets) >= 3]
    tri = ak.combinations(jets, 3, fields=["a", "b", "c"])

    def comp(j):
        return j.pt * np.cos(j.phi), j.pt * np.sin(j.phi), j.pt * np.sinh(j.eta)

    px = py = pz = e = 0
    for j in (tri.a, tri.b, tri.c):
        x, y, z = comp(j)
        px, py, pz = px + x, py + y, pz + z
        e = e + np.sqrt(x**2 + y**2 + z**2 + j.m**2)
    m = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    best = ak.flatten(m[ak.argmin(abs(m - 172.5), axis=1, keepdims=True)])
    counts, edges = np.histogram(ak.to_numpy(best), bins=30, range=(100, 250))
    assert 160 <= edges[np.argmax(counts)] <= 180
    # b-tags: jets of top decays carry high values, most jets low ones.
    btag = ak.to_numpy(ak.flatten(a["Jet_btag"]))
    assert np.all((btag >= 0) & (btag <= 1))
    assert 0.02 < np.mean(btag > 0.8) < 0.3


def test_floats_rounded_like_nanoaod(sample):
    path, _ = sample
    pt = ak.to_numpy(ak.flatten(uproot.open(path)["Events"]["Jet_pt"].array()))
    low_bits = pt.astype(np.float32).view(np.uint32) & np.uint32((1 << (23 - 10)) - 1)
    assert np.all(low_bits == 0)


def test_round_mantissa_is_nearest():
    x = np.array([1.0, 1.0 + 2**-11, 3.14159, -2.5e3, 0.0], dtype=np.float32)
    r = physics.round_mantissa(x, 10)
    assert np.all(np.abs(r - x) <= np.abs(x) * 2**-11)
    assert r[0] == 1.0 and r[-1] == 0.0


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = generate_dataset(tmp_path / "a", 30_000, 3, seed=5, workers=1)
    b = generate_dataset(tmp_path / "b", 30_000, 3, seed=5, workers=2)
    c = generate_dataset(tmp_path / "c", 30_000, 3, seed=6, workers=1)
    assert [f["sha256"] for f in a["files"]] == [f["sha256"] for f in b["files"]]
    assert [f["sha256"] for f in a["files"]] != [f["sha256"] for f in c["files"]]
    assert (tmp_path / "a" / "events_0000.root").read_bytes() == (
        tmp_path / "b" / "events_0000.root"
    ).read_bytes()


def test_manifest_describes_the_files(tmp_path):
    progress = []
    generate_dataset(tmp_path, 25_001, 2, seed=3, workers=1, progress=progress.append)
    assert sum(progress) == 25_001
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["events"] == 25_001 and manifest["seed"] == 3 and manifest["codec"] == "zlib:1"
    assert [f["events"] for f in manifest["files"]] == [12_501, 12_500]
    for f in manifest["files"]:
        data = (tmp_path / f["name"]).read_bytes()
        assert f["bytes"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert uproot.open(tmp_path / f["name"])["Events"].num_entries == f["events"]
    # Each file is its own run, with unique event numbers.
    runs = {
        int(uproot.open(tmp_path / f["name"])["Events"]["run"].array()[0])
        for f in manifest["files"]
    }
    assert len(runs) == 2
    assert not list(tmp_path.glob(".casa-generate-*")), "scratch folders must be cleaned up"


@pytest.mark.parametrize(
    "codec, algorithm", [("lz4:4", "LZ4"), ("zstd:5", "ZSTD"), ("lzma:9", "LZMA")]
)
def test_codecs(tmp_path, codec, algorithm):
    path = tmp_path / "c.root"
    generate_file(path, 5_000, seed=1, codec=codec)
    f = uproot.open(path)
    assert type(f.file.compression).__name__ == algorithm
    assert f["Events"]["Jet_pt"].array().layout.content.length > 0


def test_bad_options_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown codec 'gzip:1'"):
        parse_codec("gzip:1")
    with pytest.raises(UsageError, match="between 1 and 9"):
        parse_codec("zlib:12")
    with pytest.raises(UsageError, match="--events must be at least 1"):
        generate_dataset(tmp_path, 0, 1, seed=1)
    with pytest.raises(UsageError, match="cannot exceed"):
        generate_dataset(tmp_path, 2, 3, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_split_events():
    assert split_events(10, 3) == [4, 3, 3]
    assert sum(split_events(1_000_003, 7)) == 1_000_003


def test_same_bytes_after_this_process_switched_its_zlib_reader(tmp_path):
    """A process that read data first (use_fastest_zlib) still writes stock-zlib files."""
    from uproot import compression

    from casa.data.codecs import use_fastest_zlib

    before = generate_dataset(tmp_path / "before", 20_000, 1, seed=9, workers=1)
    saved = compression._DecompressZLIB.library
    try:
        library = use_fastest_zlib()
        if library == "zlib":
            pytest.skip("no faster ZLIB library than zlib is installed")
        after = generate_dataset(tmp_path / "after", 20_000, 1, seed=9, workers=1)
    finally:
        compression._DecompressZLIB.library = saved
    assert before["files"][0]["sha256"] == after["files"][0]["sha256"]
