"""Periodic liquids as reference data: NPT equilibration then NVT with boxes saved, one bead per molecule."""
import json

import h5py
import numpy as np
import pytest

from openmm_cg.data import reference as reference_module
from openmm_cg.data.datasets import CGDataset, build_cg_dataset, check_boxes, load_references, read_reference
from openmm_cg.data.reference import ReferenceConfig, build_system, run_seed, seed_path
from openmm_cg.errors import InputError
from openmm_cg.mapping.cgmap import mapping_from_spec

AVOGADRO = 6.02214076e23


def methanol_config(**overrides) -> ReferenceConfig:
    settings = dict(testsystem="MethanolBox", temperature_K=300.0, pressure_bar=1.0, npt_equilibration_steps=200,
                    barostat_interval_steps=10, equilibration_steps=50, frames_per_seed=6, save_interval_steps=20,
                    chunk_frames=3, seeds=[0])
    settings.update(overrides)
    return ReferenceConfig(**settings)


@pytest.fixture(scope="module")
def methanol_reference(tmp_path_factory):
    # A 200-step NPT run of this box has not converged its volume; the drift check is tested separately.
    out = tmp_path_factory.mktemp("methanol")
    config = methanol_config()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference_module, "NPT_VOLUME_DRIFT_TOLERANCE", 1.0)
        run_seed(config, out, 0)
    return out, config


def test_npt_equilibration_then_nvt_production_with_boxes(methanol_reference):
    out, config = methanol_reference
    trajectory = read_reference(seed_path(out, 0))
    npt = trajectory.metadata["npt"]
    assert trajectory.metadata["periodic"] and trajectory.metadata["pressure_bar"] == 1.0
    boxes = trajectory.box_vectors_nm
    assert boxes.shape == (6, 3, 3)
    # Production is NVT in the mean NPT box: every frame has that box.
    np.testing.assert_allclose(boxes, np.broadcast_to(np.array(npt["production_box_nm"]), boxes.shape), rtol=1e-12)
    with h5py.File(seed_path(out, 0), "r") as h5:
        total_mass_g = h5.attrs["masses_amu"].sum() / AVOGADRO
    assert npt["production_density_g_per_mL"] == pytest.approx(total_mass_g / (np.linalg.det(boxes[0]) * 1e-21), rel=1e-9)
    # Molecules stay whole (positions are not wrapped per atom): every C-O bond is ~0.143 nm.
    topology = trajectory.topology
    pairs = np.array([[b.atom1.index, b.atom2.index] for b in topology.bonds()
                      if {b.atom1.element.symbol, b.atom2.element.symbol} == {"C", "O"}])
    co = np.linalg.norm(trajectory.positions_nm[:, pairs[:, 0]] - trajectory.positions_nm[:, pairs[:, 1]], axis=-1)
    assert len(pairs) == 125 and np.all(np.abs(co - 0.143) < 0.01)


def test_periodic_reference_resumes_with_the_same_box(methanol_reference, tmp_path):
    out, config = methanol_reference
    import shutil

    shutil.copy(seed_path(out, 0), seed_path(tmp_path, 0))
    config.frames_per_seed = 9
    run_seed(config, tmp_path, 0)
    first, extended = read_reference(seed_path(out, 0)), read_reference(seed_path(tmp_path, 0))
    np.testing.assert_array_equal(extended.positions_nm[:6], first.positions_nm)
    assert len(extended.box_vectors_nm) == 9
    np.testing.assert_array_equal(extended.box_vectors_nm[6:], np.broadcast_to(first.box_vectors_nm[0], (3, 3, 3)))
    assert extended.metadata["npt"] == first.metadata["npt"]


def test_unequilibrated_npt_volume_is_refused(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference_module, "NPT_VOLUME_DRIFT_TOLERANCE", 1e-9)
        with pytest.raises(InputError, match="raise npt_equilibration_steps"):
            run_seed(methanol_config(npt_equilibration_steps=100), tmp_path, 0)
    with pytest.raises(InputError, match="periodic"):
        run_seed(ReferenceConfig(pressure_bar=1.0, npt_equilibration_steps=100), tmp_path, 1)


