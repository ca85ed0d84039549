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
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .._runtime import best_platform_name, openmm
from openmm import app, unit

from ..errors import InputError, OutputExistsError, SimulationBlowUpError
from ..outputs import sha256_of_file, write_json
from ..units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K
from .potential import CGPotential

TRAJECTORY_FORMATS = ("dcd", "h5")
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

    def validate(self) -> None:
        if self.trajectory_format not in TRAJECTORY_FORMATS:
            raise InputError(f"trajectory_format must be one of {TRAJECTORY_FORMATS}")
        if self.n_steps < 0 or self.report_interval < 1 or self.timestep_ps <= 0:
            raise InputError("n_steps must be >= 0, report_interval >= 1 and timestep_ps > 0")
        if self.checkpoint_interval % self.report_interval != 0:
            raise InputError("checkpoint_interval must be a multiple of report_interval")
        if self.pressure_bar is not None and (self.pressure_bar <= 0 or self.barostat_interval_steps < 1):
            raise InputError("pressure_bar must be positive and barostat_interval_steps at least 1")


class _TrajectoryWriter:
    def __init__(self, path: Path, topology: app.Topology, fmt: str, dt_ps: float, interval: int, append: bool):
        self.path, self.fmt = path, fmt
        if fmt == "dcd":
            self.handle = open(path, "r+b" if append else "wb")
            self.file = app.DCDFile(self.handle, topology, dt_ps * unit.picosecond, interval=interval,
                                    append=append)
        else:
            from mdtraj.formats import HDF5TrajectoryFile
            import mdtraj

            self.file = HDF5TrajectoryFile(str(path), mode="a" if append else "w")
            if not append:
                self.file.topology = mdtraj.Topology.from_openmm(topology)

    def write(self, positions_nm: np.ndarray, time_ps: float, box_nm: Optional[np.ndarray] = None) -> None:
        if self.fmt == "dcd":
            box = None if box_nm is None else [openmm.Vec3(*row) for row in box_nm] * unit.nanometer
            self.file.writeModel(positions_nm * unit.nanometer, periodicBoxVectors=box)
        elif box_nm is None:
            self.file.write(positions_nm[None].astype(np.float32), time=np.array([time_ps], dtype=np.float32))
        else:
            from mdtraj.utils import box_vectors_to_lengths_and_angles

            *lengths, alpha, beta, gamma = box_vectors_to_lengths_and_angles(*np.asarray(box_nm))
            self.file.write(positions_nm[None].astype(np.float32), time=np.array([time_ps], dtype=np.float32),
                            cell_lengths=np.array([lengths], dtype=np.float32),
                            cell_angles=np.array([[alpha, beta, gamma]], dtype=np.float32))

    def close(self) -> None:
        if self.fmt == "dcd":
            self.handle.close()
        else:
            self.file.close()


def _truncate_trajectory(path: Path, topology: app.Topology, fmt: str, n_frames: int) -> None:
    """Drop frames written after the last checkpoint (they will be simulated again)."""
    import mdtraj

    if not path.exists():
        return
    if fmt == "h5":
        import h5py

        with h5py.File(path, "a") as h5:
            for name in ("coordinates", "time"):
                if name in h5 and h5[name].shape[0] > n_frames:
                    h5[name].resize(n_frames, axis=0)
        return
    trajectory = mdtraj.load_dcd(str(path), top=mdtraj.Topology.from_openmm(topology))
    if len(trajectory) != n_frames:
        trajectory[:n_frames].save_dcd(str(path))


def load_run_frames(out_dir, skip_ps: float = 0.0):
    """(positions (F, N, 3) nm, boxes (F, 3, 3) nm or None) of a folder written by ``run_simulation`` or by a
    learned-dynamics rollout (``trajectory.dcd`` or ``.h5``), float64, without the first ``skip_ps``."""
    import mdtraj

    out_dir = Path(out_dir)
    paths = [out_dir / f"trajectory.{fmt}" for fmt in ("dcd", "h5") if (out_dir / f"trajectory.{fmt}").exists()]
    if not paths:
        raise InputError(f"{out_dir} holds no trajectory.dcd or trajectory.h5")
    if paths[0].suffix == ".h5":
        trajectory = mdtraj.load_hdf5(str(paths[0]))
    else:
        trajectory = mdtraj.load_dcd(str(paths[0]), top=str(out_dir / "topology.pdb"))
    skip = 0
    if skip_ps > 0:
        if (out_dir / "progress.json").exists():
            config = json.loads((out_dir / "progress.json").read_text())["config"]
            frame_ps = config["report_interval"] * config["timestep_ps"]
        else:  # a rollout
            rollout = json.loads((out_dir / "rollout.json").read_text())
            frame_ps = rollout["config"]["report_interval"] * rollout["step_ps"]
        skip = int(round(skip_ps / frame_ps))
    if skip >= trajectory.n_frames:
        raise InputError(f"{out_dir} has {trajectory.n_frames} frames; skipping {skip_ps} ps leaves none")
    boxes = trajectory.unitcell_vectors
    return (trajectory.xyz[skip:].astype(np.float64),
            None if boxes is None else boxes[skip:].astype(np.float64))


