"""The CG potential of a periodic system (a liquid of R copies of an n-bead molecule), one module for
training and (scripted) for export, like ``CGPotentialModule`` for single molecules. The network is
CGSchNet or HIP-NN-TS (both give per-bead energies from pair vectors).

Neighbors are searched inside the module on every call (``neighbor_pairs``: minimum image, cell
list), so the exported file needs only the box that TorchForce passes once
``setUsesPeriodicBoundaryConditions(True)`` is set, and works for any box and particle count.

A temperature-aware model (``temperature_reference_K`` set) takes the temperature as a third input,
an OpenMM global parameter of the TorchForce (``TEMPERATURE_PARAMETER``): its network has two energy
channels and E(x; T) = E_0(x) + (T - T_ref)/T_ref * E_1(x), the first-order energy-entropy split of a
free energy (W = U - T S): the potential of mean force is exactly linear in T when its energetic and
entropic parts do not depend on T, and this form interpolates between training temperatures smoothly.
"""
from typing import List, Optional, Tuple

import torch

from ..priors.pair import PAIR_FORM, PairPriorParameters, PairRepulsion
from ..priors.volume import VolumeTerm, VolumeTermParameters
from .kinds import ModelKind, PotentialModule
from .neighbors import neighbor_pairs
from .networks import NetworkConfig, build_network, describe_network, network_config_of
from .schnet import SchNetConfig

# The OpenMM global parameter that feeds a temperature-aware model (TorchForce passes it to forward;
# TorchScript cannot read this global, so the error message in energy_parts spells the name out).
TEMPERATURE_PARAMETER = "cg_temperature_K"


