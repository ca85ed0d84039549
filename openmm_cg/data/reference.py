"""All-atom reference MD with forces saved for force matching.

Each seed is one HDF5 file, written in chunks. After every chunk the file holds the frames, an
OpenMM checkpoint of the Context and the count of finished frames, so an interrupted run that is
started again continues where it stopped and never rewrites finished frames.

Constraints and force matching: OpenMM reports the potential forces only, not constraint forces.
With ``constraints="HBonds"`` (the default, 2 fs steps) the CG force map adds the forces of every
constrained hydrogen to its heavy atom's bead, so the equal-and-opposite constraint forces along
each X-H bond cancel inside the bead and the mapped potential force is the mapped total force.
``openmm_cg.mapping.CGMapping.check_constraints`` refuses a mapping for which this does not hold.
With ``constraints="none"`` there is nothing to cancel, at the price of a 1 fs step.

Periodic liquids: with ``pressure_bar`` set, each seed is first equilibrated at constant pressure
(``MonteCarloBarostat``); the box is then set to the mean box of the second half of that run (molecule
centres scaled, molecules kept rigid) and the production run is NVT at that density, so the saved forces
belong to one fixed box per seed. Box vectors are saved with every frame of a periodic system.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from .._runtime import langevin_integrator, openmm, platform
from openmm import app, unit

from ..errors import InputError
from ..units import density_g_per_mL
from ..topology import topology_to_json
from .._version import __version__

H5_METADATA_KEY = "openmm_cg_metadata"
# Largest relative change of the mean volume between the last two quarters of NPT equilibration that
# counts as equilibrated. A 125-molecule methanol box fluctuates by ~2% in volume, so the mean of a
# 35 ps quarter scatters by ~1% (a 1% tolerance refused equilibrated runs); a box still compressing
# from its 0.5 g/mL start drifts by far more.
NPT_VOLUME_DRIFT_TOLERANCE = 0.02
_CONSTRAINTS = {"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds, "hangles": app.HAngles}


@dataclass
class ReferenceConfig:
    """How to run the fine-level reference. Give one source: ``testsystem``, ``sequence`` (a capped peptide built
    by ``openmm_cg.data.peptides``), ``pdb`` (+ force field; missing hydrogens are added) or ``prmtop`` (+ pdb), or
    ``polymers`` (a bead-spring chain set, ``openmm_cg.data.polymers``).

    ``hydrogen_mass_amu`` repartitions mass from each heavy atom to its hydrogens (OpenMM's ``hydrogenMass``), which
    allows 4 fs steps with ``constraints="HBonds"``: masses do not enter the potential, so the forces are unchanged,
    and so is the equilibrium distribution of positions, apart from the small mass-dependent metric factor of
    coupled bond constraints (the three C-H of a methyl group); dynamics, and so time correlations, change."""

    testsystem: Optional[str] = "AlanineDipeptideImplicit"
    sequence: Optional[str] = None
    pdb: Optional[str] = None
    forcefield: List[str] = field(default_factory=lambda: ["amber14-all.xml", "implicit/gbn2.xml"])
    hydrogen_mass_amu: Optional[float] = None
    prmtop: Optional[str] = None
    temperature_K: float = 300.0
    timestep_ps: float = 0.002
    friction_per_ps: float = 1.0
    constraints: str = "HBonds"
    save_interval_steps: int = 50
    frames_per_seed: int = 10000
    equilibration_steps: int = 5000
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    platform: str = "CPU"
    threads_per_seed: int = 1
    chunk_frames: int = 500
    pressure_bar: Optional[float] = None  # NPT equilibration to the system's own density, then NVT
    npt_equilibration_steps: int = 0
    barostat_interval_steps: int = 25
    polymers: Optional[dict] = None  # PolymerSetConfig fields; set testsystem to None with it

    def validate(self) -> None:
        sources = [self.testsystem is not None, self.sequence is not None,
                   self.pdb is not None or self.prmtop is not None, self.polymers is not None]
        if sum(sources) != 1:
            raise InputError("give exactly one source: a testsystem name, a peptide sequence, a PDB (+ force field) / "
                             "prmtop, or polymers (testsystem defaults to alanine dipeptide: set it to None for "
                             "another source)")
        if self.sequence is not None:
            from .peptides import parse_sequence

            parse_sequence(self.sequence)
        if self.hydrogen_mass_amu is not None and not (self.sequence is not None or self.pdb is not None) \
                or self.prmtop is not None and self.hydrogen_mass_amu is not None:
            raise InputError("hydrogen_mass_amu applies to sequence and PDB (+ force field) sources only")
        if self.hydrogen_mass_amu is not None and not 1.0 <= self.hydrogen_mass_amu <= 5.0:
            raise InputError(f"hydrogen_mass_amu {self.hydrogen_mass_amu} is outside 1-5 amu")
        if self.polymers is not None:
            from .polymers import polymer_set_from_dict

            polymer_set_from_dict(self.polymers)
        if self.constraints.lower() not in _CONSTRAINTS:
            raise InputError(f"constraints must be one of {sorted(_CONSTRAINTS)}, got {self.constraints!r}")
        if self.constraints.lower() == "none" and self.timestep_ps > 0.0015 and self.polymers is None:
            raise InputError(
                f"timestep {self.timestep_ps} ps without constraints is unstable for bonds to hydrogen; "
                "use at most 0.001 ps or constraints='HBonds'"
            )
        if self.timestep_ps > 0.0025 and self.polymers is None and (self.hydrogen_mass_amu or 1.0) < 3.0:
            raise InputError(f"timestep {self.timestep_ps} ps needs hydrogen mass repartitioning: set "
                             "hydrogen_mass_amu to at least 3 (with constraints='HBonds'), or use at most 0.002 ps")
        if self.temperature_K <= 0 or self.timestep_ps <= 0 or self.save_interval_steps < 1:
            raise InputError("temperature, timestep and save interval must be positive")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds must be distinct, got {self.seeds}")
        if self.pressure_bar is not None and (self.pressure_bar <= 0 or self.npt_equilibration_steps < 2):
            raise InputError("NPT equilibration needs a positive pressure_bar and npt_equilibration_steps >= 2")

    @property
    def save_interval_ps(self) -> float:
        return self.save_interval_steps * self.timestep_ps

    def source_description(self) -> str:
        if self.polymers is not None:
            return "openmm_cg.data.polymers:" + json.dumps(self.polymers, sort_keys=True)
        if self.testsystem:
            return f"openmmtools.testsystems.{self.testsystem}"
        if self.sequence is not None:
            from .peptides import parse_sequence

            return f"sequence:ACE-{'-'.join(parse_sequence(self.sequence))}-NME forcefield:{','.join(self.forcefield)}"
        if self.prmtop:
            return f"prmtop:{self.prmtop}"
        return f"pdb:{self.pdb} forcefield:{','.join(self.forcefield)}"


def build_system(config: ReferenceConfig):
    """(System, Topology, positions in nm as ndarray) for the configured source."""
    constraints = _CONSTRAINTS[config.constraints.lower()]
    if config.polymers is not None:
        from .polymers import build_polymer_system, polymer_set_from_dict

        system, topology, positions_nm = build_polymer_system(polymer_set_from_dict(config.polymers))
        return system, topology, positions_nm
    if config.testsystem:
        from openmmtools import testsystems  # imported lazily: it prints banners at import

        try:
            factory = getattr(testsystems, config.testsystem)
        except AttributeError:
            raise InputError(f"openmmtools.testsystems has no system named {config.testsystem!r}") from None
        test_system = factory(constraints=constraints)
        system, topology, positions = test_system.system, test_system.topology, test_system.positions
    elif config.prmtop:
        prmtop = app.AmberPrmtopFile(config.prmtop)
        pdb = app.PDBFile(config.pdb) if config.pdb else None
        if pdb is None:
            raise InputError("a prmtop source also needs --pdb for the starting coordinates")
        system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=constraints, implicitSolvent=app.OBC2)
        topology, positions = prmtop.topology, pdb.positions
    else:
        from .peptides import add_hydrogens, build_peptide

        if config.sequence is not None:
            topology, positions = build_peptide(config.sequence, config.forcefield)
        else:
            pdb = app.PDBFile(config.pdb)
            topology, positions = add_hydrogens(pdb.topology, pdb.positions, config.forcefield)
        positions = unit.Quantity(positions, unit.nanometer)
        forcefield = app.ForceField(*config.forcefield)
        hydrogen_mass = None if config.hydrogen_mass_amu is None else config.hydrogen_mass_amu * unit.amu
        system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=constraints,
                                         hydrogenMass=hydrogen_mass)
    positions_nm = np.array(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    if system.getNumParticles() != topology.getNumAtoms() or len(positions_nm) != topology.getNumAtoms():
        raise InputError(
            f"the source's system ({system.getNumParticles()} particles), topology "
            f"({topology.getNumAtoms()} atoms) and coordinates ({len(positions_nm)}) disagree"
        )
    return system, topology, positions_nm


def _metadata(config: ReferenceConfig, seed: int, system, topology) -> dict:
    return {
        "kind": "all_atom_reference",
        "source": config.source_description(),
        "forcefield": config.testsystem or ("bead-spring" if config.polymers is not None else config.forcefield),
        "temperature_K": config.temperature_K,
        "timestep_ps": config.timestep_ps,
        "friction_per_ps": config.friction_per_ps,
        "constraints": config.constraints,
        "hydrogen_mass_amu": config.hydrogen_mass_amu,
        "n_constraints": system.getNumConstraints(),
        "save_interval_steps": config.save_interval_steps,
        "save_interval_ps": config.save_interval_ps,
        "equilibration_steps": config.equilibration_steps,
        "frames_target": config.frames_per_seed,
        "seed": seed,
        "integrator": "LangevinMiddleIntegrator",
        "units": {"positions": "nm", "forces": "kJ/mol/nm", "energy": "kJ/mol", "time": "ps"},
        "openmm_cg_version": __version__,
        "openmm_version": openmm.__version__,
        "n_atoms": topology.getNumAtoms(),
        "periodic": bool(system.usesPeriodicBoundaryConditions()),
        "pressure_bar": config.pressure_bar,
        "npt_equilibration_steps": config.npt_equilibration_steps if config.pressure_bar is not None else 0,
        "ensemble": "NVT" if config.pressure_bar is None else "NVT at the mean NPT box",
        **(_polymer_description(config.polymers) if config.polymers is not None else {}),
    }


def _polymer_description(options: dict) -> dict:
    from .polymers import describe, polymer_set_from_dict

    return describe(polymer_set_from_dict(options))


# Keys that must agree between an existing file and the config that resumes it.
_RESUME_KEYS = ("source", "temperature_K", "timestep_ps", "friction_per_ps", "constraints",
                "save_interval_steps", "seed", "n_atoms", "pressure_bar", "hydrogen_mass_amu")


def seed_path(out_dir, seed: int) -> Path:
    return Path(out_dir) / f"seed_{seed:04d}.h5"


def run_seed(config: ReferenceConfig, out_dir, seed: int, progress_position: int = 0) -> Path:
    """Generate (or continue) the trajectory of one seed; returns its HDF5 path."""
    import h5py
    from tqdm.auto import tqdm

    config.validate()
    system, topology, positions_nm = build_system(config)
    path = seed_path(out_dir, seed)
    metadata = _metadata(config, seed, system, topology)
    n_atoms = topology.getNumAtoms()

    periodic = system.usesPeriodicBoundaryConditions()
    barostat = None
    if config.pressure_bar is not None:
        if not periodic:
            raise InputError("pressure_bar needs a periodic system (a box); this source has none")
        barostat = openmm.MonteCarloBarostat(config.pressure_bar * unit.bar, config.temperature_K * unit.kelvin,
                                             config.barostat_interval_steps)
        barostat.setRandomNumberSeed(seed + 1)
        system.addForce(barostat)
    integrator = langevin_integrator(config.temperature_K, config.friction_per_ps, config.timestep_ps, seed)
    platform_object, properties = platform(config.platform, config.threads_per_seed)

    _discard_if_stillborn(path)
    with h5py.File(path, "a") as h5:
        if H5_METADATA_KEY in h5.attrs and "checkpoint" in h5:
            existing = json.loads(h5.attrs[H5_METADATA_KEY])
            mismatched = [k for k in _RESUME_KEYS if existing.get(k) != metadata[k]]
            if mismatched:
                raise InputError(
                    f"{path} was written with different settings ({', '.join(mismatched)}); it is left "
                    "untouched: use another output folder or delete the file"
                )
            metadata["frames_target"] = max(config.frames_per_seed, existing.get("frames_target", 0))
            metadata["npt"] = existing.get("npt")
            if barostat is not None:
                barostat.setFrequency(0)  # NPT equilibration is done; production is NVT
            context = openmm.Context(system, integrator, platform_object, properties)
            n_done = int(h5.attrs["n_frames_done"])
            _truncate(h5, n_done)
            _restore(context, h5, config.platform)
        else:
            for name in list(h5.keys()):  # an earlier start stopped before its first chunk: begin again
                del h5[name]
            h5.attrs["topology_json"] = topology_to_json(topology)
            h5.attrs["n_frames_done"] = 0
            for name, shape in (("positions", (n_atoms, 3)), ("forces", (n_atoms, 3))):
                h5.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype="f4",
                                  chunks=(min(config.chunk_frames, 1000),) + shape)
            for name in ("time_ps", "potential_energy_kJ_per_mol"):
                h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8")
            if periodic:
                h5.create_dataset("box_vectors", shape=(0, 3, 3), maxshape=(None, 3, 3), dtype="f8",
                                  chunks=(min(config.chunk_frames, 1000), 3, 3))
            n_done = 0
            context = openmm.Context(system, integrator, platform_object, properties)
            context.setPositions(positions_nm)
            openmm.LocalEnergyMinimizer.minimize(context)
            context.setVelocitiesToTemperature(config.temperature_K * unit.kelvin, seed + 1)
            if barostat is not None:
                metadata["npt"] = equilibrate_npt(context, integrator, barostat, system, config, seed)
            integrator.step(config.equilibration_steps)
            context.setTime(0.0)
        h5.attrs[H5_METADATA_KEY] = json.dumps(metadata)
        h5.attrs["masses_amu"] = np.array(
            [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)])

        target = config.frames_per_seed
        with tqdm(total=target, initial=min(n_done, target), desc=f"reference seed {seed}",
                  unit="frame", position=progress_position, leave=True) as bar:
            while n_done < target:
                n_chunk = min(config.chunk_frames, target - n_done)
                chunk = _sample_chunk(context, integrator, config.save_interval_steps, n_chunk, n_atoms, periodic)
                _append(h5, chunk)
                # The checkpoint and the frame count are written after the frames: a crash in
                # between leaves extra frames that the next resume truncates.
                _save_checkpoint(context, h5, config.platform)
                n_done += n_chunk
                h5.attrs["n_frames_done"] = n_done
                h5.flush()
                bar.update(n_chunk)
    return path


# An HDF5 file killed while it was being created is a header and nothing else; the first chunk of frames alone
# takes more than this.
STILLBORN_FILE_BYTES = 8192


def _discard_if_stillborn(path: Path) -> None:
    """Remove a seed file that a kill left unreadable before it held any frame, so the seed starts again; an
    unreadable file that may hold frames is refused, never removed."""
    import h5py

    if not path.exists():
        return
    try:
        with h5py.File(path, "r"):
            return
    except OSError as error:
        if path.stat().st_size >= STILLBORN_FILE_BYTES:
            raise InputError(f"{path} cannot be read as HDF5 ({error}) and may hold frames: it is left untouched; "
                             "move it away to start this seed again") from None
    path.unlink()


def equilibrate_npt(context, integrator, barostat, system, config: ReferenceConfig, seed: int) -> dict:
    """Run NPT, then set the box to the mean box of the second half of the run and switch the barostat off.

    Molecule centres (not atoms) are scaled to the mean box, as the barostat's own moves do, so bonds
    keep their lengths. Returns the equilibration record stored in the metadata.
    """
    from tqdm.auto import tqdm

    n_samples = max(2, config.npt_equilibration_steps // config.barostat_interval_steps)
    stride = max(1, config.npt_equilibration_steps // n_samples)
    boxes = []
    for _ in tqdm(range(n_samples), desc=f"NPT equilibration seed {seed}", unit="sample", leave=False):
        integrator.step(stride)
        state = context.getState()
        boxes.append(np.array(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)))
    boxes = np.array(boxes)
    volumes = np.linalg.det(boxes)
    quarter = len(volumes) // 4
    if quarter >= 1:
        drift = abs(volumes[-quarter:].mean() / volumes[-2 * quarter:-quarter].mean() - 1)
        if drift > NPT_VOLUME_DRIFT_TOLERANCE:
            raise InputError(
                f"seed {seed}: the NPT volume still changes by {100 * drift:.1f}% between the last two quarters of "
                f"{config.npt_equilibration_steps} steps (from {volumes[0]:.3f} to {volumes[-1]:.3f} nm^3): "
                "raise npt_equilibration_steps"
            )
    second_half = boxes[len(boxes) // 2:]
    mean_box = second_half.mean(axis=0)
    state = context.getState(getPositions=True)
    positions = np.array(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    current_box = np.array(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
    # Fractional coordinates of each molecule's centre are kept; the molecule moves rigidly with it.
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    scale = np.linalg.solve(current_box, mean_box)  # row-vector convention: x_new = x_frac @ mean_box
    for molecule in context.getMolecules():
        molecule = list(molecule)
        centre = masses[molecule] @ positions[molecule] / masses[molecule].sum()
        positions[molecule] += centre @ scale - centre
    barostat.setFrequency(0)
    context.reinitialize(preserveState=True)
    context.setPeriodicBoxVectors(*mean_box)
    context.setPositions(positions)
    return {
        "pressure_bar": config.pressure_bar,
        "steps": config.npt_equilibration_steps,
        "volume_nm3_second_half_mean": float(volumes[len(volumes) // 2:].mean()),
        "volume_nm3_second_half_std": float(volumes[len(volumes) // 2:].std()),
        "production_box_nm": mean_box.tolist(),
        "production_density_g_per_mL": float(density_g_per_mL(masses.sum(), np.linalg.det(mean_box))),
    }


def _sample_chunk(context, integrator, stride: int, n_frames: int, n_atoms: int, periodic: bool = False) -> dict:
    positions = np.empty((n_frames, n_atoms, 3), dtype=np.float32)
    forces = np.empty((n_frames, n_atoms, 3), dtype=np.float32)
    time_ps = np.empty(n_frames)
    energy = np.empty(n_frames)
    boxes = np.empty((n_frames, 3, 3))
    for k in range(n_frames):
        integrator.step(stride)
        state = context.getState(getPositions=True, getForces=True, getEnergy=True)
        positions[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        forces[k] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        time_ps[k] = state.getTime().value_in_unit(unit.picosecond)
        energy[k] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        boxes[k] = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    if not (np.isfinite(forces).all() and np.isfinite(positions).all()):
        raise RuntimeError("the reference simulation produced NaN/Inf; the frames before this chunk are kept")
    chunk = {"positions": positions, "forces": forces, "time_ps": time_ps, "potential_energy_kJ_per_mol": energy}
    if periodic:
        chunk["box_vectors"] = boxes
    return chunk


def _append(h5, chunk: dict) -> None:
    for name, values in chunk.items():
        dataset = h5[name]
        start = dataset.shape[0]
        dataset.resize(start + len(values), axis=0)
        dataset[start:] = values


def _truncate(h5, n_frames: int) -> None:
    for name in ("positions", "forces", "time_ps", "potential_energy_kJ_per_mol", "box_vectors"):
        if name in h5 and h5[name].shape[0] > n_frames:
            h5[name].resize(n_frames, axis=0)


def _save_checkpoint(context, h5, platform_name: str) -> None:
    for name in ("checkpoint", "state_xml"):
        if name in h5:
            del h5[name]
    h5.create_dataset("checkpoint", data=np.frombuffer(context.createCheckpoint(), dtype=np.uint8))
    h5["checkpoint"].attrs["platform"] = platform_name
    state = context.getState(getPositions=True, getVelocities=True, getParameters=True)
    h5.create_dataset("state_xml", data=openmm.XmlSerializer.serialize(state))


def _restore(context, h5, platform_name: str) -> None:
    if h5["checkpoint"].attrs.get("platform") == platform_name:
        context.loadCheckpoint(h5["checkpoint"][()].tobytes())
    else:
        # Checkpoints are platform specific; the state XML is not (the random stream restarts).
        state_xml = h5["state_xml"][()]
        context.setState(openmm.XmlSerializer.deserialize(state_xml.decode() if isinstance(state_xml, bytes) else state_xml))


# Settings a re-run may change: more frames or seeds extend the data; threads and platform do not change it.
EXTENDABLE = ("frames_per_seed", "seeds", "threads_per_seed", "platform", "chunk_frames")


def generate_reference(config: ReferenceConfig, out_dir, n_workers: Optional[int] = None,
                       overwrite: bool = False) -> List[Path]:
    """Run every seed of ``config`` (in parallel worker processes) in the run folder ``out_dir``; resumable.

    Re-running with the same settings continues unfinished seeds and leaves finished ones alone; raising
    ``frames_per_seed`` extends every seed, and new ``seeds`` are added. Other changed settings are refused
    before anything is written."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from ..outputs import RunFolder

    config.validate()
    run = RunFolder.open(out_dir, "reference", asdict(config), resume=True, overwrite=overwrite, mutable=EXTENDABLE)
    for seed in config.seeds:
        run.file(seed_path(".", seed).name)
    n_workers = n_workers or min(len(config.seeds), os.cpu_count() or 1)
    if n_workers <= 1:
        return [run_seed(config, run.path, seed) for seed in config.seeds]
    # fork, not spawn: spawn re-imports the caller's script, which breaks scripts without a
    # __main__ guard; the workers only run OpenMM, so forking after torch was imported is safe.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        futures = [pool.submit(run_seed, config, run.path, seed, i) for i, seed in enumerate(config.seeds)]
        return [future.result() for future in futures]


def reference_config(out_dir) -> ReferenceConfig:
    """The settings a reference folder was generated with (its run folder's config; folders written before run
    folders had manifests kept them in ``reference_config.json``)."""
    from ..outputs import CONFIG

    for name in (CONFIG, "reference_config.json"):
        path = Path(out_dir) / name
        if path.is_file():
            return ReferenceConfig(**json.loads(path.read_text()))
    raise InputError(f"{out_dir} is not a reference folder written by openmm-cg (no {CONFIG})")
