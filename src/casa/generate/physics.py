"""Synthetic proton-proton collisions in the layout of CMS NanoAOD (the ADL benchmark file).

Each event is drawn from a mixture of processes: Drell-Yan Z to two muons or two
electrons (with a low-mass continuum), top-quark pairs, W plus jets and multijet
background. Decays are done with real two-body kinematics, then detector effects
(resolution, acceptance, isolation, identification, b-tagging, pile-up) are applied.
Floats are rounded to the mantissa precision NanoAOD keeps for each quantity, so the
files compress like real NanoAOD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import awkward as ak
import numpy as np

from casa.generate import kinematics as kin

MUON_MASS = 0.1056584
ELECTRON_MASS = 0.000511
TAU_MASS = 1.77686
B_MASS = 4.8
Z_MASS, Z_WIDTH = 91.1876, 2.4952
W_MASS, W_WIDTH = 80.379, 2.085
TOP_MASS, TOP_WIDTH = 172.5, 1.42

#: Share of each process in the generated mixture.
PROCESS_FRACTIONS: dict[str, float] = {
    "z_mumu": 0.07,
    "z_ee": 0.06,
    "ttbar": 0.07,
    "w_jets": 0.30,
    "multijet": 0.50,
}

#: Mantissa bits kept per branch (NanoAOD's precision settings; 23 is full float32).
MANTISSA_BITS: dict[str, int] = {
    "pt": 10, "eta": 12, "phi": 12, "mass": 8, "pfRelIso03_all": 6, "pfRelIso04_all": 6,
    "dxy": 10, "dz": 10, "btag": 10, "MET_pt": 10, "MET_phi": 12, "MET_sumet": 10,
}  # fmt: skip

#: Branch layout of each collection: field name -> numpy dtype.
COLLECTIONS: dict[str, dict[str, str]] = {
    "Muon": {
        "pt": "f4", "eta": "f4", "phi": "f4", "mass": "f4", "charge": "i4",
        "pfRelIso03_all": "f4", "pfRelIso04_all": "f4", "tightId": "?", "softId": "?",
        "dxy": "f4", "dz": "f4",
    },
    "Electron": {
        "pt": "f4", "eta": "f4", "phi": "f4", "mass": "f4", "charge": "i4",
        "pfRelIso03_all": "f4", "cutBasedId": "?", "dxy": "f4", "dz": "f4",
    },
    "Jet": {"pt": "f4", "eta": "f4", "phi": "f4", "mass": "f4", "btag": "f4", "puId": "?"},
    "Photon": {"pt": "f4", "eta": "f4", "phi": "f4", "mass": "f4"},
    "Tau": {"pt": "f4", "eta": "f4", "phi": "f4", "mass": "f4", "charge": "i4"},
}  # fmt: skip

#: Scalar branches and their dtypes.
SCALARS: dict[str, str] = {
    "run": "u4", "luminosityBlock": "u4", "event": "u8", "HLT_IsoMu24": "?",
    "PV_npvs": "i4", "MET_pt": "f4", "MET_phi": "f4", "MET_sumet": "f4",
}  # fmt: skip

EVENTS_PER_LUMI_BLOCK = 2000


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (to nearest), as NanoAOD stores them."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if bits >= 23:
        return values
    shift = 23 - bits
    raw = values.view(np.uint32)
    rounded = (raw + np.uint32(1 << (shift - 1))) & np.uint32(~((1 << shift) - 1) & 0xFFFFFFFF)
    return rounded.view(np.float32)


@dataclass
class _Collection:
    """Objects of one kind gathered from all processes before they are sorted into events."""

    fields: dict[str, str]
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, evt: np.ndarray, **values: np.ndarray) -> None:
        missing = set(self.fields) - set(values)
        assert not missing, f"missing fields {missing}"
        self.parts.append({"evt": evt, **values})

    def flat(self, name: str) -> np.ndarray:
        return np.concatenate([p[name] for p in self.parts]) if self.parts else np.empty(0)

    def build(self, n_events: int) -> ak.Array:
        """Jagged record array, objects of each event ordered by decreasing pt."""
        evt = self.flat("evt").astype(np.int64)
        pt = self.flat("pt")
        order = np.lexsort((-pt, evt))
        counts = np.bincount(evt, minlength=n_events)
        columns = {}
        for name, dtype in self.fields.items():
            column = self.flat(name)[order].astype(dtype)
            if name in MANTISSA_BITS:
                column = round_mantissa(column, MANTISSA_BITS[name])
            columns[name] = column
        return ak.unflatten(ak.zip(columns), counts)


class EventBuilder:
    """Collects the reconstructed objects and missing momentum of a block of events."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.rng = rng
        self.n = n
        self.collections = {name: _Collection(fields) for name, fields in COLLECTIONS.items()}
        self.met_x = np.zeros(n)
        self.met_y = np.zeros(n)
        self.sumet = np.zeros(n)

    # -- invisible particles -------------------------------------------------
    def add_invisible(self, evt: np.ndarray, p: kin.FourVector) -> None:
        """Neutrinos: they only show up as missing transverse momentum."""
        np.add.at(self.met_x, evt, p[0])
        np.add.at(self.met_y, evt, p[1])

    # -- leptons --------------------------------------------------------------
    def add_leptons(
        self, flavour: str, evt: np.ndarray, p: kin.FourVector, charge: np.ndarray, prompt: bool
    ) -> None:
        """Reconstruct muons or electrons: resolution, acceptance, isolation and identification."""
        rng = self.rng
        pt, eta, phi, _ = kin.to_ptetaphim(p)
        n = len(pt)
        resolution = 0.012 + 0.0001 * pt if flavour == "Muon" else 0.02 + 0.3 / np.sqrt(pt + 1)
        pt = pt * rng.normal(1.0, np.minimum(resolution, 0.2), n)
        eta_max, pt_min = (2.4, 3.0) if flavour == "Muon" else (2.5, 5.0)
        if flavour == "Muon":
            efficiency = 0.97
        else:
            efficiency = 0.9
        keep = (np.abs(eta) < eta_max) & (pt > pt_min) & (rng.uniform(size=n) < efficiency)
        evt, pt, eta, phi, charge = evt[keep], pt[keep], eta[keep], phi[keep], charge[keep]
        n = len(pt)
        if prompt:
            iso03 = rng.exponential(0.02, n) * (rng.uniform(size=n) < 0.6)
            dxy, dz = rng.normal(0, 0.002, n), rng.normal(0, 0.006, n)
            ident = rng.uniform(size=n) < 0.96
        else:
            iso03 = 0.08 + rng.exponential(0.5, n)
            dxy, dz = rng.normal(0, 0.03, n), rng.normal(0, 0.06, n)
            ident = rng.uniform(size=n) < 0.45
        self.sumet_add(evt, pt)
        common = dict(
            pt=pt, eta=eta, phi=phi, charge=charge.astype(np.int32),
            pfRelIso03_all=iso03, dxy=dxy, dz=dz,
        )  # fmt: skip
        if flavour == "Muon":
            iso04 = iso03 * rng.uniform(1.0, 1.6, n) + rng.exponential(0.01, n)
            soft = ident | (rng.uniform(size=n) < 0.8)
            self.collections["Muon"].add(
                evt, mass=np.full(n, MUON_MASS), pfRelIso04_all=iso04, tightId=ident,
                softId=soft, **common,
            )  # fmt: skip
        else:
            self.collections["Electron"].add(
                evt, mass=np.full(n, ELECTRON_MASS), cutBasedId=ident, **common
            )

    # -- jets -----------------------------------------------------------------
    def add_jets(self, evt: np.ndarray, p: kin.FourVector, flavour: np.ndarray) -> None:
        """Reconstruct jets from partons: energy resolution, acceptance and b-tagging.

        ``flavour`` is 5 for b, 4 for c and 0 for light partons. The mismeasured part of each
        jet's momentum goes into the missing transverse momentum, as in a real detector.
        """
        rng = self.rng
        pt_true, eta, phi, m_true = kin.to_ptetaphim(p)
        n = len(pt_true)
        sigma = np.sqrt(0.05**2 + (1.0 / np.sqrt(pt_true + 1.0)) ** 2)
        pt = pt_true * np.clip(rng.normal(1.0, sigma), 0.3, 2.0)
        scale = pt / np.maximum(pt_true, 1e-9) - 1.0
        np.add.at(self.met_x, evt, -scale * p[0])
        np.add.at(self.met_y, evt, -scale * p[1])
        mass = np.maximum(m_true, pt * rng.gamma(4.0, 0.025, n))
        keep = (pt > 15.0) & (np.abs(eta) < 4.7)
        evt, pt, eta, phi, mass, flavour = (a[keep] for a in (evt, pt, eta, phi, mass, flavour))
        n = len(pt)
        btag = np.where(
            flavour == 5,
            rng.beta(4.0, 1.0, n),
            np.where(flavour == 4, rng.beta(1.5, 3.0, n), rng.beta(0.7, 9.0, n)),
        )
        btag = np.where(np.abs(eta) < 2.4, btag, 0.0)
        self.sumet_add(evt, pt)
        self.collections["Jet"].add(
            evt, pt=pt, eta=eta, phi=phi, mass=mass, btag=btag, puId=rng.uniform(size=n) < 0.97
        )
        self._decays_in_jets(evt, pt, eta, phi, flavour)

    def _decays_in_jets(
        self, evt: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, flavour: np.ndarray
    ) -> None:
        """Non-prompt leptons from heavy-flavour decays, and jets faking taus and photons."""
        rng = self.rng
        n = len(pt)
        heavy = flavour >= 4
        for lepton, rate_heavy, rate_light in (("Muon", 0.12, 0.006), ("Electron", 0.08, 0.01)):
            sel = rng.uniform(size=n) < np.where(heavy, rate_heavy, rate_light)
            k = int(sel.sum())
            lep_pt = pt[sel] * rng.uniform(0.05, 0.5, k)
            p = kin.from_ptetaphim(
                lep_pt, eta[sel] + rng.normal(0, 0.04, k), phi[sel] + rng.normal(0, 0.04, k),
                np.full(k, MUON_MASS if lepton == "Muon" else ELECTRON_MASS),
            )  # fmt: skip
            self.add_leptons(lepton, evt[sel], p, rng.choice([-1, 1], k), prompt=False)
        fake_tau = (rng.uniform(size=n) < 0.04) & (pt > 20.0) & (np.abs(eta) < 2.3)
        k = int(fake_tau.sum())
        self.collections["Tau"].add(
            evt[fake_tau], pt=pt[fake_tau] * rng.uniform(0.6, 1.0, k), eta=eta[fake_tau],
            phi=phi[fake_tau], mass=rng.uniform(0.14, 1.6, k), charge=rng.choice([-1, 1], k),
        )  # fmt: skip

    # -- the rest -------------------------------------------------------------
    def sumet_add(self, evt: np.ndarray, pt: np.ndarray) -> None:
        """Visible transverse energy of reconstructed objects."""
        np.add.at(self.sumet, evt, pt)

    def add_pileup_and_photons(self, npvs: np.ndarray) -> None:
        """Soft jets from pile-up collisions and photons from neutral-meson decays."""
        rng = self.rng
        n_pu = rng.poisson(0.04 * npvs)
        evt = np.repeat(np.arange(self.n), n_pu)
        k = len(evt)
        pt = kin.power_law(rng, k, 15.0, 4.5)
        eta, phi = rng.uniform(-4.7, 4.7, k), rng.uniform(-np.pi, np.pi, k)
        self.sumet_add(evt, pt)
        self.collections["Jet"].add(
            evt, pt=pt, eta=eta, phi=phi, mass=pt * rng.gamma(3.0, 0.03, k),
            btag=np.where(np.abs(eta) < 2.4, rng.beta(0.7, 9.0, k), 0.0),
            puId=rng.uniform(size=k) < 0.25,
        )  # fmt: skip
        n_ph = rng.poisson(0.5, self.n)
        evt = np.repeat(np.arange(self.n), n_ph)
        k = len(evt)
        pt = kin.power_law(rng, k, 10.0, 4.0)
        self.sumet_add(evt, pt)
        self.collections["Photon"].add(
            evt, pt=pt, eta=rng.uniform(-2.5, 2.5, k), phi=rng.uniform(-np.pi, np.pi, k),
            mass=np.zeros(k),
        )  # fmt: skip


