"""CGSchNet (Husic et al., JCP 153, 194101 (2020)): a SchNet-style network for CG energies.

Bead-type embeddings are refined by continuous-filter convolutions whose filters are functions of
the pair distance (Gaussian radial basis, smooth cutoff); a per-bead output network sums to the
energy. Every piece is smooth: tanh/SiLU activations, Gaussians, and a cutoff envelope whose first
and second derivatives vanish at the cutoff, so forces are continuous and simulations conserve energy.
"""
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ..geometry import SmoothCutoff
from .pair_network import PairNetwork

# Pairs per block: (block, features) buffers of 8-16 MB for 64 features, below glibc's 32 MB ceiling
# for serving allocations from its reusable heap instead of fresh memory maps. Nothing bead-sized may
# be made once per block, or the cost grows as beads x blocks (quadratically): blocks add into the
# per-bead sums in place, and each layer gathers its neighbor features once, then splits them.
PAIR_BLOCK = 32768


@dataclass
class SchNetConfig:
    n_features: int = 128
    n_interactions: int = 3
    n_rbf: int = 50
    cutoff_nm: float = 1.0
    rbf_min_nm: float = 0.0
    activation: str = "tanh"
    n_output_hidden: int = 64


_ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} (smooth, for C2-continuous forces)")
    return _ACTIVATIONS[name]()


class GaussianRBF(nn.Module):
    def __init__(self, r_min_nm: float, r_max_nm: float, n_rbf: int):
        super().__init__()
        centers = torch.linspace(r_min_nm, r_max_nm, n_rbf)
        spacing = (r_max_nm - r_min_nm) / max(n_rbf - 1, 1)
        self.register_buffer("centers", centers)
        self.gamma = 0.5 / spacing ** 2

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (r.unsqueeze(-1) - self.centers) ** 2)


class Interaction(nn.Module):
    def __init__(self, n_features: int, n_rbf: int, act: str):
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(n_rbf, n_features), activation(act), nn.Linear(n_features, n_features))
        self.in2f = nn.Linear(n_features, n_features, bias=False)
        self.f2out = nn.Sequential(nn.Linear(n_features, n_features), activation(act), nn.Linear(n_features, n_features))

    def forward(self, h: torch.Tensor, rbf: List[torch.Tensor], envelope: List[torch.Tensor],
                pairs: torch.Tensor, pair_block: int) -> torch.Tensor:
        """``rbf`` (batch, block, n_rbf) and ``envelope`` (batch, block): blocks of ``pair_block`` of ``pairs`` (P, 2)."""
        x = self.in2f(h)
        aggregated = torch.zeros_like(h)
        # One gather per layer, split into blocks: the gradient of a gather is a bead-sized buffer, so a
        # gather per block would cost beads x blocks in the backward pass.
        from_second = torch.split(x[:, pairs[:, 1]], pair_block, dim=1)
        from_first = torch.split(x[:, pairs[:, 0]], pair_block, dim=1)
        blocks = torch.split(pairs, pair_block, dim=0)
        for block_rbf, block_envelope, block, x_second, x_first in zip(rbf, envelope, blocks, from_second, from_first):
            # Filters depend on the distance only, so each undirected pair (i < j) computes its filter
            # once and passes messages both ways: j -> i and i -> j.
            weights = self.filter(block_rbf) * block_envelope.unsqueeze(-1)  # (batch, block, F)
            aggregated.index_add_(1, block[:, 0], x_second * weights)
            aggregated.index_add_(1, block[:, 1], x_first * weights)
        return h + self.f2out(aggregated)


class CGSchNet(PairNetwork):
    """Energy (batch,) of configurations (batch, beads, 3) given per-bead types and undirected pairs (i < j)."""

    def __init__(self, config: SchNetConfig, n_types: int, energy_scale_kJ_per_mol: float = 1.0, n_outputs: int = 1):
        super().__init__()
        self.n_types = n_types
        self.embedding = nn.Embedding(n_types, config.n_features)
        self.pair_block = PAIR_BLOCK
        self.rbf = GaussianRBF(config.rbf_min_nm, config.cutoff_nm, config.n_rbf)
        self.cutoff = SmoothCutoff(config.cutoff_nm)
        self.interactions = nn.ModuleList(
            [Interaction(config.n_features, config.n_rbf, config.activation) for _ in range(config.n_interactions)]
        )
        self.output = nn.Sequential(
            nn.Linear(config.n_features, config.n_output_hidden), activation(config.activation),
            nn.Linear(config.n_output_hidden, n_outputs),
        )
        # Zero last layer: an untrained model is exactly its priors, and training adds corrections.
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)
        # A fixed scale set from the data's force magnitude keeps the network's raw outputs O(1).
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale_kJ_per_mol)))

    @torch.jit.export
    def bead_outputs(self, vectors: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """(batch, beads, n_outputs) energy channels (kJ/mol); several channels serve state-dependent models."""
        # Pairs go through the network in blocks: the per-pair intermediates then stay a few MB, which the
        # allocator reuses from step to step. Whole-list buffers of a 64k-bead liquid are hundreds of MB
        # each, and glibc maps every one afresh and page-faults it in again on every step
        # (benchmarks/liquid_scaling.py). Only the gathered neighbor features, which the backward pass
        # keeps anyway, are whole-list. torch.split makes views whose gradients are joined once.
        r = torch.split(torch.linalg.vector_norm(vectors, dim=-1), self.pair_block, dim=1)
        rbf = [self.rbf(block) for block in r]
        envelope = [self.cutoff(block) for block in r]
        h = self.embedding(types).unsqueeze(0).expand(vectors.shape[0], -1, -1).to(vectors.dtype)
        for interaction in self.interactions:
            h = interaction(h, rbf, envelope, pairs, self.pair_block)
        return self.energy_scale * self.output(h)
