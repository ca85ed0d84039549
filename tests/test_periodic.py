"""Periodic CG potentials: invariances, forces, and the scripted model inside OpenMM with a periodic box."""
import numpy as np
import pytest
import torch

from openmm_cg.nn.hipnnts import HipNNTSConfig
from openmm_cg.nn.periodic import PeriodicCGPotentialModule
from openmm_cg.nn.schnet import SchNetConfig
from openmm_cg.priors.pair import PairPriorParameters, fit_pair_repulsion

TRICLINIC = np.array([[2.6, 0.0, 0.0], [0.7, 2.5, 0.0], [-0.9, 0.8, 2.7]])


def liquid(n=60, seed=0, box=TRICLINIC, architecture="cgschnet"):
    """A random liquid of one-bead molecules with no two beads closer than 0.3 nm."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff_nm=1.0) if architecture == "cgschnet" \
        else HipNNTSConfig(n_features=8, n_interactions=2, n_atom_layers=1, n_sensitivities=6, cutoff_nm=1.0)
    module = PeriodicCGPotentialModule([0], PairPriorParameters(c=2e-5, exponent=12.0, cutoff_nm=0.8), config,
                                       energy_scale_kJ_per_mol=2.0).double()
    # Trained models are not zero: their last read-outs are not.
    last_layers = [module.network.output[-1]] if architecture == "cgschnet" else \
        [block.readout for block in module.network.blocks]
    for layer in last_layers:
        torch.nn.init.normal_(layer.weight, std=0.3)
    module.requires_grad_(False)
    positions = []
    while len(positions) < n:
        x = rng.uniform(0, 1, 3) @ box
        delta = np.array(positions).reshape(-1, 3) - x
        fractional = delta @ np.linalg.inv(box)
        delta = (fractional - np.round(fractional)) @ box
        if len(positions) == 0 or np.linalg.norm(delta, axis=1).min() > 0.3:
            positions.append(x)
    return module, torch.tensor(np.array(positions)), torch.tensor(box)


def test_invariant_to_translation_and_wrapping():
    module, x, box = liquid()
    energy = module(x, box).detach()
    shifted = x + torch.tensor([0.37, -1.2, 2.9], dtype=torch.float64)
    rng = np.random.default_rng(3)
    wrapped = x + torch.tensor(rng.integers(-2, 3, size=(len(x), 3)), dtype=torch.float64) @ box
    assert float(module(shifted, box)) == pytest.approx(float(energy), rel=1e-10)
    assert float(module(wrapped, box)) == pytest.approx(float(energy), rel=1e-10)
    prior, network = module.energy_parts(x.unsqueeze(0), box.unsqueeze(0))
    assert abs(float(prior)) > 1e-3 and abs(float(network)) > 1e-3  # both parts contribute


def test_batched_frames_equal_single_frames():
    module, x, box = liquid()
    _, y, _ = liquid(seed=1)
    batched = module.energy_batch(torch.stack([x, y]), torch.stack([box, box * 1.05]))
    assert float(batched[0]) == pytest.approx(float(module(x, box)), rel=1e-12)
    assert float(batched[1]) == pytest.approx(float(module(y, box * 1.05)), rel=1e-12)


@pytest.mark.parametrize("architecture", ["cgschnet", "hipnnts"])
def test_pairs_in_blocks_give_the_same_energy_and_forces(architecture):
    module, x, box = liquid(architecture=architecture)
    x = x.clone().requires_grad_(True)
    energy = module(x, box)
    (grad,) = torch.autograd.grad(energy, x)
    module.network.pair_block = 17  # many blocks, the last one partial
    blocked = module(x, box)
    (blocked_grad,) = torch.autograd.grad(blocked, x)
    assert float(blocked) == pytest.approx(float(energy), rel=1e-12)
    torch.testing.assert_close(blocked_grad, grad, rtol=1e-10, atol=1e-12)


def test_forces_match_finite_differences():
    module, x, box = liquid(n=40)
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x, box), x)
    h = 1e-6
    rng = np.random.default_rng(0)
    for i, k in zip(rng.integers(0, len(x), 6), rng.integers(0, 3, 6)):
        plus, minus = x.detach().clone(), x.detach().clone()
        plus[i, k] += h
        minus[i, k] -= h
        numeric = (float(module(plus, box)) - float(module(minus, box))) / (2 * h)
        assert float(grad[i, k]) == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_missing_box_and_bad_cutoff_are_clear_errors():
    module, x, box = liquid()
    scripted = torch.jit.script(module)
    with pytest.raises(Exception, match="needs box vectors"):
        scripted(x)
    with pytest.raises(Exception, match="half the shortest box height"):
        scripted(x, box * 0.7)


def test_bare_torchforce_with_periodic_box_matches_module(tmp_path):
    import openmm
    import openmmtorch

    module, x, box = liquid()
    path = tmp_path / "liquid.pt"
    torch.jit.script(module).save(str(path))
    force = openmmtorch.TorchForce(str(path))
    force.setUsesPeriodicBoundaryConditions(True)
    system = openmm.System()
    for _ in range(len(x)):
        system.addParticle(32.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in TRICLINIC])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x.numpy())
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    xg = x.clone().requires_grad_(True)
    expected = module(xg, box)
    (grad,) = torch.autograd.grad(expected, xg)
    assert energy == pytest.approx(float(expected.detach()), rel=1e-9)
    assert np.abs(forces + grad.numpy()).max() < 1e-6 * np.abs(grad.numpy()).max()


def test_pair_repulsion_fit_recovers_known_core():
    r = np.linspace(0.2, 1.0, 161)
    c, n, temperature = 3e-6, 11.0, 300.0
    kT = 2.494339
    g = np.exp(-c / r ** n / kT) * (1 + 0.5 * np.exp(-((r - 0.45) / 0.05) ** 2))  # a first peak after the core
    fitted = fit_pair_repulsion(r, g, temperature, cutoff_nm=0.8)
    assert fitted.exponent == pytest.approx(n, rel=0.05)
    assert fitted.c / fitted.onset_range_nm[0] ** fitted.exponent == pytest.approx(c / fitted.onset_range_nm[0] ** n,
                                                                                   rel=0.1)
    with pytest.raises(ValueError, match="no onset"):
        fit_pair_repulsion(r, np.full_like(r, 0.01), temperature, cutoff_nm=0.8)


METHANOL_BEAD = {
    "bead_names": ["MOH"], "bead_types": [0], "type_names": ["MOH"], "masses_amu": [32.042],
    "cg_topology": {"chains": [{"id": "A", "residues": [{"name": "MOH", "id": "1",
                                                         "atoms": [{"name": "MOH", "element": None}]}]}], "bonds": []},
}


def exported_liquid(tmp_path, n=60):
    from openmm_cg.export import save_model
    from openmm_cg.nn.kinds import potential_metadata

    module, x, box = liquid(n=n)
    metadata = potential_metadata(module, METHANOL_BEAD, [300.0], "test")
    return save_model(module, metadata, tmp_path / "liquid.pt", dtype="float64"), module, x, box


def test_cg_potential_periodic_system_nvt_and_npt(tmp_path):
    import openmm
    from openmm import unit

    from openmm_cg.errors import ModelFileError
    from openmm_cg.simulation.potential import CGPotential

    path, module, x, box = exported_liquid(tmp_path)
    potential = CGPotential.load(path)
    assert potential.periodic and potential.metadata["cutoff_nm"] == 1.0
    with pytest.raises(ModelFileError, match="needs periodic box vectors"):
        potential.createSystem(potential.topology(len(x)))
    topology = potential.topology(len(x), box_vectors_nm=box.numpy())
    energies = {}
    for backend in ("torchforce", "pythonforce"):
        system = potential.createSystem(topology, backend=backend)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(x.numpy())
        energies[backend] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energies["torchforce"] == pytest.approx(float(module(x, box)), rel=1e-9)
    assert energies["pythonforce"] == pytest.approx(energies["torchforce"], rel=1e-9)

    system = potential.createSystem(topology)
    system.addForce(openmm.MonteCarloBarostat(1 * unit.bar, 300 * unit.kelvin, 5))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.002 * unit.picosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(x.numpy())
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    volume_start = context.getState().getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
    integrator.step(300)
    state = context.getState(getEnergy=True)
    volume_end = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert volume_end != pytest.approx(volume_start, rel=1e-6)  # the barostat moved the box, the model followed


def test_run_simulation_npt_writes_boxes_and_volumes(tmp_path):
    import csv

    import mdtraj

    from openmm_cg.errors import InputError
    from openmm_cg.simulation.potential import CGPotential
    from openmm_cg.simulation.run import SimulationConfig, run_simulation

    path, module, x, box = exported_liquid(tmp_path)
    potential = CGPotential.load(path)
    config = SimulationConfig(n_steps=200, report_interval=20, checkpoint_interval=100, temperature_K=300.0,
                              pressure_bar=1.0, barostat_interval_steps=5, platform="CPU", threads=1)
    with pytest.raises(InputError, match="give the box vectors"):
        run_simulation(potential, x.numpy(), config, tmp_path / "nobox", progress=False)
    result = run_simulation(potential, x.numpy(), config, tmp_path / "npt", progress=False, box_vectors_nm=box.numpy())
    with open(tmp_path / "npt" / "log.csv") as handle:
        volumes = [float(row["box_volume_nm3"]) for row in csv.DictReader(handle)]
    assert len(volumes) == 10 and len(set(volumes)) > 1  # the barostat moves the box
    trajectory = mdtraj.load_dcd(result["trajectory"], top=str(tmp_path / "npt" / "topology.pdb"))
    np.testing.assert_allclose(trajectory.unitcell_volumes, volumes, rtol=1e-4)


def test_virial_equals_the_energy_derivative_under_box_scaling():
    """Pairs across the box boundary carry integer multiples of the box vectors; their vectors must scale
    with the box, or the virial pressure (and any box derivative) misses them."""
    from openmm_cg.analysis.liquid import virial_pressure_bar
    from openmm_cg.units import kT_kJ_per_mol, pressure_bar

    for box in (TRICLINIC, 1.3 * TRICLINIC):  # two cells across: all pairs; then three: the cell list
        module, x, b = liquid(n=60, box=box)
        pressure = virial_pressure_bar(module.energy_batch, x.numpy()[None], b.numpy()[None], 300.0)
        h = 1e-5
        volume = abs(float(np.linalg.det(box)))
        energies = [float(module(x * s, b * s)) for s in (1 + h, 1 - h)]
        du_dv = (energies[0] - energies[1]) / (volume * ((1 + h) ** 3 - (1 - h) ** 3))
        expected = pressure_bar(len(x) * kT_kJ_per_mol(300.0) / volume - du_dv)
        assert float(pressure[0]) == pytest.approx(float(expected), rel=1e-5)


def test_barostat_moves_keep_the_bonds_of_multi_bead_molecules(tmp_path):
    """OpenMM learns molecules only from bonds its forces declare (a TorchForce declares none): createSystem
    declares the CG bonds of a periodic model, so a MonteCarloBarostat scales molecule centres and keeps bonds."""
    import openmm
    from openmm import unit

    from openmm_cg.export import save_model
    from openmm_cg.nn.kinds import potential_metadata
    from openmm_cg.simulation.potential import CGPotential

    module = PeriodicCGPotentialModule([0, 1], PairPriorParameters(c=1e-6, exponent=12.0, cutoff_nm=0.8), None)
    dimer = {"bead_names": ["A", "B"], "bead_types": [0, 1], "type_names": ["A", "B"], "masses_amu": [16.0, 16.0],
             "cg_topology": {"chains": [{"id": "A", "residues": [{"name": "DIM", "id": "1", "atoms": [
                 {"name": "A", "element": None}, {"name": "B", "element": None}]}]}], "bonds": [[0, 1]]}}
    path = save_model(module, potential_metadata(module, dimer, [300.0], "test"), tmp_path / "dimer.pt",
                      dtype="float64")
    potential = CGPotential.load(path)
    centres = (np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * 1.2
    directions = np.random.default_rng(0).normal(size=(27, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = np.stack([centres - 0.15 * directions, centres + 0.15 * directions], 1).reshape(-1, 3)
    topology = potential.topology(27, box_vectors_nm=np.eye(3) * 3.6)
    system = potential.createSystem(topology)
    barostat = openmm.MonteCarloBarostat(1 * unit.bar, 300 * unit.kelvin, 1)
    barostat.setRandomNumberSeed(5)
    system.addForce(barostat)
    integrator = openmm.VerletIntegrator(1e-7 * unit.picosecond)  # beads stand still: only barostat moves count
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    assert sorted(map(len, context.getMolecules())) == [2] * 27
    bonds = lambda y: np.linalg.norm(y[1::2] - y[0::2], axis=1)  # noqa: E731
    integrator.step(500)
    state = context.getState(getPositions=True)
    volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
    # The box did move (an ideal-ish gas at 1 bar expands); a 1% volume change would stretch bonds by 1e-3 nm.
    assert abs(volume / 3.6 ** 3 - 1) > 0.01
    np.testing.assert_allclose(bonds(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)), bonds(x),
                               atol=1e-6)