def test_molecule_com_dataset_keeps_boxes(methanol_reference, tmp_path):
    out, config = methanol_reference
    references = load_references(directory=out)
    mapping = mapping_from_spec(references[0].topology, "molecule_com")
    assert mapping.n_beads == 125 and mapping.type_names == ["MOH:MOH"] and len(mapping.cg_bonds) == 0
    assert mapping.masses_amu == pytest.approx(np.full(125, 32.042), abs=2e-3)
    dataset = build_cg_dataset(references, mapping, system=build_system(config)[0])
    # Bead 0 by hand: mass-weighted centre of the first molecule's atoms, force summed over them.
    atoms = mapping.position_groups()[0]
    masses = np.array([a.element.mass._value for a in references[0].topology.atoms()])[atoms]
    x, f = references[0].positions_nm[:, atoms], references[0].forces_kJ_per_mol_nm[:, atoms]
    np.testing.assert_allclose(dataset.positions_nm[:, 0], (masses[None, :, None] * x).sum(1) / masses.sum(), atol=1e-6)
    np.testing.assert_allclose(dataset.forces_kJ_per_mol_nm[:, 0], f.sum(1), rtol=1e-5, atol=1e-3)
    assert dataset.periodic and dataset.box_vectors_nm.shape == (6, 3, 3)
    again = CGDataset.load(dataset.save(tmp_path / "meoh.h5"))
    np.testing.assert_array_equal(again.box_vectors_nm, dataset.box_vectors_nm)
    np.testing.assert_array_equal(again.select_trajectories([0]).box_vectors_nm, dataset.box_vectors_nm)

    references[0].box_vectors_nm = None
    with pytest.raises(InputError, match="box vectors"):
        build_cg_dataset(references, mapping)


def test_box_vectors_must_be_in_reduced_form():
    box = np.diag([3.0, 3.0, 3.0])[None]
    check_boxes(box, 1, "ok")
    triclinic = np.array([[[3.0, 0, 0], [1.0, 3.0, 0], [-1.2, 1.4, 3.0]]])
    check_boxes(triclinic, 1, "ok")
    for bad in (np.array([[[3.0, 0.1, 0], [0, 3.0, 0], [0, 0, 3.0]]]),   # a not along x
                np.array([[[3.0, 0, 0], [2.0, 3.0, 0], [0, 0, 3.0]]]),     # b_x beyond a_x / 2
                np.array([[[3.0, 0, 0], [0, -3.0, 0], [0, 0, 3.0]]])):     # left-handed
        with pytest.raises(InputError, match="reduced form"):
            check_boxes(bad, 1, "bad")
    with pytest.raises(InputError, match="shape"):
        check_boxes(box, 2, "short")


def test_liquid_observables_on_known_cases():
    from openmm_cg.analysis.liquid import RDF, mean_squared_displacement, rdf_error, self_diffusion_nm2_per_ps
    from openmm_cg.units import density_g_per_mL

    # Brownian beads with D = 0.01 nm^2/ps in a 3 nm box, not wrapped: the Einstein fit recovers D.
    rng = np.random.default_rng(0)
    dt, d_true = 0.5, 0.01
    steps = rng.normal(scale=np.sqrt(2 * d_true * dt), size=(400, 200, 3))
    x = np.cumsum(steps, axis=0)
    boxes = np.tile(np.eye(3) * 3.0, (len(x), 1, 1))
    msd = mean_squared_displacement(x, boxes, max_lag=40)
    assert self_diffusion_nm2_per_ps(msd, dt) == pytest.approx(d_true, rel=0.05)
    with pytest.raises(InputError, match="wrapped"):
        mean_squared_displacement(np.mod(x, 3.0), boxes, max_lag=40)
    r = np.linspace(0.005, 0.995, 100)
    assert rdf_error(RDF(r, np.ones(100), 1), RDF(r, np.ones(100) + 0.5 * (r < 0.5), 1)) == pytest.approx(0.25, rel=1e-9)
    # 125 methanol molecules in 8.3 nm^3 (the equilibrated MethanolBox): ~0.80 g/mL.
    assert density_g_per_mL(125 * 32.042, 8.305) == pytest.approx(0.8004, rel=1e-3)


