"""A force-matched CG potential for linear chains of beads, transferable across sequences, and its use
to relax learned dynamics steps in OpenMM.

The mapped force on bead I is modelled as a sum of central pair forces f_s(r_IJ) over the other
beads J of its chain, with one piecewise-linear table per chain separation s = |I - J| (1: bonded
neighbours, 2: next neighbours, up to ``max_separation``; larger separations share the last table,
which goes to zero at ``cutoff_nm``). The tables do not depend on the beads' monomer content, so the
potential applies to any chain; they are fitted by linear least squares on the mapped forces of the
training chains (multiscale coarse graining, Noid et al. 2008), the same estimator as the liquid pair
baseline (``pair_force_matching``).

Force matching estimates the mean force, i.e. the gradient of the CG free energy; a few Langevin steps
on it after each learned step push the frame toward the equilibrium CG distribution (whose score it
is), which removes overlaps: option (c) of the learned-dynamics study.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..nn.tabulated import knot_energies, linear_force_energy


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


def _chain_pairs(n_beads: int, max_separation: int):
    i, j = np.triu_indices(n_beads, 1)
    return i, j, np.minimum(j - i, max_separation) - 1


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
        i, j, table = _chain_pairs(x.shape[1], max_separation)
        r = np.linalg.norm(x[:, j] - x[:, i], axis=-1)
        for t in range(max_separation):
            if (table == t).any():
                r_min[t] = min(r_min[t], float(r[:, table == t].min()))
                r_max[t] = max(r_max[t], float(r[:, table == t].max()))
    if not np.isfinite(r_min).all():
        raise InputError(f"the chains are too short to sample every separation up to {max_separation}")
    r_min = [0.95 * r for r in r_min]
    r_max = [1.02 * r for r in r_max[:-1]] + [float(cutoff_nm)]
    spacing = [(hi - lo) / (n_knots - 1) for lo, hi in zip(r_min, r_max)]
    n_free = max_separation * n_knots - 1  # the last table's force is 0 at the cutoff
    normal = np.zeros((n_free, n_free))
    rhs = np.zeros(n_free)
    for x, f in samples:
        n_frames, n_beads = x.shape[:2]
        i, j, table = _chain_pairs(n_beads, max_separation)
        vectors = x[:, j] - x[:, i]
        r = np.linalg.norm(vectors, axis=-1)
        unit = vectors / r[..., None]
        design = np.zeros((n_frames, n_beads, 3, max_separation * n_knots))
        lo = np.array(r_min)[table]
        h = np.array(spacing)[table]
        position = np.clip((r - lo) / h, 0.0, n_knots - 1 - 1e-9)
        k = np.floor(position).astype(np.int64)
        w = position - k
        column = table * n_knots + k
        frame_index = np.arange(n_frames)[:, None].repeat(len(i), 1)
        for offset, weight in ((0, 1.0 - w), (1, w)):
            for bead, sign in ((i, -1.0), (j, 1.0)):  # f > 0 pushes i away from j (along -unit) and j along +unit
                for axis in range(3):
                    np.add.at(design, (frame_index, np.broadcast_to(bead, frame_index.shape), axis, column + offset),
                              sign * weight * unit[..., axis])
        design = design.reshape(n_frames * n_beads * 3, -1)[:, :n_free]
        normal += design.T @ design
        rhs += design.T @ f.reshape(-1)
    scale = np.trace(normal) / n_free
    solution = np.append(np.linalg.solve(normal + ridge * scale * np.eye(n_free), rhs), 0.0)
    tables = solution.reshape(max_separation, n_knots)
    return ChainForceTables(r_min, r_max, tables.tolist(), max_separation, float(temperature_K))


class ChainPairPotential(nn.Module):
    """E(positions (N, 3) nm) in kJ/mol of the tables for the bead pairs of the chains listed by
    ``bead_counts`` (contiguous, non-interacting); TorchScript-able, for TorchForce."""

    def __init__(self, tables: ChainForceTables, bead_counts: Sequence[int]):
        super().__init__()
        pairs, kinds = [], []
        offset = 0
        for count in bead_counts:
            i, j, table = _chain_pairs(int(count), tables.max_separation)
            pairs.append(np.stack([i, j], 1) + offset)
            kinds.append(table)
            offset += int(count)
        self.register_buffer("pairs", torch.as_tensor(np.concatenate(pairs), dtype=torch.long))
        self.register_buffer("kinds", torch.as_tensor(np.concatenate(kinds), dtype=torch.long))
        forces = torch.as_tensor(tables.forces_kJ_per_mol_nm, dtype=torch.float64)
        r_min = torch.as_tensor(tables.r_min_nm, dtype=torch.float64)
        r_max = torch.as_tensor(tables.r_max_nm, dtype=torch.float64)
        spacing = (r_max - r_min) / (forces.shape[1] - 1)
        self.register_buffer("forces", forces)
        self.register_buffer("energies", knot_energies(forces, spacing))  # U = 0 at each table's end
        self.register_buffer("r_min", r_min)
        self.register_buffer("r_max", r_max)
        self.register_buffer("spacing", spacing)
        # Outside a table the force continues linearly with the end slope, clamped so that it stiffens (a
        # wall below, a restoring pull above); the last table (largest separations) is zero beyond its cutoff.
        self.register_buffer("slope_low", torch.clamp((forces[:, 1] - forces[:, 0]) / spacing, max=0.0))
        self.register_buffer("slope_high", torch.clamp((forces[:, -1] - forces[:, -2]) / spacing, max=0.0))
        self.n_tables = int(forces.shape[0])
        self.n_particles = offset

    def pair_energy(self, r: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        h, lo, hi = self.spacing[kind], self.r_min[kind], self.r_max[kind]
        n = self.forces.shape[1]
        position = torch.clamp((r - lo) / h, 0.0, n - 1 - 1e-9)
        k = torch.floor(position).long()
        t = position - k.to(r.dtype)
        f0, f1 = self.forces[kind, k], self.forces[kind, k + 1]
        inside = linear_force_energy(self.energies[kind, k], f0, (f1 - f0) / h, t * h)
        wall = linear_force_energy(self.energies[kind, 0], self.forces[kind, 0], self.slope_low[kind],
                                   torch.clamp(r - lo, max=0.0))
        pull = linear_force_energy(torch.zeros_like(r), self.forces[kind, -1], self.slope_high[kind],
                                   torch.clamp(r - hi, min=0.0))
        pull = torch.where(kind == self.n_tables - 1, torch.zeros_like(pull), pull)
        return torch.where(r < lo, wall, torch.where(r > hi, pull, inside))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        r = torch.linalg.vector_norm(x[self.pairs[:, 1]] - x[self.pairs[:, 0]], dim=1)
        return self.pair_energy(r, self.kinds).sum().to(positions.dtype)


@dataclass
class OpenMMRelaxation:
    """A few Langevin steps of the force-matched chain potential after each learned step."""
    steps: int = 10
    timestep_ps: float = 0.02
    friction_per_ps: float = 10.0


class OpenMMRelaxer:
    """A ``refine(frame, propagator)`` that runs a few OpenMM Langevin steps (TorchForce of the chain
    potential) from the learned frame, starting from the velocities of the learned step. ``state()`` is
    an OpenMM checkpoint (random state included), so a propagator that saves it resumes bit-identically."""

    def __init__(self, tables: ChainForceTables, masses_amu: np.ndarray, bead_counts: Sequence[int],
                 temperature_K: float, config: Optional[OpenMMRelaxation] = None, seed: int = 0,
                 platform: str = "CPU", threads: int = 1):
        from .._runtime import openmm, openmmtorch
        from openmm import unit

        self.config = config or OpenMMRelaxation()
        system = openmm.System()
        for mass in masses_amu:
            system.addParticle(float(mass))
        system.addForce(openmmtorch().TorchForce(torch.jit.script(ChainPairPotential(tables, bead_counts))))
        self.integrator = openmm.LangevinMiddleIntegrator(
            temperature_K * unit.kelvin, self.config.friction_per_ps / unit.picosecond,
            self.config.timestep_ps * unit.picosecond)
        self.integrator.setRandomNumberSeed(seed + 1)
        properties = {"Threads": str(threads)} if platform == "CPU" else {}
        self.context = openmm.Context(system, self.integrator, openmm.Platform.getPlatformByName(platform), properties)
        self._nanometer = unit.nanometer

    def __call__(self, frame: torch.Tensor, propagator) -> torch.Tensor:
        self.context.setPositions(frame.detach().cpu().numpy())
        self.context.setVelocities((frame - propagator.positions_nm).detach().cpu().numpy() / propagator.step_ps)
        self.integrator.step(self.config.steps)
        positions = self.context.getState(getPositions=True).getPositions(asNumpy=True)
        return torch.as_tensor(np.asarray(positions.value_in_unit(self._nanometer)), dtype=frame.dtype)

    def state(self) -> bytes:
        return self.context.createCheckpoint()

    def load_state(self, state: bytes) -> None:
        self.context.loadCheckpoint(state)
