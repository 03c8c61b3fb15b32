"""The ``nanoaod-wide`` layout: the ``adl`` events plus the breadth of real CMS NanoAOD.

Real NanoAOD files hold well over a thousand branches: dozens per object collection,
hundreds of trigger bits, generator-level collections and weights. The ``adl`` layout
(:mod:`casa.generate.physics`) writes only the few dozen branches the ADL benchmark reads.
This module widens an ``adl`` block of events to about 1,600 branches:

* every ``adl`` branch, with exactly the same values (the extra branches are drawn from
  their own random stream, so the ``adl`` part of a wide file equals the ``adl`` file of
  the same seed, and every built-in analysis gives the same histograms on both);
* extra per-object branches on the ``adl`` collections (``Muon_dxyErr``, ``Jet_btagDeepFlavB``,
  ``Electron_mvaIso_WP80``, ``Jet_muonIdx1``...), with NanoAOD's types: float32, int32,
  int16 indices, uint8 ids and flags, bools;
* more collections with their counters (``nFatJet``, ``nGenPart``, ``nTrigObj``,
  ``nLHEPdfWeight``...), with plausible multiplicities and valid cross-references
  (every ``*Idx`` is -1 or an index into the same event's target collection);
* scalar event branches: ``HLT_*``, ``L1_*`` and ``Flag_*`` bits, ``PV_*``, ``Pileup_*``,
  ``Generator_*``, ``LHE_*``, ``genWeight`` and the MET variants.

Floats are rounded to NanoAOD's reduced mantissa precision, bits fire at realistic rates
(single-object triggers follow the generated objects), so the files compress like real data.
:func:`challenge_branches` names the quarter of the branches a challenge-like query reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import awkward as ak
import numpy as np

from casa.generate import kinematics as kin
from casa.generate.physics import round_mantissa

LAYOUT = "nanoaod-wide"
#: The codec ``casa generate --layout nanoaod-wide`` uses when none is given.
DEFAULT_CODEC = "zstd:5"
#: Mixed into the seed of the extra branches' random stream (the adl stream is untouched).
STREAM = 0x57494445  # "WIDE"

# -- field specifications ----------------------------------------------------------
# A field is (dtype, kind, params, mantissa bits). Kinds are drawn by _draw below.
Spec = tuple


def _f(kind: str, *params, bits: int = 10) -> Spec:
    return ("f4", kind, params, bits)


def _i(dtype: str, kind: str, *params) -> Spec:
    return (dtype, kind, params, None)


def _b(rate: float) -> Spec:
    return ("?", "bool", (rate,), None)


def _idx(target: str, p_none: float = 0.4) -> Spec:
    """A local index into ``target`` in the same event, or -1."""
    return ("i2", "idx", (target, p_none), None)


def _fn(dtype: str, fn: Callable, bits: int | None = None) -> Spec:
    return (dtype, "fn", (fn,), bits)


PT, PHI = _f("pt", 15.0, 4.0), _f("phi", bits=12)
ETA = _f("eta", 1.8, 4.7, bits=12)
ISO = _f("zexp", 0.05, 0.4, bits=6)
FRAC = _f("beta", 2.0, 5.0, bits=8)
DISC = _f("beta", 0.6, 2.5, bits=10)
SCORE = _f("beta", 0.6, 2.5, bits=10)
U8_ID = _i("u1", "choice", (0, 1, 2, 3, 4), (0.15, 0.1, 0.15, 0.2, 0.4))
GEN_FLAV = _i("u1", "choice", (0, 1, 5, 15, 22), (0.3, 0.6, 0.04, 0.03, 0.03))


def _lepton_pdg(flavour: int) -> Callable:
    return lambda rng, c, n: -flavour * c["charge"].astype(np.int32)


def _jet_hadron_flavour(rng, c, n):
    btag = c["btag"]
    return np.where(btag > 0.7, 5, np.where(btag > 0.3, 4 * (rng.random(n) < 0.4), 0))


def _parton_flavour(rng, c, n):
    hf = c["hadronFlavour"].astype(np.int16)
    sign = np.where(rng.random(n) < 0.5, -1, 1).astype(np.int16)
    light = rng.choice(np.array([0, 1, 2, 3, 21], dtype=np.int16), n, p=[0.1, 0.2, 0.2, 0.1, 0.4])
    return np.where(hf > 0, hf * sign, np.where(light == 21, 21, light * sign))


#: Extra fields of the collections the adl layout already has, per collection.
EXTRA_FIELDS: dict[str, dict[str, Spec]] = {
    "Muon": {
        "dxyErr": _f("exp", 0.003, bits=8), "dxybs": _f("norm", 0.0, 0.005),
        "dzErr": _f("exp", 0.005, bits=8), "ip3d": _f("exp", 0.006), "sip3d": _f("gamma", 1.5, 1.2),
        "jetPtRelv2": _f("zexp", 4.0, 0.5), "jetRelIso": _f("zexp", 0.3, 0.3),
        "miniPFRelIso_all": ISO, "miniPFRelIso_chg": ISO, "pfRelIso03_chg": ISO,
        "tkRelIso": ISO, "ptErr": _f("frac", "pt", 0.02, bits=8),
        "tunepRelPt": _f("norm", 1.0, 0.01, bits=8), "segmentComp": _f("beta", 5.0, 1.5),
        "mvaTTH": _f("unif", -1.0, 1.0), "mvaLowPt": _f("unif", -1.0, 1.0),
        "mvaMuID": _f("beta", 4.0, 1.0), "softMva": _f("beta", 3.0, 1.5),
        "bsConstrainedChi2": _f("gamma", 1.0, 1.5), "bsConstrainedPt": _f("like", "pt", 0.01),
        "bsConstrainedPtErr": _f("frac", "pt", 0.02, bits=8),
        "pdgId": _fn("i4", _lepton_pdg(13)), "genPartIdx": _idx("GenPart", 0.3),
        "jetIdx": _idx("Jet", 0.5), "svIdx": _idx("SV", 0.9), "fsrPhotonIdx": _idx("FsrPhoton", 0.9),
        "genPartFlav": GEN_FLAV, "highPtId": _i("u1", "choice", (0, 1, 2), (0.8, 0.05, 0.15)),
        "miniIsoId": U8_ID, "multiIsoId": _i("u1", "choice", (0, 1, 2), (0.4, 0.2, 0.4)),
        "mvaMuID_WP": _i("u1", "choice", (0, 1, 2), (0.3, 0.2, 0.5)), "pfIsoId": _i("u1", "int", 0, 7),
        "puppiIsoId": U8_ID, "tkIsoId": _i("u1", "choice", (0, 1, 2), (0.2, 0.1, 0.7)),
        "nStations": _i("u1", "choice", (1, 2, 3, 4), (0.1, 0.4, 0.3, 0.2)),
        "nTrackerLayers": _i("u1", "int", 5, 18), "jetNDauCharged": _i("u1", "poisson", 3.0),
        "cleanmask": _i("u1", "choice", (0, 1), (0.3, 0.7)),
        "highPurity": _b(0.97), "inTimeMuon": _b(0.99), "isGlobal": _b(0.85), "isPFcand": _b(0.95),
        "isStandalone": _b(0.9), "isTracker": _b(0.97), "looseId": _b(0.97), "mediumId": _b(0.9),
        "mediumPromptId": _b(0.8), "softMvaId": _b(0.85), "triggerIdLoose": _b(0.97),
    },
    "Electron": {
        "deltaEtaSC": _f("norm", 0.0, 0.01), "dEscaleDown": _f("norm", 0.0, 0.002, bits=8),
        "dEscaleUp": _f("norm", 0.0, 0.002, bits=8), "dEsigmaDown": _f("norm", 0.0, 0.01, bits=8),
        "dEsigmaUp": _f("norm", 0.0, 0.01, bits=8), "dr03EcalRecHitSumEt": _f("zexp", 2.0, 0.4),
        "dr03HcalDepth1TowerSumEt": _f("zexp", 1.5, 0.5), "dr03TkSumPt": _f("zexp", 1.0, 0.6),
        "dr03TkSumPtHEEP": _f("zexp", 1.0, 0.6), "dxyErr": _f("exp", 0.004, bits=8),
        "dzErr": _f("exp", 0.006, bits=8), "eInvMinusPInv": _f("norm", 0.0, 0.01),
        "energyErr": _f("frac", "pt", 0.03, bits=6), "hoe": _f("zexp", 0.02, 0.5, bits=8),
        "ip3d": _f("exp", 0.008), "sip3d": _f("gamma", 1.5, 1.3), "jetPtRelv2": _f("zexp", 4.0, 0.5),
        "jetRelIso": _f("zexp", 0.3, 0.3), "miniPFRelIso_all": ISO, "miniPFRelIso_chg": ISO,
        "pfRelIso03_chg": ISO, "mvaIso": _f("unif", -1.0, 1.0), "mvaNoIso": _f("unif", -1.0, 1.0),
        "mvaTTH": _f("unif", -1.0, 1.0), "mvaHZZIso": _f("unif", -1.0, 1.0),
        "r9": _f("beta", 8.0, 1.5, bits=8), "scEtOverPt": _f("norm", 0.0, 0.05, bits=8),
        "sieie": _f("gamma", 9.0, 0.0012, bits=8),
        "pdgId": _fn("i4", _lepton_pdg(11)), "genPartIdx": _idx("GenPart", 0.3),
        "jetIdx": _idx("Jet", 0.5), "photonIdx": _idx("Photon", 0.6), "svIdx": _idx("SV", 0.9),
        "genPartFlav": GEN_FLAV, "cutBased": U8_ID, "lostHits": _i("u1", "poisson", 0.15),
        "seedGain": _i("u1", "choice", (1, 6, 12), (0.01, 0.02, 0.97)),
        "tightCharge": _i("u1", "choice", (0, 1, 2), (0.05, 0.15, 0.8)),
        "jetNDauCharged": _i("u1", "poisson", 3.0), "cleanmask": _i("u1", "choice", (0, 1), (0.3, 0.7)),
        "vidNestedWPBitmap": _i("i4", "bits", 30, 0.7), "vidNestedWPBitmapHEEP": _i("i4", "bits", 24, 0.6),
        "convVeto": _b(0.92), "cutBased_HEEP": _b(0.3), "isPFcand": _b(0.95),
        "mvaIso_WP80": _b(0.6), "mvaIso_WP90": _b(0.75), "mvaIso_WPL": _b(0.9),
        "mvaNoIso_WP80": _b(0.6), "mvaNoIso_WP90": _b(0.75), "mvaNoIso_WPL": _b(0.9),
    },
    "Jet": {
        "area": _f("norm", 0.5, 0.03, bits=8), "btagDeepFlavB": _f("like", "btag", 0.05),
        "btagDeepFlavCvB": DISC, "btagDeepFlavCvL": DISC, "btagDeepFlavQG": DISC,
        "btagPNetB": _f("like", "btag", 0.1), "btagPNetCvB": DISC, "btagPNetCvL": DISC,
        "btagPNetQvG": DISC, "btagPNetTauVJet": DISC, "btagRobustParTAK4B": _f("like", "btag", 0.08),
        "btagRobustParTAK4CvB": DISC, "btagRobustParTAK4CvL": DISC, "btagRobustParTAK4QG": DISC,
        "chEmEF": FRAC, "chHEF": FRAC, "chFPV0EF": FRAC, "hfEmEF": _f("zexp", 0.1, 0.8, bits=8),
        "hfHEF": _f("zexp", 0.1, 0.8, bits=8), "muEF": _f("zexp", 0.02, 0.8, bits=8),
        "neEmEF": FRAC, "neHEF": FRAC, "muonSubtrFactor": _f("zexp", 0.05, 0.9, bits=8),
        "puIdDisc": _f("unif", -1.0, 1.0), "qgl": _f("beta", 1.2, 1.2),
        "rawFactor": _f("norm", 0.05, 0.05, bits=8), "bRegCorr": _f("norm", 1.05, 0.1),
        "bRegRes": _f("norm", 0.1, 0.02), "cRegCorr": _f("norm", 1.0, 0.1),
        "cRegRes": _f("norm", 0.12, 0.02), "PNetRegPtRawCorr": _f("norm", 1.05, 0.1),
        "PNetRegPtRawCorrNeutrino": _f("norm", 1.01, 0.02), "PNetRegPtRawRes": _f("norm", 0.1, 0.02),
        "hfsigmaEtaEta": _f("zexp", 0.02, 0.9, bits=8), "hfsigmaPhiPhi": _f("zexp", 0.02, 0.9, bits=8),
        "hadronFlavour": _fn("u1", _jet_hadron_flavour), "partonFlavour": _fn("i2", _parton_flavour),
        "jetId": _i("u1", "choice", (0, 2, 6), (0.02, 0.03, 0.95)),
        "btagCSVV2": _f("like", "btag", 0.15), "btagDeepB": _f("like", "btag", 0.1),
        "btagDeepCvB": DISC, "btagDeepCvL": DISC,
        "nConstituents": _i("u1", "int", 2, 60), "nElectrons": _i("u1", "poisson", 0.05),
        "nMuons": _i("u1", "poisson", 0.05), "nSVs": _i("u1", "poisson", 0.3),
        "chMultiplicity": _i("u1", "int", 1, 40), "neMultiplicity": _i("u1", "int", 0, 25),
        "hfadjacentEtaStripsSize": _i("i4", "poisson", 0.1), "hfcentralEtaStripSize": _i("i4", "poisson", 0.1),
        "electronIdx1": _idx("Electron", 0.9), "electronIdx2": _idx("Electron", 0.98),
        "muonIdx1": _idx("Muon", 0.9), "muonIdx2": _idx("Muon", 0.98),
        "genJetIdx": _idx("GenJet", 0.1), "svIdx1": _idx("SV", 0.8), "svIdx2": _idx("SV", 0.95),
    },
    "Photon": {
        "energyErr": _f("frac", "pt", 0.03, bits=6), "energyRaw": _f("like", "pt", 0.05),
        "hoe": _f("zexp", 0.02, 0.5, bits=8), "hoe_PUcorr": _f("zexp", 0.02, 0.5, bits=8),
        "mvaID": _f("unif", -1.0, 1.0), "pfRelIso03_all": ISO, "pfRelIso03_chg": ISO,
        "pfChargedIsoPFPV": ISO, "pfPhoIso03": _f("zexp", 1.0, 0.4, bits=8),
        "ecalPFClusterIso": _f("zexp", 2.0, 0.3, bits=8), "hcalPFClusterIso": _f("zexp", 2.0, 0.3, bits=8),
        "trkSumPtHollowConeDR03": _f("zexp", 1.0, 0.5, bits=8), "haloTaggerMVAVal": _f("beta", 5.0, 1.0),
        "r9": _f("beta", 8.0, 1.5, bits=8), "sieie": _f("gamma", 9.0, 0.0012, bits=8),
        "sieip": _f("norm", 0.0, 0.0001, bits=8), "sipip": _f("gamma", 9.0, 0.0013, bits=8),
        "x_calo": _f("norm", 0.0, 100.0), "y_calo": _f("norm", 0.0, 100.0), "z_calo": _f("norm", 0.0, 200.0),
        "cutBased": U8_ID, "seedGain": _i("u1", "choice", (1, 6, 12), (0.01, 0.02, 0.97)),
        "vidNestedWPBitmap": _i("i4", "bits", 28, 0.6), "genPartFlav": GEN_FLAV,
        "electronIdx": _idx("Electron", 0.9), "jetIdx": _idx("Jet", 0.5), "genPartIdx": _idx("GenPart", 0.4),
        "electronVeto": _b(0.9), "isScEtaEB": _b(0.75), "isScEtaEE": _b(0.25), "mvaID_WP80": _b(0.5),
        "mvaID_WP90": _b(0.65), "pixelSeed": _b(0.1),
    },
    "Tau": {
        "chargedIso": _f("zexp", 2.0, 0.4, bits=8), "neutralIso": _f("zexp", 2.0, 0.4, bits=8),
        "dxy": _f("norm", 0.0, 0.01), "dz": _f("norm", 0.0, 0.02),
        "leadTkDeltaEta": _f("norm", 0.0, 0.02, bits=8), "leadTkDeltaPhi": _f("norm", 0.0, 0.02, bits=8),
        "leadTkPtOverTauPt": _f("beta", 3.0, 2.0, bits=8), "photonsOutsideSignalCone": _f("zexp", 0.1, 0.7, bits=8),
        "puCorr": _f("exp", 5.0, bits=8), "rawIso": _f("zexp", 3.0, 0.3, bits=8),
        "rawIsodR03": _f("zexp", 3.0, 0.3, bits=8),
        **{f"raw{algo}VS{x}": SCORE for algo in ("DeepTau2017v2p1", "DeepTau2018v2p5", "PNet")
           for x in ("e", "jet", "mu")},
        "ptCorrPNet": _f("norm", 1.0, 0.05), "qConfPNet": _f("unif", -0.5, 0.5),
        "decayMode": _i("u1", "choice", (0, 1, 2, 10, 11), (0.25, 0.4, 0.1, 0.2, 0.05)),
        "decayModePNet": _i("i2", "choice", (0, 1, 2, 10, 11), (0.25, 0.4, 0.1, 0.2, 0.05)),
        **{f"id{algo}VS{x}": _i("u1", "int", 0, 9) for algo in ("DeepTau2017v2p1", "DeepTau2018v2p5")
           for x in ("e", "jet", "mu")},
        "idAntiMu": _i("u1", "choice", (0, 1, 2), (0.05, 0.05, 0.9)), "genPartFlav": GEN_FLAV,
        "cleanmask": _i("u1", "choice", (0, 1), (0.3, 0.7)), "nSVs": _i("u1", "poisson", 0.2),
        "jetIdx": _idx("Jet", 0.05), "genPartIdx": _idx("GenPart", 0.5),
        "svIdx1": _idx("SV", 0.85), "svIdx2": _idx("SV", 0.97),
        "idAntiEleDeadECal": _b(0.98), "idDecayModeNewDMs": _b(0.95), "idDecayModeOldDMs": _b(0.85),
    },
}  # fmt: skip

_KINEMATICS = {"pt": PT, "eta": ETA, "phi": PHI, "mass": _f("gamma", 2.0, 3.0, bits=8)}

#: New collections: per-event multiplicity (a function of the generator, the adl counts and
#: the counts drawn so far) and fields. Counts are drawn in this order.
Multiplicity = Callable[[np.random.Generator, int, dict], np.ndarray]


def _poisson(lam: float, offset: int = 0, maximum: int = 255) -> Multiplicity:
    return lambda rng, n, counts: np.minimum(offset + rng.poisson(lam, n), maximum)


def _fixed(k: int) -> Multiplicity:
    return lambda rng, n, counts: np.full(n, k)


_GEN_PDG = np.array([21, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 22, 11, -11, 13, -13, 15, -15,
                     12, -12, 14, -14, 16, -16, 23, 24, -24, 25, 6, -6, 511, -511, 521, -521,
                     111, 211, -211, 130, 310])  # fmt: skip
_GEN_PDG_P = np.array([22, 6, 5, 6, 5, 3, 3, 2, 2, 2, 2, 14, 1.2, 1.2, 1.2, 1.2, 0.4, 0.4,
                       0.3, 0.3, 0.3, 0.3, 0.1, 0.1, 0.3, 0.3, 0.3, 0.05, 0.3, 0.3, 0.3, 0.3,
                       0.3, 0.3, 3, 3, 3, 1, 1])  # fmt: skip
_GEN_PDG_P = _GEN_PDG_P / _GEN_PDG_P.sum()
_GEN_MASS = {5: 4.8, 4: 1.5, 13: 0.1057, 15: 1.777, 23: 91.19, 24: 80.38, 25: 125.0, 6: 172.5,
             511: 5.2797, 521: 5.2793, 111: 0.135, 211: 0.1396, 130: 0.4976, 310: 0.4976}  # fmt: skip


def _gen_mass(rng, c, n):
    pdg = np.abs(c["pdgId"])
    table = np.zeros(max(_GEN_MASS) + 1, dtype=np.float32)
    for k, m in _GEN_MASS.items():
        table[k] = m
    mass = table[np.minimum(pdg, len(table) - 1)]
    heavy = pdg >= 23
    return np.where(heavy & (pdg <= 25), mass * rng.normal(1.0, 0.02, n), mass)


def _gen_mother(rng, c, n):
    """Each particle's mother comes before it in its event; the first two are the beams."""
    local = c["_local"]
    mother = np.floor(rng.random(n) ** 0.5 * local).astype(np.int64)
    return np.where(local < 2, -1, np.minimum(mother, local - 1))


