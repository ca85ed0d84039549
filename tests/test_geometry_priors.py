"""Internal coordinates and prior terms agree with mdtraj and with OpenMM's own forces."""
import numpy as np
import pytest
import torch

from openmm_cg._runtime import openmm
from openmm_cg.geometry import angles, dihedrals, distances
from openmm_cg.priors.fit import fit_fourier, fit_harmonic, fit_priors, fit_repulsion
from openmm_cg.priors.graph import angle_triples, dihedral_quads, dihedrals_per_central_bond, nonbonded_pairs
from openmm_cg.priors.terms import PriorEnergy, PriorParameters, openmm_prior_forces
from openmm_cg.units import kT_kJ_per_mol

from conftest import cg_frames

KT = kT_kJ_per_mol(300.0)


def test_angles_and_dihedrals_match_mdtraj():
    import mdtraj

    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(50, 4, 3))
    topology = mdtraj.Topology()
    residue = topology.add_residue("X", topology.add_chain())
    for _ in range(4):
        topology.add_atom("C", mdtraj.element.carbon, residue)
    trajectory = mdtraj.Trajectory(xyz, topology)
    x = torch.as_tensor(xyz)
    np.testing.assert_allclose(angles(x, torch.tensor([[0, 1, 2]])).numpy()[:, 0],
                               mdtraj.compute_angles(trajectory, [[0, 1, 2]])[:, 0], atol=1e-5)
    np.testing.assert_allclose(dihedrals(x, torch.tensor([[0, 1, 2, 3]])).numpy()[:, 0],
                               mdtraj.compute_dihedrals(trajectory, [[0, 1, 2, 3]])[:, 0], atol=1e-5)
    np.testing.assert_allclose(distances(x, torch.tensor([[0, 3]])).numpy()[:, 0],
                               np.linalg.norm(xyz[:, 3] - xyz[:, 0], axis=-1), atol=1e-12)


def test_graph_terms_of_a_branched_chain():
    bonds = np.array([[0, 1], [1, 2], [2, 3], [2, 4], [4, 5]])  # alanine dipeptide's CG bonds
    assert len(angle_triples(6, bonds)) == 5
    assert sorted(map(tuple, dihedral_quads(6, bonds))) == [(0, 1, 2, 3), (0, 1, 2, 4), (1, 2, 4, 5), (3, 2, 4, 5)]
    # 1-4 pairs are left to the dihedral priors; only the two ends are a non-bonded pair.
    assert sorted(map(tuple, nonbonded_pairs(6, bonds))) == [(0, 5)]
    assert sorted(map(tuple, nonbonded_pairs(6, bonds, min_bond_separation=3))) == [(0, 3), (0, 4), (0, 5), (1, 5), (3, 5)]
    np.testing.assert_array_equal(dihedrals_per_central_bond(dihedral_quads(6, bonds)), [2, 2, 2, 2])


def _sample(energy, jacobian, low, high, n=200_000, seed=0):
    """Exact samples of p(x) ~ J(x) exp(-U(x)/kT) by inverse-CDF on a fine grid."""
    x = np.linspace(low, high, 20001)
    density = jacobian(x) * np.exp(-(energy(x) - energy(x).min()) / KT)
    cdf = np.cumsum(density)
    return np.interp(np.random.default_rng(seed).random(n), cdf / cdf[-1], x)


