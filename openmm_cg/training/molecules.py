"""Force matching of one typed (transferable) model on several molecules.

Each dataset is one molecule (its name is the file's stem), all at one state point. The molecules listed in
``data.held_out_molecules`` are kept out of everything (priors, training, validation) and judged at the end;
every other molecule is split into training and validation by its trajectories, never by frame. Priors are
fitted per term class on the pooled training frames of every molecule that has a term of that class
(``priors.typed.fit_typed_priors``). Batches mix molecules: their frames are joined into one graph, and the
loss is the mean over frames of each frame's mean over its beads, so every frame weighs the same whatever
the size of its molecule (for frames of one molecule this is the plain mean over beads).
"""
import hashlib
import json
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..data.datasets import CGDataset, trajectory_split
from ..errors import InputError, ModelFileError
from ..nn.kinds import file_metadata
from ..nn.potential import all_pairs
from ..nn.typed import TypedCGModule
from ..outputs import RunFolder
from ..priors.typed import MoleculeSamples, TermRules, TypedPriors, fit_typed_priors
from ..topology import bead_type_keys, resolve_bead_types
from .config import TrainConfig
from .lightning import fit, lightning, loader, make_trainer
from .matching import RESUMABLE_CHANGES, ForceMatching, Throughput, TrainedModel, load_checkpoint, prior_forces


@dataclass
class Molecule:
    """One molecule's dataset, its bead type keys and bonds."""
    name: str
    path: str
    dataset: CGDataset
    types: List[str]
    bonds: np.ndarray


def load_molecules(paths: List[str]) -> List[Molecule]:
    """The datasets of a typed training list, checked to describe one state point with one set of bead types."""
    molecules = []
    for path in paths:
        dataset = CGDataset.load(path)
        if dataset.periodic:
            raise InputError(f"{path} is periodic: typed models are trained on molecules without a box (they bind to "
                             "periodic topologies afterwards)")
        molecules.append(Molecule(Path(path).stem, str(path), dataset, _bead_types(dataset.mapping, path),
                                  np.asarray(dataset.mapping.cg_bonds, dtype=np.int64).reshape(-1, 2)))
    names = [m.name for m in molecules]
    if len(set(names)) != len(names):
        raise InputError(f"two datasets share a file name ({names}): a molecule is named by its dataset's file name")
    temperatures = sorted({m.dataset.temperature_K for m in molecules})
    if len(temperatures) > 1:
        raise InputError(f"the datasets come from temperatures {temperatures} K, and a typed model describes one state "
                         "point: train one model per temperature (a typed model takes no temperature input)")
    _check_type_definitions(molecules)
    return molecules


def _bead_types(mapping, path) -> List[str]:
    """The mapping's type of every bead, which must be the type a bound model finds from the bead's RESIDUE:BEAD
    key (``topology.resolve_bead_types``): otherwise the model would be trained on one typing and bound with
    another."""
    types = [mapping.type_names[t] for t in mapping.bead_types]
    keys = bead_type_keys(mapping.cg_topology)
    resolved = resolve_bead_types(keys, set(types), mapping.own_type_keys)[0]
    wrong = sorted({f"{key} ({t})" for key, t, r in zip(keys, types, resolved) if t != r})
    if wrong:
        raise InputError(f"{path}: the mapping's type names are not what the beads' RESIDUE:BEAD keys resolve to "
                         f"({', '.join(wrong[:10])}): a typed model needs types named by RESIDUE:BEAD keys, or *:BEAD "
                         "for a bead in any residue")
    return types


