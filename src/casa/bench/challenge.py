"""The wide-file query: read and materialise about a quarter of a NanoAOD file's branches.

As the IRIS-HEP 200 Gbps challenge's notebook does, the query does nothing clever with the
data: it asks NanoEvents for each branch of a list (:func:`casa.generate.wide.challenge_branches`,
a quarter of a ``nanoaod-wide`` file's 1,507 branches) and makes every value count, so that
every basket is read and decompressed and every array built. Its output is, per branch,
the number of non-zero values (for a counter ``nX``: the events with at least one X), which
an independent uproot + numpy pass over the same files reproduces exactly
(:func:`reference_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import awkward as ak
import hist
import numpy as np
from coffea.processor import ProcessorABC

from casa.errors import AnalysisError


def _array(events: ak.Array, branch: str) -> ak.Array:
    """The NanoEvents array of ``branch``: ``Jet_pt`` is ``events.Jet.pt``, ``nJet`` the
    jets' counts, ``HLT_IsoMu24`` ``events.HLT.IsoMu24``, ``run`` ``events.run``."""
    if branch in events.fields:
        return events[branch]
    if branch.startswith("n") and branch[1:] in events.fields:
        return ak.num(events[branch[1:]], axis=1)
    head, _, field = branch.partition("_")
    if field and head in events.fields and field in events[head].fields:
        return events[head][field]
    raise AnalysisError(f"the events have no branch {branch!r} (as NanoAODSchema names it)")


class ChallengeProcessor(ProcessorABC):
    """Materialise ``branches`` (raw branch names) of every event; count non-zero values."""

    def __init__(self, branches: Sequence[str]):
        if not branches:
            raise AnalysisError("the challenge query needs the branches to read")
        self.branches = list(branches)

    def process(self, events: ak.Array) -> dict[str, hist.Hist]:
        """``nonzero``: one category per branch, weighted by its non-zero values."""
        counts = [int(ak.count_nonzero(_array(events, b), axis=None)) for b in self.branches]
        histogram = hist.Hist(hist.axis.StrCategory(self.branches, name="branch"))
        histogram.fill(branch=self.branches, weight=np.asarray(counts, dtype=float))
        return {"nonzero": histogram}

    def postprocess(self, accumulator):
        """Nothing to do."""
        return accumulator


def reference_counts(paths: Sequence[str], branches: Sequence[str]) -> dict[str, np.ndarray]:
    """What :class:`ChallengeProcessor` fills, by plain uproot + numpy, flow bins included."""
    import uproot

    totals = dict.fromkeys(branches, 0)
    for path in paths:
        with uproot.open(path) as f:
            tree = f["Events"]
            for batch in tree.iterate(list(branches), library="ak", step_size="200 MB"):
                for b in branches:
                    totals[b] += int(np.count_nonzero(ak.to_numpy(ak.flatten(batch[b], None))))
    # StrCategory's flow: one overflow bin after the categories.
    return {"nonzero": np.asarray([*(totals[b] for b in branches), 0.0], dtype=float)}
