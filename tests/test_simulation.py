"""OpenMM simulation of an exported model: temperatures, outputs, resume, blow-ups."""
import csv
from dataclasses import replace

import numpy as np
import pytest

from openmm_cg.analysis.thermo import configurational_temperature_K
from openmm_cg.errors import InputError, OutputExistsError, SimulationBlowUpError
from openmm_cg.export import load_eager
from openmm_cg.simulation.potential import CGPotential
from openmm_cg.simulation.run import SimulationConfig, run_simulation
from openmm_cg.simulation.trajectory import load_run_frames

from conftest import cg_frames


def _log_column(path, name):
    with open(path, newline="") as handle:
        return np.array([float(row[name]) for row in csv.DictReader(handle)])


@pytest.fixture(scope="module")
def langevin_run(ala2_exported, ala2_dataset, tmp_path_factory):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    config = SimulationConfig(n_steps=6000, timestep_ps=0.002, friction_per_ps=10.0, report_interval=20,
                              checkpoint_interval=2000, platform="CPU", seed=3)
    out = tmp_path_factory.mktemp("langevin")
    result = run_simulation(potential, cg_frames(dataset, 20).reshape(-1, 3), config, out, progress=False)
    return out, result, potential


def test_langevin_samples_the_target_temperature(langevin_run, ala2_exported):
    out, result, potential = langevin_run
    assert result["n_replicas"] == 20 and result["frames"] == 300
    kinetic = _log_column(out / "log.csv", "temperature_K")[50:]  # 2 ps of equilibration skipped
    assert abs(kinetic.mean() - 300.0) < 0.03 * 300.0
    xyz = load_run_frames(out)[0][50:]
    frames = xyz.reshape(len(xyz) * 20, potential.n_beads, 3)
    module, _ = load_eager(ala2_exported["float64"])
    t_conf = configurational_temperature_K(module, frames.astype(np.float64))
    assert abs(t_conf - 300.0) < 0.05 * 300.0, t_conf


def test_resume_continues_and_refuses_other_settings(langevin_run, ala2_dataset, ala2_exported):
    out, result, potential = langevin_run
    _, dataset = ala2_dataset
    config = SimulationConfig(n_steps=6400, timestep_ps=0.002, friction_per_ps=10.0, report_interval=20,
                              checkpoint_interval=2000, platform="CPU", seed=3)
    again = run_simulation(potential, cg_frames(dataset, 20).reshape(-1, 3), config, out, progress=False)
    assert again["steps"] == 6400 and again["frames"] == 320
    assert len(load_run_frames(out)[0]) == 320
    steps = _log_column(out / "log.csv", "step")
    assert np.all(np.diff(steps) == 20) and steps[-1] == 6400
    finished = run_simulation(potential, cg_frames(dataset, 20).reshape(-1, 3), replace(config, threads=1), out,
                              progress=False)  # nothing left to run, on another thread count: the speed is kept
    assert finished["steps"] == 6400 and finished["steps_per_second"] == pytest.approx(again["steps_per_second"])
    config.n_steps = 6600
    other_model = CGPotential.load(ala2_exported["float64"])
    with pytest.raises(InputError, match="different model"):
        run_simulation(other_model, cg_frames(dataset, 20).reshape(-1, 3), config, out, progress=False)
    config.friction_per_ps = 1.0
    with pytest.raises(InputError, match="other settings"):
        run_simulation(potential, cg_frames(dataset, 20).reshape(-1, 3), config, out, progress=False)


def test_interrupted_run_drops_frames_after_the_checkpoint(ala2_exported, ala2_dataset, tmp_path):
    """A run killed after its checkpoint at step 200 (frames up to step 400 written, progress.json behind) resumes
    from the checkpoint: frames after it are cut and simulated again, identically, and every frame keeps its time
    (DCD header and HDF5 times)."""
    from openmm_cg.simulation.trajectory import frame_times_ps

    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    x = cg_frames(dataset, 2).reshape(-1, 3)
    for fmt in ("dcd", "h5"):
        out = tmp_path / fmt
        config = SimulationConfig(n_steps=400, report_interval=20, checkpoint_interval=200, platform="CPU",
                                  trajectory_format=fmt)
        run_simulation(potential, x, config, out, progress=False)
        uninterrupted = load_run_frames(out)[0]
        times = 0.002 * 20 * np.arange(1, 21)
        np.testing.assert_allclose(frame_times_ps(out / f"trajectory.{fmt}"), times, rtol=1e-6)
        run_simulation(potential, x, SimulationConfig(**{**config.__dict__, "n_steps": 200}), tmp_path / f"{fmt}_200",
                       progress=False)
        (out / "checkpoint.chk").write_bytes((tmp_path / f"{fmt}_200" / "checkpoint.chk").read_bytes())
        # The frames the checkpoint knows of survive the cut; later ones are made again from it.
        result = run_simulation(potential, x, config, out, progress=False)
        assert result["frames"] == 20 and result["steps"] == 400
        resumed = load_run_frames(out)[0]
        assert len(resumed) == 20
        np.testing.assert_array_equal(resumed[:10], uninterrupted[:10])
        np.testing.assert_allclose(resumed, uninterrupted, atol=1e-5)
        np.testing.assert_allclose(frame_times_ps(out / f"trajectory.{fmt}"), times, rtol=1e-6)
        log = np.loadtxt(out / "log.csv", delimiter=",", skiprows=1, usecols=(0, 1))
        np.testing.assert_array_equal(log[:, 0], np.arange(20, 401, 20))  # one row per frame, none twice


