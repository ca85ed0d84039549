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

from ..classical.chain_force_matching import ChainForceTables
from ..errors import InputError
from ..export import load_exported
from ..outputs import RunFolder, sha256_of_arrays
from ..simulation.trajectory import FORMATS, TrajectoryWriter
from .chains import ChainBatch, build_chain_batch
from .model import DYNAMICS_KIND, SCORE_KIND
from .propagator import OpenMMRelaxation, OpenMMRelaxer, Propagator, RolloutChecks, ScoreRefinement, score_refiner


def load_dynamics(path):
    """(scripted dynamics model, metadata) of an exported propagator model."""
    return load_exported(path, kind=DYNAMICS_KIND)


def load_score(path):
    return load_exported(path, kind=SCORE_KIND)


def check_step_size(metadata: dict, frame_interval_ps: float, stride_frames: int) -> None:
    """Refuse initial frames whose spacing is not the model's step."""
    spacing = frame_interval_ps * stride_frames
    if not np.isclose(spacing, metadata["step_ps"], rtol=1e-6):
        raise InputError(f"initial frames are {spacing:g} ps apart; this model was trained with steps of "
                         f"{metadata['step_ps']:g} ps: give frames at that spacing")


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


@dataclass
class RefinementInputs:
    """What the refinements may need; each takes its part."""
    chains: ChainBatch
    metadata: dict
    seed: int
    score_path: Optional[str] = None
    score_refinement: Optional[ScoreRefinement] = None
    chain_tables_path: Optional[str] = None
    bead_masses_amu: Optional[np.ndarray] = None
    relaxation: Optional[OpenMMRelaxation] = None


def _no_refinement(inputs: RefinementInputs):
    return None


def _score_refinement(inputs: RefinementInputs):
    if inputs.score_path is None:
        raise InputError("score refinement needs the score network (score.pt)")
    return score_refiner(load_score(inputs.score_path)[0], inputs.score_refinement)


def _openmm_refinement(inputs: RefinementInputs):
    if inputs.chain_tables_path is None or inputs.bead_masses_amu is None:
        raise InputError("OpenMM refinement needs the force-matched chain tables and the bead masses")
    tables = ChainForceTables.from_dict(json.loads(Path(inputs.chain_tables_path).read_text()))
    return OpenMMRelaxer(tables, inputs.bead_masses_amu, inputs.chains.bead_counts, inputs.metadata["temperature_K"],
                         inputs.relaxation, seed=inputs.seed)


# Refinement after each learned step: name -> refine(frame, propagator) maker (None: no refinement).
REFINEMENTS = {"none": _no_refinement, "score": _score_refinement, "openmm": _openmm_refinement}


def rollout(dynamics_path, sequences: Sequence[str], history_nm: np.ndarray, config: RolloutConfig, out_dir,
            score_path=None, score_refinement: Optional[ScoreRefinement] = None, chain_tables_path=None,
            bead_masses_amu: Optional[np.ndarray] = None, relaxation: Optional[OpenMMRelaxation] = None,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Roll out ``sequences`` from ``history_nm`` (k, beads, 3) into the run folder ``out_dir``; resumable
    (re-run to continue from its checkpoint, bit-identically: the OpenMM relaxation's random state is saved too).

    Refinement "score" needs ``score_path``; "openmm" needs ``chain_tables_path`` (a fitted ``ChainForceTables``
    JSON) and ``bead_masses_amu``."""
    if config.format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}")
    if config.refinement not in REFINEMENTS:
        raise InputError(f"refinement must be one of {sorted(REFINEMENTS)}")
    model, metadata = load_dynamics(dynamics_path)
    chains = build_chain_batch(sequences, metadata["monomer_types"], metadata["particles_per_bead"])
    refine = REFINEMENTS[config.refinement](RefinementInputs(chains, metadata, config.seed, score_path, score_refinement,
                                                              chain_tables_path, bead_masses_amu, relaxation))
    propagator = Propagator(model, chains, torch.as_tensor(history_nm), config.seed,
                            RolloutChecks(config.collision_nm, config.max_step_nm, config.stop_on_failure), refine)
    inputs = {"dynamics model": dynamics_path}
    inputs.update({"score model": score_path} if config.refinement == "score" else {})
    inputs.update({"chain tables": chain_tables_path} if config.refinement == "openmm" else {})
    # steps may grow on resume (continue a finished rollout further); everything else must match
    run = RunFolder.open(out_dir, "rollout", {"config": asdict(config), "sequences": list(sequences),
                                              "history_sha256": sha256_of_arrays(np.asarray(history_nm, np.float64))},
                         inputs, resume=True, overwrite=overwrite, mutable=("config.steps",))
    checkpoint = run.file("rollout.ckpt")
    resume = run.resumed and checkpoint.exists()
    if resume:
        propagator.load_checkpoint(checkpoint)
    topology = bead_topology(chains)
    if not resume:
        with open(run.file("topology.pdb"), "w") as handle:
            app.PDBFile.writeFile(topology, propagator.positions_nm.numpy() * 10.0, handle)
    trajectory = run.file(f"trajectory.{config.format}")
    writer = TrajectoryWriter(trajectory, topology, propagator.step_ps, config.report_interval,
                              resume_frames=propagator.step_count // config.report_interval if resume else None)
    try:
        propagator.run(max(0, config.steps - propagator.step_count),
                       report=lambda step, frame: writer.write(frame.numpy(), step * propagator.step_ps),
                       report_interval=config.report_interval, checkpoint_path=checkpoint,
                       checkpoint_interval=config.checkpoint_interval, progress=progress, before_checkpoint=writer.flush)
    finally:
        writer.close()
    propagator.save_checkpoint(checkpoint)
    summary = {"steps": propagator.step_count, "simulated_ps": propagator.step_count * propagator.step_ps,
               "step_ps": propagator.step_ps,
               "failures": {str(c): {"step": s, "reason": r} for c, (s, r) in propagator.failures.items()},
               "trajectory": str(trajectory)}
    run.write_json("summary.json", summary)
    return summary
