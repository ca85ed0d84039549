"""Force matching on a periodic liquid whose pair potential is known: the pipeline (periodic dataset with
boxes, pair prior from the RDF onset, periodic CGSchNet, export) must learn its forces."""
import numpy as np
import pytest
import torch

from openmm_cg._runtime import openmm
from openmm import app
from openmm_cg.data.datasets import CGDataset
from openmm_cg.errors import InputError
from openmm_cg.export import load_exported
from openmm_cg.mapping.cgmap import build_mapping, repeat_unit
from openmm_cg.training.config import config_from_dict
from openmm_cg.workflows import train
from openmm_cg.units import kT_kJ_per_mol

T = 300.0
KT = kT_kJ_per_mol(T)
SIGMA, EPSILON, CUTOFF, BOX, N = 0.37, 1.5, 0.9, 2.0, 64


def pair_energy(r, epsilon=EPSILON):
    """Lennard-Jones times the quintic switch to zero at the cutoff (works on numpy and torch)."""
    x = r / CUTOFF
    switch = (x < 1) * (1 - 10 * x ** 3 + 15 * x ** 4 - 6 * x ** 5)
    return 4 * epsilon * ((SIGMA / r) ** 12 - (SIGMA / r) ** 6) * switch


def total_energy(x, epsilon=EPSILON):
    d = x[:, None, :] - x[None, :, :]
    d = d - BOX * torch.round(d / BOX)
    i, j = torch.triu_indices(len(x), len(x), 1)
    return pair_energy(torch.linalg.vector_norm(d[i, j], dim=-1), epsilon).sum()


def sample_liquid(n_frames: int, seed: int, sweeps_between: int = 4, temperature: float = T, epsilon: float = EPSILON):
    """Metropolis Monte Carlo of the known pair potential; exact forces of every saved frame."""
    kT = kT_kJ_per_mol(temperature)
    rng = np.random.default_rng(seed)
    grid = (np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * BOX / 4
    x = grid + rng.normal(scale=0.02, size=grid.shape)

    def particle_energy(k, position):
        d = x - position
        d -= BOX * np.round(d / BOX)
        r = np.linalg.norm(d, axis=1)
        r[k] = np.inf
        return float(pair_energy(r[r < CUTOFF], epsilon).sum())

    frames, forces = [], []
    for sweep in range((n_frames + 50) * sweeps_between):
        for k in rng.permutation(N):
            trial = x[k] + rng.uniform(-0.06, 0.06, 3)
            if rng.random() < np.exp(-(particle_energy(k, trial) - particle_energy(k, x[k])) / kT):
                x[k] = trial
        if sweep >= 50 * sweeps_between and sweep % sweeps_between == 0:
            positions = torch.tensor(x, requires_grad=True)
            (grad,) = torch.autograd.grad(total_energy(positions, epsilon), positions)
            frames.append(x.copy())
            forces.append(-grad.numpy())
    return np.array(frames), np.array(forces)


def liquid_topology(n: int) -> app.Topology:
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n):
        topology.addAtom("LJ", app.Element.getBySymbol("Ar"), topology.addResidue("LJ", chain))
    return topology


NETWORKS = {
    "cgschnet": {"n_features": 32, "n_interactions": 1, "n_rbf": 24, "cutoff_nm": CUTOFF, "n_output_hidden": 32},
    "hipnnts": {"n_features": 16, "n_interactions": 1, "n_atom_layers": 1, "n_sensitivities": 12,
                "soft_min_nm": 0.3, "soft_max_nm": 0.8, "cutoff_nm": CUTOFF},
}


