"""Model files: one TorchScript ``.pt`` with its metadata inside, two sidecars beside it, digests that are checked.

``openmmtorch.TorchForce(path)`` alone reproduces a potential file's energy; its metadata JSON is stored in
the archive (``_extra_files``) and readable without building a System. Beside it, ``<name>.json`` (the same
metadata) and ``<name>.state.pt`` (the weights, loaded weights-only) let the eager module be rebuilt through
its kind (``nn.kinds``) for the PythonForce backend or torch.compile.

The metadata carries the SHA-256 of the weights and of the metadata itself (``integrity``); loading checks
both, so a file changed after export (a flipped byte, a hand edit) is refused rather than simulated.
"""
import copy
import hashlib
import json
from pathlib import Path
from typing import Optional, Tuple

import torch

from ._version import __version__
from .errors import InputError, ModelFileError, OutputExistsError
from .nn.kinds import FORMAT_VERSION, POTENTIAL, kind_of
from .outputs import atomic_path, load_plain, write_json
from .priors.volume import VolumeTermParameters

METADATA_FILE = "openmm_cg_metadata.json"
INTEGRITY = "integrity"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def sidecar_paths(path) -> Tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".json"), path.with_name(path.stem + ".state.pt")


def weights_sha256(state_dict: dict) -> str:
    """A digest of every tensor of a state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _metadata_sha256(metadata: dict) -> str:
    body = {k: v for k, v in metadata.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_model_path(path: Path, overwrite: bool) -> None:
    """Refuse names that would collide with a model's sidecars, and files this export would silently replace."""
    if path.suffix != ".pt" or path.name.endswith(".state.pt"):
        raise InputError(f"{path}: a model file name ends in .pt (not .state.pt): its sidecars are <name>.json and "
                         "<name>.state.pt")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name")
    json_path, state_path = sidecar_paths(path)
    existing = [p for p in (path, json_path, state_path) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(map(str, existing))} already exist(s): a model writes {path.name}, "
                                f"{json_path.name} and {state_path.name}; choose another name or pass overwrite=True "
                                "(--overwrite) to replace them")
    if json_path.exists():
        try:
            ours = str(json.loads(json_path.read_text()).get("kind", "")).startswith("openmm-cg")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise OutputExistsError(f"{json_path} is not an openmm-cg model's metadata; it is left alone: choose "
                                    "another model name")


def save_model(module: torch.nn.Module, metadata: dict, path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write ``module`` (any model kind) as TorchScript with ``metadata`` inside, plus its JSON and weights beside it."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}")
    path = Path(path)
    _check_model_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(module).to(DTYPES[dtype]).eval()
    for parameter in exported.parameters():
        parameter.requires_grad_(False)
    state = exported.state_dict()
    metadata = {k: v for k, v in metadata.items() if k != INTEGRITY} | {"dtype": dtype}
    metadata[INTEGRITY] = {"weights_sha256": weights_sha256(state), "metadata_sha256": _metadata_sha256(metadata)}
    scripted = torch.jit.script(exported)
    json_path, state_path = sidecar_paths(path)
    with atomic_path(state_path) as tmp:
        torch.save(state, tmp)
    write_json(json_path, metadata)
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return path


def read_metadata(path) -> dict:
    """The metadata stored inside a model file, checked, without building anything from it."""
    return load_exported(path)[1]