class PeriodicCGPotentialModule(PotentialModule):
    """E(positions (R*n, 3) nm, box (3, 3) nm) in kJ/mol; ``energy_batch((B, N, 3), (B, 3, 3))`` -> (B,)."""

    def __init__(self, bead_types, pair_prior: Optional[PairPriorParameters], network_config: Optional[NetworkConfig],
                 n_types: Optional[int] = None, energy_scale_kJ_per_mol: float = 1.0,
                 temperature_reference_K: Optional[float] = None,
                 volume_term: Optional[VolumeTermParameters] = None):
        super().__init__()
        bead_types = torch.as_tensor(bead_types, dtype=torch.long)
        self.n_beads = int(bead_types.numel())
        self.register_buffer("bead_types", bead_types)
        self.register_buffer("dtype_probe", torch.zeros(0))
        self.has_prior = pair_prior is not None
        self.has_network = network_config is not None
        if not (self.has_prior or self.has_network):
            raise ValueError("a periodic potential needs a pair prior, a network, or both")
        # Placeholders keep TorchScript's attribute types fixed when one part is absent.
        self.prior = PairRepulsion(pair_prior if pair_prior is not None else PairPriorParameters(0.0, 12.0, 1.0))
        n_types = n_types if n_types is not None else int(bead_types.max()) + 1
        config = network_config if network_config is not None else SchNetConfig(n_features=1, n_interactions=0, n_rbf=1)
        self.temperature_aware = temperature_reference_K is not None
        if self.temperature_aware and network_config is None:
            raise ValueError("a temperature-aware potential needs a network")
        self.temperature_reference_K = float(temperature_reference_K or 0.0)
        self.network = build_network(config, n_types, energy_scale_kJ_per_mol, 2 if self.temperature_aware else 1)
        cutoffs = ([pair_prior.cutoff_nm] if pair_prior is not None else []) + \
                  ([network_config.cutoff_nm] if network_config is not None else [])
        self.cutoff_nm = float(max(cutoffs))
        if volume_term is not None and volume_term.temperature_dependent and not self.temperature_aware:
            raise ValueError("a temperature-dependent volume term needs a temperature-aware potential")
        self.volume = VolumeTerm(volume_term)
        self.description = {
            "model_kind": PERIODIC.name, "periodic": True, "n_beads": self.n_beads,
            "bead_types": bead_types.tolist(), "n_types": int(n_types), "cutoff_nm": self.cutoff_nm,
            "priors": pair_prior.to_dict() if pair_prior is not None else None, "prior_forms": {"pair": PAIR_FORM},
            **describe_network(network_config, energy_scale_kJ_per_mol)}
        if self.temperature_aware:
            self.description["temperature_input"] = {"global_parameter": TEMPERATURE_PARAMETER,
                                                     "reference_K": self.temperature_reference_K}
        if volume_term is not None:
            self.description["volume_term"] = volume_term.to_dict()

    def _graph(self, positions: torch.Tensor, boxes: torch.Tensor):
        """Neighbor pairs of all frames as one graph of B*N beads (pairs offset by frame)."""
        n_frames, n_total = positions.shape[0], positions.shape[1]
        pair_list: List[torch.Tensor] = []
        vector_list: List[torch.Tensor] = []
        for frame in range(n_frames):
            pairs, vectors = neighbor_pairs(positions[frame], boxes[frame], self.cutoff_nm)
            pair_list.append(pairs + frame * n_total)
            vector_list.append(vectors)
        return torch.cat(pair_list), torch.cat(vector_list)

    def _check(self, positions: torch.Tensor, boxes: torch.Tensor):
        if positions.dim() != 3 or positions.shape[2] != 3 or positions.shape[1] % self.n_beads != 0:
            raise ValueError("openmm-cg: positions must be (frames, n_molecules * n_beads, 3); the particle count is "
                             "not a multiple of this model's bead count " + str(self.n_beads))
        if boxes.dim() != 3 or boxes.shape[0] != positions.shape[0] or boxes.shape[1] != 3 or boxes.shape[2] != 3:
            raise ValueError("openmm-cg: boxes must be (frames, 3, 3), one box per frame")

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prior (B,), network (B,)) energies in kJ/mol; ``temperatures`` (B,) K for temperature-aware models.
        The prior includes the volume term, if any."""
        if boxes is None:
            raise ValueError("openmm-cg: this is a periodic model and needs box vectors (frames, 3, 3)")
        x = positions.to(self.dtype_probe.dtype)
        b = boxes.to(self.dtype_probe.dtype)
        self._check(x, b)
        n_frames, n_total = x.shape[0], x.shape[1]
        pairs, vectors = self._graph(x, b)
        prior = torch.zeros(n_frames, dtype=x.dtype, device=x.device)
        network = torch.zeros(n_frames, dtype=x.dtype, device=x.device)
        if self.has_prior:
            pair_energy = self.prior(torch.linalg.vector_norm(vectors, dim=1))
            prior = prior.index_add(0, torch.div(pairs[:, 0], n_total, rounding_mode="floor"), pair_energy)
        if self.has_network:
            types = self.bead_types.repeat(n_frames * n_total // self.n_beads)
            channels = self.network.bead_outputs(vectors.unsqueeze(0), types, pairs).reshape(n_frames, n_total, -1).sum(1)
            network = channels[:, 0]
            if self.temperature_aware:
                if temperatures is None:
                    raise ValueError("openmm-cg: this model is temperature-aware and needs the temperature: set the "
                                     "TorchForce global parameter cg_temperature_K")
                reduced = temperatures.to(x.dtype).reshape(-1) / self.temperature_reference_K - 1.0
                network = network + reduced * channels[:, 1]
        prior = prior + self.volume(b, n_total // self.n_beads, temperatures)
        return prior, network

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None,
                temperature: Optional[torch.Tensor] = None) -> torch.Tensor:
        if box is None:
            raise ValueError("openmm-cg: this is a periodic model and needs box vectors: the System must be periodic "
                             "and the TorchForce must have setUsesPeriodicBoundaryConditions(True)")
        temperatures = temperature.reshape(1) if temperature is not None else None
        return self.energy_batch(positions.unsqueeze(0), box.unsqueeze(0), temperatures).sum()


class PeriodicKind(ModelKind):
    """A liquid of one molecule type in a periodic box: a pair prior, a network over neighbours within the
    cutoff, optionally the temperature as an input and a volume term."""

    name = "periodic"
    periodic = True

    def build(self, metadata: dict) -> PeriodicCGPotentialModule:
        volume = VolumeTermParameters.from_dict(metadata["volume_term"]) if metadata.get("volume_term") else None
        pair = PairPriorParameters.from_dict(metadata["priors"]) if metadata.get("priors") else None
        temperature_input = metadata.get("temperature_input")
        return PeriodicCGPotentialModule(metadata["bead_types"], pair, network_config_of(metadata),
                                         n_types=metadata["n_types"],
                                         energy_scale_kJ_per_mol=metadata["energy_scale_kJ_per_mol"],
                                         temperature_reference_K=temperature_input["reference_K"]
                                         if temperature_input else None, volume_term=volume)


PERIODIC = PeriodicKind()
