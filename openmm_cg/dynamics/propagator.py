"""The learned propagator: many independent chains stepped together by a learned dynamics model.

State: a ring buffer with the last k bead frames of every chain, the step count, and one seeded
random generator per chain (so a chain's trajectory does not depend on which other chains share its
batch). Each step draws delta ~ N(mean, std^2) from the model, advances by semi-implicit Euler
(x_{t+1} = 2 x_t - x_{t-1} + delta), optionally refines the new frame (score-based annealed Langevin,
or a short OpenMM run with a CG potential), checks it, and pushes it into the buffer.

A chain's new frame is refused when it is not finite, when two of its beads that share no bond come
closer than ``collision_nm``, or when a bead moved more than ``max_step_nm``. By default the whole
rollout then stops (``RolloutStopped``, naming the step, the chain and the beads) with the last good
state kept and, given a checkpoint path, written first. With ``stop_on_failure=False`` the failed chain
is recorded in ``failures`` and frozen at its last good frame while the others go on (chains are
independent, so their trajectories are unchanged): this is how rollout statistics count failures.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..classical.chain_force_matching import ChainForceTables
from ..errors import InputError, RolloutStopped
from ..outputs import atomic_path, load_plain
from .chains import ChainBatch


@dataclass
class RolloutChecks:
    collision_nm: float = 0.15      # non-bonded beads closer than this have collided
    max_step_nm: float = 2.0        # a bead moving farther in one step has blown up
    stop_on_failure: bool = True


@dataclass
class ScoreRefinement:
    """Annealed Langevin dynamics with the score network after each step (Song & Ermon 2019):
    x <- x + eps_i s(x, sigma_i) [+ sqrt(2 eps_i) z], eps_i = step_scale * sigma_i^2. With step_scale 1 and
    no noise one step is Tweedie's denoiser E[x | x + sigma z] = x + sigma^2 s."""
    noise_levels_nm: Sequence[float] = (0.05, 0.02)
    steps_per_level: int = 2
    step_scale: float = 0.5
    noise: bool = False             # False: deterministic steps up the density (a denoiser)


