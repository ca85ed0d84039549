"""The machine and versions, recorded next to every benchmark result."""
import datetime
import os
import platform


def machine_info() -> dict:
    import openmm
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from importlib.metadata import version

        openmmtorch_version = version("openmmtorch")
    except Exception:  # not installed (e.g. the PythonForce-only GPU machine)
        openmmtorch_version = None
    from ._version import __version__

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openmm": openmm.__version__,
        "openmmtorch": openmmtorch_version,
        "openmm_cg": __version__,
    }