# -- processes ----------------------------------------------------------------
def _boson(rng: np.random.Generator, mass: np.ndarray, mean_pt: float) -> kin.FourVector:
    n = len(mass)
    pt = rng.gamma(1.4, mean_pt / 1.4, n)
    return kin.from_ptymphi(pt, rng.normal(0, 1.6, n), mass, rng.uniform(-np.pi, np.pi, n))


def _isr_jets(b: EventBuilder, evt: np.ndarray, mean: float) -> None:
    rng = b.rng
    n_jets = rng.poisson(mean, len(evt))
    jet_evt = np.repeat(evt, n_jets)
    k = len(jet_evt)
    pt = kin.power_law(rng, k, 12.0, 4.0)
    p = kin.from_ptetaphim(pt, rng.normal(0, 2.0, k), rng.uniform(-np.pi, np.pi, k), np.zeros(k))
    flavour = np.where(rng.uniform(size=k) < 0.03, 5, np.where(rng.uniform(size=k) < 0.08, 4, 0))
    b.add_jets(jet_evt, p, flavour)


def drell_yan(b: EventBuilder, evt: np.ndarray, flavour: str) -> None:
    """Z/gamma* to two muons or electrons: a Z peak on a falling low-mass continuum."""
    rng = b.rng
    n = len(evt)
    continuum = rng.uniform(size=n) < 0.15
    mass = np.where(
        continuum,
        12.0 + rng.exponential(25.0, n),
        kin.breit_wigner(rng, n, Z_MASS, Z_WIDTH, 50.0, 150.0),
    )
    lepton_mass = MUON_MASS if flavour == "Muon" else ELECTRON_MASS
    z = _boson(rng, mass, 12.0)
    l1, l2 = kin.two_body_decay(z, lepton_mass, lepton_mass, rng)
    q = rng.choice([-1, 1], n)
    b.add_leptons(flavour, evt, l1, q, prompt=True)
    b.add_leptons(flavour, evt, l2, -q, prompt=True)
    _isr_jets(b, evt, 0.8)


