"""Force matching recovers a potential of mean force that is known exactly.

All-atom system: beads A and B plus a hidden particle C held near their midpoint by a spring whose
stiffness k(r) depends on r = |AB|:
    U = U1(r) + 1/2 k(r) |r_C - (r_A + r_B)/2|^2,   U1 = double well,   k(r) = k0 exp((r - r0)/delta).
Integrating C out gives the CG potential exactly: W(r) = U1(r) + (3/2) kT ln k(r) + const, a double well
tilted by the entropy of C. Samples are exact (no MD), forces come from autograd of U, and the model
is trained by the package's own pipeline (mapping, priors, Lightning training, export).
"""
import numpy as np
import pytest
import torch

from openmm_cg._runtime import openmm
from openmm import app
from openmm_cg.data.datasets import CGDataset
from openmm_cg.export import load_exported
from openmm_cg.mapping.cgmap import build_mapping
from openmm_cg.training.config import config_from_dict
from openmm_cg.workflows import train
from openmm_cg.units import kT_kJ_per_mol

T = 300.0
KT = kT_kJ_per_mol(T)
R0, DELTA, BARRIER, K0 = 0.5, 0.08, 2.0 * KT, 2000.0


def u1(r):
    return BARRIER * ((r - R0) ** 2 - DELTA ** 2) ** 2 / DELTA ** 4


def stiffness(r):
    return K0 * np.exp((r - R0) / DELTA) if isinstance(r, np.ndarray) else K0 * torch.exp((r - R0) / DELTA)


def exact_pmf(r):
    return u1(r) + 1.5 * KT * np.log(stiffness(r))


def sample_system(n_frames: int, seed: int):
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.25, 0.75, 20001)
    density = grid ** 2 * np.exp(-(exact_pmf(grid) - exact_pmf(grid).min()) / KT)
    cdf = np.cumsum(density)
    r = np.interp(rng.random(n_frames), cdf / cdf[-1], grid)
    direction = rng.normal(size=(n_frames, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    a = rng.random((n_frames, 3))
    b = a + r[:, None] * direction
    c = 0.5 * (a + b) + rng.normal(size=(n_frames, 3)) * np.sqrt(KT / stiffness(r))[:, None]
    x = torch.tensor(np.stack([a, b, c], axis=1), requires_grad=True)
    dist = torch.linalg.vector_norm(x[:, 1] - x[:, 0], dim=-1)
    offset = x[:, 2] - 0.5 * (x[:, 0] + x[:, 1])
    energy = u1(dist) + 0.5 * stiffness(dist) * (offset ** 2).sum(-1)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return x.detach().numpy(), -grad.numpy()


def three_particle_topology():
    topology = app.Topology()
    residue = topology.addResidue("TOY", topology.addChain())
    atoms = [topology.addAtom(name, app.Element.getBySymbol("C"), residue) for name in ("A", "B", "C")]
    topology.addBond(atoms[0], atoms[1])
    topology.addBond(atoms[1], atoms[2])
    return topology


def toy_dataset(frames_per_trajectory: int, n_trajectories: int = 4) -> CGDataset:
    """Beads A and B of the three-particle system, exact samples, one seed per trajectory."""
    mapping = build_mapping(three_particle_topology(), [[0], [1]], bead_names=["A", "B"])
    positions, forces, index = [], [], []
    for trajectory in range(n_trajectories):
        x, f = sample_system(frames_per_trajectory, seed=trajectory)
        positions.append(mapping.map_positions(x))
        forces.append(mapping.map_forces(f))
        index.append(np.full(len(x), trajectory))
    return CGDataset(np.concatenate(positions).astype(np.float32), np.concatenate(forces).astype(np.float32),
                     np.concatenate(index), T, mapping, [f"t{k}" for k in range(n_trajectories)])


def test_force_matching_recovers_known_pmf(tmp_path):
    toy_dataset(5000).save(tmp_path / "toy.h5")
    config = config_from_dict({
        "seed": 1, "output": str(tmp_path / "train"),
        "data": {"dataset": str(tmp_path / "toy.h5"), "validation_fraction": 0.25},
        "priors": {"angles": False, "dihedrals": False, "repulsion": False},
        "model": {"cgschnet": {"n_features": 16, "n_interactions": 1, "n_rbf": 24, "cutoff_nm": 1.2,
                               "n_output_hidden": 16}},
        "training": {"batch_size": 100, "max_epochs": 15, "learning_rate": 5e-3, "lr_patience": 1,
                     "early_stopping_patience": 4, "export_dtype": "float64"},
    })
    summary = train(config, progress=False)
    assert summary["validation_force_rmse_kJ_per_mol_nm"] < summary["validation_force_rmse_prior_only_kJ_per_mol_nm"]

    module, _ = load_exported(summary["model"])
    r = np.linspace(0.25, 0.75, 2001)
    weights = r ** 2 * np.exp(-(exact_pmf(r) - exact_pmf(r).min()) / KT)
    region = weights > 0.02 * weights.max()  # where the data actually are
    r, weights = r[region], weights[region] / weights[region].sum()
    positions = np.zeros((len(r), 2, 3))
    positions[:, 1, 0] = r
    learned = module.energy_batch(torch.as_tensor(positions)).detach().numpy()
    prior_only = module.prior(torch.as_tensor(positions)).detach().numpy()

    def rmse_kT(candidate):
        difference = candidate - exact_pmf(r)
        difference -= np.sum(weights * difference)  # PMFs are defined up to a constant
        return np.sqrt(np.sum(weights * difference ** 2)) / KT

    assert rmse_kT(u1(r)) > 0.75  # the bare potential misses the entropic tilt: the test can tell
    assert rmse_kT(prior_only) > 0.5  # a harmonic bond cannot hold a double well
    assert rmse_kT(learned) < 0.1, rmse_kT(learned)  # measured: 0.02 kT
