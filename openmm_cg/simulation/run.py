"""Langevin simulation of a CG potential: trajectory, state log, checkpoints, blow-up detection.

The run advances in blocks of ``report_interval`` steps. After each block the state is checked
(finite energy and positions, kinetic temperature below ``blowup_temperature_factor`` x target)
before anything is written, so a trajectory never holds a broken frame. On a blow-up the last good
state is saved as XML and :class:`SimulationBlowUpError` names the step. Every
``checkpoint_interval`` steps an OpenMM checkpoint and ``progress.json`` are written; a run started
again in the same folder continues from there (trajectory and log truncated to the checkpoint).

Periodic models (liquids) take the starting box; with ``pressure_bar`` set, a MonteCarloBarostat makes
the run NPT. Box vectors go into every trajectory frame and the box volume into the log.
"""
import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .._runtime import langevin_integrator, mts_langevin_integrator, openmm, platform
from openmm import app, unit

from ..errors import InputError, ModelFileError, SimulationBlowUpError
from ..outputs import RunFolder, atomic_path, sha256_of_arrays
from ..units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K
from .potential import CGPotential
from .trajectory import FORMATS as TRAJECTORY_FORMATS
from .trajectory import TrajectoryWriter
LOG_FIELDS = ["step", "time_ps", "potential_energy_kJ_per_mol", "kinetic_energy_kJ_per_mol", "temperature_K",
              "ns_per_day", "box_volume_nm3"]


@dataclass
class SimulationConfig:
    n_steps: int = 10000
    timestep_ps: float = 0.002
    temperature_K: Optional[float] = None  # default: the model's training temperature
    friction_per_ps: float = 1.0
    report_interval: int = 100
    checkpoint_interval: int = 10000
    trajectory_format: str = "dcd"
    platform: Optional[str] = None
    threads: Optional[int] = None
    seed: int = 0
    backend: str = "torchforce"
    priors_as_openmm_forces: bool = False
    blowup_temperature_factor: float = 5.0
    blowup_energy_kT_per_bead: float = 100.0
    max_start_force_kJ_per_mol_nm: float = 1e5
    pressure_bar: Optional[float] = None  # periodic models only: NPT with a MonteCarloBarostat
    barostat_interval_steps: int = 25
    # Multiple time stepping: the network once per step of timestep_ps, the priors (native OpenMM forces, so
    # priors_as_openmm_forces must be on) mts_inner_steps times per step.
    mts_inner_steps: Optional[int] = None

    def validate(self) -> None:
        if self.trajectory_format not in TRAJECTORY_FORMATS:
            raise InputError(f"trajectory_format must be one of {TRAJECTORY_FORMATS}")
        if self.n_steps < 0 or self.report_interval < 1 or self.timestep_ps <= 0:
            raise InputError("n_steps must be >= 0, report_interval >= 1 and timestep_ps > 0")
        if self.checkpoint_interval % self.report_interval != 0:
            raise InputError("checkpoint_interval must be a multiple of report_interval")
        if self.pressure_bar is not None and (self.pressure_bar <= 0 or self.barostat_interval_steps < 1):
            raise InputError("pressure_bar must be positive and barostat_interval_steps at least 1")
        if self.mts_inner_steps is not None and (self.mts_inner_steps < 1 or not self.priors_as_openmm_forces):
            raise InputError("mts_inner_steps needs priors_as_openmm_forces (the priors are the inner, native forces) "
                             "and must be at least 1")