def _gen_status(rng, c, n):
    return np.where(
        c["_local"] < 2,
        21,
        rng.choice(np.array([1, 2, 23, 62, 71]), n, p=[0.5, 0.25, 0.1, 0.1, 0.05]),
    )


def _charge_i2(rng, c, n):
    return np.where(rng.random(n) < 0.5, -1, 1)


NEW_COLLECTIONS: dict[str, tuple[Multiplicity, dict[str, Spec]]] = {
    "GenPart": (
        lambda rng, n, counts: np.minimum(8 + 4 * counts["Jet"] + rng.poisson(16.0, n), 200),
        {
            "pt": _f("gamma", 0.8, 25.0, bits=8), "eta": _f("eta", 3.0, 12.0, bits=8),
            "phi": _f("phi", bits=8), "pdgId": _i("i4", "choice", _GEN_PDG, _GEN_PDG_P),
            "mass": _fn("f4", _gen_mass, bits=8), "status": _fn("i4", _gen_status),
            "statusFlags": _i("u2", "bits", 15, 0.2), "genPartIdxMother": _fn("i2", _gen_mother),
        },
    ),
    "GenJet": (
        lambda rng, n, counts: counts["Jet"] + rng.poisson(1.5, n),
        {**_KINEMATICS, "pt": _f("pt", 10.0, 4.0), "partonFlavour": _i("i2", "choice", (0, 1, 2, 3, 4, 5, 21, -1, -2), (0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.35, 0.1, 0.1)),
         "hadronFlavour": _i("u1", "choice", (0, 4, 5), (0.85, 0.08, 0.07))},
    ),
    "GenJetAK8": (
        _poisson(1.2),
        {**_KINEMATICS, "pt": _f("pt", 100.0, 4.5), "mass": _f("gamma", 3.0, 15.0, bits=8),
         "partonFlavour": _i("i2", "choice", (0, 1, 2, 21, 5), (0.1, 0.2, 0.2, 0.4, 0.1)),
         "hadronFlavour": _i("u1", "choice", (0, 4, 5), (0.8, 0.1, 0.1))},
    ),
    "GenVisTau": (
        _poisson(0.12),
        {**_KINEMATICS, "mass": _f("unif", 0.14, 1.6, bits=8), "charge": _fn("i2", _charge_i2),
         "genPartIdxMother": _idx("GenPart", 0.0), "status": _i("u1", "choice", (0, 1, 2, 10, 11), (0.25, 0.4, 0.1, 0.2, 0.05))},
    ),
    "GenDressedLepton": (
        _poisson(0.5),
        {**_KINEMATICS, "mass": _f("choice", (0.000511, 0.1057), (0.5, 0.5)),
         "pdgId": _i("i4", "choice", (11, -11, 13, -13), (0.25, 0.25, 0.25, 0.25)), "hasTauAnc": _b(0.05)},
    ),
    "GenIsolatedPhoton": (_poisson(0.2), {**_KINEMATICS, "mass": _f("zero")}),
    "FatJet": (
        _poisson(0.6),
        {
            **_KINEMATICS, "pt": _f("pt", 170.0, 4.5), "mass": _f("gamma", 3.0, 20.0),
            "msoftdrop": _f("gamma", 2.0, 25.0), "area": _f("norm", 2.0, 0.05, bits=8),
            "n2b1": _f("beta", 3.0, 8.0, bits=8), "n3b1": _f("beta", 6.0, 4.0, bits=8),
            "rawFactor": _f("norm", 0.05, 0.05, bits=8), "lsf3": _f("zexp", 0.3, 0.6, bits=8),
            **{f"tau{k}": _f("beta", 2.0, 3.0 + k, bits=8) for k in (1, 2, 3, 4)},
            **{f"btag{x}": DISC for x in ("DDBvLV2", "DDCvBV2", "DDCvLV2", "DeepB", "Hbb")},
            **{f"deepTagMD_{x}": DISC for x in ("HbbvsQCD", "ZHbbvsQCD", "ZvsQCD", "WvsQCD", "TvsQCD", "bbvsLight")},
            **{f"particleNet{x}": DISC for x in ("MD_QCD", "MD_Xbb", "MD_Xcc", "MD_Xqq", "_QCD", "_HbbvsQCD", "_TvsQCD", "_WvsQCD", "_ZvsQCD")},
            "particleNet_mass": _f("gamma", 3.0, 20.0),
            "jetId": _i("u1", "choice", (0, 2, 6), (0.02, 0.03, 0.95)),
            "hadronFlavour": _i("u1", "choice", (0, 4, 5), (0.8, 0.1, 0.1)),
            "nBHadrons": _i("u1", "poisson", 0.2), "nCHadrons": _i("u1", "poisson", 0.4),
            "nConstituents": _i("u1", "int", 10, 120),
            "genJetAK8Idx": _idx("GenJetAK8", 0.15), "subJetIdx1": _idx("SubJet", 0.05),
            "subJetIdx2": _idx("SubJet", 0.1), "electronIdx3SJ": _idx("Electron", 0.9),
            "muonIdx3SJ": _idx("Muon", 0.9),
        },
    ),
    "SubJet": (
        lambda rng, n, counts: 2 * counts["FatJet"],
        {**_KINEMATICS, "pt": _f("pt", 30.0, 3.5), "btagDeepB": DISC, "n2b1": _f("beta", 3.0, 8.0, bits=8),
         "n3b1": _f("beta", 6.0, 4.0, bits=8), "rawFactor": _f("norm", 0.05, 0.05, bits=8),
         **{f"tau{k}": _f("beta", 2.0, 3.0 + k, bits=8) for k in (1, 2, 3, 4)},
         "hadronFlavour": _i("u1", "choice", (0, 4, 5), (0.8, 0.1, 0.1)),
         "nBHadrons": _i("u1", "poisson", 0.1), "nCHadrons": _i("u1", "poisson", 0.2)},
    ),
    "SV": (
        _poisson(1.2),
        {**_KINEMATICS, "pt": _f("pt", 2.0, 3.0), "eta": _f("eta", 1.2, 2.5, bits=12),
         "mass": _f("gamma", 2.0, 0.8, bits=8), "dlen": _f("exp", 0.5), "dlenSig": _f("gamma", 1.5, 8.0),
         "dxy": _f("exp", 0.3), "dxySig": _f("gamma", 1.5, 8.0), "pAngle": _f("exp", 0.05),
         "chi2": _f("gamma", 1.5, 1.0, bits=8), "ndof": _f("choice", (1.0, 2.0, 3.0, 4.0, 5.0), (0.3, 0.3, 0.2, 0.1, 0.1)),
         "x": _f("norm", 0.0, 0.4), "y": _f("norm", 0.0, 0.4), "z": _f("norm", 0.0, 4.0),
         "charge": _i("i2", "choice", (-2, -1, 0, 1, 2), (0.05, 0.25, 0.4, 0.25, 0.05)),
         "ntracks": _i("u1", "int", 2, 8)},
    ),
    "TrigObj": (
        _poisson(7.0, offset=8, maximum=40),
        {"pt": _f("pt", 5.0, 2.5, bits=12), "eta": _f("eta", 1.8, 5.0, bits=12), "phi": _f("phi", bits=12),
         "l1pt": _f("like", "pt", 0.15, bits=8), "l1pt_2": _f("zexp", 10.0, 0.8, bits=8),
         "l2pt": _f("zexp", 20.0, 0.7, bits=10),
         "id": _i("u2", "choice", (1, 2, 3, 6, 11, 13, 14, 15, 22), (0.25, 0.15, 0.1, 0.1, 0.15, 0.1, 0.05, 0.05, 0.05)),
         "l1iso": _i("i4", "choice", (0, 1, 2, 3), (0.5, 0.2, 0.1, 0.2)),
         "l1charge": _i("i2", "choice", (-1, 0, 1), (0.2, 0.6, 0.2)), "filterBits": _i("i4", "bits", 20, 0.15)},
    ),
    "IsoTrack": (
        _poisson(1.0),
        {"pt": _f("pt", 5.0, 3.0), "eta": _f("eta", 1.3, 2.5, bits=12), "phi": PHI,
         "dxy": _f("norm", 0.0, 0.01), "dz": _f("norm", 0.0, 0.03), "pfRelIso03_all": ISO, "pfRelIso03_chg": ISO,
         "miniPFRelIso_all": ISO, "miniPFRelIso_chg": ISO, "charge": _fn("i2", _charge_i2),
         "fromPV": _i("i2", "choice", (-1, 0, 1, 2, 3), (0.02, 0.05, 0.05, 0.08, 0.8)),
         "pdgId": _i("i4", "choice", (211, -211, 11, -11, 13, -13), (0.4, 0.4, 0.05, 0.05, 0.05, 0.05)),
         "isHighPurityTrack": _b(0.95), "isPFcand": _b(0.8), "isFromLostTrack": _b(0.1)},
    ),
    "LowPtElectron": (
        _poisson(0.5),
        {"pt": _f("pt", 1.0, 3.0), "eta": _f("eta", 1.3, 2.5, bits=12), "phi": PHI, "mass": _f("zero"),
         "charge": _fn("i4", _charge_i2), "ID": _f("norm", 0.0, 3.0), "convVtxRadius": _f("zexp", 10.0, 0.8),
         "deltaEtaSC": _f("norm", 0.0, 0.01), "dxy": _f("norm", 0.0, 0.02), "dz": _f("norm", 0.0, 0.05),
         "dxyErr": _f("exp", 0.005, bits=8), "dzErr": _f("exp", 0.008, bits=8), "eInvMinusPInv": _f("norm", 0.0, 0.02),
         "energyErr": _f("frac", "pt", 0.1, bits=6), "hoe": _f("zexp", 0.05, 0.4, bits=8),
         "miniPFRelIso_all": ISO, "miniPFRelIso_chg": ISO, "ptbiased": _f("norm", 0.0, 3.0),
         "unbiased": _f("norm", 0.0, 3.0), "r9": _f("beta", 5.0, 2.0, bits=8), "scEtOverPt": _f("norm", 0.0, 0.1, bits=8),
         "sieie": _f("gamma", 9.0, 0.0015, bits=8), "convVeto": _b(0.9), "convWP": _i("u1", "int", 0, 4),
         "lostHits": _i("u1", "poisson", 0.3), "pdgId": _i("i4", "choice", (11, -11), (0.5, 0.5)),
         "electronIdx": _idx("Electron", 0.8), "photonIdx": _idx("Photon", 0.9), "genPartIdx": _idx("GenPart", 0.7),
         "genPartFlav": GEN_FLAV},
    ),
    "FsrPhoton": (
        _poisson(0.08),
        {"pt": _f("pt", 2.0, 3.0), "eta": _f("eta", 1.3, 2.4, bits=12), "phi": PHI,
         "dROverEt2": _f("exp", 0.005, bits=8), "relIso03": _f("exp", 0.5, bits=8),
         "muonIdx": _idx("Muon", 0.0), "electronIdx": _idx("Electron", 0.95)},
    ),
    "SoftActivityJet": (
        lambda rng, n, counts: np.minimum(rng.poisson(5.0, n), 6),
        {"pt": _f("pt", 1.0, 2.5), "eta": _f("eta", 2.0, 4.7, bits=12), "phi": PHI},
    ),
    "OtherPV": (
        lambda rng, n, counts: np.minimum(np.maximum(counts["_npvs"] - 1, 0), 3),
        {"z": _f("norm", 0.0, 4.0), "score": _f("gamma", 1.5, 40.0, bits=8)},
    ),
    "CorrT1METJet": (
        _poisson(4.0),
        {"rawPt": _f("pt", 5.0, 3.0), "rawMass": _f("gamma", 2.0, 1.0, bits=8), "eta": _f("eta", 2.2, 5.0, bits=12),
         "phi": PHI, "area": _f("norm", 0.5, 0.05, bits=8), "EmEF": FRAC, "muonSubtrFactor": _f("zexp", 0.05, 0.9, bits=8)},
    ),
    "LHEPart": (
        _poisson(1.2, offset=4, maximum=9),
        {"pt": _fn("f4", lambda rng, c, n: np.where(c["_local"] < 2, 0.0, kin.power_law(rng, n, 10.0, 3.0)), bits=10),
         "eta": _f("eta", 2.5, 5.0, bits=12), "phi": PHI, "mass": _f("choice", (0.0, 0.0, 0.0, 4.8, 172.5), (0.4, 0.3, 0.1, 0.1, 0.1)),
         "incomingpz": _fn("f4", lambda rng, c, n: np.where(c["_local"] < 2, rng.normal(0, 500, n), 0.0)),
         "pdgId": _i("i4", "choice", (21, 1, -1, 2, -2, 3, 4, 5, 11, 13), (0.4, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03)),
         "status": _fn("i4", lambda rng, c, n: np.where(c["_local"] < 2, -1, 1)),
         "spin": _i("i4", "choice", (-1, 1, 9), (0.45, 0.45, 0.1))},
    ),
}  # fmt: skip

