"""Transferable CG potentials (model format version 2): a network over bead types plus priors per term class,
and the same potential bound to one CG topology.

A ``typed`` file holds the potential over types: the network (its embedding has one row per type key
``RESIDUE:BEAD``), the prior parameters of every term class and the rules that generate terms from a bond
graph (``priors.typed``), the cutoff and the mass of every type. It has no energy of its own:
``TypedCGModule.bind`` (``CGPotential.createSystem`` / ``CGPotential.bind``) makes a ``bound`` module for one
topology (one molecule, several, chains, a periodic mixture), and that module is a self-contained TorchScript
potential: the total energy of the whole System, its bead types, bonded terms and repulsion exclusions as
buffers, its neighbors searched inside on every call with the cutoff (``neighbors.open_neighbor_pairs`` or,
in a box, ``neighbors.neighbor_pairs``), so its cost grows linearly with the number of beads.

Every pair within the cutoff enters the network and the repulsion, whichever molecules its beads belong to:
one potential of the whole configuration, as for a liquid. ``intermolecular=False`` keeps each molecule to
itself (independent copies of molecules in one System, as the replicas of a version-1 model are).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ModelFileError
from ..geometry import SmoothCutoff
from ..priors.graph import close_pairs, molecule_index
from ..priors.terms import PriorEnergy
from ..priors.typed import TypedPriors, unique_bonds
from ..topology import bead_type_keys, resolve_bead_types, topology_from_dict
from .kinds import ModelKind, PotentialModule
from .neighbors import neighbor_pairs, open_neighbor_pairs
from .networks import NetworkConfig, build_network, describe_network, network_config_of
from .schnet import SchNetConfig


def _network(config: Optional[NetworkConfig], n_types: int, energy_scale_kJ_per_mol: float):
    # A prior-only model keeps a one-feature placeholder network, so TorchScript sees one attribute type.
    placeholder = SchNetConfig(n_features=1, n_interactions=0, n_rbf=1)
    return build_network(config if config is not None else placeholder, n_types, energy_scale_kJ_per_mol)


class TypedCGModule(PotentialModule):
    """The potential over bead types (a ``typed`` file). ``graph_network_energy`` serves training on batches of
    different molecules; energies of a System come from its bound module."""

    def __init__(self, type_names: List[str], type_masses_amu: List[float], priors: TypedPriors,
                 network_config: Optional[NetworkConfig], energy_scale_kJ_per_mol: float = 1.0,
                 own_type_keys: Sequence[str] = ()):
        super().__init__()
        if len(set(type_names)) != len(type_names) or len(type_masses_amu) != len(type_names):
            raise ValueError("type names must be distinct, one mass each")
        if network_config is not None and abs(network_config.cutoff_nm - priors.cutoff_nm) > 1e-12:
            raise ValueError("the network and the repulsion prior share one cutoff (one neighbor search)")
        self.type_names = list(type_names)
        self.priors = priors
        self.has_network = network_config is not None
        self.network = _network(network_config, len(type_names), energy_scale_kJ_per_mol)
        self.register_buffer("dtype_probe", torch.zeros(0))
        self.description = {
            "model_kind": TYPED.name, "periodic": False, "type_names": list(type_names),
            "type_masses_amu": [float(m) for m in type_masses_amu], "n_types": len(type_names),
            "cutoff_nm": float(priors.cutoff_nm), "typed_priors": priors.to_dict(),
            **({"own_type_keys": sorted(own_type_keys)} if own_type_keys else {}),
            **describe_network(network_config, energy_scale_kJ_per_mol)}

    def graph_network_energy(self, positions: torch.Tensor, types: torch.Tensor, pairs: torch.Tensor,
                             frame_of_bead: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Network energies (n_frames,) of frames concatenated into one graph: positions (M, 3), types (M,),
        pairs (P, 2) within frames, ``frame_of_bead`` (M,)."""
        vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]]
        beads = self.network.bead_energies(vectors.unsqueeze(0), types, pairs)[0]
        return torch.zeros(n_frames, dtype=positions.dtype, device=positions.device).index_add(0, frame_of_bead, beads)

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("openmm-cg: a typed model has no energy until it is bound to a topology: "
                         "CGPotential.load(path).createSystem(topology), or .bind(topology).save('system.pt')")

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.energy_batch(positions.unsqueeze(0), None, None).sum()

    def bind(self, topology_dict: dict, periodic: bool, intermolecular: bool = True) -> "BoundCGModule":
        """This potential for one topology, sharing this module's weights (copied)."""
        bound = BoundCGModule(self.describe(), topology_dict, periodic, intermolecular).to(self.dtype_probe.dtype)
        bound.network.load_state_dict(self.network.state_dict())
        return bound


