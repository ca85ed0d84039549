"""Everything the package writes: run folders, single output files, atomic writes, digests.

A run folder is where one stage (reference MD, training, a simulation, a rollout, ...) keeps its outputs.
Its manifest (``openmm_cg_run.json``) names the stage, its settings, the SHA-256 of its inputs, and every
file or folder the package wrote there. That manifest is what makes a folder safe:

- a stage opens its folder before it writes anything, and every check (settings of a resumed run,
  inputs, what is already there) happens in :meth:`RunFolder.open`, so a refused run changes nothing;
- ``overwrite`` removes only what the manifest lists, never files a user put there, and never a run of
  another stage; a folder that holds files but no manifest is not ours and is refused;
- a resumed run must have the settings it was started with (``mutable`` names the ones that may change,
  such as the number of steps) and the same inputs.
"""
import datetime
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .errors import InputError, OutputExistsError

MANIFEST = "openmm_cg_run.json"
CONFIG = "config.json"
PROGRESS = "progress.json"


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def plain(obj):
    """``obj`` as it reads back from JSON (tuples become lists, numpy scalars numbers): settings compare equal
    whether they come from a dataclass in memory or from a manifest on disk."""
    return json.loads(json.dumps(obj, default=_json_default))


def sha256_of_arrays(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(memoryview(array.tobytes() if hasattr(array, "tobytes") else bytes(array)))
    return digest.hexdigest()


def sha256_of_file(path, block_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def load_plain(path, what: str, error=InputError):
    """``torch.load`` of a file from a user's folder, weights-only: tensors and plain containers, never code. Anything
    else raises ``error`` saying that ``path`` is not ``what``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exception:  # weights-only unpickling refuses code and unknown classes; bad archives fail too
        raise error(f"{path} is not {what} (tensors and plain data only): {str(exception).splitlines()[0]}") from None


def check_output_file(path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _flatten(settings: dict, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass
class RunFolder:
    path: Path
    stage: str
    resumed: bool
    manifest: dict = field(repr=False)

    @classmethod
    def open(cls, path, stage: str, settings: dict, inputs: Optional[Dict[str, object]] = None, *,
             resume: bool = False, overwrite: bool = False, mutable: Iterable[str] = (),
             resume_hint: str = "pass resume=True (--resume) to continue it") -> "RunFolder":
        """Prepare ``path`` for ``stage``: a new run, the continuation of a compatible one (``resume``), or a
        fresh run in place of an earlier run of the same stage (``overwrite``). ``inputs`` maps names to files
        whose SHA-256 is recorded (and must be unchanged on resume); ``mutable`` lists the dotted settings
        that a resumed run may change."""
        path = Path(path)
        settings = plain(settings)
        for name, source in (inputs or {}).items():
            if not Path(source).is_file():
                raise InputError(f"{name} {source} is not a file")
        input_digests = {name: {"path": str(p), "sha256": sha256_of_file(p)} for name, p in (inputs or {}).items()}
        if path.exists() and not path.is_dir():
            raise OutputExistsError(f"{path} is a file, not a folder")
        manifest = _read_manifest(path)
        occupied = path.exists() and any(path.iterdir())
        if occupied and manifest is None:
            raise OutputExistsError(f"{path} holds files that openmm-cg did not write (no {MANIFEST}); choose a new "
                                    "or empty folder (nothing there is deleted, even with --overwrite)")
        if manifest is not None and manifest.get("stage") != stage:
            raise OutputExistsError(f"{path} holds a {manifest.get('stage')!r} run, not a {stage!r} run; choose "
                                    "another folder (--overwrite replaces only a run of the same stage)")
        if manifest is not None and overwrite:
            doomed = [path / name for name in _own_files(path, manifest)]
            for name, entry in input_digests.items():
                source = Path(entry["path"]).resolve()
                if any(source == d.resolve() or d.resolve() in source.parents for d in doomed):
                    raise InputError(f"--overwrite of {path} would delete the input {entry['path']} ({name}); "
                                     "move it out of the folder first")
            for target in doomed:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            manifest = None
        resumed = False
        if manifest is not None:
            if not resume:
                raise OutputExistsError(f"{path} already holds an earlier {stage} run; {resume_hint}, or pass overwrite=True "
                                        "(--overwrite) to start it again")
            _check_compatible(path, manifest, settings, input_digests, set(mutable))
            resumed = True
            manifest["settings"] = settings
            manifest["inputs"] = input_digests
        else:
            manifest = {"format_version": 1, "stage": stage, "settings": settings, "inputs": input_digests,
                        "files": [], "created": _now()}
        from ._version import __version__

        manifest["openmm_cg_version"] = __version__
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, stage, resumed, manifest)
        run._save()
        run.write_json(CONFIG, settings)
        return run

    @classmethod
    def attach(cls, path, stage: str) -> "RunFolder":
        """The run folder of a run that was opened already (to add outputs of the same run)."""
        manifest = _read_manifest(Path(path))
        if manifest is None or manifest.get("stage") != stage:
            raise InputError(f"{path} is not a {stage} run folder")
        return cls(Path(path), stage, True, manifest)

    # -- files ---------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of output ``name`` (relative to the folder), recorded as the package's own before it exists."""
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"run folder outputs are named relative to the folder, not {name!r}")
        top = Path(name).parts[0]
        if top not in self.manifest["files"]:
            self.manifest["files"].append(top)
            self._save()
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, obj) -> Path:
        target = self.file(name)
        write_json(target, obj)
        return target

    def read_json(self, name: str) -> Optional[dict]:
        target = self.path / name
        return json.loads(target.read_text()) if target.exists() else None

    @property
    def progress(self) -> Optional[dict]:
        return self.read_json(PROGRESS)

    def write_progress(self, progress: dict) -> None:
        self.write_json(PROGRESS, progress)

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    def _save(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)


def _read_manifest(path: Path) -> Optional[dict]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{manifest} is not valid JSON ({error}); the folder is left untouched") from None
    if not isinstance(data, dict) or "stage" not in data:
        raise InputError(f"{manifest} is not an openmm-cg run manifest; the folder is left untouched")
    return data


def _own_files(path: Path, manifest: dict) -> List[str]:
    """The manifest's files, each checked to be one name inside the folder (a manifest is a file in a user's
    folder: an edited one must not make --overwrite delete anything outside it)."""
    files = manifest.get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise InputError(f"{path / MANIFEST} lists its files wrongly; nothing is deleted")
    for name in files:
        if name in ("", ".", "..") or Path(name).name != name or (path / name).resolve().parent != path.resolve():
            raise InputError(f"{path / MANIFEST} lists {name!r}, which is not a file of the folder; nothing is deleted")
    return files


def _check_compatible(path: Path, manifest: dict, settings: dict, inputs: dict, mutable: set) -> None:
    before, now = _flatten(manifest.get("settings", {})), _flatten(settings)
    changed: List[str] = sorted(k for k in set(before) | set(now)
                                if before.get(k) != now.get(k) and not any(k == m or k.startswith(m + ".")
                                                                          for m in mutable))
    if changed:
        raise InputError(f"{path} holds a run with other settings ({', '.join(changed)}); a resumed run keeps its "
                         "settings" + (f" (only {', '.join(sorted(mutable))} may change)" if mutable else "")
                         + ": use another folder or --overwrite")
    for name, entry in inputs.items():
        previous = manifest.get("inputs", {}).get(name)
        if previous is not None and previous["sha256"] != entry["sha256"]:
            raise InputError(f"{path} holds a run of a different {name} than {entry['path']} (SHA-256 differs); "
                             "use another folder or --overwrite")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
