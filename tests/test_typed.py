"""Typed (transferable) models: binding to topologies, the bound file, errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import openmm_cg  # noqa: F401  (torch before openmm)
from openmm import Context, Platform, VerletIntegrator, unit

from openmm_cg import CGPotential
from openmm_cg.errors import ModelFileError
from openmm_cg.nn.potential import CGPotentialModule
from openmm_cg.topology import bead_type_keys, topology_to_dict
from typed_models import TYPES, chain_positions, chain_topology, save_typed, toy_priors, toy_typed_module

SEQ_1 = ["A", "B", "C", "A", "B", "C", "C"]
SEQ_2 = ["B", "A", "A", "C", "B"]


def energy_and_forces(module, x):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    energy = module(x)
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def _molecular(typed, sequence):
    from openmm_cg.nn.schnet import SchNetConfig

    topology = chain_topology([sequence])
    types = bead_type_keys(topology)
    bonds = np.array(topology_to_dict(topology)["bonds"])
    config = SchNetConfig(**typed.describe()["network_config"])
    module = CGPotentialModule([TYPES.index(t) for t in types], typed.priors.molecule_terms(types, bonds), config,
                               n_types=len(TYPES), energy_scale_kJ_per_mol=2.0).double()
    module.network.load_state_dict(typed.network.state_dict())
    return module


@pytest.fixture(scope="module")
def typed_path(tmp_path_factory):
    return save_typed(toy_typed_module().double(), tmp_path_factory.mktemp("typed") / "typed.pt")


@pytest.fixture(scope="module")
def typed():
    return toy_typed_module().double()


def test_bound_molecule_equals_the_model_of_that_molecule_alone(typed_path, typed):
    rng = np.random.default_rng(1)
    bound = CGPotential.load(typed_path).bind(chain_topology([SEQ_1]))
    alone = _molecular(typed, SEQ_1)
    for _ in range(3):
        x = chain_positions(len(SEQ_1), rng)
        e_bound, f_bound = energy_and_forces(bound.module, x)
        e_alone, f_alone = energy_and_forces(lambda y: alone.energy_batch(y[None])[0], x)
        assert abs(e_bound - e_alone) <= 1e-10 * max(1.0, abs(e_alone))
        np.testing.assert_allclose(f_bound, f_alone, rtol=1e-9, atol=1e-9)
    # the check can fail: a model whose types are looked up in another order differs
    shuffled = _molecular(typed, SEQ_1)
    shuffled.bead_types = shuffled.bead_types.flip(0)
    assert abs(energy_and_forces(lambda y: shuffled.energy_batch(y[None])[0], x)[0] - e_bound) > 1e-3


def test_two_molecules_give_the_sum_of_their_energies(typed_path, typed):
    rng = np.random.default_rng(2)
    pot = CGPotential.load(typed_path)
    topology = chain_topology([SEQ_1, SEQ_2])
    x1, x2 = chain_positions(len(SEQ_1), rng), chain_positions(len(SEQ_2), rng)
    e1, f1 = energy_and_forces(lambda y: _molecular(typed, SEQ_1).energy_batch(y[None])[0], x1)
    e2, f2 = energy_and_forces(lambda y: _molecular(typed, SEQ_2).energy_batch(y[None])[0], x2)
    far = np.concatenate([x1, x2 + [50.0, -30.0, 10.0]])
    e, f = energy_and_forces(pot.bind(topology).module, far)
    assert abs(e - (e1 + e2)) <= 1e-10 * abs(e1 + e2)
    np.testing.assert_allclose(f, np.concatenate([f1, f2]), rtol=1e-9, atol=1e-9)
    # in contact, the molecules interact through the network and the repulsion...
    near = np.concatenate([x1, x2 + x1.mean(0) - x2.mean(0) + [0.5, 0.0, 0.0]])
    e_near, _ = energy_and_forces(pot.bind(topology).module, near)
    assert abs(e_near - (e1 + e2)) > 1e-3
    # ... unless they are bound as independent molecules
    e_apart, f_apart = energy_and_forces(pot.bind(topology, intermolecular=False).module, near)
    assert abs(e_apart - (e1 + e2)) <= 1e-10 * abs(e1 + e2)
    np.testing.assert_allclose(f_apart, np.concatenate([f1, f2]), rtol=1e-9, atol=1e-9)


def _openmm_energy_forces(system, x, platform="Reference"):
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName(platform))
    context.setPositions(x * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


@pytest.mark.parametrize("priors_as_openmm_forces", [False, True])
def test_create_system_binds_and_matches_the_eager_model(typed_path, priors_as_openmm_forces):
    rng = np.random.default_rng(3)
    pot = CGPotential.load(typed_path)
    topology = chain_topology([SEQ_1, SEQ_2, SEQ_1])
    x = np.concatenate([chain_positions(len(SEQ_1), rng), chain_positions(len(SEQ_2), rng, (0.6, 0.2, 0.0)),
                        chain_positions(len(SEQ_1), rng, (0.0, 0.9, 0.3))])
    e_ref, f_ref = energy_and_forces(pot.bind(topology).module, x)
    system = pot.createSystem(topology, priors_as_openmm_forces=priors_as_openmm_forces)
    assert system.getNumParticles() == len(x)
    assert system.getParticleMass(1).value_in_unit(unit.dalton) == 14.0  # MOL:B
    e, f = _openmm_energy_forces(system, x)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-5 * np.abs(f_ref).max())
    if priors_as_openmm_forces:  # the molecules' bonds are declared to OpenMM
        bonds = [force for force in system.getForces() if force.__class__.__name__ == "HarmonicBondForce"]
        assert bonds and bonds[0].getNumBonds() == topology.getNumBonds()


def test_bound_file_runs_in_a_bare_torchforce(typed_path, tmp_path):
    rng = np.random.default_rng(4)
    topology = chain_topology([SEQ_1, SEQ_2])
    bound = CGPotential.load(typed_path).bind(topology)
    saved = bound.save(tmp_path / "system.pt")
    x = np.concatenate([chain_positions(len(SEQ_1), rng), chain_positions(len(SEQ_2), rng, (0.5, 0.5, 0.0))])
    e_ref, f_ref = energy_and_forces(bound.module, x)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import numpy as np, torch, openmm, openmmtorch, sys
from openmm import unit
assert "openmm_cg" not in sys.modules
x = np.load({str(tmp_path / 'x.npy')!r})
system = openmm.System()
for _ in range(len(x)):
    system.addParticle(1.0)
system.addForce(openmmtorch.TorchForce({str(saved)!r}))
context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
context.setPositions(x)
state = context.getState(getEnergy=True, getForces=True)
np.save({str(tmp_path / 'f.npy')!r}, state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
print(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    energy = float(out.stdout.strip().splitlines()[-1])
    assert abs(energy - e_ref) <= 1e-6 * abs(e_ref)
    forces = np.load(tmp_path / "f.npy")
    assert np.abs(forces - f_ref).max() <= 1e-6 * np.abs(f_ref).max()
    # the file is a model file of its own: loaded again, it runs its topology and refuses any other
    again = CGPotential.load(saved)
    assert again.kind == "bound" and again.metadata["format_version"] == 2
    e, _ = _openmm_energy_forces(again.createSystem(topology), x)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    with pytest.raises(ModelFileError, match="bound to a different topology"):
        again.createSystem(chain_topology([SEQ_2, SEQ_1]))
    with pytest.raises(ModelFileError, match="bound to a different topology"):
        again.createSystem(chain_topology([SEQ_1, SEQ_2], box_nm=5.0))


def test_unknown_bead_types_are_listed(typed_path):
    pot = CGPotential.load(typed_path)
    with pytest.raises(ModelFileError, match="never seen: MOL:D, XYZ:A"):
        pot.createSystem(_unknown_types_topology())


def _unknown_types_topology():
    topology = chain_topology([["A", "D", "B"]])
    chain = topology.addChain()
    topology.addAtom("A", None, topology.addResidue("XYZ", chain))
    return topology


def test_missing_prior_classes_are_listed(tmp_path):
    priors = toy_priors()
    del priors.bonds[("MOL:A", "MOL:C")]
    del priors.angles[("MOL:A", "MOL:B", "MOL:C")]
    pot = CGPotential.load(save_typed(toy_typed_module(priors).double(), tmp_path / "gaps.pt"))
    pot.bind(chain_topology([["A", "B", "A"]]))  # has none of the missing classes
    with pytest.raises(ModelFileError, match=r"bond: MOL:A-MOL:C; angle: MOL:A-MOL:B-MOL:C"):
        pot.bind(chain_topology([["C", "B", "A", "C"]]))


def test_version_2_files_are_refused_by_readers_that_do_not_know_them(typed_path, tmp_path, monkeypatch):
    # a reader without the typed kind (openmm-cg before format 2) names what it misses
    from openmm_cg.nn import kinds

    monkeypatch.setattr(kinds, "BUILT_IN", {k: v for k, v in kinds.BUILT_IN.items() if k not in ("typed", "bound")})
    with pytest.raises(ModelFileError, match="unknown model kind 'typed'.*newer openmm-cg"):
        CGPotential.load(typed_path).bind(chain_topology([SEQ_1]))
    monkeypatch.undo()
    # a file of a later format is refused before anything is built from it
    from openmm_cg.nn.typed import TypedKind

    monkeypatch.setattr(TypedKind, "format_version", 3)
    later = save_typed(toy_typed_module().double(), tmp_path / "later.pt")
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match="uses model format 3; this openmm-cg .* reads up to 2"):
        CGPotential.load(later)


def test_a_typed_model_has_no_energy_before_binding(typed_path):
    pot = CGPotential.load(typed_path)
    with pytest.raises(Exception, match="bound to a topology"):
        pot.module(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ModelFileError, match="typed model"):
        pot.n_beads
    with pytest.raises(ModelFileError, match="no topology of its own"):
        pot.topology()


def test_version_1_model_still_loads_and_runs():
    pot = CGPotential.load("alanine_dipeptide_cgschnet")
    assert pot.kind == "molecular" and pot.metadata["format_version"] == 1
    with pytest.raises(ModelFileError, match="only typed"):
        pot.bind(pot.topology())
    e, _ = _openmm_energy_forces(pot.createSystem(pot.topology(2)), pot.example_positions(2), "CPU")
    assert np.isfinite(e)


def test_periodic_binary_mixture_runs_nvt_and_npt_and_gives_partial_rdfs(tmp_path):
    import csv

    from openmm_cg import workflows
    from openmm_cg.simulation.run import SimulationConfig, run_simulation
    from typed_models import mixture_module, mixture_topology

    n_side, box_nm = 6, 2.8
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * box_nm / n_side
    pot = CGPotential.load(save_typed(mixture_module(), tmp_path / "mixture.pt"))
    bound = pot.bind(mixture_topology(n_side, box_nm))
    assert bound.periodic and bound.metadata["masses_amu"][:2] == [40.0, 60.0]
    path = bound.save(tmp_path / "mixture_system.pt")
    # the bound periodic file has the energy of the eager module (box passed by TorchForce)
    box = np.eye(3) * box_nm
    x = torch.tensor(grid + 0.05 * np.random.default_rng(0).normal(size=grid.shape), requires_grad=True)
    e_ref = float(bound._eager.double()(x, torch.tensor(box)).detach())
    system = CGPotential.load(path).createSystem(mixture_topology(n_side, box_nm))
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
    context.setPositions(x.detach().numpy())
    assert abs(context.getState(getEnergy=True).getPotentialEnergy()._value - e_ref) <= 1e-4 * abs(e_ref)
    potential = CGPotential.load(path)
    for name, pressure in (("nvt", None), ("npt", 2000.0)):
        config = SimulationConfig(n_steps=1000, timestep_ps=0.004, temperature_K=300.0, friction_per_ps=5.0,
                                  report_interval=20, checkpoint_interval=1000, pressure_bar=pressure,
                                  platform="CPU", threads=1)
        run_simulation(potential, grid, config, tmp_path / name, progress=False, box_vectors_nm=box)
        with open(tmp_path / name / "log.csv") as handle:
            rows = list(csv.DictReader(handle))[15:]  # after the first 300 steps
        temperatures = [float(r["temperature_K"]) for r in rows]
        volumes = [float(r["box_volume_nm3"]) for r in rows]
        assert abs(np.mean(temperatures) - 300.0) < 15.0, name  # 216 beads: the mean of 35 reports within 5%
        if pressure is None:
            assert np.ptp(volumes) == 0.0
        else:
            assert np.ptp(volumes) > 0.0 and 0.5 < np.mean(volumes) / box_nm ** 3 < 2.0
    metrics = workflows.analyze(None, [tmp_path / "nvt"], tmp_path / "rdf")
    assert set(metrics["pairs"]) == {"MXA:A-MXA:A", "MXA:A-MXB:B", "MXB:B-MXB:B"}
    assert (tmp_path / "rdf" / "rdf.png").exists()


def test_info_lists_bead_types_and_prior_term_classes(typed_path, capsys):
    import json as json_module

    from openmm_cg.cli import main

    assert main(["info", str(typed_path)]) == 0
    info = json_module.loads(capsys.readouterr().out)
    assert info["format_version"] == 2 and info["model_kind"] == "typed"
    assert info["bead_type_masses_amu"] == {"MOL:A": 12.0, "MOL:B": 14.0, "MOL:C": 16.0}
    classes = info["prior_term_classes"]
    assert "MOL:A-MOL:B" in classes["bond"] and "MOL:A-MOL:B-MOL:C" in classes["angle"]
    assert len(classes["repulsion"]) == 6 and "typed_priors" not in info


def test_only_repulsions_that_can_act_are_required(tmp_path):
    # a type that occurs once per molecule has no like-type repulsion in single-molecule data
    priors = toy_priors()
    del priors.repulsion[("MOL:C", "MOL:C")]
    pot = CGPotential.load(save_typed(toy_typed_module(priors).double(), tmp_path / "no_cc.pt"))
    one_c = ["A", "B", "C", "A", "B"]
    pot.bind(chain_topology([one_c]))
    pot.bind(chain_topology([["C", "A", "C"]]))  # two Cs, but 2 bonds apart: excluded
    with pytest.raises(ModelFileError, match=r"repulsion within a molecule: MOL:C-MOL:C"):
        pot.bind(chain_topology([["C", "A", "B", "A", "C"]]))  # 4 bonds apart
    with pytest.raises(ModelFileError, match=r"repulsion between molecules: .*MOL:C-MOL:C.*intermolecular=False"):
        pot.bind(chain_topology([one_c, one_c]))
    rng = np.random.default_rng(5)
    x = np.concatenate([chain_positions(5, rng), chain_positions(5, rng, (0.4, 0.3, 0.0))])
    e_ref, f_ref = energy_and_forces(pot.bind(chain_topology([one_c, one_c]), intermolecular=False).module, x)
    # native OpenMM priors keep the molecules apart too
    system = pot.createSystem(chain_topology([one_c, one_c]), priors_as_openmm_forces=True, intermolecular=False)
    e, f = _openmm_energy_forces(system, x)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-5 * np.abs(f_ref).max())


def test_duplicate_bonds_count_once(typed_path):
    from openmm import app

    pot = CGPotential.load(typed_path)
    topology = chain_topology([SEQ_1])
    atoms = list(topology.atoms())
    doubled = chain_topology([SEQ_1])
    doubled_atoms = list(doubled.atoms())
    doubled.addBond(doubled_atoms[1], doubled_atoms[0])
    x = chain_positions(len(SEQ_1), np.random.default_rng(6))
    assert abs(energy_and_forces(pot.bind(doubled).module, x)[0] - energy_and_forces(pot.bind(topology).module, x)[0]) < 1e-9
