"""Physics objects shared by the built-in processors: four-vectors, light leptons, b-tag, MET."""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
from coffea.nanoevents.methods import candidate
from coffea.processor import ProcessorABC

from casa.errors import DataError

#: Jet b-tag fields tried in order: the ADL benchmark layout, then DeepJet, then DeepCSV.
BTAG_FIELDS: tuple[str, ...] = ("btag", "btagDeepFlavB", "btagDeepB")

#: Missing-ET collections tried in order; NanoAOD v15 renamed ``MET`` to ``PFMET``.
MET_COLLECTIONS: tuple[str, ...] = ("MET", "PFMET")

#: Value of the ``flavour`` field of a light lepton built from a muon (its |PDG id|).
MUON_FLAVOUR = 13

#: Value of the ``flavour`` field of a light lepton built from an electron (its |PDG id|).
ELECTRON_FLAVOUR = 11

_KINEMATICS = ("pt", "eta", "phi", "mass")


class HistogramProcessor(ProcessorABC):
    """A stateless processor whose output is a plain ``dict[str, hist.Hist]``."""

    def postprocess(self, accumulator: dict[str, hist.Hist]) -> dict[str, hist.Hist]:
        """Return the merged histograms unchanged."""
        return accumulator


def regular_hist(name: str, bins: int, start: float, stop: float, label: str) -> hist.Hist:
    """An empty unweighted histogram with one regular axis called ``name`` (with flow bins)."""
    return hist.Hist(hist.axis.Regular(bins, start, stop, name=name, label=label))


def fill(histogram: hist.Hist, values: ak.Array) -> hist.Hist:
    """Fill ``histogram`` with every value of ``values`` (flattened) and return it."""
    histogram.fill(ak.to_numpy(ak.flatten(values, axis=None)))
    return histogram


class FlatCandidates:
    """The objects of a collection, event by event, as flat numpy arrays.

    ``counts`` and ``starts`` (int64) place each event's objects in the flat arrays;
    ``x``, ``y``, ``z``, ``t`` are the Cartesian components the vector library computes
    for coffea's ``PtEtaPhiMCandidate`` records from pt, eta, phi, mass widened to float64
    (as :func:`four_vectors` widens), with the same arithmetic in the same order, so that
    masses of sums equal theirs bit for bit (tests/analysis). ``charge`` is kept as read. On records of virtual arrays the same pair masses cost several passes
    over each chunk's muons (awkward's broadcasting compares offsets and projects indexed
    records per operation); on flat arrays the dimuon query is about a fifth faster per
    chunk (docs/performance.md).
    """

    def __init__(self, collection: ak.Array):
        self.counts = ak.to_numpy(ak.num(collection)).astype(np.int64)
        self.starts = np.cumsum(self.counts) - self.counts
        pt, eta, phi, mass = (
            ak.to_numpy(ak.flatten(collection[name])).astype(np.float64) for name in _KINEMATICS
        )
        self.charge = ak.to_numpy(ak.flatten(collection["charge"]))
        self.x, self.y, self.z = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        # vector: t = sqrt(max(copysign(tau^2, tau) + |p|^2, 0)), |p|^2 = rho^2 / sin^2(theta)
        expmeta = np.exp(-eta)
        invsintheta = 0.5 * (1 + expmeta**2) / expmeta
        self.t = np.sqrt(np.maximum(np.copysign(mass**2, mass) + pt**2 * invsintheta**2, 0))

    def pair_mass(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The invariant mass of each pair of objects (flat indices), as vector computes the
        mass of a sum of candidates: copysign(sqrt(|t^2 - |p|^2|), t^2 - |p|^2)."""
        x, y = self.x[first] + self.x[second], self.y[first] + self.y[second]
        z, t = self.z[first] + self.z[second], self.t[first] + self.t[second]
        squared = t**2 - (x**2 + y**2 + z**2)
        return np.copysign(np.sqrt(np.abs(squared)), squared)


def four_vectors(collection: ak.Array, **extra: ak.Array) -> ak.Array:
    """The collection's pt, eta, phi, mass widened to float64, as Lorentz vectors with ``extra``.

    With a ``charge`` among ``extra`` the records are coffea ``PtEtaPhiMCandidate`` (sums are
    Cartesian), otherwise ``PtEtaPhiMLorentzVector``.
    """
    # coffea's vector behaviours compute in the precision of their inputs. In float32,
    # m^2 = E^2 - p^2 of a light, boosted pair loses up to ~1% of the mass, enough to move
    # entries across bin edges and selection cuts, so kinematics are widened first.
    fields = {name: ak.values_astype(collection[name], np.float64) for name in _KINEMATICS}
    fields.update(extra)
    name = "PtEtaPhiMCandidate" if "charge" in extra else "PtEtaPhiMLorentzVector"
    return ak.zip(fields, with_name=name, behavior=candidate.behavior)


def light_leptons(events: ak.Array) -> ak.Array:
    """Each event's muons followed by its electrons, as one candidate collection.

    Fields: pt, eta, phi, mass (float64), charge, and flavour (13 for muons, 11 for electrons).
    """
    # Muon and Electron records have different fields, so concatenating them directly gives
    # an awkward union; zipping both into the same record first keeps one plain record type.
    muons = events.Muon
    electrons = events.Electron
    parts = [
        four_vectors(
            leptons,
            charge=leptons.charge,
            flavour=ak.full_like(leptons.charge, flavour),
        )
        for leptons, flavour in ((muons, MUON_FLAVOUR), (electrons, ELECTRON_FLAVOUR))
    ]
    return ak.concatenate(parts, axis=1)


def btag_field(jets: ak.Array) -> str:
    """The name of the jets' b-tag discriminant field: the first of ``BTAG_FIELDS`` present."""
    for field in BTAG_FIELDS:
        if field in jets.fields:
            return field
    looked_for = ", ".join(f"Jet_{field}" for field in BTAG_FIELDS)
    raise DataError(
        f"the input has no jet b-tag branch (looked for {looked_for}); "
        "give the trijet query a file with one of them"
    )


def missing_et(events: ak.Array) -> ak.Array:
    """The events' missing transverse momentum (pt, phi), from the first of ``MET_COLLECTIONS``."""
    for name in MET_COLLECTIONS:
        if name in events.fields:
            met = events[name]
            # Only MET gets coffea's MissingET behaviour from NanoAODSchema, not PFMET.
            return ak.zip(
                {"pt": met.pt, "phi": met.phi},
                with_name="PolarTwoVector",
                behavior=candidate.behavior,
            )
    looked_for = ", ".join(f"{name}_pt" for name in MET_COLLECTIONS)
    raise DataError(
        f"the input has no missing-ET branches (looked for {looked_for}); "
        "the MET queries need one of them"
    )