#: Jagged arrays of weights (a counter and one branch, as in NanoAOD), with their lengths.
WEIGHTS: dict[str, tuple[int, float, int]] = {
    # name: (entries per event, spread around 1, mantissa bits)
    "LHEPdfWeight": (103, 0.02, 14),
    "LHEScaleWeight": (9, 0.12, 14),
    "PSWeight": (4, 0.05, 10),
}

#: Counters of collections other than the adl ones. Every ``X_*`` branch has ``nX`` entries.
COUNTERS = [f"n{name}" for name in (*NEW_COLLECTIONS, *WEIGHTS)]


# -- scalar branches ------------------------------------------------------------------
def _hlt_names() -> list[str]:
    """About 600 trigger-path names in the style of a CMS Run-2/Run-3 HLT menu."""
    names: list[str] = []
    families = [
        (
            "IsoMu{}",
            (20, 22, 24, 27, 30),
            ("", "_eta2p1", "_TwoProngs35", "_eta2p1_LooseDeepTauPFTauHPS30_eta2p1_CrossL1"),
        ),
        (
            "Mu{}",
            (3, 5, 8, 12, 15, 17, 19, 20, 23, 27, 37, 43, 45, 50, 55, 100),
            ("", "_TrkIsoVVL", "_IP6_part0", "_IP6_part1", "_Photon23", "_eta2p1_DoubleJet_35"),
        ),
        (
            "Ele{}",
            (15, 20, 23, 27, 28, 30, 32, 35, 38, 40, 50, 115, 135, 145, 200, 250, 300),
            ("_WPTight_Gsf", "_WPLoose_Gsf", "_CaloIdVT_GsfTrkIdT", "_eta2p1_WPTight_Gsf"),
        ),
        (
            "Photon{}",
            (20, 22, 30, 33, 50, 75, 90, 120, 150, 165, 175, 200, 300),
            ("", "_R9Id90_HE10_IsoM", "_HoverELoose", "_EB_TightID_TightIso"),
        ),
        (
            "PFJet{}",
            (15, 25, 40, 60, 80, 110, 140, 200, 260, 320, 400, 450, 500, 550),
            ("", "_L1SingleJet"),
        ),
        ("PFJetFwd{}", (15, 25, 40, 60, 80, 140, 200, 260, 320, 400, 450, 500), ("",)),
        (
            "AK8PFJet{}",
            (15, 25, 40, 60, 80, 140, 200, 260, 320, 400, 450, 500, 550),
            ("", "_TrimMass30", "_MassSD30"),
        ),
        ("DiPFJetAve{}", (40, 60, 80, 140, 200, 260, 320, 400, 500), ("", "_HFJEC")),
        (
            "PFHT{}",
            (180, 250, 350, 370, 430, 510, 590, 680, 780, 890, 1050),
            (
                "",
                "_PFMET100_PFMHT100_IDTight",
                "_SixPFJet32_DoublePFBTagDeepJet_2p94",
                "_DisplacedDijet40",
            ),
        ),
        ("PFMET{}_PFMHT{}_IDTight", (90, 100, 110, 120, 130, 140), ("", "_CaloBTagDeepCSV_3p1")),
        (
            "PFMETNoMu{}_PFMHTNoMu{}_IDTight",
            (90, 100, 110, 120, 130, 140),
            ("", "_PFHT60", "_FilterHF"),
        ),
        ("PFMETTypeOne{}_PFMHT{}_IDTight", (100, 110, 120, 130, 140), ("", "_PFHT60")),
        (
            "DoubleMu{}",
            (3, 4, 5, 18, 33, 43, 48),
            ("_Jpsi", "_Upsilon", "_LowMass", "_noVtx", "_Bs", "_Trk_Tau3mu"),
        ),
        ("DoubleEle{}", (8, 25, 27, 33), ("_CaloIdL_MW", "_CaloIdL_TrackIdL_IsoVL_DZ", "_Mass3p8")),
        ("Mu{}_TrkIsoVVL_Ele{}_CaloIdL_TrackIdL_IsoVL", (8, 12, 17, 23), ("", "_DZ")),
        ("Mu{}_TrkIsoVVL_Mu{}_TrkIsoVVL", (8, 17, 19), ("", "_DZ", "_DZ_Mass3p8", "_DZ_Mass8")),
        (
            "DoubleMediumChargedIsoPFTau{}_Trk1",
            (35, 40),
            ("_eta2p1_Reg", "_TightID_eta2p1_Reg", "_eta2p1"),
        ),
        (
            "MediumChargedIsoPFTau{}HighPtRelaxedIso_Trk50_eta2p1",
            (50, 180, 200, 220),
            ("", "_1pr", "_MET90", "_MET100"),
        ),
        (
            "QuadPFJet{}_{}_{}_{}",
            (70, 98, 103, 105, 111),
            ("_DoublePFBTagDeepCSV_1p3_7p7_VBF1", "_PFBTagDeepCSV_1p3_VBF2"),
        ),
        ("CaloMET{}_HBHECleaned", (70, 80, 90, 100, 110, 250, 300, 350), ("",)),
        ("MET{}_IsoTrk50", (105, 120), ("",)),
        (
            "ZeroBias{}",
            (0,),
            ("", "_part0", "_part1", "_part2", "_part3", "_IsolatedBunches", "_FirstBXAfterTrain"),
        ),
        ("L1SingleMu{}", (3, 5, 7, 18, 25), ("",)),
        (
            "Dimuon{}",
            (0, 10, 14, 20, 25),
            ("_Jpsi_Barrel_Seagulls", "_Upsilon_Barrel_Seagulls", "_PsiPrime", "_Jpsi_NoVertexing"),
        ),
        (
            "Diphoton{}_{}",
            (30, 22),
            ("_R9Id_OR_IsoCaloId_AND_HE_R9Id_Mass90", "_PVpixVertex_Mass55"),
        ),
        ("Mu{}_PFJet{}", (3, 12, 40), ("", "_DoublePFJet")),
        ("Ele{}_eta2p1_WPTight_Gsf_CentralPFJet30_BTagDeepCSV", (28, 30), ("", "_HT350")),
        ("TripleMu{}_{}_{}", (5, 3, 10), ("", "_DZ_Mass3p8", "_Mass10")),
        ("AK8PFHT{}_TrimMass50", (750, 800, 850, 900), ("",)),
        ("HT{}_DisplacedDijet{}", (425, 430, 500, 650), ("_DisplacedTrack", "_Inclusive")),
    ]
    for pattern, thresholds, suffixes in families:
        slots = pattern.count("{}")
        for t in thresholds:
            for s in suffixes:
                name = "HLT_" + pattern.format(*([t] * slots)).replace("ZeroBias0", "ZeroBias") + s
                if name not in names and name != "HLT_IsoMu24":
                    names.append(name)
    return ["HLTriggerFirstPath", *names, "HLTriggerFinalPath"]


