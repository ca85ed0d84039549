"""TorchScript export of a whole CG potential, with its metadata inside the file.

One ``.pt`` holds priors + network (``openmmtorch.TorchForce(path)`` alone reproduces the energy); its
metadata JSON is stored in the archive (``_extra_files``) and readable without building a System.
Beside it, ``<name>.json`` (the same metadata) and ``<name>.state.pt`` (the weights) let the eager
model be rebuilt for the PythonForce backend or torch.compile.
"""
import copy
import datetime
import json
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from . import __version__
from .errors import InputError, ModelFileError
from .nn.periodic import PeriodicCGPotentialModule
from .nn.tabulated import PeriodicTabulatedPair
from .nn.potential import CGPotentialModule
from .nn.networks import NetworkConfig, architecture_of, n_types_of, network_config_from_dict, network_config_to_dict
from .outputs import check_output_file, write_json
from .priors.pair import PAIR_FORM, PairPriorParameters
from .priors.terms import PRIOR_FORMS, PriorParameters
from .priors.volume import VolumeTermParameters

METADATA_FILE = "openmm_cg_metadata.json"
FORMAT_VERSION = 1
UNITS = {"positions": "nm", "energy": "kJ/mol", "forces": "kJ/mol/nm", "time": "ps", "mass": "amu",
         "temperature": "K"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def model_metadata(module: Union[CGPotentialModule, PeriodicCGPotentialModule], mapping_dict: dict,
                   prior_params: Union[PriorParameters, PairPriorParameters, None],
                   network_config: Optional[NetworkConfig], temperatures_K, data_hash: str,
                   extra: Optional[dict] = None) -> dict:
    import openmm

    periodic = isinstance(module, (PeriodicCGPotentialModule, PeriodicTabulatedPair))
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": "openmm-cg potential",
        "architecture": architecture_of(network_config) if network_config is not None else "prior-only",
        "units": UNITS,
        "periodic": periodic,
        "n_beads": module.n_beads,
        "bead_names": mapping_dict["bead_names"],
        "bead_types": mapping_dict["bead_types"],
        "type_names": mapping_dict["type_names"],
        "n_types": n_types_of(module.network) if module.has_network else len(mapping_dict["type_names"]),
        "masses_amu": mapping_dict["masses_amu"],
        "cg_topology": mapping_dict["cg_topology"],
        "mapping": mapping_dict,
        "cutoff_nm": module.cutoff_nm if periodic else (network_config.cutoff_nm if network_config is not None else None),
        "network_config": network_config_to_dict(network_config) if network_config is not None else None,
        "energy_scale_kJ_per_mol": float(module.network.energy_scale) if module.has_network else 1.0,
        "temperatures_K": [float(t) for t in temperatures_K],
        "priors": prior_params.to_dict() if prior_params is not None else None,
        "prior_forms": {"pair": PAIR_FORM} if periodic else PRIOR_FORMS,
        "training_data_sha256": data_hash,
        "openmm_cg_version": __version__,
        "torch_version": torch.__version__,
        "openmm_version": openmm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        metadata.update(extra)
    return metadata


def liquid_model_description(dataset) -> Tuple[dict, dict]:
    """(mapping part, extra metadata) of a periodic model trained on ``dataset``: the repeating molecule
    (what the model describes) with the full reference mapping beside it, and one reference frame."""
    from .mapping.cgmap import repeat_unit

    mapping_dict = dict(repeat_unit(dataset.mapping), mapping=dataset.mapping.to_dict())
    extra = {"example_liquid_frame": {"positions_nm": dataset.positions_nm[0].tolist(),
                                      "box_nm": dataset.box_vectors_nm[0].tolist()}}
    return mapping_dict, extra


def build_module(metadata: dict) -> Union[CGPotentialModule, PeriodicCGPotentialModule]:
    """An untrained module with the architecture that ``metadata`` describes (load weights into it)."""
    config = (network_config_from_dict(metadata["architecture"], metadata["network_config"])
              if metadata.get("network_config") else None)
    volume = VolumeTermParameters.from_dict(metadata["volume_term"]) if metadata.get("volume_term") else None
    if metadata.get("architecture") == "tabulated-pair":
        table = metadata["tabulated_pair"]
        return PeriodicTabulatedPair(table["r_first_nm"], table["cutoff_nm"], table["force_kJ_per_mol_nm"], volume)
    if metadata.get("periodic"):
        pair = PairPriorParameters.from_dict(metadata["priors"]) if metadata.get("priors") else None
        temperature_input = metadata.get("temperature_input")
        return PeriodicCGPotentialModule(metadata["bead_types"], pair, config, n_types=metadata["n_types"],
                                         energy_scale_kJ_per_mol=metadata["energy_scale_kJ_per_mol"],
                                         temperature_reference_K=temperature_input["reference_K"]
                                         if temperature_input else None, volume_term=volume)
    return CGPotentialModule(metadata["bead_types"], PriorParameters.from_dict(metadata["priors"]), config,
                             n_types=metadata["n_types"], energy_scale_kJ_per_mol=metadata["energy_scale_kJ_per_mol"])


def export_model(module: Union[CGPotentialModule, PeriodicCGPotentialModule], metadata: dict, path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write ``path`` (TorchScript), ``<stem>.json`` and ``<stem>.state.pt``."""
    return save_scripted(module, metadata, path, dtype, overwrite)


def save_scripted(module: torch.nn.Module, metadata: dict, path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Any openmm-cg network as TorchScript with its metadata inside, plus the JSON and weights beside it."""
    path = check_output_file(path, overwrite)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    metadata = dict(metadata, dtype=dtype)
    exported = copy.deepcopy(module).to(_DTYPES[dtype]).eval()
    for parameter in exported.parameters():
        parameter.requires_grad_(False)
    scripted = torch.jit.script(exported)
    text = json.dumps(metadata)
    tmp = path.with_suffix(".pt.tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: text})
    tmp.replace(path)
    write_json(sidecar_paths(path)[0], metadata)
    torch.save(exported.state_dict(), sidecar_paths(path)[1])
    return path


def sidecar_paths(path) -> Tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".json"), path.with_name(path.stem + ".state.pt")


def read_metadata(path) -> dict:
    """The metadata stored inside an exported model, without building anything from it."""
    return load_exported(path)[1]


def load_exported(path, map_location: str = "cpu", kind: str = "openmm-cg potential"):
    """(scripted module, metadata); a clear ModelFileError for anything that is not an openmm-cg ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as error:  # torch raises RuntimeError / ValueError / zipfile errors for bad archives
        raise ModelFileError(f"{path} is not a loadable TorchScript file (corrupted, truncated, or a pickled "
                             f"state dict rather than an exported model): {str(error).splitlines()[0]}") from None
    if not extra[METADATA_FILE]:
        raise ModelFileError(f"{path} is a TorchScript file but not an openmm-cg model (no {METADATA_FILE} inside)")
    try:
        metadata = json.loads(extra[METADATA_FILE])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({error})") from None
    if metadata.get("kind") != kind:
        raise ModelFileError(f"{path}: metadata kind is {metadata.get('kind')!r}, not an {kind}")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} uses model format {metadata['format_version']}; this openmm-cg "
                             f"({__version__}) reads up to {FORMAT_VERSION}: upgrade openmm-cg")
    return module, metadata


def load_eager(path) -> Tuple[CGPotentialModule, dict]:
    """The eager (un-scripted) module rebuilt from ``<stem>.json`` + ``<stem>.state.pt``."""
    _, metadata = load_exported(path)
    state_path = sidecar_paths(path)[1]
    if not state_path.is_file():
        raise ModelFileError(f"{state_path} (the weights beside {path}) is missing; the eager model cannot be rebuilt")
    # Cast before loading: loading float64 weights into float32 parameters would round them.
    module = build_module(metadata).to(_DTYPES[metadata.get("dtype", "float32")])
    module.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return module.eval(), metadata


def batch_energy_function(path, temperature_K: float):
    """(positions (B, N, 3), boxes (B, 3, 3)) -> energies (B,) kJ/mol of the exported periodic model at
    ``path``, at ``temperature_K`` where the model takes the temperature. The module is rebuilt with this
    openmm-cg's code from the weights beside the file where they are present (the scripted file otherwise),
    so analyses of older files get later fixes (box derivatives of the neighbor search were wrong before
    0.1.0's pressure matching: forces were right, virials were not)."""
    try:
        module, metadata = load_eager(path)
    except ModelFileError:
        module, metadata = load_exported(path)
    if metadata.get("temperature_input"):
        return lambda x, b: module.energy_batch(x, b, torch.full((x.shape[0],), float(temperature_K),
                                                                  dtype=torch.float64))
    return module.energy_batch


def add_volume_term(path, params: VolumeTermParameters, out, overwrite: bool = False) -> Path:
    """A copy of the periodic model at ``path`` with the volume potential ``params``."""
    module, metadata = load_eager(path)
    if not metadata.get("periodic"):
        raise InputError(f"{path} is not a periodic model: a volume term needs a box")
    if params.temperature_dependent and not metadata.get("temperature_input"):
        raise InputError(f"{path} does not take the temperature: its volume term cannot depend on it")
    metadata = dict(metadata, volume_term=params.to_dict())
    rebuilt = build_module(metadata).to(_DTYPES[metadata.get("dtype", "float32")])
    rebuilt.load_state_dict(module.state_dict())
    return save_scripted(rebuilt, metadata, out, metadata.get("dtype", "float32"), overwrite)
