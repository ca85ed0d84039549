"""Tabulated pair potentials, as TorchScript modules: the classical force-matched baselines.

``ForceTables`` is the one table lookup: pair forces f_t(r) = -dU_t/dr, piecewise linear on uniform knots
(one row per table), and their energies, the exact integrals (piecewise quadratic, zero at each table's last
knot), so forces are continuous. Below a table's first knot f continues linearly and never softens (a
repulsive wall); above its last knot it continues linearly with the end slope clamped to stiffen, except the
last table, which is zero beyond its cutoff.

- ``PeriodicTabulatedPair`` (a model kind): one table for a one-bead-per-molecule liquid, exported in the same
  ``.pt`` contract as the learned models, so it runs through the same OpenMM path and analysis.
- ``ChainPairPotential``: one table per chain separation |I - J| for linear bead chains (learned-dynamics
  relaxation).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..priors.volume import VolumeTerm, VolumeTermParameters
from .kinds import ModelKind, PotentialModule
from .neighbors import neighbor_pairs

TABLE_FORM = "f(r) piecewise linear, U(r) = int_r^cutoff f"


def knot_energies(forces: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """U at every knot of piecewise-linear force tables (knots along the last axis, ``spacing`` one per
    table): the integral of f from the knot to the last knot, where U = 0. Trapezoids are exact here."""
    segment = 0.5 * (forces[..., 1:] + forces[..., :-1]) * spacing.unsqueeze(-1)
    tail = torch.flip(torch.cumsum(torch.flip(segment, [-1]), -1), [-1])
    return torch.cat([tail, torch.zeros_like(forces[..., :1])], -1)


def linear_force_energy(u0: torch.Tensor, f0: torch.Tensor, slope: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """U(r0 + d) where U(r0) = u0 and the force -dU/dr = f0 + slope * (r - r0) is linear: inside a table
    segment, and for the linear continuations beyond its ends."""
    return u0 - (f0 * d + 0.5 * slope * d * d)


class ForceTables(nn.Module):
    """Energies of pairs at distances ``r`` (P,) that use tables ``table`` (P,): rows of ``forces`` (T, K) on
    uniform knots from ``r_min[t]`` to ``r_max[t]``."""

    def __init__(self, r_min_nm: Sequence[float], r_max_nm: Sequence[float], forces_kJ_per_mol_nm):
        super().__init__()
        forces = torch.as_tensor(np.asarray(forces_kJ_per_mol_nm, dtype=np.float64)).reshape(len(r_min_nm), -1)
        if forces.shape[1] < 3:
            raise ValueError("a force table needs at least 3 knots")
        r_min = torch.as_tensor(np.asarray(r_min_nm, dtype=np.float64))
        r_max = torch.as_tensor(np.asarray(r_max_nm, dtype=np.float64))
        spacing = (r_max - r_min) / (forces.shape[1] - 1)
        self.register_buffer("forces", forces)
        self.register_buffer("energies", knot_energies(forces, spacing))  # U = 0 at each table's end
        self.register_buffer("r_min", r_min)
        self.register_buffer("r_max", r_max)
        self.register_buffer("spacing", spacing)
        self.register_buffer("slope_low", torch.clamp((forces[:, 1] - forces[:, 0]) / spacing, max=0.0))
        self.register_buffer("slope_high", torch.clamp((forces[:, -1] - forces[:, -2]) / spacing, max=0.0))
        self.n_tables = int(forces.shape[0])

    def forward(self, r: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        h, lo, hi = self.spacing[table], self.r_min[table], self.r_max[table]
        n = self.forces.shape[1]
        position = torch.clamp((r - lo) / h, 0.0, n - 1 - 1e-9)
        k = torch.floor(position).long()
        t = position - k.to(r.dtype)
        f0, f1 = self.forces[table, k], self.forces[table, k + 1]
        inside = linear_force_energy(self.energies[table, k], f0, (f1 - f0) / h, t * h)
        wall = linear_force_energy(self.energies[table, 0], self.forces[table, 0], self.slope_low[table],
                                   torch.clamp(r - lo, max=0.0))
        pull = linear_force_energy(torch.zeros_like(r), self.forces[table, -1], self.slope_high[table],
                                   torch.clamp(r - hi, min=0.0))
        pull = torch.where(table == self.n_tables - 1, torch.zeros_like(pull), pull)
        return torch.where(r < lo, wall, torch.where(r > hi, pull, inside))


class PeriodicTabulatedPair(PotentialModule):
    """E(positions (N, 3) nm, box (3, 3) nm) in kJ/mol of the pair force table ``force_kJ_per_mol_nm`` on
    uniform knots from ``r_first_nm`` to ``cutoff_nm`` (the last knot's force must be 0)."""

    def __init__(self, r_first_nm: float, cutoff_nm: float, force_kJ_per_mol_nm: List[float],
                 volume_term: Optional[VolumeTermParameters] = None):
        super().__init__()
        if volume_term is not None and volume_term.temperature_dependent:
            raise ValueError("a pair table does not take the temperature: its volume term cannot depend on it")
        forces = np.asarray(force_kJ_per_mol_nm, dtype=np.float64)
        if forces.ndim != 1:
            raise ValueError("a pair table is one row of knot forces")
        self.n_beads = 1
        self.has_network = False
        self.has_prior = True
        self.cutoff_nm = float(cutoff_nm)
        self.r_first_nm = float(r_first_nm)
        self.register_buffer("dtype_probe", torch.zeros(0))
        self.register_buffer("bead_types", torch.zeros(1, dtype=torch.long))
        self.table = ForceTables([self.r_first_nm], [self.cutoff_nm], forces[None])
        self.volume = VolumeTerm(volume_term)
        self.description = {
            "model_kind": TABULATED_PAIR.name, "architecture": TABULATED_PAIR.name, "periodic": True, "n_beads": 1,
            "bead_types": [0], "n_types": 1, "cutoff_nm": self.cutoff_nm, "network_config": None,
            "energy_scale_kJ_per_mol": 1.0, "priors": None, "prior_forms": None,
            "tabulated_pair": {"r_first_nm": self.r_first_nm, "cutoff_nm": self.cutoff_nm,
                               "force_kJ_per_mol_nm": forces.tolist(), "form": TABLE_FORM}}
        if volume_term is not None:
            self.description["volume_term"] = volume_term.to_dict()
        self._register_load_state_dict_pre_hook(self._read_earlier_layout)

    def _read_earlier_layout(self, state_dict, prefix, *args):
        """Weights of files from before ``ForceTables`` (0.1.0 up to b1a5db6) held the table at the top level; the
        table's other buffers follow from the metadata this module was built from."""
        if prefix + "forces" in state_dict:
            for name, buffer in self.table.named_buffers():
                state_dict[f"{prefix}table.{name}"] = buffer
            state_dict[prefix + "table.forces"] = state_dict.pop(prefix + "forces").reshape(1, -1)
            state_dict[prefix + "table.energies"] = state_dict.pop(prefix + "energies").reshape(1, -1)
            state_dict[prefix + "table.slope_low"] = state_dict.pop(prefix + "first_slope").reshape(1)

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(table + volume term, zero): the whole table counts as prior (no network)."""
        if boxes is None:
            raise ValueError("openmm-cg: this is a periodic model and needs box vectors (frames, 3, 3)")
        x = positions.to(self.dtype_probe.dtype)
        b = boxes.to(self.dtype_probe.dtype)
        out: List[torch.Tensor] = []
        for frame in range(x.shape[0]):
            _, vectors = neighbor_pairs(x[frame], b[frame], self.cutoff_nm)
            r = torch.linalg.vector_norm(vectors, dim=1)
            out.append(self.table(r, torch.zeros_like(r, dtype=torch.long)).sum())
        energy = torch.stack(out) + self.volume(b, x.shape[1])
        return energy, torch.zeros_like(energy)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        if box is None:
            raise ValueError("openmm-cg: this is a periodic model and needs box vectors: the System must be periodic "
                             "and the TorchForce must have setUsesPeriodicBoundaryConditions(True)")
        return self.energy_batch(positions.unsqueeze(0), box.unsqueeze(0), None).sum()


class TabulatedPairKind(ModelKind):
    """The classical baseline of a one-bead-per-molecule liquid: a force-matched pair force table."""

    name = "tabulated-pair"
    periodic = True

    def build(self, metadata: dict) -> PeriodicTabulatedPair:
        table = metadata["tabulated_pair"]
        volume = VolumeTermParameters.from_dict(metadata["volume_term"]) if metadata.get("volume_term") else None
        return PeriodicTabulatedPair(table["r_first_nm"], table["cutoff_nm"], table["force_kJ_per_mol_nm"], volume)


TABULATED_PAIR = TabulatedPairKind()


def chain_pairs(n_beads: int, max_separation: int):
    """(i, j, table) of every bead pair i < j of a linear chain; table = min(j - i, max_separation) - 1."""
    i, j = np.triu_indices(n_beads, 1)
    return i, j, np.minimum(j - i, max_separation) - 1


class ChainPairPotential(nn.Module):
    """E(positions (N, 3) nm) in kJ/mol of force tables for the bead pairs of the chains listed by ``bead_counts``
    (contiguous, non-interacting): table s - 1 for beads s apart along a chain, the last for all farther pairs."""

    def __init__(self, r_min_nm: Sequence[float], r_max_nm: Sequence[float], forces_kJ_per_mol_nm,
                 bead_counts: Sequence[int]):
        super().__init__()
        self.table = ForceTables(r_min_nm, r_max_nm, forces_kJ_per_mol_nm)
        pairs, kinds = [], []
        offset = 0
        for count in bead_counts:
            i, j, table = chain_pairs(int(count), self.table.n_tables)
            pairs.append(np.stack([i, j], 1) + offset)
            kinds.append(table)
            offset += int(count)
        self.register_buffer("pairs", torch.as_tensor(np.concatenate(pairs), dtype=torch.long))
        self.register_buffer("kinds", torch.as_tensor(np.concatenate(kinds), dtype=torch.long))
        self.n_particles = offset

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        r = torch.linalg.vector_norm(x[self.pairs[:, 1]] - x[self.pairs[:, 0]], dim=1)
        return self.table(r, self.kinds).sum().to(positions.dtype)