def _w_decay(b: EventBuilder, evt: np.ndarray, w: kin.FourVector, charge: np.ndarray) -> None:
    """W to e nu, mu nu, tau nu (one each in nine) or to two quarks (six in nine)."""
    rng = b.rng
    n = len(evt)
    mode = rng.choice(9, n)
    for flavour, m, sel in (
        ("Electron", ELECTRON_MASS, mode == 0),
        ("Muon", MUON_MASS, mode == 1),
        ("Tau", TAU_MASS, mode == 2),
    ):
        sub = tuple(c[sel] for c in w)
        lep, nu = kin.two_body_decay(sub, m, 0.0, rng)
        b.add_invisible(evt[sel], nu)
        if flavour == "Tau":
            # The visible tau decay carries about half of its momentum.
            frac = rng.uniform(0.3, 0.8, int(sel.sum()))
            vis = tuple(c * frac for c in lep[:3]) + (lep[3] * frac,)
            b.add_invisible(evt[sel], tuple(c * (1 - frac) for c in lep))
            pt, eta, phi, _ = kin.to_ptetaphim(vis)
            ok = (pt > 18) & (np.abs(eta) < 2.3)
            k = int(ok.sum())
            b.collections["Tau"].add(
                evt[sel][ok], pt=pt[ok], eta=eta[ok], phi=phi[ok],
                mass=rng.uniform(0.14, 1.6, k), charge=charge[sel][ok],
            )  # fmt: skip
        else:
            b.add_leptons(flavour, evt[sel], lep, charge[sel], prompt=True)
    had = mode >= 3
    sub = tuple(c[had] for c in w)
    q1, q2 = kin.two_body_decay(sub, 0.0, 0.0, rng)
    k = int(had.sum())
    charm = rng.uniform(size=k) < 0.5  # W -> c s half of the time
    b.add_jets(evt[had], q1, np.where(charm, 4, 0))
    b.add_jets(evt[had], q2, np.zeros(k, dtype=int))


