"""The eight IRIS-HEP ADL functionality benchmarks (adl-benchmarks-index) as coffea processors.

Binning follows the public coffea implementation of the benchmarks: 100 regular bins from 0 to
200 GeV for every momentum, missing-ET and mass-like quantity, and 100 bins from 0 to 1 for the
b-tag discriminant. docs/analyses.md gives the exact definitions.
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np

from casa.analysis.processors.objects import (
    HistogramProcessor,
    btag_field,
    fill,
    four_vectors,
    light_leptons,
    missing_et,
    regular_hist,
)

#: Mass of the top quark that query 6 matches trijets to, in GeV.
TOP_MASS = 172.5

#: Mass of the Z boson that query 8 matches same-flavour opposite-charge pairs to, in GeV.
Z_MASS = 91.2

_MET_LABEL = r"$E_{T}^{miss}$ [GeV]"
_JET_PT_LABEL = r"Jet $p_{T}$ [GeV]"


def _gev_hist(name: str, label: str) -> hist.Hist:
    return regular_hist(name, 100, 0.0, 200.0, label)


class ADL1Processor(HistogramProcessor):
    """Query 1: the missing transverse momentum of every event."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``met``, one entry per event."""
        met = missing_et(events).pt
        return {"met": fill(_gev_hist("met", _MET_LABEL), met)}


class ADL2Processor(HistogramProcessor):
    """Query 2: the transverse momentum of every jet."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``jet_pt``, one entry per jet."""
        return {"jet_pt": fill(_gev_hist("jet_pt", _JET_PT_LABEL), events.Jet.pt)}


class ADL3Processor(HistogramProcessor):
    """Query 3: the transverse momentum of every jet with |eta| < 1."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``jet_pt``, one entry per central jet."""
        # On the jets' flat pt and eta: a jagged mask of the jagged pt built awkward's index
        # arrays for every jet, twice a chunk's columns in memory (docs/performance.md).
        pt, eta = (ak.to_numpy(ak.flatten(events.Jet[name])) for name in ("pt", "eta"))
        return {"jet_pt": fill(_gev_hist("jet_pt", _JET_PT_LABEL), pt[np.abs(eta) < 1])}


class ADL4Processor(HistogramProcessor):
    """Query 4: MET of events with at least two jets with pT > 40 GeV."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``met``, one entry per selected event."""
        selected = ak.sum(events.Jet.pt > 40, axis=1) >= 2
        met = missing_et(events).pt[selected]
        return {"met": fill(_gev_hist("met", _MET_LABEL), met)}


class ADL5Processor(HistogramProcessor):
    """Query 5: MET of events with an opposite-charge muon pair of mass 60-120 GeV."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``met`` once per event where any two muons pass."""
        muons = events.Muon
        muons = four_vectors(muons, charge=muons.charge)
        pairs = ak.combinations(muons, 2, fields=["first", "second"])
        mass = (pairs.first + pairs.second).mass
        opposite = pairs.first.charge * pairs.second.charge < 0
        selected = ak.any(opposite & (mass > 60) & (mass < 120), axis=1)
        met = missing_et(events).pt[selected]
        return {"met": fill(_gev_hist("met", _MET_LABEL), met)}


class ADL6Processor(HistogramProcessor):
    """Query 6: pT and largest b-tag of the trijet with mass closest to 172.5 GeV."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``trijet_pt`` and ``trijet_btag`` once per event with at least three jets."""
        jets = events.Jet
        jets = jets[ak.num(jets) >= 3]
        btag = jets[btag_field(jets)]
        # A slice of events at a time: every 3-jet combination holds a dozen numbers, so a
        # whole chunk's combinations took 7x its columns in memory (docs/performance.md).
        slices = _combination_slices(jets, TRIJET_COMBINATIONS_AT_ONCE)
        parts = [_best_trijets(jets[a:b], btag[a:b]) for a, b in slices]
        best_pt = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        max_btag = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        return {
            "trijet_pt": fill(_gev_hist("trijet_pt", r"Trijet $p_{T}$ [GeV]"), best_pt),
            "trijet_btag": fill(
                regular_hist("trijet_btag", 100, 0.0, 1.0, "Largest b-tag discriminant in trijet"),
                max_btag,
            ),
        }