class Propagator:
    def __init__(self, dynamics: torch.nn.Module, chains: ChainBatch, history_nm: torch.Tensor, seed: int,
                 checks: RolloutChecks = RolloutChecks(), refine: Optional[Callable] = None):
        """``dynamics``: a (scripted) CGDynamics; ``history_nm`` (k, n_beads, 3), oldest frame first."""
        k = int(dynamics.history)
        history_nm = torch.as_tensor(history_nm, dtype=torch.float64)
        if history_nm.dim() != 3 or history_nm.shape[1:] != (chains.n_beads, 3):
            raise InputError(f"initial frames have shape {tuple(history_nm.shape)}; the chains have {chains.n_beads} "
                             "beads: give (frames, beads, 3)")
        if history_nm.shape[0] < k:
            raise InputError(f"the model reads the last {k} frames; only {history_nm.shape[0]} initial frames given")
        if not torch.isfinite(history_nm).all():
            raise InputError("initial frames contain NaN or Inf")
        self.dynamics = dynamics
        self.chains = chains
        self.checks = checks
        self.refine = refine
        self.k = k
        self.buffer = history_nm[-k:].clone()  # ring buffer: frame of step s sits at s % k
        self.step_count = 0
        self.head = k - 1                      # slot of the newest frame
        self.generators = [torch.Generator().manual_seed(int(seed) * 1_000_003 + c) for c in range(chains.n_chains)]
        self.dtype = _dtype_of(dynamics)
        with torch.no_grad():
            self.embedding = dynamics.bead_embedding(chains.monomer_types, chains.fine_edges, chains.assignment,
                                                     chains.n_beads)
        self._nonbonded = chains.pairs[~chains.bonded]
        self._bead_chain = chains.bead_chain_index()
        self.failures: Dict[int, Tuple[int, str]] = {}  # chain -> (step, reason), when not stopping on failure

    @property
    def step_ps(self) -> float:
        return float(self.dynamics.step_ps)

    def history(self) -> torch.Tensor:
        """(k, beads, 3), oldest first."""
        order = [(self.head + 1 + j) % self.k for j in range(self.k)]
        return self.buffer[order]

    @property
    def positions_nm(self) -> torch.Tensor:
        return self.buffer[self.head]

    def velocities_nm_per_ps(self) -> torch.Tensor:
        """Finite-difference velocity of the last step (the one semi-implicit Euler carries)."""
        history = self.history()
        return (history[-1] - history[-2]) / self.step_ps

    def _noise(self) -> torch.Tensor:
        return torch.cat([torch.randn(count, 3, generator=g, dtype=torch.float64)
                          for g, count in zip(self.generators, self.chains.bead_counts)])

    def _problems(self, frame: torch.Tensor) -> Dict[int, str]:
        """Chain -> what is wrong with its new frame, for every chain whose frame is refused."""
        owner = self._bead_chain
        problems: Dict[int, str] = {}
        finite = torch.isfinite(frame).all(dim=1)
        for bead in torch.nonzero(~finite).flatten().tolist():
            problems.setdefault(int(owner[bead]), f"NaN/Inf position of bead {bead}")
        moved = torch.linalg.vector_norm(torch.where(finite.unsqueeze(1), frame, self.positions_nm) - self.positions_nm, dim=1)
        for bead in torch.nonzero(moved > self.checks.max_step_nm).flatten().tolist():
            problems.setdefault(int(owner[bead]), f"bead {bead} moved {float(moved[bead]):.2f} nm in one step "
                                                  f"(limit {self.checks.max_step_nm} nm)")
        if self._nonbonded.numel():
            d = torch.linalg.vector_norm(frame[self._nonbonded[:, 1]] - frame[self._nonbonded[:, 0]], dim=1)
            for pair in torch.nonzero(d < self.checks.collision_nm).flatten().tolist():
                i, j = self._nonbonded[pair].tolist()
                problems.setdefault(int(owner[i]), f"beads {i} and {j} collided: {float(d[pair]):.3f} nm apart "
                                                   f"(limit {self.checks.collision_nm} nm)")
        return problems

    def _frozen_beads(self) -> torch.Tensor:
        failed = torch.zeros(self.chains.n_chains, dtype=torch.bool)
        failed[list(self.failures)] = True
        return failed[self._bead_chain]

    def step(self, checkpoint_path=None) -> torch.Tensor:
        """Advance every chain by one learned step; returns the new frame (beads, 3) in nm."""
        history = self.history()
        with torch.no_grad():
            mean, std = self.dynamics.delta_distribution(history.to(self.dtype), self.embedding, self.chains.pairs,
                                                         self.chains.bonded)
        delta = mean.to(torch.float64) + std.to(torch.float64).unsqueeze(-1) * self._noise()
        frame = 2.0 * history[-1] - history[-2] + delta
        if self.refine is not None:
            frame = self.refine(frame, self)
        frozen = self._frozen_beads()
        frame = torch.where(frozen.unsqueeze(1), history[-1], frame)
        problems = {c: p for c, p in self._problems(frame).items() if c not in self.failures}
        if problems and self.checks.stop_on_failure:
            if checkpoint_path is not None:
                self.save_checkpoint(checkpoint_path)
            chain, problem = next(iter(sorted(problems.items())))
            raise RolloutStopped(f"learned step {self.step_count + 1} (t = {(self.step_count + 1) * self.step_ps:g} ps) "
                                 f"stopped: chain {chain}: {problem}; the last good state (step {self.step_count}) "
                                 "is kept" + (f" and saved to {checkpoint_path}" if checkpoint_path is not None else ""))
        for chain, problem in problems.items():
            self.failures[chain] = (self.step_count + 1, problem)
        frame = torch.where(self._frozen_beads().unsqueeze(1), history[-1], frame)
        self.head = (self.head + 1) % self.k
        self.buffer[self.head] = frame
        self.step_count += 1
        return frame

    def run(self, n_steps: int, report: Optional[Callable] = None, report_interval: int = 1,
            checkpoint_path=None, checkpoint_interval: int = 0, progress: bool = False,
            before_checkpoint: Optional[Callable] = None) -> None:
        """Take ``n_steps`` steps; ``report(step, frame)`` every ``report_interval`` steps; ``before_checkpoint()``
        (e.g. flushing a trajectory) before every checkpoint, so that what was reported survives a crash."""
        from tqdm.auto import tqdm

        for _ in tqdm(range(n_steps), desc="learned rollout", unit="step", disable=not progress):
            frame = self.step(checkpoint_path)
            if report is not None and self.step_count % report_interval == 0:
                report(self.step_count, frame)
            if checkpoint_path is not None and checkpoint_interval and self.step_count % checkpoint_interval == 0:
                if before_checkpoint is not None:
                    before_checkpoint()
                self.save_checkpoint(checkpoint_path)

    # -- checkpoints: history, step count, every chain's random state and the refiner's -------------
    def state(self) -> dict:
        """A refiner with its own random state (OpenMM relaxation) adds it through ``refine.state()``."""
        return {"history_nm": self.history().clone(), "step_count": self.step_count,
                "generator_states": [g.get_state() for g in self.generators],
                "sequences": list(self.chains.sequences), "failures": dict(self.failures),
                "refine_state": self.refine.state() if hasattr(self.refine, "state") else None}

    def load_state(self, state: dict) -> None:
        if list(state["sequences"]) != list(self.chains.sequences):
            raise InputError("the checkpoint holds other chains than this propagator")
        self.buffer = state["history_nm"].clone().to(torch.float64)
        self.head = self.k - 1
        self.step_count = int(state["step_count"])
        self.failures = dict(state.get("failures", {}))
        for generator, saved in zip(self.generators, state["generator_states"]):
            generator.set_state(saved)
        if state.get("refine_state") is not None and hasattr(self.refine, "load_state"):
            self.refine.load_state(state["refine_state"])

    def save_checkpoint(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        return path

    def load_checkpoint(self, path) -> None:
        self.load_state(load_plain(path, "a rollout checkpoint"))  # a crafted checkpoint cannot run code


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(iter(module.parameters())).dtype


def score_refiner(score: torch.nn.Module, config: Optional[ScoreRefinement] = None):
    """A ``refine(frame, propagator)`` that runs annealed Langevin steps with ``score``."""
    config = config or ScoreRefinement()
    embedding_cache = {}

    def refine(frame: torch.Tensor, propagator: Propagator) -> torch.Tensor:
        chains = propagator.chains
        if "embedding" not in embedding_cache:
            with torch.no_grad():
                embedding_cache["embedding"] = score.bead_embedding(chains.monomer_types, chains.fine_edges,
                                                                    chains.assignment, chains.n_beads)
        embedding = embedding_cache["embedding"]
        x = frame
        for sigma in config.noise_levels_nm:
            epsilon = config.step_scale * sigma ** 2
            for _ in range(config.steps_per_level):
                with torch.no_grad():
                    s = score(x.to(embedding.dtype), torch.tensor(sigma, dtype=embedding.dtype), embedding,
                              chains.pairs, chains.bonded).to(torch.float64)
                x = x + epsilon * s
                if config.noise:
                    x = x + np.sqrt(2.0 * epsilon) * propagator._noise()
        return x

    return refine


@dataclass
class OpenMMRelaxation:
    """A few Langevin steps of the force-matched chain potential after each learned step."""
    steps: int = 10
    timestep_ps: float = 0.02
    friction_per_ps: float = 10.0


class OpenMMRelaxer:
    """A ``refine(frame, propagator)`` that runs a few OpenMM Langevin steps (TorchForce of the chain
    potential) from the learned frame, starting from the velocities of the learned step. ``state()`` is
    an OpenMM checkpoint (random state included), so a propagator that saves it resumes bit-identically."""

    def __init__(self, tables: ChainForceTables, masses_amu: np.ndarray, bead_counts: Sequence[int],
                 temperature_K: float, config: Optional[OpenMMRelaxation] = None, seed: int = 0,
                 platform_name: str = "CPU", threads: int = 1):
        from .._runtime import langevin_integrator, openmm, openmmtorch, platform

        self.config = config or OpenMMRelaxation()
        system = openmm.System()
        for mass in masses_amu:
            system.addParticle(float(mass))
        system.addForce(openmmtorch().TorchForce(torch.jit.script(tables.potential(bead_counts))))
        self.integrator = langevin_integrator(temperature_K, self.config.friction_per_ps, self.config.timestep_ps, seed)
        self.context = openmm.Context(system, self.integrator, *platform(platform_name, threads))
        self._nanometer = openmm.unit.nanometer

    def __call__(self, frame: torch.Tensor, propagator) -> torch.Tensor:
        self.context.setPositions(frame.detach().cpu().numpy())
        self.context.setVelocities((frame - propagator.positions_nm).detach().cpu().numpy() / propagator.step_ps)
        self.integrator.step(self.config.steps)
        positions = self.context.getState(getPositions=True).getPositions(asNumpy=True)
        return torch.as_tensor(np.asarray(positions.value_in_unit(self._nanometer)), dtype=frame.dtype)

    def state(self) -> bytes:
        return self.context.createCheckpoint()

    def load_state(self, state: bytes) -> None:
        self.context.loadCheckpoint(state)
