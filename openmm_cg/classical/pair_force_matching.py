"""The classical CG baseline: a pair force for a one-bead-per-molecule liquid, fitted by force matching
(``least_squares``) at one state point to every neighbour pair within the cutoff (minimum image)."""
from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import CGDataset
from ..errors import InputError
from ..nn.neighbors import neighbor_pairs
from ..nn.tabulated import TABLE_FORM, PeriodicTabulatedPair
from .least_squares import PairForceFit


@dataclass
class PairForceTable:
    r_first_nm: float
    cutoff_nm: float
    force_kJ_per_mol_nm: np.ndarray  # f = -dU/dr at uniform knots from r_first_nm to cutoff_nm (last is 0)
    temperature_K: float

    def to_dict(self) -> dict:
        return {"r_first_nm": self.r_first_nm, "cutoff_nm": self.cutoff_nm,
                "force_kJ_per_mol_nm": np.asarray(self.force_kJ_per_mol_nm).tolist(),
                "temperature_K": self.temperature_K, "form": TABLE_FORM}


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
    least_squares = PairForceFit([r_first], [cutoff_nm], n_knots)
    for frame in frames:
        x = torch.as_tensor(dataset.positions_nm[frame], dtype=torch.float64)
        pairs, vectors = neighbor_pairs(x, torch.as_tensor(dataset.box_vectors_nm[frame]), cutoff_nm)
        least_squares.add(pairs.numpy(), vectors.numpy()[None], np.zeros(len(pairs), dtype=np.int64),
                          dataset.forces_kJ_per_mol_nm[frame][None])
    return PairForceTable(r_first, float(cutoff_nm), least_squares.solve(ridge)[0], dataset.temperature_K)


def pair_table_model(table: PairForceTable, dataset: CGDataset):
    """(module, metadata) of the fitted table as an openmm-cg potential (periodic, one bead per molecule), like
    the learned models; ``export.save_model`` writes it."""
    from ..nn.kinds import potential_metadata

    module = PeriodicTabulatedPair(table.r_first_nm, table.cutoff_nm, table.force_kJ_per_mol_nm)
    mapping_dict, extra = dataset.model_description()
    extra["tabulated_pair"] = dict(module.describe()["tabulated_pair"], temperature_K=table.temperature_K)
    return module, potential_metadata(module, mapping_dict, [table.temperature_K], dataset.data_hash(), extra)