def load_exported(path, map_location: str = "cpu", kind: str = POTENTIAL):
    """(scripted module, metadata) of a model file of ``kind``; a clear ModelFileError for anything else."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({error})") from None
    if metadata.get("kind") != kind:
        raise ModelFileError(f"{path}: metadata kind is {metadata.get('kind')!r}, not an {kind}")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} uses model format {metadata['format_version']}; this openmm-cg "
                             f"({__version__}) reads up to {FORMAT_VERSION}: upgrade openmm-cg")
    _check_integrity(path, metadata, module.state_dict())
    return module, metadata


def _check_integrity(path, metadata: dict, state_dict: dict) -> None:
    integrity = metadata.get(INTEGRITY)
    if integrity is None:
        return  # written before files carried digests: nothing to check against
    if _metadata_sha256(metadata) != integrity.get("metadata_sha256"):
        raise ModelFileError(f"{path}: its metadata does not match the digest written at export: the file was changed "
                             "after export (corrupted or edited); re-export it")
    if weights_sha256(state_dict) != integrity.get("weights_sha256"):
        raise ModelFileError(f"{path}: its weights do not match the digest written at export: the file was changed "
                             "after export (corrupted or edited); re-export it")


def load_eager(path, kind: str = POTENTIAL) -> Tuple[torch.nn.Module, dict]:
    """The eager (un-scripted) module rebuilt through its kind from the metadata and ``<stem>.state.pt``."""
    _, metadata = load_exported(path, kind=kind)
    state_path = sidecar_paths(path)[1]
    if not state_path.is_file():
        raise ModelFileError(f"{state_path} (the weights beside {path}) is missing; the eager model cannot be rebuilt")
    state = load_plain(state_path, "a plain weights file", ModelFileError)
    _check_integrity(state_path, metadata, state)
    # Cast before loading: loading float64 weights into float32 parameters would round them.
    module = kind_of(metadata).build(metadata).to(DTYPES[metadata.get("dtype", "float32")])
    _load_weights(module, state, state_path)
    return module.eval(), metadata


def _load_weights(module: torch.nn.Module, state: dict, where) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        raise ModelFileError(f"{where}: the weights do not fit the model its metadata describes: "
                             f"{str(error).splitlines()[0]}") from None


def rescript(path, kind: str = POTENTIAL) -> Path:
    """Export a model file again with this version's code, from the weights beside it and its metadata: the same
    function, this version's implementation."""
    module, metadata = load_eager(path, kind)
    metadata = dict(metadata, model_kind=kind_of(metadata).name)
    if hasattr(module, "describe"):  # a potential: its description as this version writes it
        metadata.update(module.describe())
    return save_model(module, metadata, path, metadata.get("dtype", "float32"), overwrite=True)


def add_volume_term(path, params: VolumeTermParameters, out, overwrite: bool = False) -> Path:
    """A copy of the periodic model at ``path`` with the volume potential ``params``."""
    module, metadata = load_eager(path)
    if not kind_of(metadata).periodic:
        raise InputError(f"{path} is not a periodic model: a volume term needs a box")
    if params.temperature_dependent and not metadata.get("temperature_input"):
        raise InputError(f"{path} does not take the temperature: its volume term cannot depend on it")
    metadata = dict(metadata, volume_term=params.to_dict())
    rebuilt = kind_of(metadata).build(metadata).to(DTYPES[metadata.get("dtype", "float32")])
    _load_weights(rebuilt, module.state_dict(), path)
    return save_model(rebuilt, metadata, out, metadata.get("dtype", "float32"), overwrite)


def potential_energy_function(path, temperature_K: Optional[float] = None):
    """(positions (B, N, 3), boxes (B, 3, 3) or None) -> energies (B,) kJ/mol of the potential at ``path``, at
    ``temperature_K`` where the model takes the temperature. The module is rebuilt with this openmm-cg's code from
    the weights beside the file where they are present (the scripted file otherwise), so analyses of older files
    get later fixes (box derivatives of the neighbor search were wrong before 0.1.0's pressure matching: forces
    were right, virials were not)."""
    try:
        module, metadata = load_eager(path)
    except ModelFileError:
        module, metadata = load_exported(path)
    if metadata.get("temperature_input"):
        if temperature_K is None:
            raise InputError(f"{path} takes the temperature: give temperature_K")
        return lambda x, b: module.energy_batch(x, b, torch.full((x.shape[0],), float(temperature_K),
                                                                  dtype=torch.float64))
    return lambda x, b=None: module.energy_batch(x, b)
