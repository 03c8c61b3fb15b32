"""``--layout nanoaod-wide``: the adl events plus over a thousand NanoAOD-shaped branches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot

from casa.generate import wide
from casa.generate.generator import (
    MANIFEST,
    default_codec,
    ensure_generated,
    generate_dataset,
    generate_file,
    manifest_matches,
)

EVENTS = 3_000
SEED = 11


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same seed and events as an adl and as a nanoaod-wide dataset (one file each)."""
    root = tmp_path_factory.mktemp("wide")
    adl = generate_dataset(root / "adl", EVENTS, 1, SEED, workers=1)
    big = generate_dataset(root / "wide", EVENTS, 1, SEED, workers=1, layout="nanoaod-wide")
    return (
        root / "adl" / adl["files"][0]["name"],
        root / "wide" / big["files"][0]["name"],
        root,
    )


@pytest.fixture(scope="module")
def trees(pair):
    adl, big, _ = pair
    return uproot.open(adl)["Events"], uproot.open(big)["Events"]


def test_more_than_a_thousand_branches_of_nanoaod_types(trees):
    _, tree = trees
    names = tree.keys()
    assert len(names) > 1000
    assert len(set(names)) == len(names)
    types = tree.typenames()
    for counter in ("nPhoton", "nTau", "nFatJet", "nGenPart", "nGenJet", "nSV", "nTrigObj",
                    "nIsoTrack", "nSubJet", "nLowPtElectron", "nSoftActivityJet", "nOtherPV",
                    "nCorrT1METJet", "nGenVisTau", "nLHEPart", "nPSWeight", "nLHEScaleWeight",
                    "nLHEPdfWeight"):  # fmt: skip
        assert types[counter] == "int32_t", counter
    assert types["Muon_jetIdx"] == "int16_t[]"
    assert types["Jet_jetId"] == "uint8_t[]"
    assert types["Electron_mvaIso_WP80"] == "bool[]"
    assert types["GenPart_statusFlags"] == "uint16_t[]"
    assert types["LHEPdfWeight"] == "float[]"
    assert sum(n.startswith("HLT_") for n in names) > 300
    assert sum(n.startswith("L1_") for n in names) > 200
    assert {"Flag_METFilters", "genWeight", "fixedGridRhoFastjetAll", "PuppiMET_pt",
            "RawMET_phi", "ChsMET_sumEt", "Pileup_nTrueInt", "Generator_x1", "LHE_HT",
            "PV_z"} <= set(names)  # fmt: skip
    # Plausible values, not constants and not random bits.
    a = tree.arrays(["nGenPart", "nTrigObj", "nLHEPdfWeight", "HLT_IsoMu27", "Jet_btagDeepFlavB"])
    assert 20 < ak.mean(a["nGenPart"]) < 100 and ak.max(a["nGenPart"]) <= 200
    assert 10 <= ak.mean(a["nTrigObj"]) <= 30
    assert np.all(ak.to_numpy(a["nLHEPdfWeight"]) == 103)
    assert 0.0 < ak.mean(a["HLT_IsoMu27"]) < 0.5
    btag = ak.to_numpy(ak.flatten(a["Jet_btagDeepFlavB"]))
    low_bits = btag.view(np.uint32) & np.uint32((1 << (23 - 10)) - 1)
    assert np.all(low_bits == 0), "floats keep NanoAOD's reduced precision"
    assert len(np.unique(btag)) > 100


def test_every_adl_branch_is_there_with_the_same_values(trees):
    adl, big = trees
    assert set(adl.keys()) <= set(big.keys())
    assert adl.keys() == [n for n in big.keys() if n in set(adl.keys())], "same order"
    for name in adl.keys():
        assert adl[name].typename == big[name].typename, name
        assert ak.array_equal(adl[name].array(), big[name].array()), name


def test_counts_match_the_jagged_lengths_and_indices_are_valid(trees):
    _, tree = trees
    names = tree.keys()
    arrays = tree.arrays()
    counters = [n for n in names if n.startswith("n") and tree[n].typename == "int32_t"]
    checked = 0
    for counter in counters:
        collection = counter[1:]
        counts = ak.to_numpy(arrays[counter])
        members = [n for n in names if n == collection or n.startswith(collection + "_")]
        assert members, counter
        for name in members:
            assert np.array_equal(ak.to_numpy(ak.num(arrays[name])), counts), name
            checked += 1
    assert checked > 400
    for indexer, target in (("Muon_jetIdx", "Jet"), ("Jet_genJetIdx", "GenJet"),
                            ("FatJet_subJetIdx2", "SubJet"), ("Photon_electronIdx", "Electron"),
                            ("GenPart_genPartIdxMother", "GenPart"), ("Tau_jetIdx", "Jet")):  # fmt: skip
        idx = arrays[indexer]
        n_target = ak.broadcast_arrays(arrays[f"n{target}"], idx)[0]
        assert ak.all((idx >= -1) & (idx < n_target)), indexer
    mother = arrays["GenPart_genPartIdxMother"]
    assert ak.all(mother < ak.local_index(mother)), "mothers come before their daughters"


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    entries = []
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        (tmp_path / folder).mkdir()
        entries.append(
            generate_file(tmp_path / folder / "f.root", 1_500, seed, layout="nanoaod-wide")
        )
    a, b, c = entries
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a" / "f.root").read_bytes() == (tmp_path / "b" / "f.root").read_bytes()
    assert a["sha256"] != c["sha256"]


