"""Force matching one typed model on a family of molecules, and its transfer to a molecule it never saw.

The family: chains of three bead types (MOL:A, MOL:B, MOL:C) with harmonic bonds and a known pair potential
that depends on the types of the pair (a common soft core plus a Gaussian well or barrier whose sign and depth
depend on the type pair). Its forces are exact, so force matching should recover the potential, and a model
over types should give the forces of a new sequence of the same types. A model blind to the types (every bead
one type) cannot, and must fail the same check.
"""
import json

import numpy as np
import pytest
import yaml

import openmm_cg  # noqa: F401
import openmm
from openmm import app, unit

from openmm_cg import CGPotential, workflows
from openmm_cg.data.datasets import CGDataset
from openmm_cg.errors import InputError
from openmm_cg.mapping.cgmap import build_mapping
from openmm_cg.training.config import config_from_dict

CODE = {"A": 0, "B": 1, "C": 2}
WELL_KJ_PER_MOL = np.array([[-4.0, 4.0, -2.0], [4.0, 3.0, -3.0], [-2.0, -3.0, 2.0]])
# Ten chains of 6-8 beads drawn at random (seeded): a family with some variety of sequence.
TRAINING = {f"m{k}": s for k, s in enumerate(["CCABCB", "CACABBCA", "CBCCBB", "AACACBCA", "AACABABB", "CBCBBCCB",
                                               "BAAABA", "CBCBBCB", "BCCBCABC", "BCCCAC"])}
HELD_OUT = {"new": "AACBBCA"}  # a new order; every class of its terms is in the training chains
TEMPERATURE_K = 300.0
# The stated tolerance: on the held-out molecule, the RMS error of the model's forces (priors and network,
# bonded errors included) relative to the RMS of the exact non-bonded (type-dependent) forces. Measured: 0.77
# for the typed model, 1.41 for the type-blind one (the error of a model without the type-dependent forces is
# about 1); the typed model must stay below 1, and the blind one fails.
TRANSFER_TOLERANCE = 1.0


def _system(sequence: str, nonbonded_only: bool = False) -> openmm.System:
    system = openmm.System()
    for _ in sequence:
        system.addParticle(12.0)
    if not nonbonded_only:
        bonds = openmm.HarmonicBondForce()
        for i in range(len(sequence) - 1):
            bonds.addBond(i, i + 1, 0.38, 2000.0)
        system.addForce(bonds)
    pair = openmm.CustomNonbondedForce("well(t1, t2)*exp(-(r-0.5)^2/(2*0.2^2))")
    pair.addTabulatedFunction("well", openmm.Discrete2DFunction(3, 3, WELL_KJ_PER_MOL.T.reshape(-1).tolist()))
    pair.addPerParticleParameter("t")
    for name in sequence:
        pair.addParticle([float(CODE[name])])
    for i in range(len(sequence) - 1):
        pair.addExclusion(i, i + 1)
    system.addForce(pair)
    return system


def _topology(sequence: str, blind: bool = False) -> app.Topology:
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    atoms = [topology.addAtom("X" if blind else name, app.element.carbon, residue) for name in sequence]
    for a, b in zip(atoms[:-1], atoms[1:]):
        topology.addBond(a, b)
    return topology


def _trajectory(sequence: str, seed: int, n_frames: int, stride: int = 25):
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE_K * unit.kelvin, 5.0 / unit.picosecond,
                                                 0.004 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(_system(sequence), integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.array([[0.38 * k, 0.05 * (k % 2), 0.0] for k in range(len(sequence))]))
    context.setVelocitiesToTemperature(TEMPERATURE_K * unit.kelvin, seed + 1)
    integrator.step(500)
    positions, forces = [], []
    for _ in range(n_frames):
        integrator.step(stride)
        state = context.getState(getPositions=True, getForces=True)
        positions.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(positions, np.float32), np.array(forces, np.float32)


def _datasets(name: str, sequence: str, directory, n_trajectories: int = 2, n_frames: int = 200):
    """The same frames as a dataset of typed beads and as one of type-blind beads (all named X)."""
    parts = [_trajectory(sequence, 100 * sum(map(ord, name)) + k, n_frames) for k in range(n_trajectories)]
    paths = {}
    for blind in (False, True):
        mapping = build_mapping(_topology(sequence, blind), [[k] for k in range(len(sequence))], "slice")
        dataset = CGDataset(np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts]),
                            np.repeat(np.arange(n_trajectories), n_frames).astype(np.int32), TEMPERATURE_K, mapping,
                            [f"{name}_{k}" for k in range(n_trajectories)])
        folder = directory / ("blind" if blind else "typed")
        folder.mkdir(exist_ok=True)
        paths[blind] = str(dataset.save(folder / f"{name}.h5"))
    return paths


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    directory = tmp_path_factory.mktemp("family")
    made = [_datasets(name, seq, directory) for name, seq in {**TRAINING, **HELD_OUT}.items()]
    return {blind: [paths[blind] for paths in made] for blind in (False, True)}


def _config(paths, output, **changes):
    data = {"seed": 0, "output": str(output),
            "data": {"dataset": paths, "validation_fraction": 0.5, "held_out_molecules": list(HELD_OUT)},
            "priors": {"dihedrals": False, "repulsion": False},
            "model": {"typed": True, "cgschnet": {"n_features": 32, "n_interactions": 2, "n_rbf": 24,
                                                  "cutoff_nm": 1.0, "n_output_hidden": 32}},
            "training": {"batch_size": 64, "max_epochs": 25, "learning_rate": 3e-3, "lr_patience": 3,
                         "early_stopping_patience": 25}}
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    return config_from_dict(data)


