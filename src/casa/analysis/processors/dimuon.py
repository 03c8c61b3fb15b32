"""The dimuon mass spectrum: the classic first look at a muon dataset."""

from __future__ import annotations

import awkward as ak
import hist

from casa.analysis.processors.objects import FlatCandidates, HistogramProcessor, fill


class DimuonProcessor(HistogramProcessor):
    """Invariant mass of the two muons in events with exactly two, oppositely charged, muons."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``mass`` (200 bins, 0-200 GeV), one entry per selected event."""
        muons = FlatCandidates(events.Muon)
        first = muons.starts[muons.counts == 2]
        first = first[muons.charge[first] * muons.charge[first + 1] < 0]
        mass = muons.pair_mass(first, first + 1)
        histogram = hist.Hist(
            hist.axis.Regular(200, 0, 200, name="mass", label=r"$m_{\mu\mu}$ [GeV]")
        )
        return {"mass": fill(histogram, mass)}
