"""Bead-spring polymer sets: the fine-level reference of the learned-dynamics work."""
import json

import h5py
import numpy as np
import pytest

from openmm_cg._runtime import openmm
from openmm import unit
from openmm_cg.data.polymers import (MONOMERS, PolymerSetConfig, build_polymer_system, chain_atom_ranges,
                                     chain_sequences)
from openmm_cg.data.reference import H5_METADATA_KEY, ReferenceConfig, generate_reference
from openmm_cg.errors import InputError


def energy_of(system, positions):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_polymer_set_is_reproducible_and_its_chains_do_not_interact():
    config = PolymerSetConfig(n_chains=6, min_length=8, max_length=14, seed=3)
    sequences = chain_sequences(config)
    assert sequences == chain_sequences(config) and sequences != chain_sequences(PolymerSetConfig(6, 8, 14, seed=4))
    assert all(8 <= len(s) <= 14 and set(s) <= set(MONOMERS) for s in sequences)
    system, topology, x = build_polymer_system(config)
    ranges = chain_atom_ranges(topology)
    assert [b - a for a, b in ranges] == [len(s) for s in sequences] and system.getNumParticles() == len(x)
    assert [r.name for r in topology.residues()] == list("".join(sequences))
    # Overlapping two chains changes nothing: there are no forces between chains.
    moved = x.copy()
    a, b = ranges[1]
    moved[a:b] += x[ranges[0][0]] - x[a] + np.array([0.05, 0.0, 0.0])
    assert energy_of(system, moved) == pytest.approx(energy_of(system, x), abs=1e-9)
    # A 4-monomer chain has one Lennard-Jones pair (0, 3): truncated at 2.5 sigma and shifted to zero there.
    system, topology, x = build_polymer_system(PolymerSetConfig(n_chains=1, min_length=4, max_length=4, seed=0))
    sequence = [r.name for r in topology.residues()]
    i, j = MONOMERS[sequence[0]], MONOMERS[sequence[3]]
    sigma, epsilon = 0.5 * (i.sigma_nm + j.sigma_nm), np.sqrt(i.epsilon_kJ_per_mol * j.epsilon_kJ_per_mol)
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    shift = 4 * epsilon * (2.5 ** -12 - 2.5 ** -6)
    for r in (2 ** (1 / 6) * sigma, 1.7 * sigma, 2.6 * sigma):
        y = x.copy()
        y[3] = y[0] + np.array([0.0, 0.0, r])
        context.setPositions(y)
        pair = context.getState(getEnergy=True, groups={2}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        expected = 4 * epsilon * ((sigma / r) ** 12 - (sigma / r) ** 6) - shift if r < 2.5 * sigma else 0.0
        assert pair == pytest.approx(expected, abs=1e-9)


def test_polymer_reference_is_saved_like_other_reference_data(tmp_path):
    config = ReferenceConfig(testsystem=None, polymers={"n_chains": 3, "min_length": 6, "max_length": 9, "seed": 1},
                             timestep_ps=0.02, constraints="none", save_interval_steps=10, frames_per_seed=20,
                             equilibration_steps=100, seeds=[0], chunk_frames=10, threads_per_seed=1)
    (path,) = generate_reference(config, tmp_path)
    with h5py.File(path) as h5:
        metadata = json.loads(h5.attrs[H5_METADATA_KEY])
        assert h5["positions"].shape == h5["forces"].shape == (20, sum(map(len, chain_sequences(
            PolymerSetConfig(3, 6, 9, seed=1)))), 3)
        assert np.all(h5.attrs["masses_amu"] == 100.0)
    assert metadata["polymer_set"]["n_chains"] == 3 and metadata["forcefield"] == "bead-spring"
    assert metadata["source"].startswith("openmm_cg.data.polymers:")

    # Mapped to beads of 3 monomers: centres of mass and summed forces, chain by chain, saved and read back.
    from openmm_cg.dynamics.data import PolymerCGData, build_polymer_cg_data

    data = build_polymer_cg_data([path], particles_per_bead=3)
    data.save(tmp_path / "cg.h5")
    loaded = PolymerCGData.load(tmp_path / "cg.h5")
    with h5py.File(path) as h5:
        x, f = h5["positions"][()].astype(np.float64), h5["forces"][()].astype(np.float64)
    first = 0
    for chain, saved in zip(data.chains, loaded.chains):
        n = len(chain.sequence)
        assert chain.n_beads == round(n / 3) and saved.sequence == chain.sequence
        for bead in range(chain.n_beads):
            members = first + np.flatnonzero(chain.assignment == bead)
            np.testing.assert_allclose(chain.positions_nm[:, bead], x[:, members].mean(1), atol=1e-6)  # equal masses
            np.testing.assert_allclose(chain.forces_kJ_per_mol_nm[:, bead], f[:, members].sum(1), rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(saved.positions_nm, chain.positions_nm)
        np.testing.assert_allclose(chain.bead_masses_amu, 100.0 * np.bincount(chain.assignment))
        first += n
    with pytest.raises(InputError, match="exactly one source"):
        ReferenceConfig(polymers={"n_chains": 3}).validate()  # the default testsystem is still set
    with pytest.raises(InputError, match="unknown polymer set options"):
        ReferenceConfig(testsystem=None, polymers={"chains": 3}).validate()


def test_polymer_observables_on_known_cases():
    from openmm_cg.analysis.polymer import (autocorrelation, chain_diffusion_nm2_per_ps, contact_map,
                                            distribution_overlap, radius_of_gyration_nm, relaxation_time_ps)

    dumbbell = np.array([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])
    assert radius_of_gyration_nm(dumbbell, np.ones(2)).tolist() == pytest.approx([1.0, 2.0])
    assert radius_of_gyration_nm(dumbbell, np.array([3.0, 1.0]))[0] == pytest.approx(np.sqrt(0.75 * 0.25) * 2)
    # AR(1) with phi = 0.95 every 2 ps: C(lag) = phi^lag, tau = -2 ps / ln(phi) = 39.0 ps.
    rng = np.random.default_rng(0)
    y = np.zeros(200_000)
    for t in range(1, len(y)):
        y[t] = 0.95 * y[t - 1] + rng.normal()
    acf = autocorrelation(y, 300)
    assert acf[:4] == pytest.approx(0.95 ** np.arange(4), abs=0.01)
    assert relaxation_time_ps(acf, 2.0) == pytest.approx(-2.0 / np.log(0.95), rel=0.1)
    # A chain translating by Brownian steps with D = 0.02 nm^2/ps (frames 1 ps apart).
    steps = rng.normal(scale=np.sqrt(2 * 0.02 * 1.0), size=(4000, 1, 3))
    chain = np.cumsum(steps, axis=0) + np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0]])
    assert chain_diffusion_nm2_per_ps(chain, np.ones(3), 1.0, 50) == pytest.approx(0.02, rel=0.1)
    assert contact_map(dumbbell, 3.0).tolist() == [[1.0, 0.5], [0.5, 1.0]]
    # Two unit normals 1 sigma apart overlap by 2 Phi(-0.5) = 0.617; a sample with itself by 1.
    a, b = rng.normal(size=200_000), rng.normal(loc=1.0, size=200_000)
    assert distribution_overlap(a, b, bins=200) == pytest.approx(0.617, abs=0.01)
    assert distribution_overlap(a, a) == 1.0 and distribution_overlap(a, a + 100.0) == 0.0