def ttbar(b: EventBuilder, evt: np.ndarray) -> None:
    """Top-quark pairs, each top to W b, with the W decaying to leptons or quarks."""
    rng = b.rng
    n = len(evt)
    phi1 = rng.uniform(-np.pi, np.pi, n)
    pt = rng.gamma(2.2, 45.0, n)
    y1, y2 = rng.normal(0, 1.1, n), rng.normal(0, 1.1, n)
    for sign, y, phi in ((1, y1, phi1), (-1, y2, phi1 + np.pi + rng.normal(0, 0.4, n))):
        mass = kin.breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 150.0, 195.0)
        top = kin.from_ptymphi(pt * rng.uniform(0.8, 1.2, n), y, mass, phi)
        w_mass = kin.breit_wigner(rng, n, W_MASS, W_WIDTH, 60.0, 100.0)
        w_mass = np.minimum(w_mass, mass - B_MASS - 1.0)
        w, bq = kin.two_body_decay(top, w_mass, B_MASS, rng)
        b.add_jets(evt, bq, np.full(n, 5))
        _w_decay(b, evt, w, np.full(n, sign))
    _isr_jets(b, evt, 1.0)


def w_jets(b: EventBuilder, evt: np.ndarray) -> None:
    """A leptonically decaying W with initial-state jets."""
    rng = b.rng
    n = len(evt)
    w = _boson(rng, kin.breit_wigner(rng, n, W_MASS, W_WIDTH, 50.0, 150.0), 15.0)
    charge = rng.choice([-1, 1], n)
    lepton_only = rng.choice(3, n)
    for flavour, m, sel in (
        ("Electron", ELECTRON_MASS, lepton_only == 0),
        ("Muon", MUON_MASS, lepton_only >= 1),  # a single-muon sample, like the ADL file
    ):
        sub = tuple(c[sel] for c in w)
        lep, nu = kin.two_body_decay(sub, m, 0.0, rng)
        b.add_invisible(evt[sel], nu)
        b.add_leptons(flavour, evt[sel], lep, charge[sel], prompt=True)
    _isr_jets(b, evt, 1.4)


