"""The dimuon mass spectrum: the classic first look at a muon dataset."""

from __future__ import annotations

import awkward as ak
import hist

from casa.analysis.processors.objects import HistogramProcessor, fill, four_vectors


class DimuonProcessor(HistogramProcessor):
    """Invariant mass of the two muons in events with exactly two, oppositely charged, muons."""

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """Fill ``mass`` (200 bins, 0-200 GeV), one entry per selected event."""
        muons = events.Muon
        muons = four_vectors(muons, charge=muons.charge)
        pairs = muons[ak.num(muons) == 2]
        pairs = pairs[pairs.charge[:, 0] * pairs.charge[:, 1] < 0]
        mass = (pairs[:, 0] + pairs[:, 1]).mass
        histogram = hist.Hist(
            hist.axis.Regular(200, 0, 200, name="mass", label=r"$m_{\mu\mu}$ [GeV]")
        )
        return {"mass": fill(histogram, mass)}
