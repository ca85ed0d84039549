"""HIP-NN-TS (Chigaev et al., JCP 158, 184108 (2023); used for CG liquids by Shinkle et al. 2024).

A hierarchically interacting particle network with tensor sensitivities: each interaction layer
collects, for every bead, its neighbours' features weighted by learned radial sensitivities s_nu(r)
times the angular factors of the pair direction r_hat up to l = 2 (1; r_hat; the traceless r_hat r_hat^T),
maps them with weights shared across l, and turns the l = 1 and l = 2 parts into invariants through
their norms. The energy is a sum of per-bead linear read-outs of every layer (the "hierarchy").

Written for this package from the published equations; it matches ``hippynn``'s ``Hipnn`` with
``resnet=False`` and ``InteractLayerQuad`` up to these deliberate choices (tests compare the two):
- the radial cutoff is the quintic switch used everywhere in openmm-cg (value, slope and curvature
  vanish at the cutoff, so forces are C1 and MD conserves energy); ``cutoff_form: cos2`` selects
  hippynn's cos^2 cutoff, which is only C1 in the energy;
- the energy read-out starts from the first interaction layer (hippynn's also reads the one-hot input,
  a per-type constant that does not change forces of a fixed composition);
- the final read-out weights start at zero, so an untrained model is exactly its priors.
The sums themselves are the same: each layer sums over neighbours before (hippynn's order) or after
contracting with the weights, whichever costs less for its feature counts, and pairs go through in blocks.
"""
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ..geometry import SmoothCutoff
from .pair_network import PairNetwork
from .schnet import activation

# Pairs per block: the largest per-block buffer, (block, 9, F) for F = 64 features, is then 19 MB, below
# glibc's 32 MB ceiling for reusing heap memory (see nn.schnet.PAIR_BLOCK).
PAIR_BLOCK = 8192


@dataclass
class HipNNTSConfig:
    n_features: int = 64
    n_interactions: int = 2
    n_atom_layers: int = 2
    n_sensitivities: int = 16
    soft_min_nm: float = 0.25    # centre of the first sensitivity
    soft_max_nm: float = 0.8     # centre of the last sensitivity
    cutoff_nm: float = 0.9
    max_l: int = 2               # 0: HIP-NN; 1: vectors; 2: vectors and quadrupoles
    activation: str = "silu"
    cutoff_form: str = "quintic"
    cusp_regularization: float = 1e-6


class CosSquaredCutoff(nn.Module):
    def __init__(self, cutoff_nm: float):
        super().__init__()
        self.cutoff_nm = cutoff_nm

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(r / self.cutoff_nm, 0.0, 1.0)
        return torch.cos(0.5 * torch.pi * x) ** 2


class InverseSensitivity(nn.Module):
    """s_nu(r) = exp(-(1/r - 1/mu_nu)^2 sigma_nu^2 / 2) * cutoff(r), mu and sigma learned."""

    def __init__(self, n: int, soft_min_nm: float, soft_max_nm: float, cutoff: nn.Module):
        super().__init__()
        self.mu = nn.Parameter((1.0 / torch.linspace(1.0 / soft_max_nm, 1.0 / soft_min_nm, n)).unsqueeze(0))
        self.sigma = nn.Parameter(torch.full((1, n), 2.0 * n * soft_min_nm))
        self.cutoff = cutoff

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        inverse = 1.0 / r.unsqueeze(-1)
        return torch.exp(-0.5 * ((inverse - 1.0 / self.mu) * self.sigma) ** 2) * self.cutoff(r).unsqueeze(-1)


def angular_factors(unit: torch.Tensor, max_l: int) -> torch.Tensor:
    """(..., 1 + 3 + 5) for max_l = 2: 1; x, y, z; the traceless r r^T as (xx, xy, xz, yy, yz)."""
    parts: List[torch.Tensor] = [torch.ones_like(unit[..., :1])]
    if max_l >= 1:
        parts.append(unit)
    if max_l >= 2:
        x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
        third = torch.full_like(x, 1.0 / 3.0)
        parts.append(torch.stack([x * x - third, x * y, x * z, y * y - third, y * z], dim=-1))
    return torch.cat(parts, dim=-1)


