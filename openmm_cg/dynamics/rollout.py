"""Running the learned propagator: start frames, trajectory files, OpenMM hand-off, resumable rollouts.

Trajectories are written like ``openmm-cg simulate`` writes them: ``trajectory.dcd`` or ``.h5`` with
``topology.pdb`` of the beads beside it (one chain per polymer, one residue per bead, bonds between
bonded beads), readable by mdtraj and OpenMM.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .._runtime import openmm
from openmm import app, unit

from ..errors import InputError, OutputExistsError
from ..outputs import write_json
from .chains import ChainBatch, build_chain_batch
from .propagator import Propagator, RolloutChecks, ScoreRefinement, score_refiner
from .train import check_step_size, load_dynamics, load_score

FORMATS = ("dcd", "h5")


def bead_topology(chains: ChainBatch) -> app.Topology:
    """CG topology of a chain batch: bead names B0, B1, ... per chain, residues named by bead index."""
    topology = app.Topology()
    atoms = []
    for count in chains.bead_counts:
        chain = topology.addChain()
        for bead in range(count):
            atoms.append(topology.addAtom(f"B{bead}", None, topology.addResidue("BED", chain)))
    for (i, j), bonded in zip(chains.pairs.tolist(), chains.bonded.tolist()):
        if bonded:
            topology.addBond(atoms[i], atoms[j])
    return topology


class TrajectoryWriter:
    """Appends frames (nm) and times (ps) to a DCD (OpenMM's writer) or HDF5 (mdtraj's) file; with
    ``append`` an existing file is continued."""

    def __init__(self, path, topology: app.Topology, step_ps: float, append: bool):
        import mdtraj

        self.path = Path(path)
        self.format = self.path.suffix.lstrip(".")
        if self.format not in FORMATS:
            raise InputError(f"trajectory format must be one of {FORMATS}, got {self.path.name}")
        append = append and self.path.exists()
        if self.format == "dcd":
            self.stream = open(self.path, "r+b" if append else "wb")
            self.handle = app.DCDFile(self.stream, topology, step_ps * unit.picosecond, append=append)
        else:
            self.stream = None
            self.handle = mdtraj.formats.HDF5TrajectoryFile(str(self.path), "a" if append else "w")
            if not append:
                self.handle.topology = mdtraj.Topology.from_openmm(topology)

    def write(self, positions_nm: np.ndarray, time_ps: float) -> None:
        x = np.asarray(positions_nm, dtype=np.float64)
        if self.format == "dcd":
            self.handle.writeModel(x * unit.nanometer)
        else:
            self.handle.write(x[None].astype(np.float32), time=np.array([time_ps], dtype=np.float32))

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        else:
            self.handle.close()


def history_from_frames(frames_nm: np.ndarray, frame_interval_ps: float, metadata: dict,
                        start: Optional[int] = None) -> np.ndarray:
    """The model's k history frames from a trajectory (frames, beads, 3), the last one at ``start``
    (default: the first frame that has k - 1 steps before it).

    The frames must be spaced so that the model's step is a whole number of them."""
    stride = metadata["step_ps"] / frame_interval_ps
    if abs(stride - round(stride)) > 1e-6 or round(stride) < 1:
        raise InputError(f"frames {frame_interval_ps:g} ps apart cannot give steps of {metadata['step_ps']:g} ps")
    stride = int(round(stride))
    check_step_size(metadata, frame_interval_ps, stride)
    k = int(metadata["history"])
    start = (k - 1) * stride if start is None else start
    first = start - (k - 1) * stride
    if first < 0 or start >= len(frames_nm):
        raise InputError(f"the model reads {k} frames {stride} apart ending at frame {start}: only {len(frames_nm)} "
                         "frames are available from 0")
    return np.asarray(frames_nm)[first:start + 1:stride]


def history_from_openmm(simulation, metadata: dict, bead_slices: Optional[List[slice]] = None) -> np.ndarray:
    """Run an OpenMM CG simulation for k - 1 model steps and record k frames one model step apart."""
    k = int(metadata["history"])
    dt_ps = simulation.integrator.getStepSize().value_in_unit(unit.picosecond)
    n_inner = metadata["step_ps"] / dt_ps
    if abs(n_inner - round(n_inner)) > 1e-6:
        raise InputError(f"the OpenMM time step {dt_ps:g} ps does not divide the model step {metadata['step_ps']:g} ps")
    frames = []
    for j in range(k):
        if j:
            simulation.step(int(round(n_inner)))
        frames.append(simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)


def to_context(propagator: Propagator, context) -> None:
    """Hand the propagator's state to an OpenMM Context of the same beads: positions and the velocities of the
    last learned step."""
    context.setPositions(propagator.positions_nm.numpy())
    context.setVelocities(propagator.velocities_nm_per_ps().numpy())


