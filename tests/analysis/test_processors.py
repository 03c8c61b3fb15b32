"""The built-in processors, run by coffea's Runner, against references computed from raw branches.

The references read the branches with uproot and compute every quantity by hand with numpy and
awkward: no coffea, no NanoEvents, no vector behaviours. The processors widen kinematics to
float64 before building four-vectors, so the references compute in float64 as well; the two then
differ by rounding only (relative 1e-10 at worst), far too little to move an entry across a bin
edge or a cut, and every bin, under- and overflow included, is compared exactly.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema

from casa.analysis.processors import BUILTIN_PROCESSORS
from casa.analysis.processors.objects import btag_field, missing_et
from casa.errors import DataError

pytestmark = pytest.mark.filterwarnings(
    # NanoAODSchema warns about every cross-reference branch a file lacks.
    "ignore:Missing cross-reference:RuntimeWarning",
    "ignore:Branch .* already exists but its values will be replaced:RuntimeWarning",
)

GENERATED = "generated"
REAL_SAMPLES = ("nano_dy", "nano_dimuon", "nano_tree", "nano_tt_v12", "nano_tt_v15")
SAMPLES = (GENERATED, *REAL_SAMPLES)

#: Histogram name -> (bins, start, stop) of every processor: the documented binning.
EXPECTED_BINNING: dict[str, dict[str, tuple[int, float, float]]] = {
    "dimuon": {"mass": (200, 0.0, 200.0)},
    "adl1": {"met": (100, 0.0, 200.0)},
    "adl2": {"jet_pt": (100, 0.0, 200.0)},
    "adl3": {"jet_pt": (100, 0.0, 200.0)},
    "adl4": {"met": (100, 0.0, 200.0)},
    "adl5": {"met": (100, 0.0, 200.0)},
    "adl6": {"trijet_pt": (100, 0.0, 200.0), "trijet_btag": (100, 0.0, 1.0)},
    "adl7": {"sum_pt": (100, 0.0, 200.0)},
    "adl8": {"mt": (100, 0.0, 200.0)},
}

#: (processor, sample) pairs whose histograms are empty because the file has no such events.
#: Everywhere else every histogram must have entries, so a selection that drops everything
#: cannot pass by matching an equally empty reference.
EXPECTED_EMPTY = {
    ("dimuon", "nano_tree"),  # no muons at all
    ("adl5", "nano_tree"),
    ("adl8", "nano_tree"),
    ("adl5", "nano_tt_v15"),  # no opposite-charge muon pair within 60-120 GeV
}

MET_BRANCHES = ("MET", "PFMET")
BTAG_BRANCHES = ("Jet_btag", "Jet_btagDeepFlavB", "Jet_btagDeepB")
KINEMATICS = ("pt", "eta", "phi", "mass")
MUON_FLAVOUR, ELECTRON_FLAVOUR = 13, 11


# --------------------------------------------------------------------------- running coffea


class AllBuiltins(processor.ProcessorABC):
    """Runs every built-in processor on each chunk, so each file's chunks are read only once.

    Opening a chunk of real NanoAOD (thousands of branches) costs far more than any of the
    analyses, so running the nine processors in one pass keeps the suite fast.
    """

    def process(self, events: ak.Array) -> dict[str, dict[str, hist.Hist]]:
        """Each built-in processor's output on this chunk, by processor name."""
        return {name: cls().process(events) for name, cls in BUILTIN_PROCESSORS.items()}

    def postprocess(self, accumulator: dict) -> dict[str, dict[str, hist.Hist]]:
        """Each built-in processor's postprocess of its merged output."""
        return {
            name: BUILTIN_PROCESSORS[name]().postprocess(out) for name, out in accumulator.items()
        }


def three_chunks(path: Path) -> int:
    """A chunk size that splits the file into three chunks, so the Runner merges outputs."""
    with uproot.open(path) as file:
        entries = file["Events"].num_entries
    return max(1, math.ceil(entries / 3))


def run_coffea(path: Path, processor_instance: processor.ProcessorABC) -> tuple[dict, dict]:
    """Run a processor over one file with coffea's iterative Runner; return (output, metrics)."""
    runner = processor.Runner(
        executor=processor.IterativeExecutor(status=False),
        schema=NanoAODSchema,
        chunksize=three_chunks(path),
        savemetrics=True,
    )
    fileset = {"sample": {"files": {str(path): "Events"}}}
    return runner(fileset, processor_instance, treename="Events")