def _l1_names() -> list[str]:
    """About 300 level-1 seed names."""
    names: list[str] = []
    families = [
        ("SingleMu{}", range(0, 26), ("", "_DQ", "er1p5")),
        ("SingleEG{}", range(8, 61, 2), ("er2p5",)),
        ("SingleIsoEG{}", range(24, 39, 2), ("er2p1", "er2p5", "")),
        ("SingleJet{}", (35, 43, 60, 90, 120, 140, 160, 180, 200), ("", "er2p5", "_FWD3p0")),
        ("DoubleMu{}_SQ", (0, 4, 5, 8, 9, 12, 15), ("", "_OS", "er1p5_OS")),
        ("DoubleEG_{}_{}", (15, 22, 25, 27), ("_er2p5", "")),
        (
            "HTT{}er",
            (120, 160, 200, 255, 280, 320, 360, 400, 450),
            ("", "_QuadJet_70_55_40_35_er2p4"),
        ),
        ("ETMHF{}", (80, 90, 100, 110, 120, 130, 150), ("", "_HTT60er")),
        ("ETT{}_BptxOR", (1200, 1600, 2000), ("",)),
        ("SingleTau{}er2p1", (70, 120, 130), ("",)),
        ("DoubleIsoTau{}er2p1", (28, 30, 32, 34, 35, 36, 38), ("", "_Mass_Max80", "_Mass_Max90")),
        ("Mu{}_EG{}", (5, 7, 12, 20, 23), ("", "er2p5", "_LooseIsoEG")),
        ("QuadJet{}er2p5", (36, 60), ("", "_HTT400er")),
        ("DoubleJet{}er2p5", (40, 100, 112, 120, 150), ("", "_Mass_Min620", "_dEta_Max1p6")),
    ]
    for pattern, thresholds, suffixes in families:
        slots = pattern.count("{}")
        for t in thresholds:
            for s in suffixes:
                name = "L1_" + pattern.format(*([t] * slots)) + s
                if name not in names:
                    names.append(name)
    return [*names, "L1_ZeroBias", "L1_ZeroBias_copy", "L1_FirstBunchInTrain", "L1_IsolatedBunch",
            "L1_BptxOR", "L1_BptxPlus", "L1_BptxMinus", "L1_UnpairedBunchBptxPlus"]  # fmt: skip


