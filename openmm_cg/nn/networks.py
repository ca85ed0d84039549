"""The learned part of a CG potential: one network per architecture, chosen by its config's type."""
from dataclasses import asdict
from typing import Optional, Union

from torch import nn

from .hipnnts import HipNNTS, HipNNTSConfig
from .schnet import CGSchNet, SchNetConfig

NetworkConfig = Union[SchNetConfig, HipNNTSConfig]
_BY_NAME = {"cgschnet": (SchNetConfig, CGSchNet), "hipnnts": (HipNNTSConfig, HipNNTS)}


def architecture_of(config: NetworkConfig) -> str:
    for name, (config_type, _) in _BY_NAME.items():
        if isinstance(config, config_type):
            return name
    raise TypeError(f"not a network config: {type(config).__name__}")


def build_network(config: NetworkConfig, n_types: int, energy_scale_kJ_per_mol: float = 1.0,
                  n_outputs: int = 1) -> nn.Module:
    """A network whose ``bead_outputs`` has ``n_outputs`` energy channels (``bead_energies`` is the first)."""
    return _BY_NAME[architecture_of(config)][1](config, n_types, energy_scale_kJ_per_mol, n_outputs)


def network_config_from_dict(architecture: str, data: dict) -> NetworkConfig:
    if architecture not in _BY_NAME:
        raise ValueError(f"unknown network architecture {architecture!r} (known: {sorted(_BY_NAME)})")
    return _BY_NAME[architecture][0](**data)


def describe_network(config: Optional[NetworkConfig], energy_scale_kJ_per_mol: float) -> dict:
    """The metadata fields of a potential's network (or of its absence: a prior-only model)."""
    if config is None:
        return {"architecture": "prior-only", "network_config": None, "energy_scale_kJ_per_mol": 1.0}
    return {"architecture": architecture_of(config), "network_config": asdict(config),
            "energy_scale_kJ_per_mol": float(energy_scale_kJ_per_mol)}


def network_config_of(metadata: dict) -> Optional[NetworkConfig]:
    """The network config a potential's metadata describes (None for a prior-only model)."""
    if not metadata.get("network_config"):
        return None
    return network_config_from_dict(metadata["architecture"], metadata["network_config"])
