"""Force-matching training with PyTorch Lightning.

The priors are fitted on the training trajectories first; the network is trained on what is left
(delta forces = mapped forces - prior forces), which is the same loss as matching the full model's
forces to the mapped forces but avoids differentiating the priors at every step. Frames are split
into training and validation by trajectory.
"""
import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import CGDataset, trajectory_split
from ..errors import InputError, OutputExistsError
from ..export import export_model, model_metadata
from ..nn.potential import CGPotentialModule
from ..outputs import write_json
from ..priors.fit import fit_priors
from ..priors.terms import PriorEnergy, PriorParameters
from .config import TrainConfig, save_config


def prior_forces(params: PriorParameters, positions_nm: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    prior = PriorEnergy(params).double()
    out = []
    for start in range(0, len(positions_nm), chunk):
        x = torch.as_tensor(positions_nm[start:start + chunk], dtype=torch.float64).requires_grad_(True)
        (grad,) = torch.autograd.grad(prior(x).sum(), x)
        out.append((-grad).numpy().astype(np.float32))
    return np.concatenate(out)


def _lightning():
    import lightning.pytorch as pl

    return pl


class ForceMatching(_lightning().LightningModule):
    """Trains ``model.network`` on delta forces: loss = mean over beads and components of squared error."""

    def __init__(self, model: CGPotentialModule, learning_rate: float, weight_decay: float, lr_factor: float,
                 lr_patience: int, min_learning_rate: float):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def _loss(self, batch):
        positions, delta_forces = batch
        with torch.enable_grad():
            positions = positions.requires_grad_(True)
            energy = self.model.network_energy(positions)
            (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training)
        return ((-grad - delta_forces) ** 2).mean()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_mse", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("val_mse", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))

    def on_train_epoch_end(self):
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.lr_factor, patience=hp.lr_patience, min_lr=hp.min_learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_mse"}}


class _Throughput(_lightning().Callback):
    """Training frames per second, measured over the training epochs (validation excluded)."""

    def __init__(self):
        self.frames, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds += time.perf_counter() - self._start
        self.frames += len(trainer.train_dataloader.dataset)


def _loader(positions, forces, batch_size: int, shuffle: bool, seed: int):
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(positions), torch.as_tensor(forces))
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _prepare_output(output: Path, config: TrainConfig, resume: bool, overwrite: bool) -> Path:
    saved = output / "config.yaml"
    if output.exists() and any(output.iterdir()):
        if overwrite:
            import shutil

            shutil.rmtree(output)
        elif not resume:
            raise OutputExistsError(f"{output} already holds a training run; pass resume=True (--resume) to continue "
                                    "it or overwrite=True (--overwrite) to start again")
        elif saved.exists():
            from .config import load_config

            previous = asdict(load_config(saved))
            current = asdict(config)
            previous["training"].pop("max_epochs"), current["training"].pop("max_epochs")
            if previous != current:
                raise InputError(f"{output} was trained with a different config; resume needs the same settings "
                                 "(only training.max_epochs may change)")
    output.mkdir(parents=True, exist_ok=True)
    return output


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Fit priors, train the network, export ``model.pt``; returns the summary written to ``summary.json``."""
    pl = _lightning()
    config.validate()
    output = _prepare_output(Path(config.output), config, resume, overwrite)
    save_config(config, output / "config.yaml")
    pl.seed_everything(config.seed, workers=True, verbose=False)

    dataset = CGDataset.load(config.data.dataset)
    stride = max(1, int(config.data.frame_stride))
    train_ids, val_ids = trajectory_split(dataset, config.data.validation_fraction, config.seed)
    train_set, val_set = dataset.select_trajectories(train_ids), dataset.select_trajectories(val_ids)
    mapping = dataset.mapping

    priors_path = output / "priors.json"
    if priors_path.exists():
        params = PriorParameters.from_dict(json.loads(priors_path.read_text()))
    else:
        p = config.priors
        params = fit_priors(train_set.positions_nm, mapping.cg_bonds, dataset.temperature_K, p.n_dihedral_terms,
                            p.angles, p.dihedrals, p.repulsion)
        write_json(priors_path, params.to_dict())

    def delta(subset):
        x = subset.positions_nm[::stride]
        return x, subset.forces_kJ_per_mol_nm[::stride] - prior_forces(params, x)

    x_train, f_train = delta(train_set)
    x_val, f_val = delta(val_set)
    # Energy scale: force magnitude times a typical bead displacement (0.1 nm) keeps raw outputs O(1).
    energy_scale = float(np.std(f_train)) * 0.1
    schnet = config.model.cgschnet
    model = CGPotentialModule(mapping.bead_types, params, schnet, n_types=len(mapping.type_names),
                              energy_scale_kJ_per_mol=energy_scale)
    opt = config.training
    task = ForceMatching(model, opt.learning_rate, opt.weight_decay, opt.lr_factor, opt.lr_patience,
                         opt.min_learning_rate)

    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=output / "checkpoints", monitor="val_mse", mode="min",
                                              save_last=True, filename="best")
    throughput = _Throughput()
    callbacks = [checkpoint, throughput,
                 pl.callbacks.EarlyStopping(monitor="val_mse", patience=opt.early_stopping_patience, mode="min")]
    if progress:
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=20))
    trainer = pl.Trainer(
        max_epochs=opt.max_epochs, accelerator=opt.accelerator, devices=opt.devices, callbacks=callbacks,
        # A new version folder per (re)start: Lightning's CSV writer would overwrite earlier epochs.
        logger=pl.loggers.CSVLogger(output, name="metrics"), default_root_dir=output,
        enable_progress_bar=progress, enable_model_summary=False, deterministic=False,
        max_time={"minutes": opt.max_time_minutes} if opt.max_time_minutes else None,
        num_sanity_val_steps=0, log_every_n_steps=50,
    )
    last = output / "checkpoints" / "last.ckpt"
    trainer.fit(task, _loader(x_train, f_train, opt.batch_size, True, config.seed),
                _loader(x_val, f_val, max(opt.batch_size, 1024), False, config.seed),
                ckpt_path=str(last) if (resume and last.exists()) else None)

    best = checkpoint.best_model_path or str(last)
    model = _load_checkpoint(model, best)
    val_mse = _mse(model, x_val, f_val)
    summary = {
        "train_frames": int(len(x_train)), "validation_frames": int(len(x_val)),
        "train_trajectories": [dataset.trajectory_names[i] for i in train_ids],
        "validation_trajectories": [dataset.trajectory_names[i] for i in val_ids],
        "epochs_run": int(trainer.current_epoch),
        "validation_force_rmse_kJ_per_mol_nm": float(np.sqrt(val_mse)),
        "validation_force_rmse_prior_only_kJ_per_mol_nm": float(np.sqrt(np.mean(f_val.astype(np.float64) ** 2))),
        "training_frames_per_second": throughput.frames / throughput.seconds if throughput.seconds else None,
        "peak_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "best_checkpoint": str(best),
    }
    write_json(output / "summary.json", summary)
    summary["model"] = str(export_run(output, output / "model.pt", dtype=opt.export_dtype, overwrite=True))
    write_json(output / "summary.json", summary)
    return summary


def _load_checkpoint(model: CGPotentialModule, checkpoint_path) -> CGPotentialModule:
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({key[len("model."):]: value for key, value in state.items() if key.startswith("model.")})
    return model.cpu().eval()


def export_run(run_dir, path, dtype: str = "float32", checkpoint: str = "best", overwrite: bool = False):
    """Export the model of a training run folder (its best or last checkpoint) as one ``.pt``."""
    from .config import load_config

    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    for needed in (run_dir / "config.yaml", run_dir / "priors.json", checkpoint_path):
        if not needed.exists():
            raise InputError(f"{run_dir} is not a finished training run: {needed.name} is missing")
    config = load_config(run_dir / "config.yaml")
    dataset = CGDataset.load(config.data.dataset)
    params = PriorParameters.from_dict(json.loads((run_dir / "priors.json").read_text()))
    mapping = dataset.mapping
    model = CGPotentialModule(mapping.bead_types, params, config.model.cgschnet, n_types=len(mapping.type_names))
    model = _load_checkpoint(model, checkpoint_path)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metadata = model_metadata(model, mapping.to_dict(), params, config.model.cgschnet, [dataset.temperature_K],
                              dataset.data_hash(), extra={"training": {"config": asdict(config), "summary": summary},
                                                          "example_positions_nm": dataset.positions_nm[0].tolist()})
    return export_model(model, metadata, path, dtype=dtype, overwrite=overwrite)


def _mse(model: CGPotentialModule, x: np.ndarray, f_delta: np.ndarray, chunk: int = 4096) -> float:
    total, count = 0.0, 0
    for start in range(0, len(x), chunk):
        positions = torch.as_tensor(x[start:start + chunk]).requires_grad_(True)
        energy = model.network_energy(positions)
        (grad,) = torch.autograd.grad(energy.sum(), positions)
        total += float(((-grad.detach().numpy() - f_delta[start:start + chunk]) ** 2).sum())
        count += f_delta[start:start + chunk].size
    return total / count
