"""Output folders and files: never overwrite results unless asked."""
import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import OutputExistsError


def prepare_output_dir(path, overwrite: bool = False) -> Path:
    """Create ``path``; refuse if it already holds files, unless ``overwrite`` (then empty it)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{path} already holds results; choose another output folder or pass overwrite=True "
                "(--overwrite on the command line) to replace them"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path, obj) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")
    os.replace(tmp, path)


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
