"""Training configuration: YAML in, dataclasses in memory, the expanded YAML saved next to outputs."""
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import List, Optional, Union

import yaml

from ..errors import InputError
from ..nn.hipnnts import HipNNTSConfig
from ..nn.schnet import SchNetConfig


@dataclass
class DataConfig:
    # One CG dataset (.h5), or a list of them: one per state point (each carries its temperature).
    dataset: Union[str, List[str]] = ""
    validation_fraction: float = 0.25
    frame_stride: int = 1
    # Validation uses every n-th of those frames: neighbouring frames are correlated, so a sparser
    # validation set costs less (each epoch, and at a time-capped stop) and tells nearly as much.
    validation_frame_stride: int = 1
    # Typed models: molecules (dataset file names without .h5) kept out of training and validation, judged at the end.
    held_out_molecules: List[str] = field(default_factory=list)

    def paths(self) -> List[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


@dataclass
class PriorConfig:
    """Molecules: bonds always, the rest as chosen. Liquids (periodic data): ``repulsion`` is the
    intermolecular pair repulsion fitted at the RDF onset; the other terms do not apply."""
    angles: bool = True
    dihedrals: bool = True
    n_dihedral_terms: int = 3
    repulsion: bool = True


ARCHITECTURES = ("cgschnet", "hipnnts")


@dataclass
class ModelConfig:
    architecture: str = "cgschnet"  # which of the sections below is used
    # Liquids trained on several temperatures: the model takes T as an input (an OpenMM global
    # parameter), E = E_0 + (T/T_ref - 1) E_1 with T_ref the mean training temperature.
    temperature_input: bool = False
    # One transferable model over bead types for every molecule of the dataset list (model format 2).
    typed: bool = False
    cgschnet: SchNetConfig = field(default_factory=SchNetConfig)
    hipnnts: HipNNTSConfig = field(default_factory=HipNNTSConfig)

    def network(self):
        return getattr(self, self.architecture)


@dataclass
class OptimConfig:
    batch_size: int = 256
    max_epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 2
    early_stopping_patience: int = 6
    min_learning_rate: float = 1e-6
    max_time_minutes: Optional[float] = None
    accelerator: str = "auto"
    devices: str = "auto"
    export_dtype: str = "float32"


@dataclass
class TrainConfig:
    seed: int = 0
    output: str = "runs/train"
    data: DataConfig = field(default_factory=DataConfig)
    priors: PriorConfig = field(default_factory=PriorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        if not self.data.dataset or not all(isinstance(p, str) and p for p in self.data.paths()):
            raise InputError("training config: data.dataset (a CG dataset .h5, or a list of them) is required")
        if self.model.architecture not in ARCHITECTURES:
            raise InputError(f"training config: unknown architecture {self.model.architecture!r} "
                             f"(available: {', '.join(ARCHITECTURES)})")
        if not 0.0 < self.data.validation_fraction < 1.0:
            raise InputError("training config: data.validation_fraction must be between 0 and 1")
        if self.model.typed and self.model.temperature_input:
            raise InputError("training config: model.typed and model.temperature_input cannot be combined")
        if self.data.held_out_molecules and not self.model.typed:
            raise InputError("training config: data.held_out_molecules is for typed models (model.typed: true)")
        if self.training.export_dtype not in ("float32", "float64"):
            raise InputError("training config: training.export_dtype must be float32 or float64")


def dataclass_from_dict(cls, data: dict, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InputError(f"config section {where or 'top level'} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"unknown config keys in {where or 'top level'}: {unknown}")
    values = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        if is_dataclass(default):
            values[name] = dataclass_from_dict(type(default), value, f"{where}.{name}".strip("."))
        else:
            values[name] = value
    return cls(**values)


def config_from_dict(data: dict) -> TrainConfig:
    config = dataclass_from_dict(TrainConfig, data or {}, "")
    config.validate()
    return config


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise InputError(f"config file {path} does not exist")
    with open(path) as handle:
        # A run folder's config.json is read as JSON: YAML 1.1 reads numbers like 1e-06 as strings.
        data = json.load(handle) if path.suffix == ".json" else yaml.safe_load(handle)
    return config_from_dict(data)
