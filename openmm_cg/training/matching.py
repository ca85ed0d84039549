"""What force matching of any potential shares: the Lightning task, its throughput meter, the prior forces that
are subtracted from the data, the trained model in memory and its checkpoints."""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..priors.terms import PriorEnergy, PriorParameters
from .lightning import lightning, load_state_dict

# Settings a resumed run may change: none changes what the network is trained on (the folder may be moved).
RESUMABLE_CHANGES = ("training.max_epochs", "data.validation_frame_stride", "output")


@dataclass
class TrainedModel:
    """A trained potential in memory: the module, the metadata of its model file, the training summary and
    the run folder it was trained in. Writing the model file is ``export.save_model``'s job."""
    module: torch.nn.Module
    metadata: dict
    summary: dict
    run_dir: Path


def prior_forces(params: PriorParameters, positions_nm: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    prior = PriorEnergy(params).double()
    out = []
    for start in range(0, len(positions_nm), chunk):
        x = torch.as_tensor(positions_nm[start:start + chunk], dtype=torch.float64).requires_grad_(True)
        (grad,) = torch.autograd.grad(prior(x).sum(), x)
        out.append((-grad).numpy().astype(np.float32))
    return np.concatenate(out)


class ForceMatching(lightning().LightningModule):
    """Trains ``model.network`` on delta forces: loss = mean over beads and components of squared error, or
    ``loss(model, batch, create_graph)`` (batches of several molecules, ``molecules.graph_loss``)."""

    def __init__(self, model: torch.nn.Module, learning_rate: float, weight_decay: float, lr_factor: float,
                 lr_patience: int, min_learning_rate: float, loss=None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.save_hyperparameters(ignore=["model", "loss"])

    def _loss(self, batch):
        if self.loss is not None:
            return self.loss(self.model, batch, self.training)
        positions, *extras, delta_forces = batch  # periodic data: boxes, then temperatures if the model takes T
        with torch.enable_grad():
            positions = positions.requires_grad_(True)
            energy = self.model.network_energy(positions, *extras)
            (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training)
        return ((-grad - delta_forces) ** 2).mean()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_mse", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._frames(batch))
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("val_mse", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=self._frames(batch))

    def _frames(self, batch) -> int:
        """Frames in a batch (epoch means weigh batches by it): graph batches carry each bead's frame."""
        return int(batch[3].max()) + 1 if self.loss is not None else len(batch[0])

    def on_train_epoch_end(self):
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.lr_factor, patience=hp.lr_patience, min_lr=hp.min_learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_mse"}}


class Throughput(lightning().Callback):
    """Training frames per second, measured over the training epochs (validation excluded)."""

    def __init__(self):
        self.frames, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds += time.perf_counter() - self._start
        self.frames += len(trainer.train_dataloader.dataset)


def load_checkpoint(model, checkpoint_path):
    state = load_state_dict(checkpoint_path)
    model.load_state_dict({key[len("model."):]: value for key, value in state.items() if key.startswith("model.")})
    return model.cpu().eval()