def initial_positions(potential: CGPotential, init, n_replicas: int, seed: int) -> np.ndarray:
    """(R*N, 3) starting positions in nm: R frames drawn (seeded) from a CG dataset (.h5), a PDB of the beads
    (one molecule, replicated, or all R), or the model's example structure when ``init`` is None."""
    from ..data.datasets import CGDataset

    if init is None:
        return potential.example_positions(n_replicas)
    path = Path(init)
    if path.suffix in (".h5", ".hdf5"):
        dataset = CGDataset.load(path)
        if dataset.mapping.n_beads != potential.n_beads:
            raise ModelFileError(f"{path} has {dataset.mapping.n_beads} beads per frame; the model has {potential.n_beads}")
        return _dataset_frames(dataset, n_replicas, seed)
    pdb = app.PDBFile(str(path))
    xyz = np.array(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    if len(xyz) == potential.n_beads:
        return np.tile(xyz, (n_replicas, 1))
    potential.n_replicas_of(pdb.topology)
    return xyz


def _dataset_frames(dataset, n_frames: int, seed: int) -> np.ndarray:
    """(n_frames * N, 3) positions in nm: frames drawn (seeded) from a CG dataset, with replacement only when it
    has fewer frames."""
    frames = np.random.default_rng(seed).choice(dataset.n_frames, size=n_frames, replace=n_frames > dataset.n_frames)
    return dataset.positions_nm[frames].reshape(-1, 3).astype(np.float64)


def bind_replicas(potential: CGPotential, init, n_replicas: int, seed: int):
    """(the typed ``potential`` bound to ``n_replicas`` independent copies of a CG dataset's molecule, their
    (R*N, 3) starting positions in nm drawn from the dataset's frames). Copies do not interact
    (``intermolecular=False``), so they may overlap in space."""
    from ..data.datasets import CGDataset
    from ..topology import replicate_topology

    if init is None or Path(init).suffix not in (".h5", ".hdf5"):
        raise InputError(f"{potential.path.name} is a typed model: start it from a CG dataset (.h5) of the molecule "
                         "to simulate, whose topology it is bound to")
    dataset = CGDataset.load(init)
    bound = potential.bind(replicate_topology(dataset.mapping.cg_topology, n_replicas), intermolecular=False)
    return bound, _dataset_frames(dataset, n_replicas, seed)


def kinetic_temperature_K(kinetic_energy_kJ_per_mol: float, n_dof: int) -> float:
    return 2.0 * kinetic_energy_kJ_per_mol / (n_dof * MOLAR_GAS_CONSTANT_KJ_PER_MOL_K)


def run_simulation(potential: CGPotential, positions_nm: np.ndarray, config: SimulationConfig, out_dir,
                   overwrite: bool = False, progress: bool = True, box_vectors_nm: Optional[np.ndarray] = None) -> dict:
    """Simulate ``positions_nm`` ((R*N, 3), R replicas of the model's molecule) in the run folder ``out_dir``;
    a folder holding an earlier run of the same settings, model and start is continued.

    Periodic models need ``box_vectors_nm`` (3x3, rows a, b, c: the starting box)."""
    config.validate()
    if potential.periodic != (box_vectors_nm is not None):
        raise InputError(f"{potential.path.name} is a periodic model: give the box vectors" if potential.periodic
                         else f"{potential.path.name} is not periodic: it takes no box vectors")
    if config.pressure_bar is not None and not potential.periodic:
        raise InputError("pressure_bar (NPT) needs a periodic model")
    positions_nm = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(positions_nm).all():
        raise InputError("initial positions contain NaN/Inf")
    n_replicas = len(positions_nm) // potential.n_beads
    if len(positions_nm) % potential.n_beads:
        raise InputError(f"{len(positions_nm)} initial positions are not a multiple of the model's {potential.n_beads} beads")
    topology = potential.topology(n_replicas, box_vectors_nm)
    temperature = config.temperature_K or potential.temperature_K
    system = potential.createSystem(topology, backend=config.backend,
                                    priors_as_openmm_forces=config.priors_as_openmm_forces, temperature_K=temperature)
    start = sha256_of_arrays(positions_nm, np.asarray(box_vectors_nm if box_vectors_nm is not None else [], np.float64))
    # n_steps may grow (extend a run) and threads may differ (another machine): neither changes the physics
    run = RunFolder.open(out_dir, "simulation", {"config": asdict(config), "start_sha256": start},
                         {"model": potential.path}, resume=True, overwrite=overwrite,
                         mutable=("config.n_steps", "config.threads"))
    if config.pressure_bar is not None:
        barostat = openmm.MonteCarloBarostat(config.pressure_bar * unit.bar, temperature * unit.kelvin,
                                             config.barostat_interval_steps)
        barostat.setRandomNumberSeed(config.seed + 1)
        system.addForce(barostat)
    if config.mts_inner_steps is None:
        integrator = langevin_integrator(temperature, config.friction_per_ps, config.timestep_ps, config.seed)
    else:
        integrator = mts_langevin_integrator(temperature, config.friction_per_ps, config.timestep_ps,
                                             config.mts_inner_steps, config.seed)
    platform_object, properties = platform(config.platform, config.threads)
    simulation = app.Simulation(topology, system, integrator, platform_object, properties)
    n_dof = 3 * system.getNumParticles()

    traj_path = run.file(f"trajectory.{config.trajectory_format}")
    log_path = run.file("log.csv")
    checkpoint_path = run.file("checkpoint.chk")
    state = run.progress if run.resumed else None
    if state is not None:
        simulation.loadCheckpoint(str(checkpoint_path))
        # The checkpoint's own step count decides (a kill between it and progress.json leaves them apart).
        step = simulation.context.getStepCount()
        n_frames = -(-step // config.report_interval)
        wall_seconds = float(state.get("wall_seconds", 0.0))
        _truncate_log(log_path, step)
    else:
        simulation.context.setPositions(positions_nm)
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, config.seed + 1)
        step, n_frames, wall_seconds = 0, 0, 0.0
        with open(run.file("topology.pdb"), "w") as handle:
            app.PDBFile.writeFile(topology, positions_nm * 10.0 * unit.angstrom, handle)
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(LOG_FIELDS)

    writer = TrajectoryWriter(traj_path, topology, config.timestep_ps, config.report_interval,
                              resume_frames=n_frames if state is not None else None)
    watch = _BlowUpWatch(config, temperature, n_dof, run, simulation.context, step)

    from tqdm.auto import tqdm

    # wall time over every session of the run, so a finished run that is resumed still reports its speed
    started, start_step, wall_seconds_before = time.perf_counter(), step, wall_seconds
    platform_name = platform_object.getName()
    try:
        with open(log_path, "a", newline="") as log, tqdm(total=config.n_steps, initial=min(step, config.n_steps),
                                                          desc="CG simulation", unit="step", disable=not progress) as bar:
            log_writer = csv.writer(log)
            while step < config.n_steps:
                block = min(config.report_interval, config.n_steps - step)
                try:
                    integrator.step(block)
                    state = simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
                except openmm.OpenMMException as error:  # the CPU/CUDA platforms stop on NaN coordinates
                    watch.fail(step + block, f"OpenMM: {str(error).splitlines()[0]}")
                step += block
                watch.check(state, step)
                elapsed = time.perf_counter() - started
                ns_per_day = (step - start_step) * config.timestep_ps * 1e-3 / elapsed * 86400 if elapsed > 0 else 0.0
                kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
                box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) if potential.periodic else None
                writer.write(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                             state.getTime().value_in_unit(unit.picosecond), box)
                n_frames += 1
                log_writer.writerow([step, f"{state.getTime().value_in_unit(unit.picosecond):.4f}",
                                     f"{state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole):.6f}",
                                     f"{kinetic:.6f}", f"{kinetic_temperature_K(kinetic, n_dof):.4f}",
                                     f"{ns_per_day:.3f}", "" if box is None else f"{np.linalg.det(box):.6f}"])
                bar.update(block)
                if step % config.checkpoint_interval == 0 or step == config.n_steps:
                    log.flush()
                    writer.flush()
                    with atomic_path(checkpoint_path) as tmp:
                        simulation.saveCheckpoint(str(tmp))
                    wall_seconds = wall_seconds_before + time.perf_counter() - started
                    run.write_progress({"step": step, "frames": n_frames, "wall_seconds": wall_seconds,
                                        "model": str(potential.path), "platform": platform_name,
                                        "n_replicas": n_replicas})
    finally:
        writer.close()
    return {
        "steps": step, "frames": n_frames, "n_replicas": n_replicas, "platform": platform_name,
        "trajectory": str(traj_path), "log": str(log_path),
        "steps_per_second": step / wall_seconds if wall_seconds > 0 and step else None,
        "simulated_ns_per_replica": step * config.timestep_ps * 1e-3,
    }


