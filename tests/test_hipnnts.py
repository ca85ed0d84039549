"""HIP-NN-TS: invariances, finite-difference forces, and agreement with the reference implementation
(hippynn) for one set of shared weights."""
import numpy as np
import pytest
import torch

from openmm_cg.nn.hipnnts import HipNNTS, HipNNTSConfig, angular_factors

TYPES = torch.tensor([0, 1, 0, 1, 1, 0])
PAIRS = torch.triu_indices(6, 6, 1).T


def network(**overrides) -> HipNNTS:
    torch.manual_seed(0)
    config = HipNNTSConfig(n_features=8, n_interactions=2, n_atom_layers=1, n_sensitivities=5, soft_min_nm=0.15,
                           soft_max_nm=0.6, cutoff_nm=0.8, **overrides)
    module = HipNNTS(config, n_types=2).double()
    for block in module.blocks:  # non-zero read-outs, so that every layer shows in the energy
        torch.nn.init.normal_(block.readout.weight)
    return module


def configurations(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return 0.25 * torch.randn(n, 6, 3, generator=generator, dtype=torch.float64)


def test_rotation_reflection_translation_and_permutation_invariance():
    module = torch.jit.script(network())
    x = configurations()
    energy = module(x, TYPES, PAIRS)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    for transformed in (x @ q.T, -x, x + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)):
        torch.testing.assert_close(module(transformed, TYPES, PAIRS), energy, rtol=1e-12, atol=1e-12)
    order = torch.tensor([3, 0, 5, 1, 4, 2])  # same types at permuted indices: bead 3 is type 1 etc.
    permuted_types = TYPES[order]
    torch.testing.assert_close(module(x[:, order], permuted_types, PAIRS), energy, rtol=1e-12, atol=1e-12)
    # The l = 1, 2 channels matter: dropping them changes the energy of the same configurations.
    assert not torch.allclose(torch.jit.script(network(max_l=0))(x, TYPES, PAIRS), energy)


def test_forces_match_finite_differences():
    module = network()
    x = configurations(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x, TYPES, PAIRS).sum(), x)
    h = 1e-5
    for bead, axis in ((0, 0), (2, 1), (5, 2)):
        plus, minus = x.detach().clone(), x.detach().clone()
        plus[0, bead, axis] += h
        minus[0, bead, axis] -= h
        numeric = (module(plus, TYPES, PAIRS) - module(minus, TYPES, PAIRS)).item() / (2 * h)
        assert grad[0, bead, axis].item() == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_both_summation_orders_give_the_same_energy_and_forces():
    module = network()
    orders = [block.interaction.environment_first for block in module.blocks]
    assert orders == [True, False]  # one-hot input: environment first; features: weights first
    x = configurations().requires_grad_(True)
    energy = module(x, TYPES, PAIRS)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    for block in module.blocks:
        block.interaction.environment_first = not block.interaction.environment_first
    flipped = module(x, TYPES, PAIRS)
    (flipped_grad,) = torch.autograd.grad(flipped.sum(), x)
    assert not torch.allclose(flipped, torch.zeros_like(flipped))
    torch.testing.assert_close(flipped, energy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flipped_grad, grad, rtol=1e-10, atol=1e-12)