def test_virial_pressure_equals_the_pair_virial_and_the_ideal_gas():
    import torch

    from openmm_cg.analysis.liquid import virial_pressure_bar

    rng = np.random.default_rng(1)
    n, box_nm, temperature = 60, 2.2, 300.0
    x = rng.uniform(0, box_nm, size=(3, n, 3))
    boxes = np.tile(np.eye(3) * box_nm, (3, 1, 1))
    # Ideal gas: N kT / V = 60 * 2.4943 kJ/mol / 10.648 nm^3 = 14.055 kJ/mol/nm^3 = 233.4 bar.
    ideal = virial_pressure_bar(lambda p, b: (p * 0).sum(dim=(1, 2)), x, boxes, temperature)
    assert ideal == pytest.approx(np.full(3, 14.0551 * 16.6054), rel=1e-4)

    def soft_pairs(positions, box):  # a soft Gaussian repulsion under the minimum image
        d = positions[0, :, None] - positions[0, None, :]
        d = d - box[0, 0, 0] * torch.round(d / box[0, 0, 0])
        r2 = (d ** 2).sum(-1)[tuple(torch.triu_indices(n, n, 1))]
        return (5.0 * torch.exp(-r2 / 0.09)).sum().reshape(1)

    pressure = virial_pressure_bar(soft_pairs, x, boxes, temperature)
    # The pair virial: P = (N kT + 1/3 sum_ij r_ij . f_ij) / V, with f_ij = -dU/dr r_hat along r_ij.
    d = x[:, :, None] - x[:, None, :]
    d -= box_nm * np.round(d / box_nm)
    r2 = (d ** 2).sum(-1)
    i, j = np.triu_indices(n, 1)
    w = (2.0 * r2[:, i, j] / 0.09 * 5.0 * np.exp(-r2[:, i, j] / 0.09)).sum(1)  # r . f = -r dU/dr
    expected = (n * 8.314462618e-3 * temperature + w / 3.0) / box_nm ** 3 * 16.6054
    np.testing.assert_allclose(pressure, expected, rtol=1e-5)
    assert np.all(pressure > ideal)  # repulsion raises the pressure


def test_rdf_sampling_error_falls_as_one_over_root_frames():
    from openmm_cg.analysis.liquid import rdf_sampling_error

    # Independent ideal-gas frames: bin-count noise, so the error of n-frame segments against a long
    # reference goes as sqrt(1/n + 1/n_reference); 10 vs 40 frames against 400: a ratio of 1.93.
    rng = np.random.default_rng(1)
    trajectories = [rng.uniform(0, 3.0, size=(400, 200, 3)) for _ in range(2)]
    boxes = [np.tile(np.eye(3) * 3.0, (400, 1, 1))] * 2
    short, short_spread = rdf_sampling_error(trajectories, boxes, 10, 1.2, 60)
    long, _ = rdf_sampling_error(trajectories, boxes, 40, 1.2, 60)
    assert short / long == pytest.approx(np.sqrt((1 / 10 + 1 / 400) / (1 / 40 + 1 / 400)), rel=0.1)
    assert 0 < short_spread < short
    with pytest.raises(InputError, match="two independent"):
        rdf_sampling_error(trajectories[:1], boxes[:1], 10, 1.2, 60)
    with pytest.raises(InputError, match="fewer than one segment"):
        rdf_sampling_error(trajectories, boxes, 500, 1.2, 60)
