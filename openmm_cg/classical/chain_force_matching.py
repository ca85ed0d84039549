"""A force-matched CG potential for linear chains of beads, transferable across sequences (used to relax
learned dynamics steps in OpenMM: ``dynamics.propagator.OpenMMRelaxer``).

The mapped force on bead I is modelled as a sum of central pair forces f_s(r_IJ) over the other
beads J of its chain, with one piecewise-linear table per chain separation s = |I - J| (1: bonded
neighbours, 2: next neighbours, up to ``max_separation``; larger separations share the last table,
which goes to zero at ``cutoff_nm``). The tables do not depend on the beads' monomer content, so the
potential applies to any chain; they are fitted by linear least squares on the mapped forces of the
training chains (multiscale coarse graining, Noid et al. 2008): ``least_squares``, the same estimator as
the liquid pair baseline (``pair_force_matching``).

Force matching estimates the mean force, i.e. the gradient of the CG free energy; a few Langevin steps
on it after each learned step push the frame toward the equilibrium CG distribution (whose score it
is), which removes overlaps: option (c) of the learned-dynamics study.
"""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from ..errors import InputError
from ..nn.tabulated import ChainPairPotential, chain_pairs
from .least_squares import PairForceFit


@dataclass
class ChainForceTables:
    r_min_nm: List[float]            # per table: first knot
    r_max_nm: List[float]            # per table: last knot (the cutoff for the last table)
    forces_kJ_per_mol_nm: List[List[float]]  # per table: f = -dU/dr at uniform knots
    max_separation: int
    temperature_K: float

    def to_dict(self) -> dict:
        return {"r_min_nm": self.r_min_nm, "r_max_nm": self.r_max_nm,
                "forces_kJ_per_mol_nm": self.forces_kJ_per_mol_nm, "max_separation": self.max_separation,
                "temperature_K": self.temperature_K,
                "form": "U = sum over bead pairs of one chain of U_s(r), f_s = -dU_s/dr piecewise linear, "
                        "s = min(|I - J|, max_separation); linear force continuation outside each table"}

    @classmethod
    def from_dict(cls, data: dict) -> "ChainForceTables":
        return cls(data["r_min_nm"], data["r_max_nm"], data["forces_kJ_per_mol_nm"], data["max_separation"],
                   data["temperature_K"])

    def potential(self, bead_counts: Sequence[int]) -> ChainPairPotential:
        """The tables as a TorchScript-able potential of chains of ``bead_counts`` beads."""
        return ChainPairPotential(self.r_min_nm, self.r_max_nm, self.forces_kJ_per_mol_nm, bead_counts)


def fit_chain_force_tables(chains: Sequence, temperature_K: float, max_separation: int = 3, cutoff_nm: float = 2.0,
                           n_knots: int = 60, frames_per_chain: int = 200, ridge: float = 1e-6) -> ChainForceTables:
    """Least-squares pair-force tables from ``chains`` (``ChainData``: positions and mapped forces)."""
    if max_separation < 1:
        raise InputError("max_separation must be at least 1")
    samples = []
    for chain in chains:
        frames = np.linspace(0, len(chain.positions_nm) - 1, min(len(chain.positions_nm), frames_per_chain)).astype(int)
        samples.append((chain.positions_nm[frames].astype(np.float64), chain.forces_kJ_per_mol_nm[frames].astype(np.float64)))
    r_min = [np.inf] * max_separation
    r_max = [0.0] * max_separation
    for x, _ in samples:
        i, j, table = chain_pairs(x.shape[1], max_separation)
        r = np.linalg.norm(x[:, j] - x[:, i], axis=-1)
        for t in range(max_separation):
            if (table == t).any():
                r_min[t] = min(r_min[t], float(r[:, table == t].min()))
                r_max[t] = max(r_max[t], float(r[:, table == t].max()))
    if not np.isfinite(r_min).all():
        raise InputError(f"the chains are too short to sample every separation up to {max_separation}")
    r_min = [0.95 * r for r in r_min]
    r_max = [1.02 * r for r in r_max[:-1]] + [float(cutoff_nm)]
    least_squares = PairForceFit(r_min, r_max, n_knots)
    for x, f in samples:
        i, j, table = chain_pairs(x.shape[1], max_separation)
        least_squares.add(np.stack([i, j], 1), x[:, j] - x[:, i], table, f)
    return ChainForceTables(r_min, r_max, least_squares.solve(ridge).tolist(), max_separation, float(temperature_K))
