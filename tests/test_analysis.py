"""Divergences, basins and dihedrals used to judge CG models."""
import numpy as np
import pytest

from openmm_cg.analysis.ramachandran import (PhiPsi, basin_populations, compare, histogram, js_divergence,
                                             phi_psi, split_halves)


def test_js_divergence_limits():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert js_divergence(p, p) == 0.0
    assert js_divergence(p, q) == pytest.approx(np.log(2))
    r = np.array([0.4, 0.6, 0.0, 0.0])
    assert js_divergence(p, r) == pytest.approx(js_divergence(r, p))
    assert 0 < js_divergence(p, r) < 0.02


def test_basins_and_halves():
    phi = np.radians([-60, -120, 60, -70])
    psi = np.radians([-40, 140, 40, 160])
    populations = basin_populations(PhiPsi(phi, psi, np.array([0, 0, 1, 1])))
    assert populations == {"alpha_R": 0.25, "beta": 0.5, "alpha_L": 0.25}
    a, b = split_halves(PhiPsi(phi, psi, np.array([0, 0, 1, 1])))
    assert len(a.phi) == 2 and set(a.groups) == {0} and set(b.groups) == {1}


def test_cg_dihedrals_equal_all_atom_dihedrals(ala2_reference, ala2_dataset):
    from openmm_cg.data.datasets import read_reference
    from openmm_cg.data.reference import seed_path

    directory, _ = ala2_reference
    _, dataset = ala2_dataset
    all_atom = read_reference(seed_path(directory, 0))
    aa = phi_psi(all_atom.positions_nm, all_atom.topology)
    cg = phi_psi(dataset.positions_nm[dataset.trajectory_index == 0], dataset.mapping.cg_topology)
    np.testing.assert_allclose(cg.phi, aa.phi, atol=1e-5)
    np.testing.assert_allclose(cg.psi, aa.psi, atol=1e-5)


def test_compare_reports_noise_floor(ala2_dataset):
    _, dataset = ala2_dataset
    angles = phi_psi(dataset.positions_nm, dataset.mapping.cg_topology, groups=dataset.trajectory_index)
    metrics = compare(angles, angles, bins=36)
    assert metrics["js_cg_vs_aa"] == 0.0 and metrics["js_aa_half_vs_half"] > 0.0
    assert sum(metrics["basin_populations"]["aa"].values()) == pytest.approx(1.0)
    assert histogram(angles, 36).sum() == pytest.approx(1.0)