class _BlowUpWatch:
    """Detects NaN/Inf, runaway kinetic temperature, and potential energy leaving its starting range.

    The energy test catches both overlap explosions (energy up) and an ML potential falling into an
    unphysical hole (energy down): either moves the energy by many kT per bead from where it began.
    """

    def __init__(self, config: SimulationConfig, temperature: float, n_dof: int, run: RunFolder, context, step: int):
        self.config, self.temperature, self.n_dof, self.run = config, temperature, n_dof, run
        self.n_particles = n_dof // 3
        state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True)
        self._check_start(state, step)
        self.reference_energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        self.last_good, self.last_good_step = state, step

    def _check_start(self, state, step: int) -> None:
        # Before any step, a leapfrog integrator's kinetic energy mixes in force * dt and says nothing;
        # a broken start shows as non-finite values or enormous forces (overlapping beads, Å passed as nm).
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        problem = None
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            problem = "NaN/Inf energy or forces"
        elif np.abs(forces).max() > self.config.max_start_force_kJ_per_mol_nm:
            worst = int(np.abs(forces).max(axis=1).argmax())
            problem = (f"force of {np.abs(forces).max():.3g} kJ/mol/nm on particle {worst}, above "
                       f"{self.config.max_start_force_kJ_per_mol_nm:g}")
        if problem:
            raise SimulationBlowUpError(f"the starting configuration (step {step}) is already unphysical for this "
                                        f"model ({problem}): check the initial positions (nm) and bead order",
                                        step, "")

    def check(self, state, step: int) -> None:
        config = self.config
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        t_kin = kinetic_temperature_K(kinetic, self.n_dof)
        kT = MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * self.temperature
        problem = None
        if not (np.isfinite(energy) and np.isfinite(positions).all() and np.isfinite(kinetic)):
            problem = "NaN/Inf in energy or positions"
        elif t_kin > config.blowup_temperature_factor * self.temperature:
            problem = f"kinetic temperature {t_kin:.0f} K exceeds {config.blowup_temperature_factor} x {self.temperature} K"
        elif abs(energy - self.reference_energy) / self.n_particles > config.blowup_energy_kT_per_bead * kT:
            problem = (f"potential energy {energy:.4g} kJ/mol moved more than {config.blowup_energy_kT_per_bead} kT "
                       f"per bead from its start ({self.reference_energy:.4g} kJ/mol)")
        if problem:
            self.fail(step, problem)
        self.last_good, self.last_good_step = state, step

    def fail(self, step: int, problem: str) -> None:
        path = self.run.file("last_good_state.xml")
        with atomic_path(path) as tmp:
            tmp.write_text(openmm.XmlSerializer.serialize(self.last_good))
        raise SimulationBlowUpError(f"simulation blew up by step {step} ({problem}); the last good state "
                                    f"(step {self.last_good_step}) is saved in {path}", step, str(path))


def _truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (the resumed checkpoint's): the run writes the later ones again."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