FLAGS = [
    "Flag_HBHENoiseFilter", "Flag_HBHENoiseIsoFilter", "Flag_CSCTightHaloFilter",
    "Flag_CSCTightHaloTrkMuUnvetoFilter", "Flag_CSCTightHalo2015Filter",
    "Flag_globalTightHalo2016Filter", "Flag_globalSuperTightHalo2016Filter",
    "Flag_HcalStripHaloFilter", "Flag_hcalLaserEventFilter",
    "Flag_EcalDeadCellTriggerPrimitiveFilter", "Flag_EcalDeadCellBoundaryEnergyFilter",
    "Flag_ecalBadCalibFilter", "Flag_goodVertices", "Flag_eeBadScFilter",
    "Flag_ecalLaserCorrFilter", "Flag_trkPOGFilters", "Flag_chargedHadronTrackResolutionFilter",
    "Flag_muonBadTrackFilter", "Flag_BadChargedCandidateFilter", "Flag_BadPFMuonFilter",
    "Flag_BadPFMuonDzFilter", "Flag_hfNoisyHitsFilter", "Flag_BadChargedCandidateSummer16Filter",
    "Flag_BadPFMuonSummer16Filter", "Flag_trkPOG_manystripclus53X",
    "Flag_trkPOG_toomanystripclus53X", "Flag_trkPOG_logErrorTooManyClusters", "Flag_METFilters",
]  # fmt: skip

