"""The classical CG baseline: a pair force for a one-bead-per-molecule liquid, fitted by force matching
(multiscale coarse-graining, Noid et al. 2008) at one state point.

The mapped force on bead i is modelled as F_i = sum_j f(r_ij) (r_i - r_j) / r_ij with f piecewise
linear on uniform knots; F is linear in the knot values, so the fit is one least-squares problem
(normal equations accumulated frame by frame, a small ridge for knots the data barely reach).
"""
from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import CGDataset
from ..errors import InputError
from ..nn.neighbors import neighbor_pairs


@dataclass
class PairForceTable:
    r_first_nm: float
    cutoff_nm: float
    force_kJ_per_mol_nm: np.ndarray  # f = -dU/dr at uniform knots from r_first_nm to cutoff_nm (last is 0)
    temperature_K: float

    def to_dict(self) -> dict:
        return {"r_first_nm": self.r_first_nm, "cutoff_nm": self.cutoff_nm,
                "force_kJ_per_mol_nm": np.asarray(self.force_kJ_per_mol_nm).tolist(),
                "temperature_K": self.temperature_K, "form": "f(r) piecewise linear, U(r) = int_r^cutoff f"}


def _hat_weights(r: np.ndarray, r_first: float, spacing: float, n_knots: int):
    """(knot index k, weight on k, weight on k+1) of the linear interpolation at each r."""
    position = np.clip((r - r_first) / spacing, 0.0, n_knots - 1 - 1e-9)
    k = np.floor(position).astype(np.int64)
    t = position - k
    return k, 1.0 - t, t


def fit_pair_force_matching(dataset: CGDataset, cutoff_nm: float, n_knots: int = 80, max_frames: int = 2000,
                            ridge: float = 1e-6) -> PairForceTable:
    if not dataset.periodic:
        raise InputError("pair force matching is for periodic liquids (one bead per molecule, boxes stored)")
    frames = np.linspace(0, dataset.n_frames - 1, min(dataset.n_frames, max_frames)).astype(int)
    closest = np.inf
    for frame in frames[: min(len(frames), 50)]:
        _, vectors = neighbor_pairs(torch.as_tensor(dataset.positions_nm[frame], dtype=torch.float64),
                                    torch.as_tensor(dataset.box_vectors_nm[frame]), cutoff_nm)
        closest = min(closest, float(torch.linalg.vector_norm(vectors, dim=1).min()))
    r_first = max(0.0, 0.95 * closest)
    spacing = (cutoff_nm - r_first) / (n_knots - 1)
    n_free = n_knots - 1  # f(cutoff) = 0
    normal = np.zeros((n_free, n_free))
    rhs = np.zeros(n_free)
    for frame in frames:
        x = torch.as_tensor(dataset.positions_nm[frame], dtype=torch.float64)
        pairs, vectors = neighbor_pairs(x, torch.as_tensor(dataset.box_vectors_nm[frame]), cutoff_nm)
        pairs, vectors = pairs.numpy(), vectors.numpy()
        r = np.linalg.norm(vectors, axis=1)
        unit = vectors / r[:, None]  # from i to j: the force f(r) > 0 pushes i along -unit, j along +unit
        k, w0, w1 = _hat_weights(r, r_first, spacing, n_knots)
        n_beads = x.shape[0]
        design = np.zeros((n_beads * 3, n_knots))
        for knot, weight in ((k, w0), (k + 1, w1)):
            for bead, sign in ((pairs[:, 0], -1.0), (pairs[:, 1], 1.0)):
                for axis in range(3):
                    np.add.at(design, (bead * 3 + axis, knot), sign * weight * unit[:, axis])
        design = design[:, :n_free]
        target = dataset.forces_kJ_per_mol_nm[frame].astype(np.float64).reshape(-1)
        normal += design.T @ design
        rhs += design.T @ target
    scale = np.trace(normal) / n_free
    solution = np.linalg.solve(normal + ridge * scale * np.eye(n_free), rhs)
    return PairForceTable(r_first, float(cutoff_nm), np.append(solution, 0.0), dataset.temperature_K)


def export_pair_table(table: PairForceTable, dataset: CGDataset, path, overwrite: bool = False):
    """The fitted table as an openmm-cg model file (periodic, one bead per molecule), like the learned models."""
    from ..export import export_model, liquid_model_description, model_metadata
    from ..nn.tabulated import PeriodicTabulatedPair

    module = PeriodicTabulatedPair(table.r_first_nm, table.cutoff_nm, table.force_kJ_per_mol_nm)
    mapping_dict, extra = liquid_model_description(dataset)
    extra.update({"architecture": "tabulated-pair", "prior_forms": None, "tabulated_pair": table.to_dict()})
    metadata = model_metadata(module, mapping_dict, None, None, [table.temperature_K], dataset.data_hash(), extra)
    return export_model(module, metadata, path, dtype="float64", overwrite=overwrite)