def _check_type_definitions(molecules: List[Molecule]) -> None:
    """One bead type, one mass; one molecule (types and bonds), one mapping."""
    masses: Dict[str, Tuple[float, str]] = {}
    for molecule in molecules:
        for key, mass in zip(molecule.types, molecule.dataset.mapping.masses_amu):
            first = masses.setdefault(key, (float(mass), molecule.path))
            if abs(first[0] - float(mass)) > 1e-6 * max(1.0, first[0]):
                raise InputError(f"bead type {key} has mass {first[0]} amu in {first[1]} but {float(mass)} amu in "
                                 f"{molecule.path}: the datasets define their bead types differently")
    seen: Dict[tuple, Molecule] = {}
    for molecule in molecules:
        identity = (tuple(molecule.types), tuple(map(tuple, molecule.bonds.tolist())))
        other = seen.setdefault(identity, molecule)
        mine, theirs = molecule.dataset.mapping, other.dataset.mapping
        if other is not molecule and (mine.position_groups() != theirs.position_groups()
                                      or mine.force_groups() != theirs.force_groups()
                                      or not np.allclose(mine.position_weights, theirs.position_weights)):
            raise InputError(f"{molecule.path} and {other.path} hold the same CG molecule mapped differently from its "
                             "atoms: one model is trained on one mapping per molecule")


class GraphFrames(torch.utils.data.Dataset):
    """Frames of several molecules: item k is (molecule index, positions (n, 3), delta forces (n, 3))."""

    def __init__(self, positions: List[np.ndarray], deltas: List[np.ndarray]):
        self.positions = [torch.as_tensor(x) for x in positions]
        self.deltas = [torch.as_tensor(f) for f in deltas]
        counts = [len(x) for x in positions]
        self.molecule = np.repeat(np.arange(len(counts)), counts)
        self.frame = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.molecule)

    def __getitem__(self, k: int):
        m, f = int(self.molecule[k]), int(self.frame[k])
        return m, self.positions[m][f], self.deltas[m][f]


class GraphCollate:
    """Joins frames of different molecules into one graph: (positions (M, 3), types (M,), pairs (P, 2) within
    frames, frame of each bead (M,), each bead's loss weight (M,), delta forces (M, 3))."""

    def __init__(self, molecule_types: List[torch.Tensor]):
        self.types = molecule_types
        self.pairs = [all_pairs(len(t)) for t in molecule_types]

    def __call__(self, samples):
        n_frames = len(samples)
        sizes = torch.tensor([len(self.types[m]) for m, _, _ in samples])
        offsets = torch.cumsum(sizes, 0) - sizes
        positions = torch.cat([x for _, x, _ in samples])
        deltas = torch.cat([f for _, _, f in samples])
        types = torch.cat([self.types[m] for m, _, _ in samples])
        pairs = torch.cat([self.pairs[m] + offset for (m, _, _), offset in zip(samples, offsets.tolist())])
        frame_of_bead = torch.repeat_interleave(torch.arange(n_frames), sizes)
        weight = torch.repeat_interleave(1.0 / (3.0 * sizes.to(positions.dtype) * n_frames), sizes)
        return positions, types, pairs, frame_of_bead, weight, deltas


