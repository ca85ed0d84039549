"""The restructured package gives the numbers the package gave before it (tests/data/golden_b1a5db6.json, made by
commit b1a5db6's code from the same deterministic inputs): training, the pair table, the shipped model through
every backend, and a short simulation."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openmm_cg._runtime import openmm
from openmm import app, unit
from openmm_cg.data.datasets import CGDataset
from openmm_cg.export import load_eager, load_exported, save_model
from openmm_cg.mapping.cgmap import build_mapping
from openmm_cg.simulation.potential import CGPotential
from openmm_cg.training.config import config_from_dict
from openmm_cg.workflows import simulate, train

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_b1a5db6.json").read_text())


def train_toy(tmp_path, batch_size: int) -> dict:
    """Three epochs of force matching on the three-particle toy, as b1a5db6 was run to make the golden values."""
    from test_force_matching import toy_dataset

    dataset = toy_dataset(400)
    assert dataset.data_hash() == GOLDEN["molecular_training"]["dataset_sha256"]
    dataset.save(tmp_path / "toy.h5")
    return train(config_from_dict({
        "seed": 1, "output": str(tmp_path / "train"),
        "data": {"dataset": str(tmp_path / "toy.h5"), "validation_fraction": 0.25},
        "priors": {"angles": False, "dihedrals": False, "repulsion": False},
        "model": {"cgschnet": {"n_features": 16, "n_interactions": 1, "n_rbf": 24, "cutoff_nm": 1.2,
                               "n_output_hidden": 16}},
        "training": {"batch_size": batch_size, "max_epochs": 3, "learning_rate": 5e-3, "export_dtype": "float64"},
    }), progress=False)


def test_molecular_training_with_partial_batches_gives_the_same_model(tmp_path):
    """Batches that do not divide the frames: torch's sampler draws once more per epoch, and so must a resume."""
    golden = GOLDEN["molecular_training_partial_batches"]
    summary = train_toy(tmp_path, golden["batch_size"])
    assert summary["train_frames"] % golden["batch_size"] != 0
    assert summary["validation_force_rmse_kJ_per_mol_nm"] == pytest.approx(
        golden["validation_force_rmse_kJ_per_mol_nm"], rel=1e-6)