HLT_PATHS = _hlt_names()
L1_SEEDS = _l1_names()
_MET_VARIANTS = ("PuppiMET", "RawMET", "RawPuppiMET", "ChsMET", "CaloMET", "TkMET",
                 "DeepMETResolutionTune", "DeepMETResponseTune", "GenMET")  # fmt: skip


def _bit_rates() -> dict[str, float]:
    """Each bit's firing rate: a property of the layout, the same for every seed."""
    rng = np.random.default_rng(20120501)
    names = [*HLT_PATHS, *L1_SEEDS]
    off = rng.random(len(names)) < 0.3  # paths disabled or fully prescaled in this era
    rate = np.round(10.0 ** rng.uniform(-4.0, -0.5, len(names)), 6)
    rates = dict(zip(names, np.where(off, 0.0, rate).tolist(), strict=True))
    for name in FLAGS:
        rates[name] = 1.0 - float(np.round(10.0 ** rng.uniform(-4.0, -2.0), 6))
    rates["HLTriggerFirstPath"] = rates["HLTriggerFinalPath"] = 1.0
    return rates


BIT_RATES = _bit_rates()

#: Trigger families that follow a generated quantity: name prefix -> quantity.
_FOLLOWS = (("HLT_IsoMu", "muon"), ("HLT_Mu", "muon"), ("HLT_Ele", "electron"),
            ("HLT_Photon", "photon"), ("HLT_PFJet", "jet"), ("HLT_AK8PFJet", "jet"),
            ("HLT_PFHT", "ht"), ("HLT_PFMET", "met"), ("HLT_CaloMET", "met"),
            ("L1_SingleMu", "muon"), ("L1_SingleEG", "electron"), ("L1_SingleJet", "jet"),
            ("L1_HTT", "ht"), ("L1_ETMHF", "met"))  # fmt: skip


def _leading(array: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.fill_none(ak.max(array, axis=1), 0.0)).astype(np.float64)