def multijet(b: EventBuilder, evt: np.ndarray) -> None:
    """QCD multijet events: two or more jets on a steeply falling spectrum."""
    rng = b.rng
    n = len(evt)
    lead = kin.power_law(rng, n, 20.0, 4.5)
    phi = rng.uniform(-np.pi, np.pi, n)
    p1 = kin.from_ptetaphim(lead, rng.normal(0, 1.8, n), phi, np.zeros(n))
    recoil = lead * rng.uniform(0.7, 1.0, n)
    p2 = kin.from_ptetaphim(
        recoil, rng.normal(0, 1.8, n), phi + np.pi + rng.normal(0, 0.2, n), np.zeros(n)
    )
    for p in (p1, p2):
        fl = np.where(rng.uniform(size=n) < 0.04, 5, np.where(rng.uniform(size=n) < 0.1, 4, 0))
        b.add_jets(evt, p, fl)
    _isr_jets(b, evt, 1.6)


PROCESSES = {
    "z_mumu": lambda b, evt: drell_yan(b, evt, "Muon"),
    "z_ee": lambda b, evt: drell_yan(b, evt, "Electron"),
    "ttbar": ttbar,
    "w_jets": w_jets,
    "multijet": multijet,
}


def generate_events(
    rng: np.random.Generator, n: int, first_event: int, run: int
) -> dict[str, np.ndarray | ak.Array]:
    """Generate ``n`` events as branches ready for ``uproot`` (collections as jagged records)."""
    b = EventBuilder(rng, n)
    names = list(PROCESS_FRACTIONS)
    process = rng.choice(len(names), n, p=np.array(list(PROCESS_FRACTIONS.values())))
    for i, name in enumerate(names):
        evt = np.flatnonzero(process == i)
        if len(evt):
            PROCESSES[name](b, evt)
    npvs = np.maximum(rng.poisson(18.0, n), 1)
    b.add_pileup_and_photons(npvs)

    # Underlying event and pile-up add unclustered energy and smear the missing momentum.
    b.sumet += rng.gamma(3.0, 40.0, n) + 9.0 * npvs
    sigma = 0.55 * np.sqrt(b.sumet)
    met_x = b.met_x + rng.normal(0, 1, n) * sigma
    met_y = b.met_y + rng.normal(0, 1, n) * sigma

    out: dict[str, np.ndarray | ak.Array] = {}
    event = first_event + np.arange(n, dtype=np.uint64)
    out["run"] = np.full(n, run, dtype=np.uint32)
    out["luminosityBlock"] = (1 + (event - 1) // EVENTS_PER_LUMI_BLOCK).astype(np.uint32)
    out["event"] = event
    out["PV_npvs"] = npvs.astype(np.int32)
    out["MET_pt"] = round_mantissa(np.hypot(met_x, met_y), MANTISSA_BITS["MET_pt"])
    out["MET_phi"] = round_mantissa(np.arctan2(met_y, met_x), MANTISSA_BITS["MET_phi"])
    out["MET_sumet"] = round_mantissa(b.sumet, MANTISSA_BITS["MET_sumet"])
    for name, collection in b.collections.items():
        out[name] = collection.build(n)
    muons = out["Muon"]
    trigger_muon = (muons.pt > 24) & (abs(muons.eta) < 2.1) & (muons.pfRelIso04_all < 0.15)
    fired = ak.to_numpy(ak.any(trigger_muon, axis=1)) & (rng.uniform(size=n) < 0.92)
    out["HLT_IsoMu24"] = fired
    return out
