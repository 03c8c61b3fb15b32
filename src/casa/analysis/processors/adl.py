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
        jets = events.Jet
        central = jets.pt[abs(jets.eta) < 1]
        return {"jet_pt": fill(_gev_hist("jet_pt", _JET_PT_LABEL), central)}


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
        jets = four_vectors(jets, btag=jets[btag_field(jets)])
        jets = jets[ak.num(jets) >= 3]
        trijets = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
        p4 = trijets.j1 + trijets.j2 + trijets.j3
        # argmin keeps the first of equally close trijets, in ak.combinations order.
        best = ak.argmin(abs(p4.mass - TOP_MASS), axis=1, keepdims=True)
        best_p4 = ak.firsts(p4[best])
        best_jets = ak.firsts(trijets[best])
        max_btag = np.maximum(np.maximum(best_jets.j1.btag, best_jets.j2.btag), best_jets.j3.btag)
        return {
            "trijet_pt": fill(_gev_hist("trijet_pt", r"Trijet $p_{T}$ [GeV]"), best_p4.pt),
            "trijet_btag": fill(
                regular_hist("trijet_btag", 100, 0.0, 1.0, "Largest b-tag discriminant in trijet"),
                max_btag,
            ),
        }


class ADL7Processor(HistogramProcessor):
    """Query 7: per-event scalar pT sum of jets above 30 GeV away from leptons above 10 GeV."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``sum_pt`` (jets with dR >= 0.4 to all leptons) once per event, 0 if none."""
        jets = four_vectors(events.Jet)
        jets = jets[jets.pt > 30]
        leptons = light_leptons(events)
        leptons = leptons[leptons.pt > 10]
        isolated = ak.all(jets.metric_table(leptons) >= 0.4, axis=2)
        sum_pt = ak.sum(jets.pt[isolated], axis=1)
        return {"sum_pt": fill(_gev_hist("sum_pt", r"Isolated jet $\sum p_{T}$ [GeV]"), sum_pt)}


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