# -- drawing -------------------------------------------------------------------------
def _draw(
    rng: np.random.Generator, spec: Spec, n: int, evt: np.ndarray, cols: dict, counts: dict
) -> np.ndarray:
    dtype, kind, p, bits = spec
    if kind == "pt":
        v = kin.power_law(rng, n, p[0], p[1])
    elif kind == "eta":
        v = np.clip(rng.normal(0.0, p[0], n), -p[1], p[1])
    elif kind == "phi":
        v = rng.uniform(-np.pi, np.pi, n)
    elif kind == "norm":
        v = rng.normal(p[0], p[1], n)
    elif kind == "exp":
        v = rng.exponential(p[0], n)
    elif kind == "zexp":  # zero with probability p[1], else exponential
        v = rng.exponential(p[0], n) * (rng.random(n) >= p[1])
    elif kind == "gamma":
        v = rng.gamma(p[0], p[1], n)
    elif kind == "beta":
        v = rng.beta(p[0], p[1], n)
    elif kind == "unif":
        v = rng.uniform(p[0], p[1], n)
    elif kind == "zero":
        v = np.zeros(n)
    elif kind == "like":  # another field of the same object, smeared
        v = cols[p[0]] * np.abs(rng.normal(1.0, p[1], n))
    elif kind == "frac":  # an uncertainty: about p[1] of another field
        v = cols[p[0]] * p[1] * rng.gamma(4.0, 0.25, n)
    elif kind == "choice":
        v = rng.choice(np.asarray(p[0]), n, p=np.asarray(p[1]) / np.sum(p[1]))
    elif kind == "int":
        v = rng.integers(p[0], p[1], n)
    elif kind == "poisson":
        v = rng.poisson(p[0], n)
    elif kind == "bool":
        v = rng.random(n) < p[0]
    elif kind == "bits":  # a bitmask, each of p[0] bits set with probability p[1]
        v = np.zeros(n, dtype=np.int64)
        for k in range(p[0]):
            v |= (rng.random(n) < p[1]).astype(np.int64) << k
    elif kind == "idx":
        target = counts[p[0]][evt]
        v = np.floor(rng.random(n) * target).astype(np.int64)
        v = np.where((target == 0) | (rng.random(n) < p[1]), -1, v)
    elif kind == "fn":
        v = p[0](rng, cols, n)
    else:  # pragma: no cover - a typo in a spec
        raise ValueError(f"unknown field kind {kind!r}")
    if dtype == "f4":
        return round_mantissa(np.asarray(v, dtype=np.float32), bits or 23)
    if dtype == "u1":
        v = np.clip(v, 0, 255)
    return np.asarray(v).astype(dtype)


def _local_index(counts: np.ndarray) -> np.ndarray:
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


def _objects(
    rng: np.random.Generator, fields: dict[str, Spec], cnt: np.ndarray, base: dict, counts: dict
) -> dict[str, np.ndarray]:
    """Draw ``fields`` for ``cnt[i]`` objects in event i; ``base`` holds fields already known."""
    n = int(cnt.sum())
    evt = np.repeat(np.arange(len(cnt)), cnt)
    cols = dict(base)
    cols["_local"] = _local_index(cnt)
    out = {}
    for name, spec in fields.items():
        value = _draw(rng, spec, n, evt, cols, counts)
        if name == "pt" and spec[1] == "pt":  # objects ordered by decreasing pt, as in NanoAOD
            value = value[np.lexsort((-value, evt))]
        cols[name] = out[name] = value
    return out


def _record(columns: dict[str, np.ndarray], cnt: np.ndarray) -> ak.Array:
    return ak.unflatten(ak.zip(columns), cnt)


def widen(
    rng: np.random.Generator, block: dict[str, np.ndarray | ak.Array]
) -> dict[str, np.ndarray | ak.Array]:
    """The ``adl`` block of events ``block`` plus the extra branches of the wide layout.

    ``rng`` draws only the extra branches; the ``adl`` values are passed through unchanged.
    """
    n = len(block["event"])
    counts: dict[str, np.ndarray] = {c: ak.to_numpy(ak.num(block[c])) for c in EXTRA_FIELDS}
    counts["_npvs"] = block["PV_npvs"].astype(np.int64)
    for name, (multiplicity, _) in NEW_COLLECTIONS.items():
        counts[name] = np.asarray(multiplicity(rng, n, counts), dtype=np.int64)
    out: dict[str, np.ndarray | ak.Array] = {}
    for name, value in block.items():
        if name in EXTRA_FIELDS:
            base = {f: ak.to_numpy(ak.flatten(value[f])) for f in value.fields}
            extra = _objects(rng, EXTRA_FIELDS[name], counts[name], base, counts)
            value = _record({**base, **extra}, counts[name])
        out[name] = value
    for name, (_, fields) in NEW_COLLECTIONS.items():
        out[name] = _record(_objects(rng, fields, counts[name], {}, counts), counts[name])
    for name, (k, spread, bits) in WEIGHTS.items():
        shift = rng.normal(0.0, spread, (n, 1))  # weights of one event move together
        w = 1.0 + shift * rng.uniform(0.0, 1.0, (1, k)) + rng.normal(0.0, spread / 10, (n, k))
        flat = round_mantissa(w.astype(np.float32).ravel(), bits)
        out[name] = ak.unflatten(flat, np.full(n, k))
    out.update(_scalars(rng, block, out))
    return out


def _f4(v: np.ndarray, bits: int = 10) -> np.ndarray:
    return round_mantissa(np.asarray(v, dtype=np.float32), bits)