def test_matches_hippynn_reference_layers():
    hippynn_networks = pytest.importorskip("hippynn.networks")
    ours = network(cutoff_form="cos2", max_l=2)
    config = dict(n_features=8, n_sensitivities=5, dist_soft_min=0.15, dist_soft_max=0.6, dist_hard_max=0.8,
                  n_atom_layers=1, n_interaction_layers=2, n_input_features=2, resnet=False,
                  activation=torch.nn.SiLU, cusp_reg=1e-6)
    reference = hippynn_networks.hipnn.HipnnQuad(**config).double()
    with torch.no_grad():
        for block, (interaction, *atom_layers) in zip(ours.blocks, reference.blocks):
            interaction.sensitivity.mu.copy_(block.interaction.sensitivity.mu)
            interaction.sensitivity.sigma.copy_(block.interaction.sensitivity.sigma)
            interaction.int_weights.copy_(block.interaction.weights)
            interaction.selfint.weight.copy_(block.interaction.self_interaction.weight)
            interaction.selfint.bias.copy_(block.interaction.self_interaction.bias)
            interaction.vecscales.copy_(block.interaction.vector_scales)
            interaction.quadscales.copy_(block.interaction.quadrupole_scales)
            for theirs, mine in zip(atom_layers, block.atom_layers):
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
    x = configurations(1)[0]
    first = torch.cat([PAIRS[:, 0], PAIRS[:, 1]])
    second = torch.cat([PAIRS[:, 1], PAIRS[:, 0]])
    coords = x[second] - x[first]
    one_hot = torch.nn.functional.one_hot(TYPES, 2).double()
    expected = reference(one_hot, first, second, torch.linalg.vector_norm(coords, dim=1), coords)[1:]

    vectors = (x[PAIRS[:, 1]] - x[PAIRS[:, 0]]).unsqueeze(0)
    r = torch.linalg.vector_norm(vectors, dim=-1)
    z = one_hot.unsqueeze(0)
    for block, layer_features in zip(ours.blocks, expected):
        z, _ = block(z, r, angular_factors(vectors / r.unsqueeze(-1), 2), PAIRS, 4)  # blocks of 4 pairs
        # Same equations, different summation order: agreement to ~1e-11 (float64).
        torch.testing.assert_close(z[0], layer_features, rtol=1e-8, atol=1e-10)


def test_exported_periodic_hipnnts_in_bare_torchforce_equals_the_module(tmp_path):
    import openmm
    import openmmtorch

    from openmm_cg.export import load_eager, save_model
    from openmm_cg.nn.kinds import potential_metadata
    from openmm_cg.nn.periodic import PeriodicCGPotentialModule
    from openmm_cg.priors.pair import PairPriorParameters

    torch.manual_seed(3)
    config = HipNNTSConfig(n_features=8, n_interactions=2, n_atom_layers=1, n_sensitivities=6, cutoff_nm=0.9)
    prior = PairPriorParameters(c=2e-5, exponent=12.0, cutoff_nm=0.9)
    module = PeriodicCGPotentialModule([0], prior, config).double()
    for block in module.network.blocks:
        torch.nn.init.normal_(block.readout.weight)
    bead = {"bead_names": ["MOH"], "bead_types": [0], "type_names": ["MOH"], "masses_amu": [32.042],
            "cg_topology": {"chains": [{"id": "A", "residues": [{"name": "MOH", "id": "1",
                                                                 "atoms": [{"name": "MOH", "element": None}]}]}],
                            "bonds": []}}
    path = save_model(module, potential_metadata(module, bead, [300.0], "test"), tmp_path / "hip.pt", dtype="float64")
    eager, metadata = load_eager(path)
    assert metadata["architecture"] == "hipnnts" and metadata["network_config"]["max_l"] == 2

    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.5 + 0.1
    x = torch.as_tensor(grid + np.random.default_rng(0).normal(scale=0.05, size=grid.shape))
    box = torch.eye(3, dtype=torch.float64) * 2.0
    force = openmmtorch.TorchForce(str(path))
    force.setUsesPeriodicBoundaryConditions(True)
    system = openmm.System()
    for _ in range(len(x)):
        system.addParticle(32.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box.numpy()])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x.numpy())
    state = context.getState(getEnergy=True, getForces=True)
    xg = x.clone().requires_grad_(True)
    expected = eager(xg, box)
    (grad,) = torch.autograd.grad(expected, xg)
    assert state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) == pytest.approx(
        float(expected), rel=1e-9)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    assert np.abs(forces + grad.numpy()).max() < 1e-6 * np.abs(grad.numpy()).max()
    assert abs(float(expected) - float(module(x, box))) < 1e-9 * abs(float(expected))