class BoundCGModule(PotentialModule):
    """E(positions (N, 3) nm, box (3, 3) nm or None) in kJ/mol of one System: bonded priors on the topology's
    terms, repulsion and network on the neighbors within the cutoff."""

    def __init__(self, typed: dict, topology_dict: dict, periodic: bool, intermolecular: bool = True):
        super().__init__()
        type_names = list(typed["type_names"])
        topology = topology_from_dict(topology_dict)
        types, unknown = resolve_bead_types(bead_type_keys(topology), type_names, typed.get("own_type_keys", ()))
        if unknown:
            raise ModelFileError(f"the topology has bead types the model has never seen: {', '.join(unknown)} "
                                 f"(types are RESIDUE:BEAD keys, *:BEAD for a bead in any residue; the model knows "
                                 f"{', '.join(type_names)})")
        if not types:
            raise ModelFileError("the topology has no beads")
        bonds = unique_bonds(topology_dict["bonds"])
        priors = TypedPriors.from_dict(typed["typed_priors"])
        self.n_beads = len(types)
        index = {name: k for k, name in enumerate(type_names)}
        bead_types = torch.tensor([index[t] for t in types], dtype=torch.long)
        self.register_buffer("bead_types", bead_types)
        self.register_buffer("dtype_probe", torch.zeros(0))
        self.prior = PriorEnergy(priors.bonded_terms(types, bonds))
        self.has_repulsion = priors.rules.repulsion
        self.register_buffer("repulsion_c", torch.as_tensor(priors.repulsion_matrix(
            type_names, priors.required_repulsion(types, bonds, intermolecular)),
                                                            dtype=torch.float32))
        excluded = close_pairs(self.n_beads, bonds, priors.rules.min_bond_separation - 1)
        # Exclusions as sorted keys i * N + j, looked up for every neighbor pair by binary search.
        self.register_buffer("excluded_keys", torch.as_tensor(np.sort(excluded[:, 0] * self.n_beads + excluded[:, 1]),
                                                              dtype=torch.long))
        self.register_buffer("molecule", torch.as_tensor(molecule_index(self.n_beads, bonds), dtype=torch.long))
        self.switch = SmoothCutoff(priors.cutoff_nm)
        self.cutoff_nm = float(priors.cutoff_nm)
        self.periodic = periodic
        self.intermolecular = intermolecular
        self.has_network = typed.get("network_config") is not None
        self.network = _network(network_config_of(typed), len(type_names), typed["energy_scale_kJ_per_mol"])
        self.description = {
            "model_kind": BOUND.name, "periodic": periodic, "intermolecular": intermolecular,
            "n_beads": self.n_beads, "cutoff_nm": self.cutoff_nm, "typed_model": dict(typed),
            "cg_topology": topology_dict, "bead_names": [atom.name for atom in topology.atoms()],
            "bead_types": bead_types.tolist(), "type_names": type_names, "n_types": len(type_names),
            "masses_amu": [typed["type_masses_amu"][index[t]] for t in types],
            **{key: typed[key] for key in ("architecture", "network_config", "energy_scale_kJ_per_mol")}}

    def describe(self) -> dict:
        description = super().describe()
        description["typed_model"] = dict(description["typed_model"],
                                          energy_scale_kJ_per_mol=description["energy_scale_kJ_per_mol"])
        return description

    def _neighbors(self, x: torch.Tensor, box: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if box is not None:
            pairs, vectors = neighbor_pairs(x, box, self.cutoff_nm)
            if not self.intermolecular:
                same = self.molecule[pairs[:, 0]] == self.molecule[pairs[:, 1]]
                pairs, vectors = pairs[same], vectors[same]
            return pairs, vectors
        return open_neighbor_pairs(x, self.cutoff_nm, None if self.intermolecular else self.molecule)

    def _repulsion(self, pairs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        keys = pairs[:, 0] * self.n_beads + pairs[:, 1]
        keep = torch.ones_like(keys, dtype=torch.bool)
        if self.excluded_keys.shape[0] > 0:
            slot = torch.clamp(torch.searchsorted(self.excluded_keys, keys), max=self.excluded_keys.shape[0] - 1)
            keep = self.excluded_keys[slot] != keys
        r = torch.linalg.vector_norm(vectors[keep], dim=1)
        c = self.repulsion_c[self.bead_types[pairs[keep, 0]], self.bead_types[pairs[keep, 1]]]
        return (c / r ** 6 * self.switch(r)).sum()

    @torch.jit.export
    def energy_parts(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None,
                     temperatures: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        x = positions.to(self.dtype_probe.dtype)
        if x.dim() != 3 or x.shape[1] != self.n_beads or x.shape[2] != 3:
            raise ValueError("openmm-cg: positions must be (frames, " + str(self.n_beads) + ", 3): this model is bound "
                             "to a topology of " + str(self.n_beads) + " beads")
        if self.periodic and boxes is None:
            raise ValueError("openmm-cg: this model is bound to a periodic topology and needs box vectors")
        repulsion: List[torch.Tensor] = []
        network: List[torch.Tensor] = []
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        for frame in range(x.shape[0]):
            box: Optional[torch.Tensor] = None
            if self.periodic and boxes is not None:
                box = boxes[frame].to(x.dtype)
            pairs, vectors = self._neighbors(x[frame], box)
            repulsion.append(self._repulsion(pairs, vectors) if self.has_repulsion else zero)
            network.append(self.network.bead_energies(vectors.unsqueeze(0), self.bead_types, pairs).sum()
                           if self.has_network else zero)
        return self.prior(x) + torch.stack(repulsion), torch.stack(network)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        boxes: Optional[torch.Tensor] = None
        if box is not None:
            boxes = box.unsqueeze(0)
        return self.energy_batch(positions.unsqueeze(0), boxes, None).sum()


class TypedKind(ModelKind):
    """A transferable potential over bead types; bound to a topology before it has an energy."""

    name = "typed"
    format_version = 2

    def build(self, metadata: dict) -> TypedCGModule:
        return TypedCGModule(metadata["type_names"], metadata["type_masses_amu"],
                             TypedPriors.from_dict(metadata["typed_priors"]), network_config_of(metadata),
                             metadata["energy_scale_kJ_per_mol"], metadata.get("own_type_keys", ()))


class BoundKind(ModelKind):
    """A typed potential bound to one topology (one molecule, several, a periodic mixture)."""

    name = "bound"
    format_version = 2

    def build(self, metadata: dict) -> BoundCGModule:
        return BoundCGModule(metadata["typed_model"], metadata["cg_topology"], bool(metadata["periodic"]),
                             bool(metadata.get("intermolecular", True)))


TYPED = TypedKind()
BOUND = BoundKind()