def kinetic_temperature_K(kinetic_energy_kJ_per_mol: float, n_dof: int) -> float:
    return 2.0 * kinetic_energy_kJ_per_mol / (n_dof * MOLAR_GAS_CONSTANT_KJ_PER_MOL_K)


def run_simulation(potential: CGPotential, positions_nm: np.ndarray, config: SimulationConfig, out_dir,
                   overwrite: bool = False, progress: bool = True, box_vectors_nm: Optional[np.ndarray] = None) -> dict:
    """Simulate ``positions_nm`` ((R*N, 3), R replicas of the model's molecule) and write to ``out_dir``.

    Periodic models need ``box_vectors_nm`` (3x3, rows a, b, c: the starting box)."""
    config.validate()
    if potential.periodic != (box_vectors_nm is not None):
        raise InputError(f"{potential.path.name} is a periodic model: give the box vectors" if potential.periodic
                         else f"{potential.path.name} is not periodic: it takes no box vectors")
    if config.pressure_bar is not None and not potential.periodic:
        raise InputError("pressure_bar (NPT) needs a periodic model")
    out_dir = Path(out_dir)
    progress_path = out_dir / "progress.json"
    resume = progress_path.exists() and not overwrite
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        if not overwrite:
            raise OutputExistsError(f"{out_dir} already holds results (and no checkpoint to resume); "
                                    "pass overwrite=True (--overwrite) to replace them")
        import shutil

        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

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
    if config.pressure_bar is not None:
        barostat = openmm.MonteCarloBarostat(config.pressure_bar * unit.bar, temperature * unit.kelvin,
                                             config.barostat_interval_steps)
        barostat.setRandomNumberSeed(config.seed + 1)
        system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, config.friction_per_ps / unit.picosecond,
                                                 config.timestep_ps * unit.picosecond)
    integrator.setRandomNumberSeed(config.seed + 1)  # OpenMM reads seed 0 as "random"
    platform_name = config.platform or best_platform_name()
    properties = {"Threads": str(config.threads)} if (config.threads and platform_name == "CPU") else {}
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(platform_name),
                                properties)
    n_dof = 3 * system.getNumParticles()

    model_sha256 = sha256_of_file(potential.path)
    traj_path = out_dir / f"trajectory.{config.trajectory_format}"
    log_path = out_dir / "log.csv"
    checkpoint_path = out_dir / "checkpoint.chk"
    if resume:
        state = json.loads(progress_path.read_text())
        # n_steps may grow (extend a run) and threads may differ (another machine): neither changes the physics
        if state["config"] | {"n_steps": 0, "threads": None} != asdict(config) | {"n_steps": 0, "threads": None}:
            raise InputError(f"{out_dir} holds a run with different settings; use another folder or --overwrite")
        if state.get("model_sha256") != model_sha256:
            raise InputError(f"{out_dir} holds a run of a different model file than {potential.path}; "
                             "use another folder or --overwrite")
        simulation.loadCheckpoint(str(checkpoint_path))
        step, n_frames = int(state["step"]), int(state["frames"])
        wall_seconds = float(state.get("wall_seconds", 0.0))
        _truncate_trajectory(traj_path, topology, config.trajectory_format, n_frames)
        _truncate_log(log_path, step)
    else:
        simulation.context.setPositions(positions_nm)
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, config.seed + 1)
        step, n_frames, wall_seconds = 0, 0, 0.0
        app.PDBFile.writeFile(topology, positions_nm * 10.0 * unit.angstrom, open(out_dir / "topology.pdb", "w"))
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(LOG_FIELDS)

    writer = _TrajectoryWriter(traj_path, topology, config.trajectory_format, config.timestep_ps,
                               config.report_interval, append=resume and traj_path.exists())
    watch = _BlowUpWatch(config, temperature, n_dof, out_dir, simulation.context, step)

    from tqdm.auto import tqdm

    # wall time over every session of the run, so a finished run that is resumed still reports its speed
    started, start_step, wall_seconds_before = time.perf_counter(), step, wall_seconds
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
                    writer.close()
                    simulation.saveCheckpoint(str(checkpoint_path))
                    wall_seconds = wall_seconds_before + time.perf_counter() - started
                    write_json(progress_path, {"step": step, "frames": n_frames, "config": asdict(config),
                                               "wall_seconds": wall_seconds,
                                               "model": str(potential.path), "model_sha256": model_sha256,
                                               "platform": platform_name, "n_replicas": n_replicas})
                    writer = _TrajectoryWriter(traj_path, topology, config.trajectory_format, config.timestep_ps,
                                               config.report_interval, append=True)
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

    def __init__(self, config: SimulationConfig, temperature: float, n_dof: int, out_dir: Path, context, step: int):
        self.config, self.temperature, self.n_dof, self.out_dir = config, temperature, n_dof, out_dir
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
        path = self.out_dir / "last_good_state.xml"
        path.write_text(openmm.XmlSerializer.serialize(self.last_good))
        raise SimulationBlowUpError(f"simulation blew up by step {step} ({problem}); the last good state "
                                    f"(step {self.last_good_step}) is saved in {path}", step, str(path))


def _truncate_log(path: Path, step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= step]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
