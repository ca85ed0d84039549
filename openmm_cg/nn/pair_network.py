"""What every network of a potential shares: per-bead energy channels from pair vectors, summed to energies."""
import torch
from torch import nn


class PairNetwork(nn.Module):
    """Subclasses define ``bead_outputs(vectors (B, P, 3), types (N,), pairs (P, 2)) -> (B, N, channels)``."""

    def forward(self, positions: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Energy (B,) of configurations (B, N, 3) of one molecule, all of whose pairs (i < j) are ``pairs``."""
        vectors = positions[:, pairs[:, 1]] - positions[:, pairs[:, 0]]
        return self.bead_energies(vectors, types, pairs).sum(-1)

    @torch.jit.export
    def bead_energies(self, vectors: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """(B, N) energy contributions (the first channel) from pair vectors r_j - r_i (B, P, 3).

        Periodic models pass minimum-image vectors of a neighbor list; molecules pass plain differences."""
        return self.bead_outputs(vectors, types, pairs)[..., 0]

    @torch.jit.export
    def bead_outputs(self, vectors: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