@pytest.mark.parametrize("architecture", sorted(NETWORKS))
def test_force_matching_learns_a_known_liquid(tmp_path, architecture):
    mapping = build_mapping(liquid_topology(N), [[k] for k in range(N)])
    assert repeat_unit(mapping)["bead_types"] == [0]
    positions, forces, index = [], [], []
    for trajectory in range(2):
        x, f = sample_liquid(150, seed=trajectory)
        positions.append(x), forces.append(f), index.append(np.full(len(x), trajectory))
    positions = np.concatenate(positions).astype(np.float32)
    boxes = np.tile(np.eye(3) * BOX, (len(positions), 1, 1))
    dataset = CGDataset(positions, np.concatenate(forces).astype(np.float32), np.concatenate(index), T, mapping,
                        ["mc0", "mc1"], box_vectors_nm=boxes)
    dataset.save(tmp_path / "lj.h5")
    settings = {
        "seed": 0, "output": str(tmp_path / "train"),
        "data": {"dataset": str(tmp_path / "lj.h5"), "validation_fraction": 0.5},
        "model": {"architecture": architecture, architecture: dict(NETWORKS[architecture])},
        "training": {"batch_size": 8, "max_epochs": 8, "learning_rate": 3e-3, "lr_patience": 1,
                     "early_stopping_patience": 4, "export_dtype": "float64"},
    }
    summary = train(config_from_dict(settings), progress=False)
    # Exact forces (no eliminated degrees of freedom): the network must remove most of the error left
    # by the pair prior. Measured after 8 epochs: 0.19 (CGSchNet), 0.11 (HIP-NN-TS) of the prior-only RMSE.
    assert summary["validation_force_rmse_kJ_per_mol_nm"] < 0.4 * summary["validation_force_rmse_prior_only_kJ_per_mol_nm"]

    module, metadata = load_exported(summary["model"])
    assert metadata["periodic"] and metadata["n_beads"] == 1 and metadata["architecture"] == architecture and metadata["priors"]["exponent"] > 4
    x = torch.as_tensor(positions[-1], dtype=torch.float64).requires_grad_(True)
    box = torch.as_tensor(boxes[-1])
    (grad,) = torch.autograd.grad(module(x, box), x)
    reference = torch.as_tensor(np.concatenate(forces)[-1])
    assert float(torch.sqrt(((-grad - reference) ** 2).mean())) < 0.4 * float(torch.sqrt((reference ** 2).mean()))

    settings["output"] = str(tmp_path / "too_long")
    settings["model"][architecture]["cutoff_nm"] = 1.05
    with pytest.raises(InputError, match="half the smallest box height"):
        train(config_from_dict(settings), progress=False)


def test_mixture_has_no_repeat_unit():
    topology = liquid_topology(4)
    mapping = build_mapping(topology, [[k] for k in range(4)], bead_types=[0, 1, 0, 0])
    with pytest.raises(InputError, match="copies of one molecule"):
        repeat_unit(mapping)


def test_pair_force_matching_recovers_the_known_pair_force(tmp_path):
    from openmm_cg.classical.pair_force_matching import fit_pair_force_matching
    from openmm_cg.nn.tabulated import PeriodicTabulatedPair

    mapping = build_mapping(liquid_topology(N), [[k] for k in range(N)])
    x, f = sample_liquid(80, seed=3)
    dataset = CGDataset(x.astype(np.float32), f.astype(np.float32), np.zeros(len(x), dtype=int), T, mapping, ["mc"],
                        box_vectors_nm=np.tile(np.eye(3) * BOX, (len(x), 1, 1)))
    table = fit_pair_force_matching(dataset, CUTOFF, n_knots=60)
    r = torch.linspace(0.34, 0.85, 200, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(pair_energy(r).sum(), r)
    module = PeriodicTabulatedPair(table.r_first_nm, table.cutoff_nm, table.force_kJ_per_mol_nm)
    energy = module.table(r, torch.zeros_like(r, dtype=torch.long))
    (table_grad,) = torch.autograd.grad(energy.sum(), r)
    # Exact forces: the fitted pair force is the true one wherever pairs were sampled.
    np.testing.assert_allclose(-table_grad.numpy(), -grad.numpy(), atol=0.03 * float(grad.abs().max()))
    np.testing.assert_allclose(energy.detach().numpy(), pair_energy(r).detach().numpy(), atol=0.05 * KT)
    # Module forces in a box equal the sum of pair forces: compare with the exact liquid forces.
    xt = torch.as_tensor(x[0]).requires_grad_(True)
    (g,) = torch.autograd.grad(torch.jit.script(module)(xt, torch.eye(3, dtype=torch.float64) * BOX), xt)
    np.testing.assert_allclose(-g.numpy(), f[0], atol=0.03 * np.abs(f[0]).max())

    # Exported like the learned models; a bare TorchForce with PBC gives the module's energy.
    import openmm
    import openmmtorch

    from openmm_cg.classical.pair_force_matching import pair_table_model
    from openmm_cg.export import load_eager, save_model

    path = save_model(*pair_table_model(table, dataset), tmp_path / "fm_pair.pt", dtype="float64")
    eager, metadata = load_eager(path)
    assert metadata["architecture"] == "tabulated-pair" and metadata["periodic"]
    force = openmmtorch.TorchForce(str(path))
    force.setUsesPeriodicBoundaryConditions(True)
    system = openmm.System()
    for _ in range(N):
        system.addParticle(40.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.eye(3) * BOX])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x[0])
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    assert energy == pytest.approx(float(eager(torch.as_tensor(x[0], dtype=torch.float64),
                                               torch.eye(3, dtype=torch.float64) * BOX)), rel=1e-9)


