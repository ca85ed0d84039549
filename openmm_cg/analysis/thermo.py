"""Temperature estimators for checking that a simulation samples exp(-U/kT) of the model."""
import numpy as np
import torch

from ..units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K


def configurational_temperature_K(module, positions_nm: np.ndarray, chunk: int = 256) -> float:
    """T_conf = <|grad U|^2> / (k_B <laplacian U>) over frames (frames, beads, 3) of one molecule.

    Equals the temperature of any ensemble that is Boltzmann-distributed in U (Rugh; Butler et al.,
    JCP 109, 6519 (1998)): unlike the kinetic temperature it fails when the dynamics sample a
    different energy than ``module`` defines (wrong units, factors or signs between the two).
    """
    squared_gradient, laplacian = 0.0, 0.0
    dtype = module.dtype_probe.dtype
    for start in range(0, len(positions_nm), chunk):
        x = torch.as_tensor(positions_nm[start:start + chunk], dtype=dtype).requires_grad_(True)
        (grad,) = torch.autograd.grad(module.energy_batch(x).sum(), x, create_graph=True)
        flat = grad.reshape(len(x), -1)
        squared_gradient += float((flat.detach() ** 2).sum())
        for k in range(flat.shape[1]):
            (second,) = torch.autograd.grad(flat[:, k].sum(), x, retain_graph=True)
            laplacian += float(second.reshape(len(x), -1)[:, k].sum())
    return squared_gradient / (MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * laplacian)
