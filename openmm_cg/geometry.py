"""Internal coordinates of batched configurations and the smooth distance switch, TorchScript-compatible.

Conventions match OpenMM and mdtraj: angles in [0, pi], dihedrals in (-pi, pi] with the IUPAC sign.
All functions take positions of shape (batch, beads, 3) and integer index tensors.
"""
import torch
from torch import nn


def distances(positions: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(batch, n_pairs) distances for ``pairs`` of shape (n_pairs, 2)."""
    delta = positions[:, pairs[:, 1]] - positions[:, pairs[:, 0]]
    return torch.linalg.vector_norm(delta, dim=-1)


def angles(positions: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """(batch, n_triples) angles i-j-k at the middle bead, in radians."""
    u = positions[:, triples[:, 0]] - positions[:, triples[:, 1]]
    v = positions[:, triples[:, 2]] - positions[:, triples[:, 1]]
    # atan2 form: well conditioned near 0 and pi, where acos has an infinite derivative.
    cross = torch.linalg.vector_norm(torch.cross(u, v, dim=-1), dim=-1)
    dot = (u * v).sum(-1)
    return torch.atan2(cross, dot)


def dihedrals(positions: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """(batch, n_quads) dihedral angles i-j-k-l, in radians."""
    b1 = positions[:, quads[:, 1]] - positions[:, quads[:, 0]]
    b2 = positions[:, quads[:, 2]] - positions[:, quads[:, 1]]
    b3 = positions[:, quads[:, 3]] - positions[:, quads[:, 2]]
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    b2_norm = torch.linalg.vector_norm(b2, dim=-1, keepdim=True)
    y = (b2_norm * b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)


class SmoothCutoff(nn.Module):
    """1 - 10x^3 + 15x^4 - 6x^5 for x = r/cutoff < 1, else 0: value, slope and curvature vanish at the cutoff."""

    def __init__(self, cutoff_nm: float):
        super().__init__()
        self.cutoff_nm = cutoff_nm

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(r / self.cutoff_nm, 0.0, 1.0)
        return 1.0 - x ** 3 * (10.0 - 15.0 * x + 6.0 * x ** 2)