def test_boltzmann_inversion_recovers_known_parameters():
    r = _sample(lambda r: 0.5 * 2e5 * (r - 0.15) ** 2, lambda r: r ** 2, 0.12, 0.18)
    k, r0 = fit_harmonic(r, KT, lambda c: c ** 2)
    assert k == pytest.approx(2e5, rel=0.03) and r0 == pytest.approx(0.15, abs=2e-4)
    theta = _sample(lambda t: 0.5 * 400 * (t - 1.9) ** 2, np.sin, 1.4, 2.4)
    k, theta0 = fit_harmonic(theta, KT, np.sin)
    assert k == pytest.approx(400, rel=0.03) and theta0 == pytest.approx(1.9, abs=2e-3)
    # Without the sin(theta) Jacobian the angle would be biased: the fit must use it.
    k_wrong, theta0_wrong = fit_harmonic(theta, KT, lambda c: np.ones_like(c))
    assert abs(theta0_wrong - 1.9) > 5 * abs(theta0 - 1.9)
    kn, phases = np.array([3.0, 1.0, 0.5]), np.array([0.5, -1.0, 2.0])
    phi = _sample(lambda f: sum(kn[i] * (1 + np.cos((i + 1) * f - phases[i])) for i in range(3)),
                  np.ones_like, -np.pi, np.pi)
    k_fit, phase_fit = fit_fourier(phi, KT, 3)
    np.testing.assert_allclose(k_fit, kn, rtol=0.05)
    np.testing.assert_allclose(phase_fit, phases, atol=0.05)
    for c in (1e-5, 1e-4, 1e-3):
        r = _sample(lambda r: c / r ** 6, lambda r: r ** 2, 0.05, 0.6)
        assert fit_repulsion(r, KT) == pytest.approx(c, rel=0.1)


def test_dihedral_priors_count_each_torsional_pmf_once(ala2_dataset):
    """C-N-CA-C (phi) and C-N-CA-CB turn together: their prior terms must add up to the Boltzmann
    inversion of phi alone, not twice it (which would deepen every basin of the prior)."""
    _, dataset = ala2_dataset
    params = fit_priors(dataset.positions_nm, dataset.mapping.cg_bonds, dataset.temperature_K)
    x = torch.as_tensor(dataset.positions_nm)
    quads = torch.as_tensor(params.dihedral_quads)
    phi = dihedrals(x, quads).numpy()
    n = np.arange(1, params.dihedral_k.shape[1] + 1)
    terms = (params.dihedral_k[None, :, :] * (1 + np.cos(n * phi[:, :, None] - params.dihedral_phase[None]))).sum(-1)
    around_n_ca = [m for m, q in enumerate(params.dihedral_quads.tolist()) if sorted(q[1:3]) == [1, 2]]
    assert len(around_n_ca) == 2
    prior_phi = terms[:, around_n_ca].sum(axis=1)
    phi_index = params.dihedral_quads.tolist().index([0, 1, 2, 4])
    k_single, phase_single = fit_fourier(phi[:, phi_index], kT_kJ_per_mol(dataset.temperature_K), params.dihedral_k.shape[1])
    single = (k_single * (1 + np.cos(n * phi[:, phi_index, None] - phase_single))).sum(-1)
    spread = np.std(single)
    assert spread > 1.0  # phi's PMF spans several kJ/mol over the sampled frames
    # The two Fourier fits differ where the short test data are sparse (alpha_L): 0.23 measured, 1.0 if doubled.
    assert np.std(prior_phi - single) < 0.4 * spread
    assert np.std(prior_phi - 2 * single) > 0.7 * spread


def test_torch_priors_equal_native_openmm_forces(ala2_dataset):
    _, dataset = ala2_dataset
    params = fit_priors(dataset.positions_nm, dataset.mapping.cg_bonds, dataset.temperature_K)
    n_replicas = 3
    x = cg_frames(dataset, n_replicas)
    prior = PriorEnergy(params).double()
    positions = torch.as_tensor(x).requires_grad_(True)
    energy = prior(positions).sum()
    (grad,) = torch.autograd.grad(energy, positions)
    energy = energy.detach()

    system = openmm.System()
    for _ in range(n_replicas * dataset.mapping.n_beads):
        system.addParticle(12.0)
    for force in openmm_prior_forces(params, dataset.mapping.n_beads, n_replicas):
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x.reshape(-1, 3))
    state = context.getState(getEnergy=True, getForces=True)
    openmm_energy = state.getPotentialEnergy()._value
    openmm_forces = np.array(state.getForces(asNumpy=True)._value)
    assert openmm_energy == pytest.approx(energy.item(), rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(openmm_forces, -grad.numpy().reshape(-1, 3), rtol=1e-7, atol=1e-6)


def test_prior_parameters_roundtrip_through_json(ala2_module):
    import json

    _, params, _ = ala2_module
    again = PriorParameters.from_dict(json.loads(json.dumps(params.to_dict())))
    for name in PriorParameters.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(again, name), getattr(params, name))
