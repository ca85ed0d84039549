"""The whole CG potential of one molecule type: priors + network, batched over replicas.

This one module is both the training-time model and (scripted) the exported file, so the exported
energy is the trained energy by construction; tests check it through OpenMM anyway.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ..priors.terms import PRIOR_FORMS, PriorEnergy, PriorParameters
from .kinds import ModelKind, PotentialModule
from .networks import NetworkConfig, build_network, describe_network, network_config_of


def all_pairs(n_beads: int) -> torch.Tensor:
    """Every pair (i, j), i < j, of one molecule: (n*(n-1)/2, 2).

    Molecules are small, so the network sees all pairs and the smooth cutoff switches far ones off:
    no neighbor is ever dropped by a stale list.
    """
    return torch.triu_indices(n_beads, n_beads, offset=1).T.contiguous()


class ZeroNetwork(nn.Module):
    """Stands in for the network of a prior-only model (same call signature, zero energy)."""

    def forward(self, positions: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)


class CGPotentialModule(PotentialModule):
    """E(positions) in kJ/mol for positions in nm.

    ``forward(positions (R*N, 3), box (3, 3) or None)`` returns the total energy of R replicas of an
    N-bead molecule (what openmm-torch's TorchForce calls); ``energy_batch((B, N, 3))`` returns (B,).
    """

    def __init__(self, bead_types, prior_params: Optional[PriorParameters], network_config: Optional[NetworkConfig],
                 n_types: Optional[int] = None, energy_scale_kJ_per_mol: float = 1.0):
        super().__init__()
        bead_types = torch.as_tensor(bead_types, dtype=torch.long)
        self.n_beads = int(bead_types.numel())
        self.register_buffer("bead_types", bead_types)
        self.register_buffer("pairs", all_pairs(self.n_beads))
        self.register_buffer("dtype_probe", torch.zeros(0))
        prior_params = prior_params if prior_params is not None else PriorParameters()
        self.prior = PriorEnergy(prior_params)
        self.has_network = network_config is not None
        n_types = n_types if n_types is not None else int(bead_types.max()) + 1
        self.network = (build_network(network_config, n_types, energy_scale_kJ_per_mol) if network_config is not None
                        else ZeroNetwork())
        self.description = {
            "model_kind": MOLECULAR.name, "periodic": False, "n_beads": self.n_beads,
            "bead_types": bead_types.tolist(), "n_types": int(n_types),
            "cutoff_nm": network_config.cutoff_nm if network_config is not None else None,
            "priors": prior_params.to_dict(), "prior_forms": PRIOR_FORMS,
            **describe_network(network_config, energy_scale_kJ_per_mol)}

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        # ``boxes`` and ``temperatures`` are accepted for the common signature and unused: one molecule in vacuum.
        x = positions.to(self.dtype_probe.dtype)
        return self.prior(x), self.network(x, self.bead_types, self.pairs)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        # ``box`` is accepted (TorchForce passes it for periodic systems) and unused: this is a
        # single-molecule model; periodic liquids use a periodic model.
        n_total = positions.shape[0]
        if positions.dim() != 2 or positions.shape[1] != 3 or n_total % self.n_beads != 0:
            raise ValueError("openmm-cg: positions must be (n_replicas * n_beads, 3); the particle count is not "
                             "a multiple of this model's bead count " + str(self.n_beads))
        batch = positions.reshape(n_total // self.n_beads, self.n_beads, 3)
        return self.energy_batch(batch, None, None).sum()


class MolecularKind(ModelKind):
    """R independent copies of one molecule (no box): priors on its bonded graph plus a network over all pairs."""

    name = "molecular"

    def build(self, metadata: dict) -> CGPotentialModule:
        return CGPotentialModule(metadata["bead_types"], PriorParameters.from_dict(metadata["priors"]),
                                 network_config_of(metadata),
                                 n_types=metadata["n_types"], energy_scale_kJ_per_mol=metadata["energy_scale_kJ_per_mol"])


MOLECULAR = MolecularKind()
