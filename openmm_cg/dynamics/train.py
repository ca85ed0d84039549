"""Training of the learned propagator and its score network (PyTorch Lightning); ``workflows.train_propagator``
writes their model files.

Samples are windows of one chain's CG trajectory: k history frames ``stride`` reference frames apart
and the frame one step after them. The dynamics network is fitted by the Gaussian negative
log-likelihood of delta = x_{t+1} - 2 x_t + x_{t-1}; the history is perturbed with Gaussian noise
(and the target recomputed from the perturbed frames, so the model learns to steer back onto the
data) because a rollout feeds the model its own imperfect frames. The score network is fitted by
denoising score matching on single frames at the configured noise levels. Chains are split into
train / validation / test sets; only train chains are seen in training.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..outputs import RunFolder
from ..training.lightning import fit, lightning, load_state_dict, loader, make_trainer
from .chains import ChainBatch, build_chain_batch
from .data import PolymerCGData, split_chains
from .model import DYNAMICS, DYNAMICS_KIND, SCORE, SCORE_KIND, CGDynamics, DynamicsConfig, ScoreNetwork

# Settings a resumed run may change.
RESUMABLE_CHANGES = ("max_epochs", "max_time_minutes", "output")


@dataclass
class DynamicsTrainConfig:
    data: str = ""                       # PolymerCGData .h5
    output: str = "runs/polymers/dynamics"
    seed: int = 0
    split_fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2)
    stride_frames: int = 5               # learned step = stride_frames x the data's frame interval
    model: DynamicsConfig = field(default_factory=DynamicsConfig)
    input_noise_nm: float = 0.01
    windows_per_batch: int = 32
    windows_per_epoch: int = 16384
    validation_windows: int = 2048
    max_epochs: int = 30
    learning_rate: float = 1e-3
    max_time_minutes: Optional[float] = None
    early_stopping_patience: int = 5
    export_dtype: str = "float32"        # rollouts run in this precision (float32: ~2x faster on CPU)


@dataclass
class WindowBatch:
    chains: ChainBatch
    history_nm: torch.Tensor   # (k, beads, 3)
    next_nm: torch.Tensor      # (beads, 3)


class Windows(torch.utils.data.Dataset):
    """Every (chain, last history frame) of the given chains."""

    def __init__(self, data: PolymerCGData, chain_ids, k: int, stride: int, monomer_types: List[str]):
        self.data, self.k, self.stride, self.monomer_types = data, k, stride, monomer_types
        span = (k - 1) * stride
        self.index = [(c, t) for c in chain_ids for t in range(span, len(data.chains[c].positions_nm) - stride)]
        if not self.index:
            raise InputError(f"no training windows: trajectories are shorter than {k} frames of stride {stride}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int):
        return self.index[item]

    def collate(self, items) -> WindowBatch:
        histories, nexts, sequences = [], [], []
        for c, t in items:
            chain = self.data.chains[c]
            frames = np.arange(t - (self.k - 1) * self.stride, t + 1, self.stride)
            histories.append(chain.positions_nm[frames])
            nexts.append(chain.positions_nm[t + self.stride])
            sequences.append(chain.sequence)
        batch = build_chain_batch(sequences, self.monomer_types, self.data.particles_per_bead)
        return WindowBatch(batch, torch.as_tensor(np.concatenate(histories, axis=1), dtype=torch.float32),
                           torch.as_tensor(np.concatenate(nexts), dtype=torch.float32))


@dataclass
class TrainedPropagator:
    """Both trained networks in memory with the metadata of their model files (``kind`` set by the caller's
    choice of file) and the training summary; ``export.save_model`` writes them."""
    dynamics: CGDynamics
    score: ScoreNetwork
    metadata: dict
    summary: dict
    run_dir: Path

    def dynamics_metadata(self) -> dict:
        return dict(self.metadata, kind=DYNAMICS_KIND, model_kind=DYNAMICS.name)

    def score_metadata(self) -> dict:
        return dict(self.metadata, kind=SCORE_KIND, model_kind=SCORE.name)


class DynamicsTraining(lightning().LightningModule):
    def __init__(self, dynamics: CGDynamics, score: ScoreNetwork, input_noise_nm: float,
                 noise_levels_nm: Tuple[float, ...], learning_rate: float):
        super().__init__()
        self.dynamics, self.score = dynamics, score
        self.input_noise_nm, self.noise_levels_nm, self.learning_rate = input_noise_nm, noise_levels_nm, learning_rate

    def transfer_batch_to_device(self, batch: WindowBatch, device, dataloader_idx):
        c = batch.chains
        moved = ChainBatch(c.sequences, c.monomer_types.to(device), c.fine_edges.to(device), c.assignment.to(device),
                           c.bead_offsets, c.bead_counts, c.pairs.to(device), c.bonded.to(device))
        return WindowBatch(moved, batch.history_nm.to(device), batch.next_nm.to(device))

    def losses(self, batch: WindowBatch, noisy: bool):
        c = batch.chains
        history = batch.history_nm
        if noisy and self.input_noise_nm > 0:
            history = history + self.input_noise_nm * torch.randn_like(history)
        target = batch.next_nm - 2.0 * history[-1] + history[-2]
        embedding = self.dynamics.bead_embedding(c.monomer_types, c.fine_edges, c.assignment, c.n_beads)
        mean, std = self.dynamics.delta_distribution(history, embedding, c.pairs, c.bonded)
        nll = (0.5 * ((target - mean) / std.unsqueeze(-1)) ** 2 + torch.log(std).unsqueeze(-1)).mean()
        rmse = torch.sqrt(((target - mean) ** 2).mean())
        sigma = torch.tensor(self.noise_levels_nm, dtype=history.dtype, device=history.device)[
            torch.randint(len(self.noise_levels_nm), (1,)).item()]
        z = torch.randn_like(batch.history_nm[-1])
        score_embedding = self.score.bead_embedding(c.monomer_types, c.fine_edges, c.assignment, c.n_beads)
        s = self.score(batch.history_nm[-1] + sigma * z, sigma, score_embedding, c.pairs, c.bonded)
        dsm = ((sigma * s + z) ** 2).mean()
        return nll, rmse, dsm

    def training_step(self, batch, batch_idx):
        nll, rmse, dsm = self.losses(batch, noisy=True)
        size = batch.chains.n_chains
        self.log_dict({"train_nll": nll, "train_dsm": dsm}, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return nll + dsm

    def validation_step(self, batch, batch_idx):
        nll, rmse, dsm = self.losses(batch, noisy=False)
        size = batch.chains.n_chains
        self.log_dict({"val_nll": nll, "val_delta_rmse_nm": rmse, "val_dsm": dsm, "val_loss": nll + dsm},
                      on_step=False, on_epoch=True, prog_bar=True, batch_size=size)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2, min_lr=1e-5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def train_dynamics(config: DynamicsTrainConfig, resume: bool = False, overwrite: bool = False,
                   progress: bool = True) -> TrainedPropagator:
    """Train both networks on the train chains of ``config.data`` in the run folder ``config.output``."""
    data = PolymerCGData.load(config.data)
    run = RunFolder.open(config.output, "dynamics-training", asdict(config), {"data": config.data}, resume=resume,
                         overwrite=overwrite, mutable=RESUMABLE_CHANGES)
    lightning().seed_everything(config.seed, workers=True, verbose=False)
    train_ids, val_ids, test_ids = split_chains(len(data.chains), config.split_fractions, config.seed)
    step_ps = config.stride_frames * data.frame_interval_ps
    k = config.model.history
    types = list(data.monomer_types)
    dynamics = CGDynamics(config.model, len(types), step_ps)
    score = ScoreNetwork(config.model, len(types))
    task = DynamicsTraining(dynamics, score, config.input_noise_nm, tuple(config.model.score_noise_levels_nm),
                            config.learning_rate)
    train_windows = Windows(data, train_ids, k, config.stride_frames, types)
    val_windows = Windows(data, val_ids, k, config.stride_frames, types)
    train_loader = loader(train_windows, config.windows_per_batch, True, config.seed, train_windows.collate,
                          num_samples=config.windows_per_epoch, loader_draws_seed=False)
    val_items = np.random.default_rng(config.seed).choice(len(val_windows), min(config.validation_windows, len(val_windows)),
                                                          replace=False)
    val_loader = loader(torch.utils.data.Subset(val_windows, sorted(val_items.tolist())), 4 * config.windows_per_batch,
                        False, config.seed, val_windows.collate, loader_draws_seed=False)
    trainer = make_trainer(run, "val_loss", config.max_epochs, config.early_stopping_patience,
                           config.max_time_minutes, progress, devices=1)
    best = fit(trainer, task, train_loader, val_loader, run, resume)
    task.load_state_dict(load_state_dict(best))
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    summary = {"train_chains": [int(i) for i in train_ids], "validation_chains": [int(i) for i in val_ids],
               "test_chains": [int(i) for i in test_ids], "step_ps": step_ps, "history": k,
               "epochs_run": int(trainer.current_epoch), "last_metrics": metrics, "best_checkpoint": str(best)}
    metadata = {"format_version": 1, "step_ps": step_ps, "history": k, "cutoff_nm": config.model.cutoff_nm,
                "units": {"positions": "nm", "time": "ps", "delta": "nm (acceleration * step^2)"},
                "particles_per_bead": data.particles_per_bead, "monomer_types": types,
                "frame_interval_ps": data.frame_interval_ps, "stride_frames": config.stride_frames,
                "temperature_K": data.temperature_K, "model_config": asdict(config.model),
                "training": {"config": asdict(config), "summary": summary}}
    run.write_json("summary.json", summary)
    return TrainedPropagator(task.dynamics.eval(), task.score.eval(), metadata, summary, run.path)


def load_dynamics_config(path, **overrides) -> DynamicsTrainConfig:
    """A DynamicsTrainConfig from YAML (unknown keys are errors); ``overrides`` replace top-level fields."""
    import yaml

    from ..training.config import dataclass_from_dict

    data = yaml.safe_load(Path(path).read_text()) or {}
    data.update(overrides)
    return dataclass_from_dict(DynamicsTrainConfig, data, "")
