"""The multi-scale graph networks of learned CG dynamics (Fu et al., TMLR 2023), written for this package.

- ``MonomerEmbedding``: a GNN on the fine (monomer) bond graph of each chain; its node features are
  pooled over each bead's monomers into a bead embedding. It sees no coordinates, so it runs once per
  topology and carries the chemistry (sequence, bead composition) into the CG graph.
- ``CGDynamics``: a GNN on the CG graph (every pair of beads of a chain, bonded pairs marked, a smooth
  distance envelope) that reads the last k bead positions and outputs, per bead, the mean and the
  standard deviation of the acceleration over the next step. Messages use only rotation-invariant
  inputs (distances, projections of velocities on pair directions, velocity Gram matrices), and the
  mean is built from pair directions and the bead's own velocities, so it rotates with the chain.
- ``ScoreNetwork``: the same construction on one (noisy) frame, giving the score grad log p(x) of the
  CG configuration at a noise level; trained by denoising score matching, used to refine steps.

Everything works in displacement units: velocities enter as v*dt (nm per step) and the networks give
delta = a*dt^2 (nm), so every learned quantity is O(0.1 nm); the step size dt_ps is a buffer and the
acceleration in nm/ps^2 is delta / dt_ps^2. Semi-implicit Euler: v <- v + a dt, x <- x + v dt, i.e.
x_{t+1} = 2 x_t - x_{t-1} + delta.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn

from ..geometry import SmoothCutoff
from ..nn.kinds import ModelKind
from ..nn.schnet import GaussianRBF


@dataclass
class DynamicsConfig:
    history: int = 4                 # k frames in (k - 1 velocities)
    n_features: int = 64
    n_fine_layers: int = 2
    n_layers: int = 3
    n_rbf: int = 24
    cutoff_nm: float = 4.0           # envelope on pairs of beads of one chain
    min_std_nm: float = 1e-3         # floor of the predicted standard deviation of delta
    score_noise_levels_nm: Tuple[float, ...] = (0.02, 0.05, 0.1)


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class MonomerEmbedding(nn.Module):
    def __init__(self, n_monomer_types: int, n_features: int, n_layers: int):
        super().__init__()
        self.types = nn.Embedding(n_monomer_types, n_features)
        self.layers = nn.ModuleList([_mlp(2 * n_features, n_features, n_features) for _ in range(n_layers)])
        self.n_features = n_features

    def forward(self, monomer_types: torch.Tensor, fine_edges: torch.Tensor, assignment: torch.Tensor,
                n_beads: int) -> torch.Tensor:
        """(n_beads, F) bead embeddings; ``fine_edges`` (E, 2) holds each bond once, ``assignment`` (M,)."""
        h = self.types(monomer_types)
        for layer in self.layers:
            summed = torch.zeros_like(h).index_add(0, fine_edges[:, 0], h[fine_edges[:, 1]])
            summed = summed.index_add(0, fine_edges[:, 1], h[fine_edges[:, 0]])
            h = h + layer(torch.cat([h, summed], dim=-1))
        pooled = torch.zeros(n_beads, self.n_features, dtype=h.dtype, device=h.device).index_add(0, assignment, h)
        counts = torch.zeros(n_beads, dtype=h.dtype, device=h.device).index_add(
            0, assignment, torch.ones_like(assignment, dtype=h.dtype))
        return pooled / counts.unsqueeze(-1)


class EquivariantGNN(nn.Module):
    """Invariant messages over directed pairs; returns node features and, per directed pair, a weight
    for its unit vector (the equivariant read-out is built by the caller)."""

    def __init__(self, n_node_in: int, n_edge_in: int, n_features: int, n_layers: int, n_rbf: int, cutoff_nm: float):
        super().__init__()
        self.rbf = GaussianRBF(0.0, cutoff_nm, n_rbf)
        self.envelope = SmoothCutoff(cutoff_nm)
        self.node_in = _mlp(n_node_in, n_features, n_features)
        self.edge_in = _mlp(n_rbf + 1 + n_edge_in, n_features, n_features)
        self.messages = nn.ModuleList([_mlp(3 * n_features, n_features, n_features) for _ in range(n_layers)])
        self.updates = nn.ModuleList([_mlp(2 * n_features, n_features, n_features) for _ in range(n_layers)])
        self.pair_weight = _mlp(3 * n_features, n_features, 1)

    def forward(self, nodes: torch.Tensor, senders: torch.Tensor, receivers: torch.Tensor, distance: torch.Tensor,
                bonded: torch.Tensor, edge_features: torch.Tensor):
        envelope = torch.where(bonded > 0, torch.ones_like(distance), self.envelope(distance)).unsqueeze(-1)
        edges = self.edge_in(torch.cat([self.rbf(distance), bonded.unsqueeze(-1), edge_features], dim=-1))
        h = self.node_in(nodes)
        for message, update in zip(self.messages, self.updates):
            m = message[2](nn.functional.silu(_pair_linear(message[0].weight, message[0].bias, h, receivers,
                                                           senders, edges))) * envelope
            aggregated = torch.zeros_like(h).index_add(0, receivers, m)
            h = h + update(torch.cat([h, aggregated], dim=-1))
        pair = _pair_linear(self.pair_weight[0].weight, self.pair_weight[0].bias, h, receivers, senders, edges)
        weights = self.pair_weight[2](nn.functional.silu(pair)) * envelope
        return h, weights


def _pair_linear(weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, receivers: torch.Tensor,
                 senders: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``Linear(cat([h[receivers], h[senders], edges]))`` with the node blocks of the weight applied per node
    before the gather: the same numbers, and pairs outnumber beads (on a batch of 300 chains, 2,400 beads,
    the dynamics network ran 20-30% faster)."""
    n = h.shape[1]
    return (h @ weight[:, :n].T)[receivers] + (h @ weight[:, n:2 * n].T)[senders] + edges @ weight[:, 2 * n:].T + bias


