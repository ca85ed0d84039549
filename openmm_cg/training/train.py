"""Force-matching training with PyTorch Lightning.

The priors are fitted on the training trajectories first; the network is trained on what is left
(delta forces = mapped forces - prior forces), which is the same loss as matching the full model's
forces to the mapped forces but avoids differentiating the priors at every step. Frames are split
into training and validation by trajectory.

Several datasets (one per state point, e.g. temperature) may be trained together; each is split by
its own trajectories, and the priors are fitted on the first one listed. Periodic datasets (liquids)
train a ``PeriodicCGPotentialModule``: the pair repulsion is fitted at the onset of the training RDF and
every batch carries its frames' box vectors.
"""
import hashlib
import json
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..analysis.liquid import max_rdf_range_nm, radial_distribution
from ..data.datasets import CGDataset, trajectory_split
from ..errors import InputError, OutputExistsError
from ..export import export_model, liquid_model_description, model_metadata
from ..mapping.cgmap import repeat_unit
from ..nn.periodic import TEMPERATURE_PARAMETER, PeriodicCGPotentialModule
from ..nn.potential import CGPotentialModule
from ..outputs import write_json
from ..priors.fit import fit_priors
from ..priors.pair import PairPriorParameters, fit_pair_repulsion
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
        positions, *extras, delta_forces = batch  # periodic data: boxes, then temperatures if the model takes T
        with torch.enable_grad():
            positions = positions.requires_grad_(True)
            energy = self.model.network_energy(positions, *extras)
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