@dataclass
class RolloutConfig:
    steps: int = 1000
    seed: int = 0
    report_interval: int = 1
    checkpoint_interval: int = 100
    format: str = "dcd"
    refinement: str = "none"             # "none", "score", or "openmm" (force-matched chain potential)
    collision_nm: float = 0.15
    max_step_nm: float = 2.0
    stop_on_failure: bool = True


def rollout(dynamics_path, sequences: Sequence[str], history_nm: np.ndarray, config: RolloutConfig, out_dir,
            score_path=None, score_refinement: Optional[ScoreRefinement] = None, chain_tables_path=None,
            bead_masses_amu: Optional[np.ndarray] = None, relaxation=None, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Roll out ``sequences`` from ``history_nm`` (k, beads, 3); resumable (re-run to continue from its checkpoint).

    Refinement "score" needs ``score_path``; "openmm" needs ``chain_tables_path`` (a fitted
    ``ChainForceTables`` JSON) and ``bead_masses_amu``, and is not bit-reproducible on resume (OpenMM's
    random stream is not part of the checkpoint)."""
    out_dir = Path(out_dir)
    if config.format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}")
    checkpoint = out_dir / "rollout.ckpt"
    resume = checkpoint.exists() and not overwrite
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise OutputExistsError(f"{out_dir} holds files but no rollout checkpoint; choose another folder or overwrite")
    if overwrite and out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, metadata = load_dynamics(dynamics_path)
    chains = build_chain_batch(sequences, metadata["monomer_types"], metadata["particles_per_bead"])
    refine = None
    if config.refinement == "score":
        if score_path is None:
            raise InputError("score refinement needs the score network (score.pt)")
        score, _ = load_score(score_path)
        refine = score_refiner(score, score_refinement)
    elif config.refinement == "openmm":
        from ..classical.chain_force_matching import ChainForceTables, OpenMMRelaxer

        if chain_tables_path is None or bead_masses_amu is None:
            raise InputError("OpenMM refinement needs the force-matched chain tables and the bead masses")
        tables = ChainForceTables.from_dict(json.loads(Path(chain_tables_path).read_text()))
        refine = OpenMMRelaxer(tables, bead_masses_amu, chains.bead_counts, metadata["temperature_K"], relaxation,
                                seed=config.seed)
    elif config.refinement != "none":
        raise InputError("refinement must be 'none', 'score' or 'openmm'")
    checks = RolloutChecks(config.collision_nm, config.max_step_nm, config.stop_on_failure)
    propagator = Propagator(model, chains, torch.as_tensor(history_nm), config.seed, checks, refine)
    if resume:
        propagator.load_checkpoint(checkpoint)
        saved = json.loads((out_dir / "rollout.json").read_text())
        if {**saved["config"], "steps": config.steps} != asdict(config) or saved["sequences"] != list(sequences):
            raise InputError(f"{out_dir} holds a rollout with other settings; use another folder or overwrite")
    topology = bead_topology(chains)
    if not resume:
        with open(out_dir / "topology.pdb", "w") as handle:
            app.PDBFile.writeFile(topology, propagator.positions_nm.numpy() * 10.0, handle)
    # steps may grow on resume (continue a finished rollout further); everything else must match
    write_json(out_dir / "rollout.json", {"config": asdict(config), "sequences": list(sequences),
                                           "dynamics": str(dynamics_path), "step_ps": propagator.step_ps})
    trajectory = out_dir / f"trajectory.{config.format}"
    if resume:
        _keep_frames(trajectory, out_dir / "topology.pdb", propagator.step_count // config.report_interval)
    writer = TrajectoryWriter(trajectory, topology, propagator.step_ps * config.report_interval, append=resume)
    try:
        propagator.run(max(0, config.steps - propagator.step_count),
                       report=lambda step, frame: writer.write(frame.numpy(), step * propagator.step_ps),
                       report_interval=config.report_interval, checkpoint_path=checkpoint,
                       checkpoint_interval=config.checkpoint_interval, progress=progress)
    finally:
        writer.close()
    propagator.save_checkpoint(checkpoint)
    summary = {"steps": propagator.step_count, "simulated_ps": propagator.step_count * propagator.step_ps,
               "failures": {str(c): {"step": s, "reason": r} for c, (s, r) in propagator.failures.items()},
               "trajectory": str(out_dir / f"trajectory.{config.format}")}
    write_json(out_dir / "summary.json", summary)
    return summary


def _keep_frames(path: Path, topology_pdb: Path, n_frames: int) -> None:
    """After a crash the trajectory may hold frames written after the last checkpoint; the resumed
    propagator regenerates them identically, so they are dropped first."""
    import mdtraj

    if not path.exists():
        return
    if n_frames == 0:
        path.unlink()
        return
    existing = mdtraj.load(str(path), top=str(topology_pdb))
    if existing.n_frames > n_frames:
        existing[:n_frames].save(str(path))