def test_molecular_training_gives_the_same_model(tmp_path):
    golden = GOLDEN["molecular_training"]
    summary = train_toy(tmp_path, 100)
    for key in ("validation_force_rmse_kJ_per_mol_nm", "validation_force_rmse_prior_only_kJ_per_mol_nm"):
        assert summary[key] == pytest.approx(golden[key], rel=1e-6), key
    module, _ = load_exported(summary["model"])
    probe = torch.tensor(golden["probe_positions_nm"], dtype=torch.float64, requires_grad=True)
    energy = module.energy_batch(probe)
    (gradient,) = torch.autograd.grad(energy.sum(), probe)
    np.testing.assert_allclose(energy.detach().numpy(), golden["energies_kJ_per_mol"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(-gradient.numpy(), golden["forces_kJ_per_mol_nm"], rtol=1e-6, atol=1e-5)


def test_periodic_training_and_pair_table_give_the_same_models(tmp_path):
    from test_liquid_training import BOX, N, T, sample_liquid

    from openmm_cg.classical.pair_force_matching import fit_pair_force_matching, pair_table_model

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(N):
        topology.addAtom("LJ", app.Element.getBySymbol("Ar"), topology.addResidue("LJ", chain))
    mapping = build_mapping(topology, [[k] for k in range(N)], bead_names=["LJ"] * N)
    frames = [sample_liquid(12, seed=t) for t in range(2)]
    boxes = np.tile(np.eye(3) * BOX, (sum(len(x) for x, _ in frames), 1, 1))
    dataset = CGDataset(np.concatenate([x for x, _ in frames]).astype(np.float32),
                        np.concatenate([f for _, f in frames]).astype(np.float32),
                        np.concatenate([np.full(len(x), t) for t, (x, _) in enumerate(frames)]), T, mapping,
                        ["a", "b"], {}, boxes)
    golden = GOLDEN["periodic_training"]
    assert dataset.data_hash() == golden["dataset_sha256"]
    dataset.save(tmp_path / "liquid.h5")
    summary = train(config_from_dict({
        "seed": 0, "output": str(tmp_path / "liquid_train"),
        "data": {"dataset": str(tmp_path / "liquid.h5"), "validation_fraction": 0.5},
        "model": {"cgschnet": {"n_features": 8, "n_interactions": 1, "n_rbf": 8, "cutoff_nm": 0.9,
                               "n_output_hidden": 8}},
        "training": {"batch_size": 4, "max_epochs": 2, "learning_rate": 1e-3, "export_dtype": "float64"},
    }), progress=False)
    assert summary["validation_force_rmse_kJ_per_mol_nm"] == pytest.approx(
        golden["validation_force_rmse_kJ_per_mol_nm"], rel=1e-6)
    module, metadata = load_exported(summary["model"])
    assert {k: metadata["priors"][k] for k in ("c", "exponent", "cutoff_nm")} == \
        pytest.approx({k: golden["pair_prior"][k] for k in ("c", "exponent", "cutoff_nm")}, rel=1e-12)
    x = torch.as_tensor(dataset.positions_nm[:2], dtype=torch.float64).requires_grad_(True)
    b = torch.as_tensor(boxes[:2])
    energy = module.energy_batch(x, b)
    (gradient,) = torch.autograd.grad(energy.sum(), x)
    np.testing.assert_allclose(energy.detach().numpy(), golden["energies_kJ_per_mol"], rtol=1e-6)
    np.testing.assert_allclose(-gradient[:, :5].numpy(), golden["forces_first_5_beads"], rtol=1e-5, atol=1e-5)

    table = fit_pair_force_matching(dataset, 0.9, n_knots=20)
    assert table.r_first_nm == pytest.approx(GOLDEN["pair_table"]["r_first_nm"], rel=1e-12)
    np.testing.assert_allclose(table.force_kJ_per_mol_nm, GOLDEN["pair_table"]["force_kJ_per_mol_nm"], rtol=1e-9,
                               atol=1e-9)
    path = save_model(*pair_table_model(table, dataset), tmp_path / "table.pt", dtype="float64")
    np.testing.assert_allclose(load_exported(path)[0].energy_batch(x.detach(), b).numpy(),
                               GOLDEN["pair_table"]["energies_kJ_per_mol"], rtol=1e-9)


@pytest.mark.parametrize("backend", ["torchforce", "native_priors", "pythonforce"])
def test_shipped_model_gives_the_same_energies_and_forces(backend):
    golden = GOLDEN["shipped_model"]
    potential = CGPotential.load("alanine_dipeptide_cgschnet")
    options = {"torchforce": {}, "native_priors": {"priors_as_openmm_forces": True},
               "pythonforce": {"backend": "pythonforce"}}[backend]
    system = potential.createSystem(potential.topology(2), **options)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.array(golden["positions_nm"]))
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert energy == pytest.approx(golden[backend]["energy_kJ_per_mol"], rel=1e-6)
    np.testing.assert_allclose(forces, golden[backend]["forces_kJ_per_mol_nm"], rtol=1e-5, atol=1e-3)
    eager, _ = load_eager(potential.path)
    np.testing.assert_allclose(eager.energy_batch(torch.tensor(golden["positions_nm"], dtype=torch.float32)
                                                  .reshape(2, 6, 3)).detach().numpy(),
                               golden["eager_energy_batch"], rtol=1e-6)


def test_short_simulation_of_the_shipped_model_is_unchanged(tmp_path):
    from openmm_cg.simulation.run import SimulationConfig

    result = simulate("alanine_dipeptide_cgschnet", SimulationConfig(n_steps=200, report_interval=50,
                                                                     checkpoint_interval=100, platform="CPU",
                                                                     threads=1, seed=0),
                      tmp_path / "sim", replicas=2, progress=False)
    with open(result["log"]) as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["potential_energy_kJ_per_mol"]) for r in rows],
                               GOLDEN["simulation"]["potential_energy_kJ_per_mol"], rtol=1e-4)
    np.testing.assert_allclose([float(r["temperature_K"]) for r in rows], GOLDEN["simulation"]["temperature_K"],
                               rtol=1e-4)


def test_a_model_file_written_before_the_restructuring_still_loads(tmp_path):
    """tests/data/legacy_pair_table_b1a5db6.pt was written by b1a5db6 (no kind, no digests, the table's weights at
    the top level): its scripted file, its eager rebuild and a re-export all give the same energies."""
    from openmm_cg.export import potential_energy_function, read_metadata, rescript

    legacy = Path(__file__).parent / "data" / "legacy_pair_table_b1a5db6.pt"
    assert "model_kind" not in read_metadata(legacy) and "integrity" not in read_metadata(legacy)
    x = torch.rand(2, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2.0
    boxes = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 2.0
    scripted = load_exported(legacy)[0].energy_batch(x, boxes)
    eager, _ = load_eager(legacy)
    torch.testing.assert_close(eager.energy_batch(x, boxes), scripted, rtol=1e-12, atol=0)
    torch.testing.assert_close(potential_energy_function(legacy)(x, boxes), scripted, rtol=1e-12, atol=0)
    for suffix in (".pt", ".json", ".state.pt"):
        (tmp_path / ("table" + suffix)).write_bytes(legacy.with_name(legacy.stem + suffix).read_bytes())
    rescript(tmp_path / "table.pt")
    assert read_metadata(tmp_path / "table.pt")["model_kind"] == "tabulated-pair"
    torch.testing.assert_close(load_exported(tmp_path / "table.pt")[0].energy_batch(x, boxes), scripted, rtol=1e-12,
                               atol=0)
