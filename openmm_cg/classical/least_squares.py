"""The one least-squares fit of pair-force tables to mapped forces (multiscale coarse graining, Noid et al. 2008).

The force on bead i is modelled as F_i = sum_j f_t(r_ij) (r_i - r_j) / r_ij, with every table f_t piecewise
linear on uniform knots. F is linear in the knot values, so the fit is one least-squares problem: normal
equations accumulated configuration by configuration, and a small ridge for knots the data barely reach. The
last knot of the last table is fixed at zero (the force vanishes at the cutoff).
"""
from typing import Sequence

import numpy as np


class PairForceFit:
    def __init__(self, r_min_nm: Sequence[float], r_max_nm: Sequence[float], n_knots: int):
        self.r_min = np.asarray(r_min_nm, dtype=np.float64)
        self.spacing = (np.asarray(r_max_nm, dtype=np.float64) - self.r_min) / (n_knots - 1)
        self.n_knots = int(n_knots)
        self.n_free = len(self.r_min) * self.n_knots - 1
        self.normal = np.zeros((self.n_free, self.n_free))
        self.rhs = np.zeros(self.n_free)

    def add(self, pairs: np.ndarray, vectors_nm: np.ndarray, table: np.ndarray, forces: np.ndarray) -> None:
        """Frames of one set of pairs: ``pairs`` (P, 2) bead indices, ``vectors_nm`` (F, P, 3) from i to j,
        ``table`` (P,) the table of each pair, ``forces`` (F, N, 3) the mapped forces in kJ/mol/nm."""
        n_frames, n_beads = forces.shape[:2]
        r = np.linalg.norm(vectors_nm, axis=-1)
        unit = vectors_nm / r[..., None]  # f > 0 pushes i away from j (along -unit) and j along +unit
        position = np.clip((r - self.r_min[table]) / self.spacing[table], 0.0, self.n_knots - 1 - 1e-9)
        k = np.floor(position).astype(np.int64)
        w = position - k
        column = table * self.n_knots + k
        frame = np.broadcast_to(np.arange(n_frames)[:, None], r.shape)
        design = np.zeros((n_frames, n_beads, 3, len(self.r_min) * self.n_knots))
        for offset, weight in ((0, 1.0 - w), (1, w)):
            for bead, sign in ((pairs[:, 0], -1.0), (pairs[:, 1], 1.0)):
                for axis in range(3):
                    np.add.at(design, (frame, np.broadcast_to(bead, r.shape), axis, column + offset),
                              sign * weight * unit[..., axis])
        design = design.reshape(n_frames * n_beads * 3, -1)[:, :self.n_free]
        self.normal += design.T @ design
        self.rhs += design.T @ np.asarray(forces, dtype=np.float64).reshape(-1)

    def solve(self, ridge: float = 1e-6) -> np.ndarray:
        """(tables, knots) forces f = -dU/dr in kJ/mol/nm."""
        scale = np.trace(self.normal) / self.n_free
        solution = np.linalg.solve(self.normal + ridge * scale * np.eye(self.n_free), self.rhs)
        return np.append(solution, 0.0).reshape(len(self.r_min), self.n_knots)
