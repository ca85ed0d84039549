"""Fit prior parameters to CG data by Boltzmann inversion.

For a coordinate x with histogram p(x), the potential of mean force is U(x) = -kT ln(p(x)/J(x)),
where J is the Jacobian of the coordinate: r^2 for a distance in 3-D, sin(theta) for an angle, 1 for a
dihedral. Each prior form is fitted to U by least squares weighted with the bin counts (the variance
of ln(count) is 1/count), so well-sampled regions dominate the fit.
"""
import numpy as np
import torch

from ..errors import InputError
from ..geometry import angles, dihedrals, distances
from ..units import kT_kJ_per_mol
from .graph import dihedrals_per_central_bond, topology_terms
from .terms import PriorParameters

_MIN_COUNT = 5


def _values(positions_nm: np.ndarray, index: np.ndarray, function, chunk: int = 100_000) -> np.ndarray:
    """(frames, n_terms) internal coordinates, computed in float64 with the model's own geometry."""
    index_t = torch.as_tensor(index, dtype=torch.long)
    out = []
    for start in range(0, len(positions_nm), chunk):
        x = torch.as_tensor(np.asarray(positions_nm[start:start + chunk], dtype=np.float64))
        out.append(function(x, index_t).numpy())
    return np.concatenate(out)


def _bins_for(n_samples: int, most: int) -> int:
    """sqrt(n) bins, between 10 and ``most``: few samples spread over many bins give noisy fits."""
    return int(np.clip(np.sqrt(n_samples), 10, most))


def _boltzmann_inverted(samples: np.ndarray, jacobian, kT: float, bins: int, value_range=None):
    bins = _bins_for(len(samples), bins)
    counts, edges = np.histogram(samples, bins=bins, range=value_range)
    centers = 0.5 * (edges[1:] + edges[:-1])
    keep = counts >= _MIN_COUNT
    jac = jacobian(centers[keep])
    keep_idx = np.flatnonzero(keep)[jac > 0]
    jac = jac[jac > 0]
    energy = -kT * np.log(counts[keep_idx] / jac)
    return centers[keep_idx], energy, counts[keep_idx].astype(np.float64)


