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
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data.datasets import CGDataset, trajectory_split
from ..errors import InputError
from ..mapping.cgmap import repeat_unit
from ..nn.kinds import potential_metadata
from ..nn.periodic import PeriodicCGPotentialModule
from ..nn.potential import CGPotentialModule
from ..outputs import RunFolder
from ..priors.fit import fit_priors
from ..priors.pair import PairPriorParameters, fit_pair_repulsion_to_frames, max_rdf_range_nm
from ..priors.terms import PriorParameters
from .config import TrainConfig, load_config
from .lightning import fit, lightning, loader, make_trainer
from .matching import RESUMABLE_CHANGES, ForceMatching, Throughput, TrainedModel, load_checkpoint, prior_forces
from .molecules import load_trained_typed, train_typed



def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainedModel:
    """Fit priors and train the network in the run folder ``config.output``; returns the trained model in memory
    (its summary is also written to ``summary.json``)."""
    config.validate()
    if config.model.typed:
        return train_typed(config, resume, overwrite, progress)
    paths = config.data.paths()
    datasets = load_datasets(paths)
    splits = [trajectory_split(d, config.data.validation_fraction, config.seed) for d in datasets]
    mapping, periodic = datasets[0].mapping, datasets[0].periodic
    network_config = config.model.network()
    if periodic:
        check_cutoff_fits_boxes(network_config.cutoff_nm, datasets, paths)
    temperature_reference = temperature_reference_K(config, datasets)
    # Only now, with the data and settings checked, is the run folder created, continued or replaced.
    run = RunFolder.open(config.output, "training", asdict(config), {f"dataset {k}": p for k, p in enumerate(paths)},
                         resume=resume, overwrite=overwrite, mutable=RESUMABLE_CHANGES)
    lightning().seed_everything(config.seed, workers=True, verbose=False)

    stride = max(1, int(config.data.frame_stride))
    train_sets = [d.select_trajectories(t) for d, (t, _) in zip(datasets, splits)]
    val_sets = [d.select_trajectories(v) for d, (_, v) in zip(datasets, splits)]

    priors_path = run.path / "priors.json"
    if priors_path.exists():
        params = _read_priors(priors_path, periodic)
    else:
        params = _fit_priors(config, train_sets[0], network_config.cutoff_nm)
        run.write_json("priors.json", params.to_dict() if params is not None else {})

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
    trainer = make_trainer(run, "val_mse", opt.max_epochs, opt.early_stopping_patience, opt.max_time_minutes,
                           progress, opt.accelerator, opt.devices)
    throughput = Throughput()
    trainer.callbacks.append(throughput)
    best = fit(trainer, task, _loader(train_arrays, opt.batch_size, True, config.seed),
               _loader(val_arrays, _evaluation_batch(opt.batch_size, periodic), False, config.seed), run, resume)
    model = load_checkpoint(model, best)
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
    run.write_json("summary.json", summary)
    return TrainedModel(model, _metadata(model, config, datasets, summary), summary, run.path)


def load_trained(run_dir, checkpoint: str = "best") -> TrainedModel:
    """The model of a training run folder at its best or last checkpoint, rebuilt from the folder."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise InputError("checkpoint must be 'best' or 'last'")
    checkpoint_path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    # Runs written before run folders had manifests saved their config as config.yaml.
    config_path = next((p for p in (run_dir / "config.json", run_dir / "config.yaml") if p.exists()),
                       run_dir / "config.json")
    for needed in (config_path, run_dir / "priors.json", checkpoint_path):
        if not needed.exists():
            raise InputError(f"{run_dir} is not a finished training run: {needed.name} is missing")
    config = load_config(config_path)
    if config.model.typed:
        return load_trained_typed(run_dir, config, checkpoint_path)
    datasets = load_datasets(config.data.paths())
    periodic = datasets[0].periodic
    params = _read_priors(run_dir / "priors.json", periodic)
    model = load_checkpoint(_build_model(datasets[0].mapping, periodic, params, config.model.network(),
                                          temperature_reference=temperature_reference_K(config, datasets)),
                             checkpoint_path)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return TrainedModel(model, _metadata(model, config, datasets, summary), summary, run_dir)


def _metadata(model, config: TrainConfig, datasets, summary: dict) -> dict:
    mapping_dict, extra = datasets[0].model_description()
    extra["training"] = {"config": asdict(config), "summary": summary}
    hashes = [d.data_hash() for d in datasets]
    data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    return potential_metadata(model, mapping_dict, [d.temperature_K for d in datasets], data_hash, extra)


def load_datasets(paths) -> list:
    """CG datasets that one model can be trained on together: same mapping, all periodic or none."""
    datasets = [CGDataset.load(p) for p in paths]
    first = datasets[0]
    for path, dataset in zip(paths[1:], datasets[1:]):
        if dataset.mapping.bead_types != first.mapping.bead_types or dataset.mapping.bead_names != first.mapping.bead_names:
            raise InputError(f"{path} was mapped differently from {paths[0]}: one model is trained on one mapping "
                             "(a model of several molecules is a typed model: set model.typed: true)")
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
    return fit_pair_repulsion_to_frames(reference.positions_nm, reference.box_vectors_nm, reference.temperature_K,
                                        cutoff_nm)


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


def _loader(arrays, batch_size: int, shuffle: bool, seed: int):
    return loader(torch.utils.data.TensorDataset(*(torch.as_tensor(a) for a in arrays)), batch_size, shuffle, seed)


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
