"""openmm-cg: machine-learned coarse-grained potentials for OpenMM.

Importing this package imports torch before OpenMM, which openmm-torch's plugin needs.
"""
from ._version import __version__  # noqa: F401
from . import _runtime  # noqa: E402,F401  (import-order fix for the TorchForce plugin)
from .simulation.potential import CGPotential  # noqa: E402

__all__ = ["CGPotential", "__version__"]