def _loader(arrays, batch_size: int, shuffle: bool, seed: int):
    dataset = torch.utils.data.TensorDataset(*(torch.as_tensor(a) for a in arrays))
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
            for settings in (previous, current):  # neither changes what the network is trained on
                settings["training"].pop("max_epochs"), settings["data"].pop("validation_frame_stride")
            if previous != current:
                raise InputError(f"{output} was trained with a different config; resume needs the same settings "
                                 "(only training.max_epochs and data.validation_frame_stride may change)")
    output.mkdir(parents=True, exist_ok=True)
    return output


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Fit priors, train the network, export ``model.pt``; returns the summary written to ``summary.json``."""
    pl = _lightning()
    config.validate()
    output = _prepare_output(Path(config.output), config, resume, overwrite)
    save_config(config, output / "config.yaml")
    pl.seed_everything(config.seed, workers=True, verbose=False)

    paths = config.data.paths()
    datasets = load_datasets(paths)
    stride = max(1, int(config.data.frame_stride))
    splits = [trajectory_split(d, config.data.validation_fraction, config.seed) for d in datasets]
    train_sets = [d.select_trajectories(t) for d, (t, _) in zip(datasets, splits)]
    val_sets = [d.select_trajectories(v) for d, (_, v) in zip(datasets, splits)]
    mapping, periodic = datasets[0].mapping, datasets[0].periodic
    network_config = config.model.network()
    if periodic:
        check_cutoff_fits_boxes(network_config.cutoff_nm, datasets, paths)
    temperature_reference = temperature_reference_K(config, datasets)

    priors_path = output / "priors.json"
    if priors_path.exists():
        params = _read_priors(priors_path, periodic)
    else:
        params = _fit_priors(config, train_sets[0], network_config.cutoff_nm)
        write_json(priors_path, params.to_dict() if params is not None else {})

    with_temperatures = temperature_reference is not None
    train_arrays = _delta_arrays(params, train_sets, stride, with_temperatures)
    val_arrays = _delta_arrays(params, val_sets, stride * max(1, int(config.data.validation_frame_stride)),
                               with_temperatures)
    x_train, x_val, f_val = train_arrays[0], val_arrays[0], val_arrays[-1]
    # Energy scale: force magnitude times a typical bead displacement (0.1 nm) keeps raw outputs O(1).
    energy_scale = float(np.std(train_arrays[-1])) * 0.1
    model = _build_model(mapping, periodic, params, network_config, energy_scale, temperature_reference)
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
    trainer.fit(task, _loader(train_arrays, opt.batch_size, True, config.seed),
                _loader(val_arrays, _evaluation_batch(opt.batch_size, periodic), False, config.seed),
                ckpt_path=str(last) if (resume and last.exists()) else None)

    best = checkpoint.best_model_path or str(last)
    model = _load_checkpoint(model, best)
    val_mse = _mse(model, val_arrays)

    def names(part):
        return [f"{d.temperature_K:g}K/{d.trajectory_names[i]}" if len(datasets) > 1 else d.trajectory_names[i]
                for d, split in zip(datasets, splits) for i in split[part]]

    summary = {
        "train_frames": int(len(x_train)), "validation_frames": int(len(x_val)),
        "temperatures_K": [d.temperature_K for d in datasets],
        "train_trajectories": names(0), "validation_trajectories": names(1),
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


def load_datasets(paths) -> list:
    """CG datasets that one model can be trained on together: same mapping, all periodic or none."""
    datasets = [CGDataset.load(p) for p in paths]
    first = datasets[0]
    for path, dataset in zip(paths[1:], datasets[1:]):
        if dataset.mapping.bead_types != first.mapping.bead_types or dataset.mapping.bead_names != first.mapping.bead_names:
            raise InputError(f"{path} was mapped differently from {paths[0]}: one model is trained on one mapping")
        if dataset.periodic != first.periodic:
            raise InputError(f"{path} and {paths[0]}: periodic and non-periodic data cannot be trained together")
    return datasets


def temperature_reference_K(config: TrainConfig, datasets) -> Optional[float]:
    """T_ref of a temperature-aware model (the mean training temperature), or None for a plain model."""
    if not config.model.temperature_input:
        return None
    temperatures = sorted({float(d.temperature_K) for d in datasets})
    if not datasets[0].periodic:
        raise InputError("model.temperature_input is for periodic (liquid) models")
    if len(temperatures) < 2:
        raise InputError(f"model.temperature_input needs datasets at two or more temperatures (got {temperatures} K): "
                         "a single temperature cannot show how the potential changes with T")
    return float(np.mean(temperatures))


def check_cutoff_fits_boxes(cutoff_nm: float, datasets, paths) -> None:
    for path, dataset in zip(paths, datasets):
        limit = max_rdf_range_nm(dataset.box_vectors_nm)
        if cutoff_nm > limit:
            raise InputError(f"cutoff {cutoff_nm} nm exceeds half the smallest box height of {path} ({limit:.3f} nm): "
                             "the minimum image would miss neighbours; lower the network's cutoff_nm")


def _fit_priors(config: TrainConfig, reference: CGDataset, cutoff_nm: float):
    p = config.priors
    if not reference.periodic:
        return fit_priors(reference.positions_nm, reference.mapping.cg_bonds, reference.temperature_K,
                          p.n_dihedral_terms, p.angles, p.dihedrals, p.repulsion)
    if not p.repulsion:
        return None
    frames = np.linspace(0, reference.n_frames - 1, min(reference.n_frames, 1000)).astype(int)
    rdf = radial_distribution(reference.positions_nm[frames], reference.box_vectors_nm[frames], cutoff_nm, n_bins=400)
    try:
        return fit_pair_repulsion(rdf.r_nm, rdf.g, reference.temperature_K, cutoff_nm)
    except ValueError as error:
        raise InputError(f"pair repulsion prior: {error}") from None


def _read_priors(path: Path, periodic: bool):
    data = json.loads(path.read_text())
    if periodic:
        return PairPriorParameters.from_dict(data) if data else None
    return PriorParameters.from_dict(data)


def _build_model(mapping, periodic: bool, params, network_config, energy_scale: float = 1.0,
                 temperature_reference: Optional[float] = None):
    if periodic:
        unit = repeat_unit(mapping)
        return PeriodicCGPotentialModule(unit["bead_types"], params, network_config, n_types=len(mapping.type_names),
                                         energy_scale_kJ_per_mol=energy_scale,
                                         temperature_reference_K=temperature_reference)
    return CGPotentialModule(mapping.bead_types, params, network_config, n_types=len(mapping.type_names),
                             energy_scale_kJ_per_mol=energy_scale)


def _delta_arrays(params, subsets, stride: int, with_temperatures: bool = False, chunk: int = 256):
    """(positions, [boxes, [temperatures,]] mapped forces - prior forces) of every frame of ``subsets``."""
    x = np.concatenate([s.positions_nm[::stride] for s in subsets])
    f = np.concatenate([s.forces_kJ_per_mol_nm[::stride] for s in subsets])
    if not subsets[0].periodic:
        return x, f - prior_forces(params, x)
    boxes = np.concatenate([s.box_vectors_nm[::stride] for s in subsets]).astype(np.float32)
    if params is not None:
        prior = _build_model(subsets[0].mapping, True, params, None).double()
        for start in range(0, len(x), chunk):
            positions = torch.as_tensor(x[start:start + chunk], dtype=torch.float64).requires_grad_(True)
            energy = prior.energy_batch(positions, torch.as_tensor(boxes[start:start + chunk], dtype=torch.float64))
            (grad,) = torch.autograd.grad(energy.sum(), positions)
            f[start:start + chunk] += grad.numpy().astype(np.float32)
    if with_temperatures:
        temperatures = np.concatenate([np.full(len(s.positions_nm[::stride]), s.temperature_K, np.float32)
                                       for s in subsets])
        return x, boxes, temperatures, f
    return x, boxes, f


def _load_checkpoint(model, checkpoint_path):
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
    datasets = load_datasets(config.data.paths())
    first, periodic = datasets[0], datasets[0].periodic
    params = _read_priors(run_dir / "priors.json", periodic)
    temperature_reference = temperature_reference_K(config, datasets)
    model = _load_checkpoint(_build_model(first.mapping, periodic, params, config.model.network(),
                                          temperature_reference=temperature_reference), checkpoint_path)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if periodic:
        mapping_dict, extra = liquid_model_description(first)
    else:
        mapping_dict, extra = first.mapping.to_dict(), {"example_positions_nm": first.positions_nm[0].tolist()}
    extra["training"] = {"config": asdict(config), "summary": summary}
    if temperature_reference is not None:
        extra["temperature_input"] = {"global_parameter": TEMPERATURE_PARAMETER, "reference_K": temperature_reference}
    hashes = [d.data_hash() for d in datasets]
    data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    metadata = model_metadata(model, mapping_dict, params, config.model.network(),
                              [d.temperature_K for d in datasets], data_hash, extra=extra)
    return export_model(model, metadata, path, dtype=dtype, overwrite=overwrite)


def _evaluation_batch(batch_size: int, periodic: bool) -> int:
    """Frames per validation batch: large for small molecules; a liquid frame has thousands of pairs and its
    activations for 1024 frames would take tens of GB."""
    return 4 * batch_size if periodic else max(batch_size, 1024)


def _mse(model, arrays) -> float:
    total, count = 0.0, 0
    *inputs, f_delta = arrays
    chunk = _evaluation_batch(64, len(inputs) > 1)
    for start in range(0, len(f_delta), chunk):
        positions = torch.as_tensor(inputs[0][start:start + chunk]).requires_grad_(True)
        extras = [torch.as_tensor(b[start:start + chunk]) for b in inputs[1:]]  # boxes, temperatures
        energy = model.network_energy(positions, *extras)
        (grad,) = torch.autograd.grad(energy.sum(), positions)
        total += float(((-grad.detach().numpy() - f_delta[start:start + chunk]) ** 2).sum())
        count += f_delta[start:start + chunk].size
    return total / count