def _scalars(rng: np.random.Generator, block: dict, wide: dict) -> dict[str, np.ndarray]:
    n = len(block["event"])
    npvs = block["PV_npvs"].astype(np.float64)
    met_pt, met_phi = block["MET_pt"].astype(np.float64), block["MET_phi"].astype(np.float64)
    sumet = block["MET_sumet"].astype(np.float64)
    jets = block["Jet"]
    ht = ak.to_numpy(ak.sum(jets.pt[jets.pt > 30], axis=1)).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    # Pile-up, vertices and energy density follow the number of vertices.
    true_int = np.maximum(npvs / 0.7 + rng.normal(0, 2.0, n), 0.5)
    out["Pileup_nTrueInt"] = _f4(true_int)
    out["Pileup_nPU"] = rng.poisson(true_int).astype(np.int32)
    out["Pileup_sumEOOT"] = rng.poisson(true_int).astype(np.int32)
    out["Pileup_sumLOOT"] = rng.poisson(true_int).astype(np.int32)
    out["Pileup_pudensity"] = _f4(true_int * rng.gamma(4.0, 0.02, n), 8)
    out["Pileup_gpudensity"] = _f4(true_int * rng.gamma(4.0, 0.02, n), 8)
    out["PV_npvsGood"] = np.maximum(block["PV_npvs"] - rng.poisson(0.5, n), 0).astype(np.int32)
    out["PV_ndof"] = _f4(npvs * 8.0 + rng.gamma(4.0, 20.0, n), 8)
    out["PV_x"] = _f4(0.0107 + rng.normal(0, 0.0012, n), 10)
    out["PV_y"] = _f4(0.0417 + rng.normal(0, 0.0012, n), 10)
    out["PV_z"] = _f4(rng.normal(0.0, 3.5, n), 12)
    out["PV_chi2"] = _f4(rng.gamma(20.0, 0.05, n), 8)
    out["PV_score"] = _f4(sumet * rng.gamma(5.0, 10.0, n), 8)
    for name, scale in (("All", 0.55), ("Central", 0.5), ("CentralCalo", 0.35),
                        ("CentralChargedPileUp", 0.3), ("CentralNeutral", 0.1)):  # fmt: skip
        out[f"fixedGridRhoFastjet{name}"] = _f4(npvs * scale * rng.gamma(16.0, 1 / 16, n), 10)
    # MET variants: the same missing momentum, measured a little differently each time.
    out["MET_covXX"] = _f4(0.3 * sumet * rng.gamma(9.0, 1 / 9, n), 8)
    out["MET_covXY"] = _f4(rng.normal(0.0, 0.05, n) * sumet, 8)
    out["MET_covYY"] = _f4(0.3 * sumet * rng.gamma(9.0, 1 / 9, n), 8)
    out["MET_significance"] = _f4(met_pt**2 / np.maximum(out["MET_covXX"], 1.0), 10)
    out["MET_MetUnclustEnUpDeltaX"] = _f4(rng.normal(0.0, 0.02, n) * sumet, 8)
    out["MET_MetUnclustEnUpDeltaY"] = _f4(rng.normal(0.0, 0.02, n) * sumet, 8)
    out["MET_fiducialGenPt"] = _f4(met_pt * rng.gamma(9.0, 1 / 9, n), 10)
    out["MET_fiducialGenPhi"] = _f4(met_phi + rng.normal(0, 0.3, n), 12)
    for variant in _MET_VARIANTS:
        out[f"{variant}_pt"] = _f4(met_pt * rng.gamma(25.0, 1 / 25, n), 10)
        out[f"{variant}_phi"] = _f4(np.angle(np.exp(1j * (met_phi + rng.normal(0, 0.15, n)))), 12)
        if variant not in ("GenMET", "DeepMETResolutionTune", "DeepMETResponseTune"):
            out[f"{variant}_sumEt"] = _f4(sumet * rng.gamma(25.0, 1 / 25, n), 10)
    for shift in ("JERUp", "JERDown", "JESUp", "JESDown", "UnclusteredUp", "UnclusteredDown"):
        out[f"PuppiMET_pt{shift}"] = _f4(out["PuppiMET_pt"] * rng.gamma(100.0, 1 / 100, n), 10)
        out[f"PuppiMET_phi{shift}"] = _f4(out["PuppiMET_phi"] + rng.normal(0, 0.02, n), 12)
    # Generator and matrix-element summaries, and the event weights.
    gen_weight = np.where(rng.random(n) < 0.02, -1.0, 1.0) * 1234.5
    out["genWeight"] = _f4(gen_weight, 23)
    out["Generator_weight"] = _f4(gen_weight, 23)
    out["LHEWeight_originalXWGTUP"] = _f4(gen_weight, 23)
    out["Generator_binvar"] = _f4(ht * 0.5 + rng.gamma(2.0, 10.0, n), 10)
    out["Generator_scalePDF"] = out["Generator_binvar"]
    out["Generator_x1"] = _f4(rng.beta(0.5, 8.0, n), 10)
    out["Generator_x2"] = _f4(rng.beta(0.5, 8.0, n), 10)
    out["Generator_xpdf1"] = _f4(rng.gamma(1.0, 0.5, n), 10)
    out["Generator_xpdf2"] = _f4(rng.gamma(1.0, 0.5, n), 10)
    parton = np.array([21, 1, 2, -1, -2, 3, -3], dtype=np.int32)
    out["Generator_id1"] = rng.choice(parton, n, p=[0.5, 0.15, 0.15, 0.05, 0.05, 0.05, 0.05])
    out["Generator_id2"] = rng.choice(parton, n, p=[0.5, 0.15, 0.15, 0.05, 0.05, 0.05, 0.05])
    out["LHE_HT"] = _f4(ht * rng.gamma(30.0, 1 / 30, n), 10)
    out["LHE_HTIncoming"] = _f4(out["LHE_HT"] * rng.beta(5.0, 1.0, n), 10)
    out["LHE_Vpt"] = _f4(rng.gamma(1.4, 10.0, n), 10)
    out["LHE_AlphaS"] = _f4(np.full(n, 0.118) + rng.normal(0, 0.003, n), 10)
    for name, lam in (("Njets", 1.2), ("Nb", 0.1), ("Nc", 0.1), ("Nuds", 0.6), ("Nglu", 0.5)):
        out[f"LHE_{name}"] = np.minimum(rng.poisson(lam, n), 255).astype(np.uint8)
    out["LHE_NpNLO"] = np.minimum(rng.poisson(0.5, n), 255).astype(np.uint8)
    out["LHE_NpLO"] = np.minimum(rng.poisson(1.0, n), 255).astype(np.uint8)
    for name in ("Nom", "Up", "Dn"):
        out[f"L1PreFiringWeight_{name}"] = _f4(1.0 - rng.exponential(0.01, n), 10)
    # Soft activity: sums over the soft jets.
    for cut in (2, 5, 10):
        out[f"SoftActivityJetHT{cut}"] = _f4(rng.gamma(2.0, 5.0 * 10 / cut, n), 10)
        out[f"SoftActivityJetNjets{cut}"] = rng.poisson(10.0 / cut, n).astype(np.int32)
    out["SoftActivityJetHT"] = _f4(out["SoftActivityJetHT2"] * 1.3, 10)
    # Trigger and filter bits; single-object paths fire above their threshold.
    quantities = {
        "muon": _leading(block["Muon"].pt), "electron": _leading(block["Electron"].pt),
        "photon": _leading(block["Photon"].pt), "jet": _leading(block["Jet"].pt),
        "ht": ht, "met": met_pt,
    }  # fmt: skip
    for name in (*HLT_PATHS, *L1_SEEDS, *FLAGS):
        rate = BIT_RATES[name]
        fired = rng.random(n) < rate
        for prefix, quantity in _FOLLOWS:
            match = re.match(re.escape(prefix) + r"(\d+)", name)
            if match:
                efficiency = 0.92 if rate > 0.01 else rate * 10
                above = quantities[quantity] > 1.05 * int(match.group(1))
                fired = (fired & (rate < 0.01)) | (above & (rng.random(n) < efficiency))
                break
        out[name] = fired
    out["L1Reco_step"] = np.ones(n, dtype=bool)
    return out


def challenge_branches(all_branch_names: Iterable[str], fraction: float = 0.25) -> list[str]:
    """About ``fraction`` of ``all_branch_names``, as a challenge-like query reads them.

    Deterministic, in the order of ``all_branch_names``. It picks, as the IRIS-HEP
    200 Gbps challenge does, object branches heavy in bytes (generator particles and jets,
    the kinematics, b-tags and corrections of jets, the CorrT1METJet and soft-activity jets,
    lepton kinematics and ids...) with the counter of every collection it reads, the MET,
    vertex and filter scalars, then tops up with every k-th ``HLT_``/``L1_`` bit until about
    ``fraction`` of the names. On a ``nanoaod-wide`` file: 25% of the branches, about
    1.8 KB/event uncompressed (docs/data.md has the measured figures).
    """
    names = list(all_branch_names)
    present = set(names)
    objects = {
        "Jet": ("pt", "eta", "phi", "mass", "btag", "puId", "btagDeepFlavB", "btagDeepFlavCvB",
                "btagDeepFlavCvL", "btagDeepFlavQG", "puIdDisc", "cRegCorr", "jetId",
                "hadronFlavour", "area", "rawFactor"),
        "CorrT1METJet": None,  # every branch of the collection
        "SoftActivityJet": None,
        "GenPart": ("pt", "eta", "phi", "mass", "pdgId"),
        "GenJet": ("pt", "eta", "phi", "mass", "hadronFlavour"),
        "Muon": ("pt", "eta", "phi", "mass", "charge", "pfRelIso04_all", "tightId", "dxy", "dz"),
        "Electron": ("pt", "eta", "phi", "mass", "charge", "pfRelIso03_all", "cutBasedId", "mvaIso_WP80"),
        "Photon": ("pt", "eta", "phi", "mvaID_WP80"),
        "Tau": ("pt", "eta", "phi", "decayMode", "idDeepTau2018v2p5VSjet"),
        "FatJet": ("pt", "eta", "phi", "mass", "msoftdrop", "particleNet_HbbvsQCD"),
    }  # fmt: skip
    chosen: set[str] = set()
    for collection, fields in objects.items():
        if fields is None:
            chosen |= {b for b in names if b.startswith(collection + "_")}
        else:
            chosen |= {f"{collection}_{f}" for f in fields} & present
        if collection in present:
            chosen.add(collection)
        if f"n{collection}" in present:
            chosen.add(f"n{collection}")
    scalars = ("run", "luminosityBlock", "event", "genWeight", "PV_npvs", "PV_npvsGood", "PV_z",
               "fixedGridRhoFastjetAll", "Pileup_nTrueInt")  # fmt: skip
    chosen |= {b for b in names if b in scalars or b.startswith(("MET_", "PuppiMET_", "Flag_"))}
    bits = [b for b in names if b.startswith(("HLT_", "L1_")) and b not in chosen]
    wanted = round(fraction * len(names)) - len(chosen)
    if wanted > 0 and bits:
        step = max(1, len(bits) // wanted)
        chosen |= set(bits[::step][:wanted])
    return [b for b in names if b in chosen]