def test_temperature_aware_model_learns_a_temperature_dependent_liquid(tmp_path):
    """A liquid whose pair potential changes with T (epsilon linear in T, as a PMF's -T*S part would):
    a temperature-aware model trained at two temperatures must get each one's forces right, use T
    to do so, and give the same energies through a bare TorchForce global parameter."""
    import openmm

    from openmm_cg.simulation.potential import CGPotential

    def epsilon(temperature):
        return EPSILON * (1.0 + 3.0 * (temperature / T - 1.0))  # 0.5 eps at 250 K, 1.5 eps at 350 K

    mapping = build_mapping(liquid_topology(N), [[k] for k in range(N)])
    temperatures, paths, frames = (250.0, 350.0), [], {}
    for temperature in temperatures:
        samples = [sample_liquid(80, seed=10 + k, sweeps_between=3, temperature=temperature,
                                 epsilon=epsilon(temperature)) for k in range(2)]
        x = np.concatenate([s[0] for s in samples]).astype(np.float32)
        f = np.concatenate([s[1] for s in samples]).astype(np.float32)
        index = np.repeat([0, 1], [len(s[0]) for s in samples])
        dataset = CGDataset(x, f, index, temperature, mapping, ["mc0", "mc1"],
                            box_vectors_nm=np.tile(np.eye(3) * BOX, (len(x), 1, 1)))
        paths.append(str(tmp_path / f"lj_{temperature:g}.h5"))
        dataset.save(paths[-1])
        frames[temperature] = (x[-1], f[-1])
    settings = {
        "seed": 0, "output": str(tmp_path / "train"),
        "data": {"dataset": paths, "validation_fraction": 0.5},
        "model": {"architecture": "cgschnet", "temperature_input": True, "cgschnet": dict(NETWORKS["cgschnet"])},
        "training": {"batch_size": 8, "max_epochs": 10, "learning_rate": 3e-3, "lr_patience": 1,
                     "early_stopping_patience": 4, "export_dtype": "float64"},
    }
    summary = train(config_from_dict(settings), progress=False)
    assert summary["validation_force_rmse_kJ_per_mol_nm"] < 0.4 * summary["validation_force_rmse_prior_only_kJ_per_mol_nm"]

    module, metadata = load_exported(summary["model"])
    assert metadata["temperature_input"] == {"global_parameter": "cg_temperature_K", "reference_K": 300.0}
    box = torch.eye(3, dtype=torch.float64) * BOX

    def force_error(x, f, temperature):
        xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
        (grad,) = torch.autograd.grad(module(xt, box, torch.tensor(temperature, dtype=torch.float64)), xt)
        return float(torch.sqrt(((-grad - torch.as_tensor(f)) ** 2).mean()) / np.sqrt((f ** 2).mean()))

    for temperature, other in zip(temperatures, temperatures[::-1]):
        right, wrong = force_error(*frames[temperature], temperature), force_error(*frames[temperature], other)
        print(f"{temperature:g} K frame: relative force error {right:.3f} at its T, {wrong:.3f} at {other:g} K")
        assert right < 0.4 and right < 0.6 * wrong, (temperature, right, wrong)

    potential = CGPotential.load(summary["model"])
    topology = potential.topology(N, box_vectors_nm=np.eye(3) * BOX)
    with pytest.raises(ValueError, match="temperature-aware"):
        potential.createSystem(topology)
    system = potential.createSystem(topology, temperature_K=250.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x = frames[250.0][0].astype(np.float64)
    context.setPositions(x)
    for temperature in temperatures:
        context.setParameter("cg_temperature_K", temperature)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        expected = float(module(torch.as_tensor(x), box, torch.tensor(temperature, dtype=torch.float64)))
        assert energy == pytest.approx(expected, rel=1e-9)
