"""Model kinds: the one registry of what an openmm-cg model file can hold.

A kind is one file of this package (or of another package) that defines a module class and a
:class:`ModelKind`: how to build an untrained module from a file's metadata (weights are loaded into it
afterwards). Every module of a kind describes itself (``describe()``: the metadata fields that rebuild it),
so ``kind.build(module.describe())`` is the same architecture. Exporting, loading, the eager rebuild, the
PythonForce backend and the benchmarks all go through :func:`kind_of`; adding a kind is one new file plus
one line in ``BUILT_IN`` (or an entry point in the group ``openmm_cg.model_kinds`` of another package).

Potentials (kinds whose files TorchForce runs) share one set of energy entry points, given by
:class:`PotentialModule`: ``energy_parts``, ``energy_batch`` and ``network_energy`` of batched positions
(B, N, 3) nm, with box vectors (B, 3, 3) for periodic kinds and temperatures (B,) K for models that take
the temperature, all in kJ/mol.
"""
import datetime
from importlib import import_module
from importlib.metadata import entry_points
from typing import Dict, Optional, Tuple

import torch
from torch import nn

POTENTIAL = "openmm-cg potential"
# The newest model file format this version reads and writes: 1 for models of one molecule or liquid, 2 for
# typed-bead (transferable) models and the potentials bound from them.
FORMAT_VERSION = 2
UNITS = {"positions": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm", "time": "ps", "mass": "amu",
         "temperature": "K"}
ENTRY_POINT_GROUP = "openmm_cg.model_kinds"

BUILT_IN = {
    "molecular": "openmm_cg.nn.potential:MOLECULAR",
    "periodic": "openmm_cg.nn.periodic:PERIODIC",
    "tabulated-pair": "openmm_cg.nn.tabulated:TABULATED_PAIR",
    "dynamics": "openmm_cg.dynamics.model:DYNAMICS",
    "score": "openmm_cg.dynamics.model:SCORE",
    "typed": "openmm_cg.nn.typed:TYPED",
    "bound": "openmm_cg.nn.typed:BOUND",
}


class ModelKind:
    """``name`` (the ``model_kind`` of a file), ``file_kind`` (its ``kind``: what loads it), the format version
    its files need, and ``build``."""

    name = ""
    file_kind = POTENTIAL
    format_version = 1
    periodic = False

    def build(self, metadata: dict) -> nn.Module:
        raise NotImplementedError


class PotentialModule(nn.Module):
    """Base of every potential kind: subclasses define ``description`` (a dict set in ``__init__``),
    ``energy_parts`` and ``forward`` (what TorchForce calls)."""

    def describe(self) -> dict:
        """The metadata fields that rebuild this module through its kind (weights aside)."""
        description = dict(self.description)
        if getattr(self, "has_network", False):  # the energy scale is a buffer: loaded weights may change it
            description["energy_scale_kJ_per_mol"] = float(self.network.energy_scale)
        return description

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prior (B,), network (B,)) energies in kJ/mol."""
        raise NotImplementedError

    @torch.jit.export
    def energy_batch(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> torch.Tensor:
        prior, network = self.energy_parts(positions, boxes, temperatures)
        return (prior + network).to(positions.dtype)

    @torch.jit.export
    def network_energy(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                       temperatures: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.energy_parts(positions, boxes, temperatures)[1].to(positions.dtype)


def kinds() -> Dict[str, str]:
    """Kind name -> "module:attribute" of every known kind (built in, then entry points)."""
    found = dict(BUILT_IN)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point.value)
    return found


def get_kind(name: str) -> ModelKind:
    known = kinds()
    if name not in known:
        from ..errors import ModelFileError

        raise ModelFileError(f"unknown model kind {name!r} (known: {sorted(known)}); a newer openmm-cg or a plugin "
                             "package may define it")
    module_name, attribute = known[name].split(":")
    return getattr(import_module(module_name), attribute)


def kind_of(metadata: dict) -> ModelKind:
    """The kind of a model file's metadata; files written before kinds were recorded are recognised by their fields."""
    name = metadata.get("model_kind")
    if name is None:
        if metadata.get("kind") != POTENTIAL:
            name = metadata.get("kind", "").replace("openmm-cg ", "")
        elif metadata.get("architecture") == "tabulated-pair":
            name = "tabulated-pair"
        else:
            name = "periodic" if metadata.get("periodic") else "molecular"
    kind = get_kind(name)
    if metadata.get("kind", kind.file_kind) != kind.file_kind:
        from ..errors import ModelFileError

        raise ModelFileError(f"model kind {name!r} is a {kind.file_kind}, but the file says {metadata.get('kind')!r}")
    return kind


def file_metadata(module: nn.Module, temperatures_K, data_hash: str, extra: Optional[dict] = None,
                  subject: Optional[dict] = None) -> dict:
    """What every potential file says about itself: its format, units, what it describes (``subject``), the
    module's own description (which takes precedence), its training data and the versions that made it."""
    import openmm

    from .._version import __version__

    description = module.describe()
    metadata = {
        "format_version": get_kind(description["model_kind"]).format_version,
        "kind": POTENTIAL,
        "units": UNITS,
        "temperatures_K": [float(t) for t in temperatures_K],
        "training_data_sha256": data_hash,
        "openmm_cg_version": __version__,
        "torch_version": torch.__version__,
        "openmm_version": openmm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata.update(subject or {})
    metadata.update(description)
    if extra:
        metadata.update(extra)
    return metadata


def potential_metadata(module: nn.Module, mapping_dict: dict, temperatures_K, data_hash: str,
                       extra: Optional[dict] = None) -> dict:
    """``file_metadata`` of a potential of one molecule (or liquid of it), plus the molecule it describes
    (``mapping_dict``: bead names, types, masses, CG topology, the mapping)."""
    molecule = {
        "bead_names": mapping_dict["bead_names"],
        "bead_types": mapping_dict["bead_types"],
        "type_names": mapping_dict["type_names"],
        "masses_amu": mapping_dict["masses_amu"],
        "cg_topology": mapping_dict["cg_topology"],
        "mapping": mapping_dict,
    }
    return file_metadata(module, temperatures_K, data_hash, extra, molecule)