def _held_out_error(model_path, blind: bool) -> float:
    """RMS force error of the bound model on fresh frames of the held-out molecule, relative to the RMS of its
    exact non-bonded forces."""
    sequence = HELD_OUT["new"]
    positions, forces = _trajectory(sequence, seed=999, n_frames=100)
    bound = CGPotential.load(model_path).bind(_cg_topology(sequence, blind))
    import torch

    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    energy = bound.module.energy_batch(x).sum()
    (grad,) = torch.autograd.grad(energy, x)
    nonbonded = openmm.Context(_system(sequence, nonbonded_only=True), openmm.VerletIntegrator(0.001),
                               openmm.Platform.getPlatformByName("Reference"))
    pair_forces = []
    for frame in positions:
        nonbonded.setPositions(frame.astype(np.float64))
        pair_forces.append(nonbonded.getState(getForces=True).getForces(asNumpy=True)._value)
    error = -grad.numpy() - forces
    return float(np.sqrt((error ** 2).mean() / (np.array(pair_forces) ** 2).mean()))


def _cg_topology(sequence: str, blind: bool) -> app.Topology:
    return build_mapping(_topology(sequence, blind), [[k] for k in range(len(sequence))], "slice").cg_topology


def test_a_typed_model_transfers_to_a_held_out_molecule_and_a_type_blind_one_does_not(family, tmp_path):
    paths = family
    summary = workflows.train(_config(paths[False], tmp_path / "typed"), progress=False)
    typed_error = _held_out_error(summary["model"], blind=False)
    blind = workflows.train(_config(paths[True], tmp_path / "blind"), progress=False)
    blind_error = _held_out_error(blind["model"], blind=True)
    print(f"held-out relative force error: typed {typed_error:.3f}, type-blind {blind_error:.3f}")
    assert typed_error < TRANSFER_TOLERANCE < blind_error
    held = summary["held_out_molecules"]["new"]
    assert held["force_rmse_kJ_per_mol_nm"] < 0.9 * held["prior_only_force_rmse_kJ_per_mol_nm"]
    # the split is by molecule and by trajectory: the held-out molecule appears nowhere in training
    assert set(summary["molecules"]) == set(TRAINING) and set(summary["held_out_molecules"]) == set(HELD_OUT)
    for molecule in summary["molecules"].values():
        assert not set(molecule["train_trajectories"]) & set(molecule["validation_trajectories"])
    # priors pooled per class: one bond class per type pair that the training chains contain
    assert "MOL:A-MOL:B" in summary["prior_classes"]["bond"]
    # the run folder rebuilds the same model (export from its checkpoint)
    exported = workflows.export_run(tmp_path / "typed", tmp_path / "again.pt", dtype="float64")
    assert abs(_held_out_error(exported, blind=False) - typed_error) < 1e-4


def test_typed_training_resumes(family, tmp_path):
    paths = family[False]
    first = workflows.train(_config(paths, tmp_path / "run", **{"training.max_epochs": 1}), progress=False)
    assert first["epochs_run"] == 1
    with pytest.raises(Exception, match="resume|overwrite|exists"):
        workflows.train(_config(paths, tmp_path / "run", **{"training.max_epochs": 2}), progress=False)
    again = workflows.train(_config(paths, tmp_path / "run", **{"training.max_epochs": 2}), resume=True,
                            progress=False)
    assert again["epochs_run"] == 2 and json.loads((tmp_path / "run" / "priors.json").read_text())


def _small_dataset(path, sequence: str, temperature_K: float = TEMPERATURE_K, masses=None, extra_atom=False):
    """Twenty frames of a chain; ``extra_atom``: the first bead is the centre of its atom and an added one."""
    topology = _topology(sequence)
    n = len(sequence)
    groups = [[k] for k in range(n)]
    if extra_atom:
        atoms = list(topology.atoms())
        topology.addBond(atoms[0], topology.addAtom("H1", app.element.hydrogen, atoms[0].residue))
        groups[0] = [0, n]
        masses = [12.01078] * n
    mapping = build_mapping(topology, groups, "cog", bead_names=list(sequence), masses_amu=masses)
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(scale=0.2, size=(20, n, 3)), axis=1).astype(np.float32)
    return CGDataset(x, np.zeros_like(x), np.repeat([0, 1], 10).astype(np.int32), temperature_K, mapping,
                     ["t0", "t1"]).save(path)


def test_typed_training_refuses_inconsistent_datasets_before_touching_the_run_folder(tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "keep.txt").write_text("earlier results")
    a = str(_small_dataset(tmp_path / "a.h5", "ABC"))
    hot = str(_small_dataset(tmp_path / "hot.h5", "CBA", temperature_K=350.0))
    heavy = str(_small_dataset(tmp_path / "heavy.h5", "AB", masses=[20.0, 14.0]))
    cases = [([a, hot], "temperatures \\[300.0, 350.0\\] K.*one state point"),
             ([a, heavy], "bead type MOL:A has mass 12.01078 amu in .*a.h5 but 20.0 amu"),
             ([a, str(_small_dataset(tmp_path / "again.h5", "ABC", extra_atom=True))], "mapped differently"),
             ([a], "not among the datasets' molecules")]
    for paths, message in cases:
        with pytest.raises(InputError, match=message):
            workflows.train(_config(paths, output), progress=False)
    assert (output / "keep.txt").read_text() == "earlier results" and len(list(output.iterdir())) == 1