class TensorInteraction(nn.Module):
    def __init__(self, n_in: int, n_out: int, config: HipNNTSConfig):
        super().__init__()
        cutoff = SmoothCutoff(config.cutoff_nm) if config.cutoff_form == "quintic" else CosSquaredCutoff(config.cutoff_nm)
        self.sensitivity = InverseSensitivity(config.n_sensitivities, config.soft_min_nm, config.soft_max_nm, cutoff)
        self.weights = nn.Parameter(torch.empty(config.n_sensitivities, n_out, n_in))
        nn.init.xavier_normal_(self.weights)
        self.self_interaction = nn.Linear(n_in, n_out)
        nn.init.xavier_normal_(self.self_interaction.weight)
        self.max_l = config.max_l
        self.vector_scales = nn.Parameter(torch.randn(n_out))
        self.quadrupole_scales = nn.Parameter(torch.randn(n_out))
        self.cusp = config.cusp_regularization
        # Reversing a pair flips r_hat: the l = 1 factors change sign, l = 0 and l = 2 do not.
        flip = [1.0] + [-1.0] * 3 * int(config.max_l >= 1) + [1.0] * 5 * int(config.max_l >= 2)
        self.register_buffer("reverse_sign", torch.tensor(flip))
        # Two summation orders give the same environment; per pair and direction, weights first costs
        # nu*F_out (messages) + C*F_out (angular outer product), environment first (hippynn's order)
        # C*nu*F_in. The first layer reads one-hot types (F_in = n_types, often 1): there environment
        # first is several times cheaper; later layers (F_in = F_out) are cheaper weights first.
        n_sensitivities, n_angular = config.n_sensitivities, len(flip)
        self.environment_first = n_angular * n_sensitivities * n_in < (n_sensitivities + n_angular) * n_out

    def forward(self, z: torch.Tensor, r: torch.Tensor, angular: torch.Tensor, pairs: torch.Tensor,
                pair_block: int) -> torch.Tensor:
        """z (B, N, F_in), r (B, P) and ``angular_factors`` (B, P, C) of pairs (P, 2) i < j -> (B, N, F_out);
        pairs go through in blocks of ``pair_block``."""
        distances = torch.split(r, pair_block, dim=1)
        angulars = torch.split(angular, pair_block, dim=1)
        # One gather per layer, split into blocks (see nn.schnet.Interaction).
        if self.environment_first:
            env = self._environment_first(z, distances, angulars, pairs, pair_block)
        else:
            env = self._weights_first(z, distances, angulars, pairs, pair_block)
        out = env[:, :, 0] + self.self_interaction(z)
        if self.max_l >= 1:
            vector = env[:, :, 1:4]
            out = out + torch.sqrt((vector ** 2).sum(2) + self.cusp) * self.vector_scales
        if self.max_l >= 2:
            quad = env[:, :, 4:9]
            # |Q|_F^2 of the traceless symmetric tensor from (xx, xy, xz, yy, yz), with zz = -xx - yy.
            norm2 = 2.0 * ((quad ** 2).sum(2) + quad[:, :, 0] * quad[:, :, 3])
            out = out + torch.sqrt(norm2 + self.cusp) * self.quadrupole_scales
        return out

    def _weights_first(self, z: torch.Tensor, r: List[torch.Tensor], angular: List[torch.Tensor],
                       pairs: torch.Tensor, pair_block: int) -> torch.Tensor:
        """(B, N, C, F_out) environments from messages sum_nu s_nu W_nu z_j."""
        q = torch.einsum("bnf,vof->bnvo", z, self.weights)                      # (B, N, nu, F_out)
        from_second = torch.split(q[:, pairs[:, 1]], pair_block, dim=1)
        from_first = torch.split(q[:, pairs[:, 0]], pair_block, dim=1)
        env = torch.zeros(z.shape[0], z.shape[1], self.reverse_sign.shape[0], q.shape[-1], dtype=z.dtype,
                          device=z.device)
        blocks = torch.split(pairs, pair_block, dim=0)
        for block_r, block_angular, block, q_second, q_first in zip(r, angular, blocks, from_second, from_first):
            s = self.sensitivity(block_r).to(z.dtype)                           # (B, block, nu)
            to_first = torch.einsum("bpv,bpvo->bpo", s, q_second)               # messages j -> i
            to_second = torch.einsum("bpv,bpvo->bpo", s, q_first)               # messages i -> j
            env.index_add_(1, block[:, 0], block_angular.unsqueeze(-1) * to_first.unsqueeze(2))
            env.index_add_(1, block[:, 1], (block_angular * self.reverse_sign).unsqueeze(-1) * to_second.unsqueeze(2))
        return env

    def _environment_first(self, z: torch.Tensor, r: List[torch.Tensor], angular: List[torch.Tensor],
                           pairs: torch.Tensor, pair_block: int) -> torch.Tensor:
        """(B, N, C, F_out) environments as sum_nu,f W_nu (sum_j s_nu a_c z_j)."""
        n_batch, n_beads, n_in = z.shape[0], z.shape[1], z.shape[2]
        n_sens, n_angular = self.weights.shape[0], self.reverse_sign.shape[0]
        from_second = torch.split(z[:, pairs[:, 1]], pair_block, dim=1)
        from_first = torch.split(z[:, pairs[:, 0]], pair_block, dim=1)
        env = torch.zeros(n_batch, n_beads, n_angular * n_sens, n_in, dtype=z.dtype, device=z.device)
        blocks = torch.split(pairs, pair_block, dim=0)
        for block_r, block_angular, block, z_second, z_first in zip(r, angular, blocks, from_second, from_first):
            s = self.sensitivity(block_r).to(z.dtype).unsqueeze(2)              # (B, block, 1, nu)
            a = block_angular.unsqueeze(-1)                                     # (B, block, C, 1)
            to_first = (a * s).reshape(n_batch, block.shape[0], -1, 1)          # (B, block, C*nu, 1)
            to_second = (a * self.reverse_sign.unsqueeze(-1) * s).reshape(n_batch, block.shape[0], -1, 1)
            env.index_add_(1, block[:, 0], to_first * z_second.unsqueeze(2))
            env.index_add_(1, block[:, 1], to_second * z_first.unsqueeze(2))
        env = env.reshape(n_batch, n_beads, n_angular, n_sens, n_in)
        return torch.einsum("bncvf,vof->bnco", env, self.weights)