@pytest.fixture(scope="session")
def sample_paths(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """Resolve a sample label to its file, requesting only the fixture that label needs."""

    def resolve(label: str) -> Path:
        if label == GENERATED:
            return request.getfixturevalue("small_nanoaod")
        return request.getfixturevalue("coffea_samples") / f"{label}.root"

    return resolve


@pytest.fixture(scope="session")
def coffea_outputs(sample_paths: Callable[[str], Path]) -> Callable[[str], dict]:
    """Every built-in processor's merged output on a sample, computed once per sample."""
    cache: dict[str, dict] = {}

    def outputs(label: str) -> dict:
        if label not in cache:
            output, metrics = run_coffea(sample_paths(label), AllBuiltins())
            assert metrics["chunks"] > 1, "the file should be processed in several chunks"
            cache[label] = output
        return cache[label]

    return outputs


# ------------------------------------------------------------------------ the references


def read_branches(path: Path) -> dict[str, ak.Array]:
    """The raw branches the references use, straight from uproot (with generic names)."""
    with uproot.open(path) as file:
        tree = file["Events"]
        available = set(tree.keys())
        met = next(prefix for prefix in MET_BRANCHES if f"{prefix}_pt" in available)
        btag = next(branch for branch in BTAG_BRANCHES if branch in available)
        wanted = {"met_pt": f"{met}_pt", "met_phi": f"{met}_phi", "jet_btag": btag}
        for collection in ("Muon", "Electron", "Jet"):
            for field in KINEMATICS:
                wanted[f"{collection.lower()}_{field}"] = f"{collection}_{field}"
        for collection in ("Muon", "Electron"):
            wanted[f"{collection.lower()}_charge"] = f"{collection}_charge"
        arrays = tree.arrays(list(wanted.values()))
    return {name: arrays[branch] for name, branch in wanted.items()}


def momenta(b: dict[str, ak.Array], collection: str) -> dict[str, ak.Array]:
    """Cartesian float64 components (px, py, pz, e) of a collection's objects."""
    pt, eta, phi, mass = (
        ak.values_astype(b[f"{collection}_{field}"], np.float64) for field in KINEMATICS
    )
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    # A negative mass means m^2 < 0 (spacelike), as for ROOT's and scikit-hep vector's
    # PtEtaPhiM vectors; real NanoAOD electrons go down to about -0.06 GeV.
    mass2 = np.sign(mass) * mass**2
    e = np.sqrt(np.maximum(px**2 + py**2 + pz**2 + mass2, 0.0))
    return {"px": px, "py": py, "pz": pz, "e": e}


def invariant_mass(px, py, pz, e):
    """Signed invariant mass: negative for spacelike sums, as vector's ``mass`` is."""
    mass2 = e**2 - (px**2 + py**2 + pz**2)
    return np.sign(mass2) * np.sqrt(np.abs(mass2))


def summed(p: dict[str, ak.Array], *indices: ak.Array) -> dict[str, ak.Array]:
    """Per-event sums of the components of the objects at each of ``indices``."""
    return {k: sum(p[k][index] for index in indices) for k in ("px", "py", "pz", "e")}


def pair_mass(p: dict[str, ak.Array], i: ak.Array, j: ak.Array) -> ak.Array:
    """Invariant mass of the pairs of objects at indices ``i`` and ``j``."""
    return invariant_mass(**summed(p, i, j))


def delta_phi(phi1, phi2):
    """phi1 - phi2 folded into [-pi, pi)."""
    return (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi


def ref_dimuon(b):
    """Mass of the muon pair in events with exactly two muons of opposite charge."""
    two = ak.num(b["muon_pt"]) == 2
    charge = b["muon_charge"][two]
    opposite = charge[:, 0] * charge[:, 1] < 0
    total = {k: v[two][:, 0] + v[two][:, 1] for k, v in momenta(b, "muon").items()}
    return {"mass": invariant_mass(**total)[opposite]}


def ref_adl1(b):
    """MET of every event."""
    return {"met": b["met_pt"]}


def ref_adl2(b):
    """pT of every jet."""
    return {"jet_pt": ak.flatten(b["jet_pt"])}


def ref_adl3(b):
    """pT of every jet with |eta| < 1."""
    return {"jet_pt": ak.flatten(b["jet_pt"][np.abs(b["jet_eta"]) < 1])}


def ref_adl4(b):
    """MET of events with two or more jets above 40 GeV."""
    return {"met": b["met_pt"][ak.count_nonzero(b["jet_pt"] > 40, axis=1) >= 2]}


def ref_adl5(b):
    """MET of events with any opposite-charge muon pair of mass in (60, 120) GeV."""
    pairs = ak.argcombinations(b["muon_pt"], 2)
    i, j = pairs["0"], pairs["1"]
    mass = pair_mass(momenta(b, "muon"), i, j)
    charge = b["muon_charge"]
    good = (charge[i] * charge[j] < 0) & (mass > 60) & (mass < 120)
    return {"met": b["met_pt"][ak.any(good, axis=1)]}


def ref_adl6(b):
    """pT of, and largest b-tag in, the trijet closest to 172.5 GeV (events with 3+ jets)."""
    enough = ak.num(b["jet_pt"]) >= 3
    p = {k: v[enough] for k, v in momenta(b, "jet").items()}
    btag = b["jet_btag"][enough]
    triplets = ak.argcombinations(btag, 3)
    i, j, k = triplets["0"], triplets["1"], triplets["2"]
    total = summed(p, i, j, k)
    distance = np.abs(invariant_mass(**total) - 172.5)
    # The first triplet (in i < j < k lexicographic order) of smallest distance wins.
    best = ak.argmin(distance, axis=1, keepdims=True)
    pt = ak.flatten(np.sqrt(total["px"] ** 2 + total["py"] ** 2)[best])
    tags = [ak.flatten(btag[index[best]]) for index in (i, j, k)]
    return {"trijet_pt": pt, "trijet_btag": np.maximum(np.maximum(tags[0], tags[1]), tags[2])}


def ref_adl7(b):
    """Per event, sum pT of jets above 30 GeV with dR >= 0.4 to every lepton above 10 GeV."""
    jet = b["jet_pt"] > 30
    jet_eta, jet_phi, jet_pt = b["jet_eta"][jet], b["jet_phi"][jet], b["jet_pt"][jet]
    isolated = ak.ones_like(jet_pt, dtype=bool)
    for lepton in ("muon", "electron"):
        keep = b[f"{lepton}_pt"] > 10
        eta, phi = b[f"{lepton}_eta"][keep], b[f"{lepton}_phi"][keep]
        pairs = ak.cartesian([jet_eta, eta], axis=1, nested=True)
        deta = ak.values_astype(pairs["0"], np.float64) - ak.values_astype(pairs["1"], np.float64)
        phis = ak.cartesian([jet_phi, phi], axis=1, nested=True)
        dphi = delta_phi(
            ak.values_astype(phis["0"], np.float64), ak.values_astype(phis["1"], np.float64)
        )
        isolated = isolated & ak.all(np.sqrt(deta**2 + dphi**2) >= 0.4, axis=2)
    sum_pt = ak.sum(ak.values_astype(jet_pt, np.float64)[isolated], axis=1)
    return {"sum_pt": sum_pt}


def ref_adl8(b):
    """mT of MET and the leading lepton outside the SFOS pair closest to 91.2 GeV."""

    def both(name):
        return ak.concatenate([b[f"muon_{name}"], b[f"electron_{name}"]], axis=1)

    pt, phi, charge = both("pt"), both("phi"), both("charge")
    flavour = ak.concatenate(
        [
            ak.full_like(b["muon_charge"], MUON_FLAVOUR),
            ak.full_like(b["electron_charge"], ELECTRON_FLAVOUR),
        ],
        axis=1,
    )
    mu, el = momenta(b, "muon"), momenta(b, "electron")
    p = {k: ak.concatenate([mu[k], el[k]], axis=1) for k in mu}

    pairs = ak.argcombinations(pt, 2)
    i, j = pairs["0"], pairs["1"]
    sfos = (flavour[i] == flavour[j]) & (charge[i] * charge[j] < 0)
    distance = np.abs(pair_mass(p, i, j) - 91.2)
    # Not-SFOS pairs can never be chosen; the first pair of smallest distance wins.
    distance = ak.where(sfos, distance, np.inf)
    best = ak.argmin(distance, axis=1, keepdims=True)
    selected = (ak.num(pt) >= 3) & ak.any(sfos, axis=1)
    best_i, best_j = ak.flatten(i[best][selected]), ak.flatten(j[best][selected])

    index = ak.local_index(pt[selected])
    others = (index != best_i) & (index != best_j)
    lepton_pt = ak.where(others, ak.values_astype(pt[selected], np.float64), -np.inf)
    third = ak.argmax(lepton_pt, axis=1, keepdims=True)  # the first of equal-pT leptons
    third_pt = ak.flatten(lepton_pt[third])
    third_phi = ak.flatten(ak.values_astype(phi[selected], np.float64)[third])
    met_pt = ak.values_astype(b["met_pt"][selected], np.float64)
    met_phi = ak.values_astype(b["met_phi"][selected], np.float64)
    mt = np.sqrt(2 * third_pt * met_pt * (1 - np.cos(delta_phi(met_phi, third_phi))))
    return {"mt": mt}


REFERENCES: dict[str, Callable[[dict[str, ak.Array]], dict[str, ak.Array]]] = {
    "dimuon": ref_dimuon,
    "adl1": ref_adl1,
    "adl2": ref_adl2,
    "adl3": ref_adl3,
    "adl4": ref_adl4,
    "adl5": ref_adl5,
    "adl6": ref_adl6,
    "adl7": ref_adl7,
    "adl8": ref_adl8,
}


@pytest.fixture(scope="session")
def raw_branches(sample_paths: Callable[[str], Path]) -> Callable[[str], dict[str, ak.Array]]:
    """``read_branches`` of a sample, read once per sample."""
    cache: dict[str, dict[str, ak.Array]] = {}

    def branches(label: str) -> dict[str, ak.Array]:
        if label not in cache:
            cache[label] = read_branches(sample_paths(label))
        return cache[label]

    return branches


def reference_histogram(name: str, binning: tuple[int, float, float], values) -> hist.Hist:
    """A fresh histogram of the expected binning filled with the reference values."""
    bins, start, stop = binning
    histogram = hist.Hist(hist.axis.Regular(bins, start, stop, name=name))
    histogram.fill(np.asarray(ak.to_numpy(values), dtype=np.float64))
    return histogram


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("name", sorted(BUILTIN_PROCESSORS))
def test_processor_matches_reference(name, sample, coffea_outputs, raw_branches):
    """Every bin (flow bins too) equals the independent reference, on generated and real data."""
    output = coffea_outputs(sample)[name]
    expected_binning = EXPECTED_BINNING[name]
    assert isinstance(output, dict)
    assert set(output) == set(expected_binning)

    reference = REFERENCES[name](raw_branches(sample))
    for hist_name, binning in expected_binning.items():
        histogram = output[hist_name]
        assert isinstance(histogram, hist.Hist)
        assert histogram.ndim == 1
        axis = histogram.axes[0]
        assert isinstance(axis, hist.axis.Regular)
        assert axis.name == hist_name
        assert axis.traits.underflow and axis.traits.overflow
        bins, start, stop = binning
        np.testing.assert_allclose(axis.edges, np.linspace(start, stop, bins + 1))
        assert histogram.storage_type is hist.storage.Double

        expected = reference_histogram(hist_name, binning, reference[hist_name])
        got, want = histogram.values(flow=True), expected.values(flow=True)
        differing = np.flatnonzero(got != want)
        assert differing.size == 0, (
            f"{name}/{hist_name} on {sample}: flow-indexed bins {differing.tolist()} hold "
            f"{got[differing].tolist()}, the reference {want[differing].tolist()}"
        )
        if (name, sample) in EXPECTED_EMPTY:
            assert want.sum() == 0
        else:
            assert want.sum() > 0, f"{name}/{hist_name} has no entries on {sample}"


#: The branches each processor may read: NanoEvents is lazy, so nothing else is touched.
NEEDED_BRANCHES: dict[str, set[str]] = {
    "dimuon": {"nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"},
    "adl1": {"MET_pt"},
    "adl2": {"nJet", "Jet_pt"},
    "adl3": {"nJet", "Jet_pt", "Jet_eta"},
    "adl4": {"nJet", "Jet_pt", "MET_pt"},
    "adl5": {"nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "MET_pt"},
    "adl6": {"nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btag"},
    "adl7": {
        *("nJet", "Jet_pt", "Jet_eta", "Jet_phi"),
        *("nMuon", "Muon_pt", "Muon_eta", "Muon_phi"),
        *("nElectron", "Electron_pt", "Electron_eta", "Electron_phi"),
    },
    "adl8": {
        *("nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"),
        *("nElectron", "Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass"),
        *("Electron_charge", "MET_pt", "MET_phi"),
    },
}


@pytest.mark.parametrize("name", sorted(BUILTIN_PROCESSORS))
def test_processor_reads_only_needed_branches(name, small_nanoaod):
    """Run alone through the Runner, each processor materialises only the branches it needs."""
    output, metrics = run_coffea(small_nanoaod, BUILTIN_PROCESSORS[name]())
    assert metrics["chunks"] > 1
    read = {column.rsplit("-", 1)[0] for column in metrics["columns"]}
    assert read, "the processor read nothing"
    assert read <= NEEDED_BRANCHES[name], f"unneeded branches read: {read - NEEDED_BRANCHES[name]}"
    assert set(output) == set(EXPECTED_BINNING[name])


def test_builtin_registry():
    """The registry names the dimuon analysis and the eight ADL queries."""
    assert set(BUILTIN_PROCESSORS) == {"dimuon", *(f"adl{i}" for i in range(1, 9))}
    for cls in BUILTIN_PROCESSORS.values():
        assert issubclass(cls, processor.ProcessorABC)
        assert cls.__doc__


@pytest.mark.parametrize("name", sorted(BUILTIN_PROCESSORS))
def test_processor_is_picklable_and_postprocess_is_identity(name):
    """Processors survive pickling (for distributed executors) and postprocess changes nothing."""
    instance = pickle.loads(pickle.dumps(BUILTIN_PROCESSORS[name]()))
    accumulator = {"h": hist.Hist(hist.axis.Regular(2, 0, 1, name="h"))}
    assert instance.postprocess(accumulator) is accumulator


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["pt", "btag", "btagDeepFlavB", "btagDeepB"], "btag"),
        (["pt", "btagDeepB", "btagDeepFlavB"], "btagDeepFlavB"),
        (["pt", "btagDeepB", "btagCSVV2"], "btagDeepB"),
    ],
)
def test_btag_field_preference(fields, expected):
    """btag is preferred, then btagDeepFlavB, then btagDeepB."""
    jets = ak.Array([[dict.fromkeys(fields, 0.5)]])
    assert btag_field(jets) == expected


