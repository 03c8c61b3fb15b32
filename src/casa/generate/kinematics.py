"""Relativistic kinematics on numpy arrays, for the event generator.

Four-vectors are tuples ``(px, py, pz, E)`` of float64 arrays of equal length.
"""

from __future__ import annotations

import numpy as np

FourVector = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def from_ptetaphim(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, m: np.ndarray) -> FourVector:
    """Cartesian four-vector from collider coordinates."""
    px = pt * np.cos(phi)
    py = pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    e = np.sqrt(px * px + py * py + pz * pz + m * m)
    return px, py, pz, e


def from_ptymphi(pt: np.ndarray, y: np.ndarray, m: np.ndarray, phi: np.ndarray) -> FourVector:
    """Four-vector of a particle of mass ``m`` with transverse momentum ``pt`` and rapidity ``y``."""
    mt = np.sqrt(m * m + pt * pt)
    return pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y)


def to_ptetaphim(p: FourVector) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Collider coordinates (pt, eta, phi, mass) of a four-vector."""
    px, py, pz, e = p
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / pt, 0.0))
    phi = np.arctan2(py, px)
    m = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    return pt, eta, phi, m


def boost(p: FourVector, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> FourVector:
    """Lorentz boost of ``p`` by the velocity ``(bx, by, bz)``."""
    px, py, pz, e = p
    b2 = bx * bx + by * by + bz * bz
    gamma = 1.0 / np.sqrt(np.maximum(1.0 - b2, 1e-12))
    bp = bx * px + by * py + bz * pz
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma2 = np.where(b2 > 0, (gamma - 1.0) / b2, 0.0)
    k = gamma2 * bp + gamma * e
    return px + k * bx, py + k * by, pz + k * bz, gamma * (e + bp)


def two_body_decay(
    parent: FourVector, m1: np.ndarray | float, m2: np.ndarray | float, rng: np.random.Generator
) -> tuple[FourVector, FourVector]:
    """Decay each parent isotropically (in its rest frame) into daughters of masses m1 and m2."""
    px, py, pz, e = parent
    n = len(px)
    mass = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    m1 = np.broadcast_to(np.asarray(m1, dtype=np.float64), (n,))
    m2 = np.broadcast_to(np.asarray(m2, dtype=np.float64), (n,))
    arg = (mass * mass - (m1 + m2) ** 2) * (mass * mass - (m1 - m2) ** 2)
    p = np.sqrt(np.maximum(arg, 0.0)) / (2.0 * np.maximum(mass, 1e-9))
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi = rng.uniform(-np.pi, np.pi, n)
    qx, qy, qz = p * sin_t * np.cos(phi), p * sin_t * np.sin(phi), p * cos_t
    d1 = (qx, qy, qz, np.sqrt(p * p + m1 * m1))
    d2 = (-qx, -qy, -qz, np.sqrt(p * p + m2 * m2))
    bx, by, bz = px / e, py / e, pz / e
    return boost(d1, bx, by, bz), boost(d2, bx, by, bz)


def breit_wigner(
    rng: np.random.Generator, n: int, mass: float, width: float, low: float, high: float
) -> np.ndarray:
    """Masses from a Cauchy (non-relativistic Breit-Wigner) line shape truncated to [low, high]."""
    lo = np.arctan(2.0 * (low - mass) / width)
    hi = np.arctan(2.0 * (high - mass) / width)
    return mass + 0.5 * width * np.tan(rng.uniform(lo, hi, n))


def power_law(rng: np.random.Generator, n: int, minimum: float, index: float) -> np.ndarray:
    """Values above ``minimum`` falling as x**-index (index > 1)."""
    return minimum * (1.0 - rng.uniform(0.0, 1.0, n)) ** (-1.0 / (index - 1.0))


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed azimuthal difference wrapped into [-pi, pi)."""
    return (a - b + np.pi) % (2.0 * np.pi) - np.pi