def _weighted_lstsq(design: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = np.sqrt(weights)[:, None]
    solution, *_ = np.linalg.lstsq(design * w, target * w[:, 0], rcond=None)
    return solution


def fit_harmonic(samples: np.ndarray, kT: float, jacobian, bins: int = 100):
    """(k, x0) of 1/2 k (x - x0)^2 fitted to the Boltzmann-inverted histogram of ``samples``."""
    x, energy, counts = _boltzmann_inverted(samples, jacobian, kT, bins)
    if len(x) >= 3:
        a, b, _ = _weighted_lstsq(np.stack([x ** 2, x, np.ones_like(x)], axis=1), energy, counts)
        if a > 0:
            return 2.0 * a, -b / (2.0 * a)
    # Too narrow to histogram, or not convex: a Gaussian's moments give the same harmonic form.
    variance = float(np.var(samples))
    if variance <= 0:
        raise InputError("a prior coordinate does not fluctuate in the data: cannot fit a harmonic prior")
    return kT / variance, float(np.mean(samples))


def fit_fourier(samples: np.ndarray, kT: float, n_terms: int, bins: int = 72):
    """(k_n, phase_n), n = 1..n_terms, of sum_n k_n (1 + cos(n phi - phase_n)) fitted to -kT ln p(phi)."""
    phi, energy, counts = _boltzmann_inverted(samples, lambda c: np.ones_like(c), kT, bins, (-np.pi, np.pi))
    columns = [np.ones_like(phi)]
    for n in range(1, n_terms + 1):
        columns += [np.cos(n * phi), np.sin(n * phi)]
    if len(phi) < len(columns):
        return np.zeros(n_terms), np.zeros(n_terms)
    solution = _weighted_lstsq(np.stack(columns, axis=1), energy, counts)
    a, b = solution[1::2], solution[2::2]
    # a cos(n phi) + b sin(n phi) = A cos(n phi - d), with A = |(a, b)| and d = atan2(b, a).
    return np.hypot(a, b), np.arctan2(b, a)


def fit_repulsion(samples: np.ndarray, kT: float, wall_quantiles=(0.001, 0.05), bins: int = 40,
                  switch=None) -> float:
    """c of c / r^6 (times ``switch(r)``, when given) fitted (with an offset) to the Boltzmann-inverted wall: the
    closest 5% of distances.

    Falls back to one kT at the closest observed distance when no wall is resolved.
    """
    shape = (lambda r: r ** -6.0) if switch is None else (lambda r: r ** -6.0 * switch(r))
    low, high = np.quantile(samples, wall_quantiles)
    wall = samples[(samples >= low) & (samples <= high)]
    r, energy, counts = _boltzmann_inverted(wall, lambda c: c ** 2, kT, bins)
    # With a switch, a wall is resolved only well inside the cutoff: near it, S(r)/r^6 -> 0 and c would diverge.
    if len(r) >= 4 and (switch is None or low < _switch_half_point(switch)):
        c, _ = _weighted_lstsq(np.stack([shape(r), np.ones_like(r)], axis=1), energy, counts)
        if c > 0:
            return float(c)
    if switch is None:
        return float(kT * low ** 6)
    # One kT at the closest distance, or where the switch is still 1/2 (half the cutoff) for pairs that never
    # come closer: a class seen only near or beyond the cutoff gets a weak wall, not c / S(r) -> infinity.
    r = min(float(low), _switch_half_point(switch))
    return float(kT / shape(np.array([r]))[0])


def _switch_half_point(switch) -> float:
    """The distance where ``switch`` falls to 1/2 (bisection; the switch decreases from 1 to 0)."""
    low, high = 0.0, 100.0
    while switch(np.array([high]))[0] > 0.5:
        high *= 2.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if switch(np.array([middle]))[0] > 0.5 else (low, middle)
    return 0.5 * (low + high)


def fit_priors(positions_nm: np.ndarray, bonds: np.ndarray, temperature_K: float, n_dihedral_terms: int = 3,
               use_angles: bool = True, use_dihedrals: bool = True, use_repulsion: bool = True) -> PriorParameters:
    """Fit all priors for a molecule with CG ``bonds`` from mapped positions (frames, beads, 3) in nm."""
    positions_nm = np.asarray(positions_nm)
    if positions_nm.ndim != 3 or positions_nm.shape[-1] != 3:
        raise InputError(f"positions must be (frames, beads, 3), got {positions_nm.shape}")
    if len(positions_nm) < 100:
        raise InputError(f"{len(positions_nm)} frames are too few to fit priors (need at least 100)")
    kT = kT_kJ_per_mol(temperature_K)
    n_beads = positions_nm.shape[1]
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    triples, quads, pairs = topology_terms(n_beads, bonds)
    params = PriorParameters()

    if len(bonds):
        r = _values(positions_nm, bonds, distances)
        fits = [fit_harmonic(r[:, m], kT, lambda c: c ** 2) for m in range(len(bonds))]
        params.bond_pairs, params.bond_k, params.bond_r0_nm = bonds, *map(np.array, zip(*fits))
    if use_angles and len(triples):
        theta = _values(positions_nm, triples, angles)
        fits = [fit_harmonic(theta[:, m], kT, np.sin) for m in range(len(triples))]
        params.angle_triples, params.angle_k, params.angle_theta0 = triples, *map(np.array, zip(*fits))
    if use_dihedrals and len(quads) and n_dihedral_terms > 0:
        phi = _values(positions_nm, quads, dihedrals)
        fits = [fit_fourier(phi[:, m], kT, n_dihedral_terms) for m in range(len(quads))]
        params.dihedral_quads = quads
        # Dihedrals around one central bond (e.g. C-N-CA-C and C-N-CA-CB) differ by a near-rigid offset,
        # so each one's Boltzmann inversion is the same torsional PMF: weight each by 1/m so that the
        # prior counts that PMF once, not m times.
        weights = 1.0 / dihedrals_per_central_bond(quads)
        params.dihedral_k = np.array([f[0] * w for f, w in zip(fits, weights)]).reshape(-1, n_dihedral_terms)
        params.dihedral_phase = np.array([f[1] for f in fits]).reshape(-1, n_dihedral_terms)
    if use_repulsion and len(pairs):
        r = _values(positions_nm, pairs, distances)
        params.repulsion_pairs = pairs
        params.repulsion_c = np.array([fit_repulsion(r[:, m], kT) for m in range(len(pairs))])
    return _float32_exact(params)


def _float32_exact(params: PriorParameters) -> PriorParameters:
    """Round every parameter to float32 once, so that the model's float32 buffers, the metadata JSON and
    native OpenMM forces built from it all hold exactly the same numbers."""
    for name, value in params.__dict__.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            setattr(params, name, value.astype(np.float32).astype(np.float64))
    return params