def graph_loss(model: TypedCGModule, batch, create_graph: bool) -> torch.Tensor:
    """Per-frame mean squared force error over beads and components, averaged over frames."""
    positions, types, pairs, frame_of_bead, weight, deltas = batch
    with torch.enable_grad():
        positions = positions.requires_grad_(True)
        energy = model.graph_network_energy(positions, types, pairs, frame_of_bead, int(frame_of_bead.max()) + 1)
        (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    return (weight.unsqueeze(1) * (-grad - deltas) ** 2).sum()


@dataclass
class TypedSplit:
    """Training molecules with their train/validation trajectories, and the held-out molecules."""
    train: List[Tuple[Molecule, CGDataset, CGDataset]]
    held_out: List[Molecule]


def split_molecules(molecules: List[Molecule], config: TrainConfig) -> TypedSplit:
    held = list(config.data.held_out_molecules)
    names = [m.name for m in molecules]
    unknown = sorted(set(held) - set(names))
    if unknown:
        raise InputError(f"data.held_out_molecules names {unknown}, which are not among the datasets' molecules {names}")
    training = [m for m in molecules if m.name not in held]
    if not training:
        raise InputError("every molecule is held out: nothing is left to train on")
    train = []
    for molecule in training:
        t, v = trajectory_split(molecule.dataset, config.data.validation_fraction, config.seed)
        train.append((molecule, molecule.dataset.select_trajectories(t), molecule.dataset.select_trajectories(v)))
    held_out = [m for m in molecules if m.name in held]
    known = {t for m in training for t in m.types}
    for molecule in held_out:
        missing = sorted(set(molecule.types) - known)
        if missing:
            raise InputError(f"held-out molecule {molecule.name} has bead types no training molecule has: {missing}")
    return TypedSplit(train, held_out)


def type_table(split: TypedSplit) -> Tuple[List[str], List[float], List[str]]:
    """The model's bead types (those of the training molecules, sorted), their masses (amu), and the keys that
    take only a type of their own (those of every training molecule's mapping)."""
    masses = {t: float(mass) for m, _, _ in split.train for t, mass in zip(m.types, m.dataset.mapping.masses_amu)}
    names = sorted(masses)
    own = sorted({key for m, _, _ in split.train for key in m.dataset.mapping.own_type_keys})
    return names, [masses[t] for t in names], own


def typed_rules(config: TrainConfig) -> TermRules:
    p = config.priors
    return TermRules(angles=p.angles, dihedrals=p.dihedrals, repulsion=p.repulsion, n_dihedral_terms=p.n_dihedral_terms)


def _frames(molecule: Molecule, dataset: CGDataset, priors: TypedPriors, stride: int):
    x = dataset.positions_nm[::stride]
    return x, dataset.forces_kJ_per_mol_nm[::stride] - prior_forces(priors.molecule_terms(molecule.types, molecule.bonds), x)


def _types_tensor(molecule: Molecule, type_names: List[str]) -> torch.Tensor:
    index = {name: k for k, name in enumerate(type_names)}
    return torch.tensor([index[t] for t in molecule.types], dtype=torch.long)


def train_typed(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True):
    """``training.train.train`` for ``model.typed``: one typed model for every molecule of the dataset list."""

    paths = config.data.paths()
    molecules = load_molecules(paths)
    split = split_molecules(molecules, config)
    network_config = config.model.network()
    run = RunFolder.open(config.output, "training", asdict(config), {f"dataset {k}": p for k, p in enumerate(paths)},
                         resume=resume, overwrite=overwrite, mutable=RESUMABLE_CHANGES)
    lightning().seed_everything(config.seed, workers=True, verbose=False)
    temperature = molecules[0].dataset.temperature_K

    priors_path = run.path / "priors.json"
    if priors_path.exists():
        priors = TypedPriors.from_dict(json.loads(priors_path.read_text()))
    else:
        samples = [MoleculeSamples(train.positions_nm, m.types, m.bonds) for m, train, _ in split.train]
        priors = fit_typed_priors(samples, temperature, typed_rules(config), network_config.cutoff_nm)
        run.write_json("priors.json", priors.to_dict())

    for molecule in split.held_out:  # judged at the end: refuse now, not after training, if it cannot be
        try:
            priors.molecule_terms(molecule.types, molecule.bonds)
        except ModelFileError as error:
            raise InputError(f"held-out molecule {molecule.name} cannot be judged: {error}") from None
    stride = max(1, int(config.data.frame_stride))
    val_stride = stride * max(1, int(config.data.validation_frame_stride))
    train_frames = [_frames(m, train, priors, stride) for m, train, _ in split.train]
    val_frames = [_frames(m, val, priors, val_stride) for m, _, val in split.train]
    type_names, masses, own = type_table(split)
    energy_scale = float(np.std(np.concatenate([f.reshape(-1) for _, f in train_frames]))) * 0.1
    model = TypedCGModule(type_names, masses, priors, network_config, energy_scale, own)
    collate = GraphCollate([_types_tensor(m, type_names) for m, _, _ in split.train])
    opt = config.training
    task = ForceMatching(model, opt.learning_rate, opt.weight_decay, opt.lr_factor, opt.lr_patience,
                         opt.min_learning_rate, loss=graph_loss)
    trainer = make_trainer(run, "val_mse", opt.max_epochs, opt.early_stopping_patience, opt.max_time_minutes,
                           progress, opt.accelerator, opt.devices)
    throughput = Throughput()
    trainer.callbacks.append(throughput)
    train_set = GraphFrames(*zip(*train_frames))
    best = fit(trainer, task, loader(train_set, opt.batch_size, True, config.seed, collate),
               loader(GraphFrames(*zip(*val_frames)), max(opt.batch_size, 1024), False, config.seed, collate), run, resume)
    model = load_checkpoint(model, best)

    def rmse(molecule, x, f):
        return typed_force_rmse(model, _types_tensor(molecule, type_names), x, f)

    held_out = {}
    for molecule in split.held_out:
        x, f = _frames(molecule, molecule.dataset, priors, val_stride)
        held_out[molecule.name] = {"force_rmse_kJ_per_mol_nm": rmse(molecule, x, f),
                                   "prior_only_force_rmse_kJ_per_mol_nm": float(np.sqrt(np.mean(f.astype(np.float64) ** 2))),
                                   "frames": int(len(x))}
    summary = {
        "molecules": {m.name: {"beads": len(m.types), "train_frames": int(len(x)), "validation_frames": int(len(vx)),
                               "train_trajectories": [t.trajectory_names[i] for i in np.unique(t.trajectory_index)],
                               "validation_trajectories": [v.trajectory_names[i] for i in np.unique(v.trajectory_index)],
                               "validation_force_rmse_kJ_per_mol_nm": rmse(m, vx, vf)}
                      for (m, t, v), (x, _), (vx, vf) in zip(split.train, train_frames, val_frames)},
        "held_out_molecules": held_out,
        "train_frames": int(sum(len(x) for x, _ in train_frames)),
        "validation_frames": int(sum(len(x) for x, _ in val_frames)),
        "temperatures_K": [temperature], "type_names": type_names, "prior_classes": priors.classes(),
        "epochs_run": int(trainer.current_epoch),
        "training_frames_per_second": throughput.frames / throughput.seconds if throughput.seconds else None,
        "peak_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "best_checkpoint": str(best),
    }
    run.write_json("summary.json", summary)
    return TrainedModel(model, typed_metadata(model, config, molecules, split, summary), summary, run.path)


def typed_metadata(model: TypedCGModule, config: TrainConfig, molecules: List[Molecule], split: TypedSplit,
                   summary: dict) -> dict:
    hashes = "".join(m.dataset.data_hash() for m in molecules)
    held = {m.name for m in split.held_out}
    extra = {"molecules": [{"name": m.name, "bead_types": m.types, "bonds": m.bonds.tolist(),
                            "role": "held out" if m.name in held else "training"} for m in molecules],
             "training": {"config": asdict(config), "summary": summary}}
    return file_metadata(model, [molecules[0].dataset.temperature_K], hashlib.sha256(hashes.encode()).hexdigest(),
                         extra)


def load_trained_typed(run_dir: Path, config: TrainConfig, checkpoint_path: Path):
    """The typed model of a finished training run folder, rebuilt from its config, priors and checkpoint."""
    molecules = load_molecules(config.data.paths())
    split = split_molecules(molecules, config)
    priors = TypedPriors.from_dict(json.loads((run_dir / "priors.json").read_text()))
    type_names, masses, own = type_table(split)
    model = load_checkpoint(TypedCGModule(type_names, masses, priors, config.model.network(), own_type_keys=own),
                            checkpoint_path)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return TrainedModel(model, typed_metadata(model, config, molecules, split, summary), summary, run_dir)


def typed_force_rmse(model: TypedCGModule, types: torch.Tensor, positions: np.ndarray, deltas: np.ndarray,
                     chunk: int = 1024) -> Optional[float]:
    """RMS error (kJ/mol/nm) of the network's forces against delta forces, frames of one molecule."""
    if len(positions) == 0:
        return None
    collate = GraphCollate([types])
    total = 0.0
    for start in range(0, len(positions), chunk):
        x = torch.as_tensor(positions[start:start + chunk])
        f = torch.as_tensor(deltas[start:start + chunk])
        total += float(graph_loss(model, collate([(0, a, b) for a, b in zip(x, f)]), False)) * len(x)
    return float(np.sqrt(total / len(positions)))