def test_the_adl_layout_is_the_default_and_unchanged(tmp_path):
    default = generate_dataset(tmp_path / "d", 2_000, 1, 5, workers=1)
    explicit = generate_dataset(tmp_path / "e", 2_000, 1, 5, "zlib:1", workers=1, layout="adl")
    assert default["files"][0]["sha256"] == explicit["files"][0]["sha256"]
    assert default["codec"] == "zlib:1" == default_codec("adl")
    assert len(uproot.open(tmp_path / "d" / "events_0000.root")["Events"].keys()) < 50


def test_manifest_records_the_layout_and_layouts_are_not_mixed(pair):
    _, _, root = pair
    folder = root / "wide"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["layout"] == "nanoaod-wide" and manifest["codec"] == "zstd:5"
    assert manifest_matches(folder, EVENTS, 1, SEED, layout="nanoaod-wide")
    assert manifest_matches(folder, EVENTS, 1, SEED, "zstd:5", layout="nanoaod-wide")
    assert not manifest_matches(folder, EVENTS, 1, SEED)  # adl, zlib:1
    assert not manifest_matches(folder, EVENTS, 1, SEED, "zstd:5")  # adl in zstd
    adl_manifest = json.loads((root / "adl" / MANIFEST).read_text())
    assert adl_manifest["layout"] == "adl"
    assert manifest_matches(root / "adl", EVENTS, 1, SEED)
    assert not manifest_matches(root / "adl", EVENTS, 1, SEED, "zlib:1", layout="nanoaod-wide")


def test_ensure_generated_regenerates_for_another_layout(tmp_path):
    folder = tmp_path / "ds"
    _, reused = ensure_generated(folder, 1_000, 1, 2)
    assert not reused
    _, reused = ensure_generated(folder, 1_000, 1, 2)
    assert reused
    paths, reused = ensure_generated(folder, 1_000, 1, 2, layout="nanoaod-wide")
    assert not reused
    assert len(uproot.open(paths[0])["Events"].keys()) > 1000
    _, reused = ensure_generated(folder, 1_000, 1, 2, layout="nanoaod-wide")
    assert reused
    # A manifest written before layouts existed describes an adl dataset.
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["layout"]
    manifest["codec"] = "zlib:1"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert manifest_matches(folder, 1_000, 1, 2)
    assert not manifest_matches(folder, 1_000, 1, 2, layout="nanoaod-wide")


def test_zstd_by_default_other_codecs_still_work(pair, tmp_path):
    _, big, _ = pair
    f = uproot.open(big)
    assert type(f.file.compression).__name__ == "ZSTD"
    assert f.file.compression.level == 5
    assert type(f["Events"]["GenPart_pt"].compression).__name__ in ("ZSTD", "NoneType")
    path = tmp_path / "lz4.root"
    generate_file(path, 1_000, 1, "lz4:4", layout="nanoaod-wide")
    f = uproot.open(path)
    assert type(f.file.compression).__name__ == "LZ4"
    assert len(f["Events"].keys()) > 1000


def test_coffea_reads_it_like_nanoaod(pair):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    adl, big, _ = pair

    def events(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return NanoEventsFactory.from_root(
                {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
            ).events()

    a, w = events(adl), events(big)
    assert len(w) == EVENTS
    assert ak.array_equal(a.Jet.pt, w.Jet.pt)
    assert ak.array_equal(a.Muon.pfRelIso04_all, w.Muon.pfRelIso04_all)
    assert ak.array_equal(a.MET.pt, w.MET.pt)
    # The NanoAOD cross-references resolve: a muon's jet, a particle's parent.
    muons = w.Muon[w.Muon.jetIdx >= 0]
    assert ak.all(muons.matched_jet.pt == w.Jet.pt[muons.jetIdx])
    assert ak.sum(ak.num(w.GenPart.parent.pdgId)) > 0
    assert ak.all(ak.num(w.LHEPdfWeight) == 103)
    assert "btagDeepFlavB" in w.Jet.fields and len(w.TrigObj.fields) >= 10


def test_challenge_branches_are_a_quarter_of_them(trees):
    _, tree = trees
    names = tree.keys()
    chosen = wide.challenge_branches(names)
    assert 0.2 <= len(chosen) / len(names) <= 0.3
    assert set(chosen) <= set(names) and len(set(chosen)) == len(chosen)
    assert chosen == wide.challenge_branches(list(names)), "deterministic"
    # Spread over collections and scalars, with the counter of every collection it reads.
    for name in chosen:
        head = name.split("_")[0]
        if "_" in name and f"n{head}" in names:
            assert f"n{head}" in chosen, name
    assert {"Jet_pt", "GenPart_pt", "Muon_pt", "MET_pt", "event"} <= set(chosen)
    assert any(n.startswith("HLT_") for n in chosen) and any(n.startswith("L1_") for n in chosen)
    # About 1.5-2 KB/event uncompressed, well under the whole file's.
    size = {n: tree[n].uncompressed_bytes for n in names}
    per_event = sum(size[n] for n in chosen) / tree.num_entries
    assert 1_200 < per_event < 2_400, per_event
    assert per_event < 0.5 * sum(size.values()) / tree.num_entries


def test_cli_layout_option(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "CASA_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "casa", "generate", "--out", str(out), "--events", "500",
         "--layout", "nanoaod-wide"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["layout"] == "nanoaod-wide" and manifest["codec"] == "zstd:5"
    bad = subprocess.run(
        [sys.executable, "-m", "casa", "generate", "--out", str(out), "--layout", "tiny"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "nanoaod-wide" in bad.stderr