class HipBlock(nn.Module):
    """One interaction layer, its atom layers, and its energy read-out."""

    def __init__(self, n_in: int, config: HipNNTSConfig, n_outputs: int = 1):
        super().__init__()
        self.interaction = TensorInteraction(n_in, config.n_features, config)
        self.atom_layers = nn.ModuleList([nn.Linear(config.n_features, config.n_features)
                                          for _ in range(config.n_atom_layers)])
        for layer in self.atom_layers:
            nn.init.xavier_normal_(layer.weight)
        self.act = activation(config.activation)
        self.readout = nn.Linear(config.n_features, n_outputs)

    def forward(self, z: torch.Tensor, r: torch.Tensor, angular: torch.Tensor, pairs: torch.Tensor, pair_block: int):
        z = self.act(self.interaction(z, r, angular, pairs, pair_block))
        for layer in self.atom_layers:
            z = self.act(layer(z))
        return z, self.readout(z)


class HipNNTS(PairNetwork):
    """Bead energies from one-hot bead types and pair vectors, like ``CGSchNet.bead_energies``."""

    def __init__(self, config: HipNNTSConfig, n_types: int, energy_scale_kJ_per_mol: float = 1.0, n_outputs: int = 1):
        super().__init__()
        if config.max_l not in (0, 1, 2):
            raise ValueError("HIP-NN-TS max_l must be 0, 1 or 2")
        if config.cutoff_form not in ("quintic", "cos2"):
            raise ValueError("cutoff_form must be 'quintic' or 'cos2'")
        self.n_types = n_types
        self.max_l = config.max_l
        self.pair_block = PAIR_BLOCK
        sizes = [n_types] + [config.n_features] * config.n_interactions
        self.n_outputs = n_outputs
        self.blocks = nn.ModuleList([HipBlock(n_in, config, n_outputs) for n_in in sizes[:-1]])
        nn.init.zeros_(self.blocks[-1].readout.weight)
        nn.init.zeros_(self.blocks[-1].readout.bias)
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale_kJ_per_mol)))

    @torch.jit.export
    def bead_outputs(self, vectors: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """(batch, beads, n_outputs) energy channels (kJ/mol); several channels serve state-dependent models."""
        r = torch.linalg.vector_norm(vectors, dim=-1)
        # The angular factors are the same for every layer: computed once.
        angular = angular_factors(vectors / r.unsqueeze(-1), self.max_l)
        z = nn.functional.one_hot(types, self.n_types).to(vectors.dtype).unsqueeze(0).expand(vectors.shape[0], -1, -1)
        total = torch.zeros(vectors.shape[0], types.shape[0], self.n_outputs, dtype=vectors.dtype, device=vectors.device)
        for block in self.blocks:
            # Pairs go through each layer in blocks, as in CGSchNet (nn.schnet.PAIR_BLOCK explains why).
            z, energy = block(z, r, angular, pairs, self.pair_block)
            total = total + energy
        return self.energy_scale * total
