"""A tabulated pair potential for periodic one-bead-per-molecule liquids, as a TorchScript module.

The classical baseline of the transferability study (a pair force fitted by force matching at one
state point) is exported in the same ``.pt`` contract as the learned models, so it runs through the
same OpenMM path and is judged by the same analysis. The pair force f(r) = -dU/dr is piecewise linear
between knots; the energy is its exact integral (piecewise quadratic, zero at the cutoff), so forces
are continuous. Below the first knot f continues linearly and never softens (a repulsive wall).
"""
from typing import List, Optional

import torch
from torch import nn

from ..priors.volume import VolumeTerm, VolumeTermParameters
from .neighbors import neighbor_pairs


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


class PeriodicTabulatedPair(nn.Module):
    """E(positions (N, 3) nm, box (3, 3) nm) in kJ/mol of the pair force table ``force_kJ_per_mol_nm`` on
    uniform knots from ``r_first_nm`` to ``cutoff_nm`` (the last knot's force must be 0)."""

    def __init__(self, r_first_nm: float, cutoff_nm: float, force_kJ_per_mol_nm: List[float],
                 volume_term: Optional[VolumeTermParameters] = None):
        super().__init__()
        if volume_term is not None and volume_term.temperature_dependent:
            raise ValueError("a pair table does not take the temperature: its volume term cannot depend on it")
        forces = torch.as_tensor(force_kJ_per_mol_nm, dtype=torch.float64)
        if forces.dim() != 1 or forces.numel() < 3:
            raise ValueError("a pair table needs at least 3 knots")
        self.n_beads = 1
        self.has_network = False
        self.has_prior = True
        self.cutoff_nm = float(cutoff_nm)
        self.r_first_nm = float(r_first_nm)
        self.spacing_nm = (float(cutoff_nm) - float(r_first_nm)) / (forces.numel() - 1)
        self.register_buffer("dtype_probe", torch.zeros(0))
        self.register_buffer("bead_types", torch.zeros(1, dtype=torch.long))
        self.register_buffer("forces", forces)
        self.register_buffer("energies", knot_energies(forces, torch.tensor(self.spacing_nm, dtype=torch.float64)))
        self.register_buffer("first_slope", torch.clamp((forces[1] - forces[0]) / self.spacing_nm, max=0.0).reshape(1))
        self.volume = VolumeTerm(volume_term)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        h = self.spacing_nm
        position = (r - self.r_first_nm) / h
        k = torch.clamp(torch.floor(position), 0, self.forces.numel() - 2).long()
        t = position - k.to(r.dtype)
        f0, f1 = self.forces[k], self.forces[k + 1]
        inside = linear_force_energy(self.energies[k], f0, (f1 - f0) / h, t * h)
        below = r < self.r_first_nm
        d = torch.where(below, r - self.r_first_nm, torch.zeros_like(r))
        wall = linear_force_energy(self.energies[0], self.forces[0], self.first_slope, d)
        energy = torch.where(below, wall, inside)
        return torch.where(r < self.cutoff_nm, energy, torch.zeros_like(r))

    @torch.jit.export
    def energy_batch(self, positions: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = positions.to(self.dtype_probe.dtype)
        b = boxes.to(self.dtype_probe.dtype)
        out: List[torch.Tensor] = []
        for frame in range(x.shape[0]):
            _, vectors = neighbor_pairs(x[frame], b[frame], self.cutoff_nm)
            out.append(self.pair_energy(torch.linalg.vector_norm(vectors, dim=1)).sum())
        return (torch.stack(out) + self.volume(b, x.shape[1])).to(positions.dtype)

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: torch.Tensor):
        energy = self.energy_batch(positions, boxes)
        return energy, torch.zeros_like(energy)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        if box is None:
            raise ValueError("openmm-cg: this is a periodic model and needs box vectors: the System must be periodic "
                             "and the TorchForce must have setUsesPeriodicBoundaryConditions(True)")
        return self.energy_batch(positions.unsqueeze(0), box.unsqueeze(0)).sum()