#: At most this many 3-jet combinations at a time in adl6 (about 6 MB of arrays: a 500,000-event
#: chunk's combinations at once grew a worker by 300 MB; this way by about 10 MB, as fast).
TRIJET_COMBINATIONS_AT_ONCE = 1 << 16


def _combination_slices(jets: ak.Array, limit: int = TRIJET_COMBINATIONS_AT_ONCE):
    """``(start, stop)`` ranges of events, in order, whose 3-jet combinations number at most
    ``limit`` each (an event with more gets a range of its own)."""
    n = ak.to_numpy(ak.num(jets)).astype(np.int64)
    combinations = np.cumsum(n * (n - 1) * (n - 2) // 6)
    start, done = 0, 0
    while start < len(n):
        stop = max(int(np.searchsorted(combinations, done + limit, side="right")), start + 1)
        yield start, stop
        done = int(combinations[stop - 1])
        start = stop


def _best_trijets(jets: ak.Array, btag: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the pT of the trijet whose mass is closest to ``TOP_MASS`` and the largest
    b-tag among its jets.

    Every 3-jet combination of an event is summed from flat Cartesian arrays (px, py, pz, E
    of each jet, computed once in float64) instead of coffea's Lorentz-vector records:
    building a record and converting coordinates for every combination took two thirds of
    the query's time. The arithmetic is the vector library's (E from a signed squared mass,
    a negative squared mass of the sum gives a negative mass); on the bench's 4M events
    both give the same histograms, and 3x faster.
    """
    counts = ak.to_numpy(ak.num(jets))
    pt, eta, phi, mass = (
        ak.to_numpy(ak.flatten(jets[name])).astype(np.float64)
        for name in ("pt", "eta", "phi", "mass")
    )
    flat_btag = ak.to_numpy(ak.flatten(btag))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + np.copysign(mass**2, mass))

    # Each combination's three jets as indices into the flat arrays, in ak.combinations order.
    combos = ak.argcombinations(jets.pt, 3, fields=["a", "b", "c"])
    per_event = ak.to_numpy(ak.num(combos))
    first_jet = np.repeat(np.cumsum(counts) - counts, per_event)
    a, b, c = (ak.to_numpy(ak.flatten(combos[k])) + first_jet for k in ("a", "b", "c"))
    sx, sy = px[a] + px[b] + px[c], py[a] + py[b] + py[c]
    sz, se = pz[a] + pz[b] + pz[c], energy[a] + energy[b] + energy[c]
    mass2 = se**2 - sx**2 - sy**2 - sz**2
    trijet_mass = np.copysign(np.sqrt(np.abs(mass2)), mass2)

    # argmin keeps the first of equally close trijets, in ak.combinations order.
    distance = ak.unflatten(np.abs(trijet_mass - TOP_MASS), per_event)
    best = np.cumsum(per_event) - per_event + ak.to_numpy(ak.argmin(distance, axis=1))
    max_btag = np.maximum(np.maximum(flat_btag[a[best]], flat_btag[b[best]]), flat_btag[c[best]])
    return np.hypot(sx[best], sy[best]), max_btag


class ADL7Processor(HistogramProcessor):
    """Query 7: per-event scalar pT sum of jets above 30 GeV away from leptons above 10 GeV."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``sum_pt`` (jets with dR >= 0.4 to all leptons) once per event, 0 if none."""
        jets = _Flat(events.Jet, min_pt=30)
        leptons = [_Flat(events.Muon, min_pt=10), _Flat(events.Electron, min_pt=10)]
        sum_pt = _isolated_pt_sum(jets, leptons, 0.4)
        return {"sum_pt": fill(_gev_hist("sum_pt", r"Isolated jet $\sum p_{T}$ [GeV]"), sum_pt)}


class _Flat:
    """The objects of a collection above ``min_pt``, as flat float64 pt, eta, phi arrays and
    each event's count."""

    def __init__(self, collection: ak.Array, min_pt: float):
        counts = ak.to_numpy(ak.num(collection))
        pt, eta, phi = (ak.to_numpy(ak.flatten(collection[name])) for name in ("pt", "eta", "phi"))
        keep = pt > min_pt  # widening to float64 changes no comparison with min_pt
        self.event = np.repeat(np.arange(len(counts)), counts)[keep]
        self.counts = np.bincount(self.event, minlength=len(counts))
        self.pt, self.eta, self.phi = (a[keep].astype(np.float64) for a in (pt, eta, phi))


def _isolated_pt_sum(jets: _Flat, collections: list[_Flat], min_dr: float) -> np.ndarray:
    """Per event, the scalar pT sum of the jets with dR >= ``min_dr`` to every object of every
    collection.

    Every jet-object pair is one entry of flat arrays indexed by numpy, instead of coffea's
    ``metric_table`` over Lorentz-vector records of the jets and of muons and electrons
    concatenated (and record arrays filtered by pT): a jet only has to be far from all of
    them, so each collection is paired on its own. dR is the vector library's,
    sqrt(rectify(dphi)^2 + deta^2) with rectify(x) = (x + pi) mod 2 pi - pi, in float64 as
    ``four_vectors`` widens; on the bench's 4M events both give the same histogram, and the
    query runs 2-3x faster in one process.
    """
    isolated = np.ones(len(jets.pt), dtype=bool)
    for objects in collections:
        # Pair every jet with each object of its event: pair p of jet j is object
        # first_object[j] + (p - first_pair[j]).
        per_jet = objects.counts[jets.event]
        first_object = (np.cumsum(objects.counts) - objects.counts)[jets.event]
        first_pair = np.cumsum(per_jet) - per_jet
        jet = np.repeat(np.arange(len(jets.pt)), per_jet)
        obj = np.arange(len(jet)) - np.repeat(first_pair - first_object, per_jet)
        dphi = (jets.phi[jet] - objects.phi[obj] + np.pi) % (2 * np.pi) - np.pi
        dr = np.sqrt(dphi**2 + (jets.eta[jet] - objects.eta[obj]) ** 2)
        isolated[jet[~(dr >= min_dr)]] = False
    weights = np.where(isolated, jets.pt, 0.0)
    return np.bincount(jets.event, weights=weights, minlength=len(jets.counts))


class ADL8Processor(HistogramProcessor):
    """Query 8: mT of MET and the leading light lepton outside the best Z candidate pair."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``mt`` once per event with 3+ light leptons and an SFOS pair."""
        leptons = light_leptons(events)
        met = missing_et(events)
        enough = ak.num(leptons) >= 3
        leptons, met = leptons[enough], met[enough]

        pairs = ak.argcombinations(leptons, 2, fields=["i", "j"])
        first, second = leptons[pairs.i], leptons[pairs.j]
        sfos = (first.flavour == second.flavour) & (first.charge * second.charge < 0)
        mass = (first + second).mass[sfos]
        pairs = pairs[sfos]
        # argmin keeps the first of equally close pairs, in ak.argcombinations order.
        best = ak.firsts(pairs[ak.argmin(abs(mass - Z_MASS), axis=1, keepdims=True)])
        has_pair = ~ak.is_none(best)
        leptons, met, best = leptons[has_pair], met[has_pair], best[has_pair]

        index = ak.local_index(leptons)
        others = leptons[(index != best.i) & (index != best.j)]
        # argmax keeps the first of equal-pT leptons: muons come before electrons.
        third = ak.firsts(others[ak.argmax(others.pt, axis=1, keepdims=True)])
        mt = np.sqrt(2 * third.pt * met.pt * (1 - np.cos(met.delta_phi(third))))
        return {"mt": fill(_gev_hist("mt", r"$m_{T}$(MET, lepton) [GeV]"), mt)}