def test_existing_results_are_not_overwritten(ala2_exported, ala2_dataset, tmp_path):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    (tmp_path / "results.txt").write_text("precious")
    with pytest.raises(OutputExistsError):
        run_simulation(potential, cg_frames(dataset, 1), SimulationConfig(n_steps=10, report_interval=10,
                                                                           checkpoint_interval=10), tmp_path)
    assert (tmp_path / "results.txt").read_text() == "precious"


def test_blow_up_is_detected_reported_and_last_good_state_saved(ala2_exported, ala2_dataset, tmp_path):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    # A 50 fs step is far beyond the stability limit of the CG bonds: the run must explode.
    config = SimulationConfig(n_steps=2000, timestep_ps=0.05, report_interval=10, checkpoint_interval=1000,
                              platform="CPU")
    with pytest.raises(SimulationBlowUpError, match=r"blew up by step \d+") as info:
        run_simulation(potential, cg_frames(dataset, 2).reshape(-1, 3), config, tmp_path / "run", progress=False)
    assert info.value.step > 0
    from openmm_cg._runtime import openmm

    state = openmm.XmlSerializer.deserialize((tmp_path / "run" / "last_good_state.xml").read_text())
    assert np.isfinite(state.getPositions(asNumpy=True)._value).all()
    logged = _log_column(tmp_path / "run" / "log.csv", "potential_energy_kJ_per_mol")
    assert np.isfinite(logged).all()  # nothing broken was written


def test_overlapping_start_is_reported_as_bad_input(ala2_exported, ala2_dataset, tmp_path):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    x = cg_frames(dataset, 1).reshape(-1, 3)
    x[5] = x[0] + 0.001  # the terminal beads, held apart by the repulsion prior
    with pytest.raises(SimulationBlowUpError, match="starting configuration"):
        run_simulation(potential, x, SimulationConfig(n_steps=100, report_interval=10, checkpoint_interval=100,
                                                      platform="CPU"), tmp_path / "run", progress=False)


def test_multiple_time_stepping_samples_the_target_temperature(ala2_exported, ala2_dataset, tmp_path, monkeypatch):
    """Priors (native forces) 4 times per 4 fs step, the network once: kinetic and configurational temperature
    stay at the thermostat's, as a wrong splitting or a force counted in no group (or two) would not."""
    from openmm import Context, Platform, VerletIntegrator, unit

    from openmm_cg._runtime import NETWORK_FORCE_GROUP

    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float32"])
    system = potential.createSystem(potential.topology(2), priors_as_openmm_forces=True)
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
    context.setPositions(cg_frames(dataset, 2).reshape(-1, 3))

    def energy(groups=-1):
        return context.getState(getEnergy=True, groups=groups).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    network, native = energy({NETWORK_FORCE_GROUP}), energy({0})
    assert network != 0.0 and native != 0.0 and network + native == pytest.approx(energy(), rel=1e-6)

    import openmm_cg.simulation.run as run_module

    made, original = [], run_module.mts_langevin_integrator

    def recording(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(run_module, "mts_langevin_integrator", recording)
    config = SimulationConfig(n_steps=3000, timestep_ps=0.004, friction_per_ps=10.0, report_interval=20,
                              checkpoint_interval=1000, platform="CPU", seed=5, priors_as_openmm_forces=True,
                              mts_inner_steps=4)
    run_simulation(potential, cg_frames(dataset, 20).reshape(-1, 3), config, tmp_path / "mts", progress=False)
    (integrator,) = made  # the run stepped with the multiple-time-step integrator: network once, priors 4 times
    assert type(integrator).__name__ == "MTSLangevinIntegrator"
    assert integrator.getStepSize().value_in_unit(unit.picosecond) == pytest.approx(0.004)
    kinetic = _log_column(tmp_path / "mts" / "log.csv", "temperature_K")[25:]  # 2 ps of equilibration skipped
    assert abs(kinetic.mean() - 300.0) < 0.03 * 300.0
    xyz = load_run_frames(tmp_path / "mts")[0][25:]
    module, _ = load_eager(ala2_exported["float64"])
    t_conf = configurational_temperature_K(module, xyz.reshape(-1, potential.n_beads, 3).astype(np.float64))
    assert abs(t_conf - 300.0) < 0.05 * 300.0, t_conf
    with pytest.raises(InputError, match="mts_inner_steps needs priors_as_openmm_forces"):
        replace(config, priors_as_openmm_forces=False).validate()