def directed(pairs: torch.Tensor, bonded: torch.Tensor):
    """Both directions of every undirected pair: (receivers, senders, bonded)."""
    return (torch.cat([pairs[:, 0], pairs[:, 1]]), torch.cat([pairs[:, 1], pairs[:, 0]]),
            torch.cat([bonded, bonded]).to(torch.float32))


class CGDynamics(nn.Module):
    """Mean and standard deviation of every bead's next-step displacement change delta (nm)."""

    def __init__(self, config: DynamicsConfig, n_monomer_types: int, step_ps: float):
        super().__init__()
        if config.history < 2:
            raise ValueError("the dynamics model needs at least 2 history frames (one velocity)")
        self.history = config.history
        self.n_velocities = config.history - 1
        self.min_std_nm = config.min_std_nm
        n_gram = self.n_velocities * (self.n_velocities + 1) // 2
        self.embedding = MonomerEmbedding(n_monomer_types, config.n_features, config.n_fine_layers)
        self.gnn = EquivariantGNN(config.n_features + n_gram, 2 * self.n_velocities, config.n_features,
                                  config.n_layers, config.n_rbf, config.cutoff_nm)
        self.velocity_weights = _mlp(config.n_features, config.n_features, self.n_velocities)
        self.log_std = _mlp(config.n_features, config.n_features, 1)
        # An untrained model continues every bead's last velocity (delta = 0) with a spread of ~0.05 nm.
        for layer in (self.gnn.pair_weight[-1], self.velocity_weights[-1], self.log_std[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.log_std[-1].bias, -3.0)
        self.register_buffer("step_ps", torch.tensor(float(step_ps), dtype=torch.float64))
        iu = torch.triu_indices(self.n_velocities, self.n_velocities)
        self.register_buffer("gram_rows", iu[0])
        self.register_buffer("gram_cols", iu[1])

    @torch.jit.export
    def bead_embedding(self, monomer_types: torch.Tensor, fine_edges: torch.Tensor, assignment: torch.Tensor,
                       n_beads: int) -> torch.Tensor:
        return self.embedding(monomer_types, fine_edges, assignment, n_beads)

    @torch.jit.export
    def delta_distribution(self, history_nm: torch.Tensor, embedding: torch.Tensor, pairs: torch.Tensor,
                           bonded: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """history (k, B, 3) oldest first -> (mean delta (B, 3) nm, std of delta (B,) nm)."""
        x = history_nm.to(embedding.dtype)
        displacements = x[1:] - x[:-1]                                   # (k-1, B, 3): v dt, oldest first
        velocities = displacements.permute(1, 0, 2)                      # (B, k-1, 3)
        gram = torch.einsum("bix,bjx->bij", velocities, velocities)[:, self.gram_rows, self.gram_cols]
        receivers, senders, bond = directed(pairs, bonded)
        current = x[-1]
        vectors = current[senders] - current[receivers]
        distance = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / distance.unsqueeze(-1)
        projections = torch.cat([torch.einsum("ex,ekx->ek", unit, velocities[receivers]),
                                 torch.einsum("ex,ekx->ek", unit, velocities[senders])], dim=-1)
        h, weights = self.gnn(torch.cat([embedding, gram], dim=-1), senders, receivers, distance,
                              bond.to(x.dtype), projections)
        mean = torch.zeros_like(current).index_add(0, receivers, weights * unit)
        mean = mean + torch.einsum("bk,bkx->bx", self.velocity_weights(h), velocities)
        std = nn.functional.softplus(self.log_std(h).squeeze(-1)) + self.min_std_nm
        return mean, std

    def forward(self, history_nm: torch.Tensor, embedding: torch.Tensor, pairs: torch.Tensor,
                bonded: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.delta_distribution(history_nm, embedding, pairs, bonded)


class ScoreNetwork(nn.Module):
    """s(x, sigma) ~ grad_x log p_sigma(x) of one CG frame (B, 3), in 1/nm, for a Gaussian noise level sigma."""

    def __init__(self, config: DynamicsConfig, n_monomer_types: int):
        super().__init__()
        self.embedding = MonomerEmbedding(n_monomer_types, config.n_features, config.n_fine_layers)
        self.gnn = EquivariantGNN(config.n_features + 1, 0, config.n_features, config.n_layers, config.n_rbf,
                                  config.cutoff_nm)

    @torch.jit.export
    def bead_embedding(self, monomer_types: torch.Tensor, fine_edges: torch.Tensor, assignment: torch.Tensor,
                       n_beads: int) -> torch.Tensor:
        return self.embedding(monomer_types, fine_edges, assignment, n_beads)

    def forward(self, positions_nm: torch.Tensor, sigma_nm: torch.Tensor, embedding: torch.Tensor,
                pairs: torch.Tensor, bonded: torch.Tensor) -> torch.Tensor:
        x = positions_nm.to(embedding.dtype)
        receivers, senders, bond = directed(pairs, bonded)
        vectors = x[senders] - x[receivers]
        distance = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / distance.unsqueeze(-1)
        log_sigma = torch.log(sigma_nm.to(x.dtype)).expand(x.shape[0], 1)
        _, weights = self.gnn(torch.cat([embedding, log_sigma], dim=-1), senders, receivers, distance,
                              bond.to(x.dtype), torch.zeros(distance.shape[0], 0, dtype=x.dtype, device=x.device))
        # Output in units of 1/sigma: the score of Gaussian noise of width sigma is ~ 1/sigma.
        return torch.zeros_like(x).index_add(0, receivers, weights * unit) / sigma_nm.to(x.dtype)


DYNAMICS_KIND = "openmm-cg dynamics"
SCORE_KIND = "openmm-cg score"


def _config(metadata: dict) -> DynamicsConfig:
    try:
        return DynamicsConfig(**metadata["model_config"])
    except TypeError as error:  # keys of another version
        from ..errors import ModelFileError

        raise ModelFileError(f"the model's network settings do not fit this openmm-cg: {error}") from None


class DynamicsKind(ModelKind):
    """The learned propagator: mean and spread of the next step of CG polymer chains."""

    name = "dynamics"
    file_kind = DYNAMICS_KIND

    def build(self, metadata: dict) -> CGDynamics:
        return CGDynamics(_config(metadata), len(metadata["monomer_types"]), metadata["step_ps"])


class ScoreKind(ModelKind):
    """The score network that refines learned steps (denoising)."""

    name = "score"
    file_kind = SCORE_KIND

    def build(self, metadata: dict) -> ScoreNetwork:
        return ScoreNetwork(_config(metadata), len(metadata["monomer_types"]))


DYNAMICS = DynamicsKind()
SCORE = ScoreKind()
