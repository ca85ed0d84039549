"""The one place that imports torch, OpenMM and openmm-torch, in an order that works.

openmm-torch's plugin library links against libtorch: if ``openmm`` is imported before ``torch``,
OpenMM fails to load the TorchForce plugin and every Context later says it "does not support all
required kernels"; and ``import openmmtorch`` itself fails unless torch is loaded first. Everything
in this package imports OpenMM through this module so users never meet either trap.
"""
import logging
import os

import torch  # noqa: F401  (must precede openmm: provides libtorch for the TorchForce plugin)
import openmm

_TORCH_PLUGIN_MARKER = "OpenMMTorch"


def _torch_plugin_failed() -> bool:
    return any(_TORCH_PLUGIN_MARKER in failure for failure in openmm.Platform.getPluginLoadFailures())


def _reload_plugins() -> None:
    # Platform.getDefaultPluginsDirectory() points at a conda-style path; the pip wheel keeps its
    # plugins next to its library.
    plugin_dir = os.path.join(openmm.version.openmm_library_path, "plugins")
    openmm.Platform.loadPluginsFromDirectory(plugin_dir)


if _torch_plugin_failed():
    _reload_plugins()


def openmmtorch():
    """Return the ``openmmtorch`` module, imported safely (after torch, quietly)."""
    # openmmtorch 1.5 imports the deprecated ``simtk`` namespace, which warns through the root logger.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import openmmtorch as module
    finally:
        logging.disable(previous)
    return module


def platform_names() -> list:
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def best_platform_name() -> str:
    """CUDA where present, else CPU, else Reference."""
    names = platform_names()
    for name in ("CUDA", "OpenCL", "CPU", "Reference"):
        if name in names:
            return name
    raise RuntimeError("OpenMM has no usable platform")


def langevin_integrator(temperature_K: float, friction_per_ps: float, timestep_ps: float, seed: int):
    """OpenMM's LangevinMiddleIntegrator in the package's units, seeded reproducibly (OpenMM reads a seed of 0 as
    "pick one at random", so seed s is passed as s + 1)."""
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(temperature_K * unit.kelvin, friction_per_ps / unit.picosecond,
                                                 timestep_ps * unit.picosecond)
    integrator.setRandomNumberSeed(int(seed) + 1)
    return integrator


# The force group of a CG model's torch force; native forces (priors, barostat) stay in group 0.
NETWORK_FORCE_GROUP = 1


def mts_langevin_integrator(temperature_K: float, friction_per_ps: float, timestep_ps: float, inner_steps: int,
                            seed: int):
    """OpenMM's MTSLangevinIntegrator (BAOAB-RESPA): the torch force (``NETWORK_FORCE_GROUP``) once per outer step
    of ``timestep_ps``, every other force ``inner_steps`` times per outer step; seeded as ``langevin_integrator``."""
    from openmm import unit

    integrator = openmm.MTSLangevinIntegrator(temperature_K * unit.kelvin, friction_per_ps / unit.picosecond,
                                              timestep_ps * unit.picosecond,
                                              [(NETWORK_FORCE_GROUP, 1), (0, int(inner_steps))])
    integrator.setRandomNumberSeed(int(seed) + 1)
    return integrator


def platform(name=None, threads=None):
    """(Platform, properties): ``name`` or the fastest present; ``threads`` applies to the CPU platform."""
    name = name or best_platform_name()
    return openmm.Platform.getPlatformByName(name), ({"Threads": str(threads)} if threads and name == "CPU" else {})