def test_btag_field_names_the_branches_looked_for():
    """Without any known b-tag branch the error lists every branch tried."""
    jets = ak.Array([[{"pt": 30.0, "btagCSVV2": 0.5}]])
    with pytest.raises(DataError, match="Jet_btag, Jet_btagDeepFlavB, Jet_btagDeepB"):
        btag_field(jets)


def test_missing_et_names_the_branches_looked_for():
    """Without MET or PFMET the error lists both branches tried."""
    events = ak.Array([{"PuppiMET": {"pt": 10.0, "phi": 0.0}}])
    with pytest.raises(DataError, match="MET_pt, PFMET_pt"):
        missing_et(events)


def test_adl6_in_slices_of_events_fills_what_it_fills_at_once(small_nanoaod, monkeypatch):
    """adl6 works through a chunk's trijets a slice of events at a time (memory); the
    histograms do not depend on the slices, which cover every event once, in order."""
    from coffea.nanoevents import NanoEventsFactory

    from casa.analysis.processors import adl

    events = NanoEventsFactory.from_root(
        {str(small_nanoaod): "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    jets = events.Jet[ak.num(events.Jet) >= 3]
    n = ak.to_numpy(ak.num(jets))
    per_event = n * (n - 1) * (n - 2) // 6
    slices = list(adl._combination_slices(jets, 500))
    assert len(slices) > 10
    assert slices[0][0] == 0 and slices[-1][1] == len(jets)
    assert all(a < b for a, b in slices)
    assert all(b == c for (_, b), (c, _) in zip(slices, slices[1:], strict=False))
    assert all(per_event[a:b].sum() <= 500 or b - a == 1 for a, b in slices)

    monkeypatch.setattr(adl, "TRIJET_COMBINATIONS_AT_ONCE", 1 << 40)
    at_once = adl.ADL6Processor().process(events)
    monkeypatch.setattr(adl, "TRIJET_COMBINATIONS_AT_ONCE", 500)
    sliced = adl.ADL6Processor().process(events)
    for name in ("trijet_pt", "trijet_btag"):
        assert at_once[name].values(flow=True).sum() == len(jets)
        np.testing.assert_array_equal(
            sliced[name].values(flow=True), at_once[name].values(flow=True)
        )


@pytest.mark.parametrize("sample", [GENERATED, "nano_dy", "nano_dimuon"])
def test_flat_pair_masses_equal_vectors_bit_for_bit(sample, sample_paths):
    """The dimuon query sums muon pairs on flat arrays (FlatCandidates) instead of coffea's
    candidate records; every pair's mass is the vector library's, to the last bit."""
    from coffea.nanoevents import NanoEventsFactory

    from casa.analysis.processors.objects import FlatCandidates, four_vectors

    events = NanoEventsFactory.from_root(
        {str(sample_paths(sample)): "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    muons = events.Muon[ak.num(events.Muon) >= 2]
    records = four_vectors(muons, charge=muons.charge)
    expected = ak.to_numpy((records[:, 0] + records[:, 1]).mass)
    flat = FlatCandidates(muons)
    got = flat.pair_mass(flat.starts, flat.starts + 1)
    assert len(got) == len(muons) > 0
    assert got.dtype == expected.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
