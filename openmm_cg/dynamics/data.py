"""CG trajectories of polymer chains for learned dynamics: every chain clustered into beads once, its
reference frames mapped to bead centres (positions) and bead force sums (forces), chains kept apart.

One HDF5 file holds a whole set; train / validation / test splits are by chain, never by frame.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..mapping.cgmap import build_mapping
from ..data.datasets import hdf5_writer, open_hdf5, read_reference
from .clustering import bead_bonds, cluster_bond_graph


@dataclass
class ChainData:
    sequence: str                    # one letter per monomer (its type)
    assignment: np.ndarray           # (n_monomers,) bead of every monomer
    positions_nm: np.ndarray         # (frames, n_beads, 3) bead centres of mass
    forces_kJ_per_mol_nm: np.ndarray  # (frames, n_beads, 3) summed monomer forces
    bead_masses_amu: np.ndarray      # (n_beads,)

    @property
    def n_beads(self) -> int:
        return int(self.positions_nm.shape[1])

    @property
    def fine_bonds(self) -> np.ndarray:
        n = len(self.sequence)
        return np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)

    @property
    def bead_bonds(self) -> np.ndarray:
        return bead_bonds(self.assignment, self.fine_bonds)


@dataclass
class PolymerCGData:
    chains: List[ChainData]
    frame_interval_ps: float
    temperature_K: float
    monomer_types: List[str]
    particles_per_bead: int
    source_metadata: dict = field(default_factory=dict)

    def save(self, path, overwrite: bool = False) -> Path:
        with hdf5_writer(path, overwrite) as h5:
            h5.attrs["metadata"] = json.dumps({
                "kind": "polymer_cg_data", "frame_interval_ps": self.frame_interval_ps,
                "temperature_K": self.temperature_K, "monomer_types": self.monomer_types,
                "particles_per_bead": self.particles_per_bead, "source_metadata": self.source_metadata,
                "units": {"positions": "nm", "forces": "kJ/mol/nm", "time": "ps", "mass": "amu"}})
            for index, chain in enumerate(self.chains):
                group = h5.create_group(f"chain_{index:04d}")
                group.attrs["sequence"] = chain.sequence
                group["assignment"] = chain.assignment
                group["positions_nm"] = chain.positions_nm
                group["forces_kJ_per_mol_nm"] = chain.forces_kJ_per_mol_nm
                group["bead_masses_amu"] = chain.bead_masses_amu
        return Path(path)

    @classmethod
    def load(cls, path) -> "PolymerCGData":
        with open_hdf5(path) as h5:
            metadata = json.loads(h5.attrs.get("metadata", "{}"))
            if metadata.get("kind") != "polymer_cg_data":
                raise InputError(f"{path} is not a polymer CG data file (build one with build_polymer_cg_data)")
            chains = [ChainData(str(h5[name].attrs["sequence"]), h5[name]["assignment"][()],
                                h5[name]["positions_nm"][()], h5[name]["forces_kJ_per_mol_nm"][()],
                                h5[name]["bead_masses_amu"][()]) for name in sorted(h5.keys())]
        return cls(chains, metadata["frame_interval_ps"], metadata["temperature_K"], metadata["monomer_types"],
                   metadata["particles_per_bead"], metadata.get("source_metadata", {}))


def split_chains(n_chains: int, fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0):
    """(train, validation, test) chain indices: a seeded permutation cut by the fractions."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise InputError("split fractions must be three non-negative numbers summing to 1")
    order = np.random.default_rng(seed).permutation(n_chains)
    n_train = int(round(fractions[0] * n_chains))
    n_val = int(round(fractions[1] * n_chains))
    if n_train < 1 or n_chains - n_train - n_val < 1:
        raise InputError(f"{n_chains} chains are too few for a train / validation / test split {fractions}")
    return sorted(order[:n_train]), sorted(order[n_train:n_train + n_val]), sorted(order[n_train + n_val:])


def build_polymer_cg_data(reference_paths: Sequence, particles_per_bead: int) -> PolymerCGData:
    """Cluster every chain of polymer references (``openmm_cg.data.polymers``) and map their frames.

    Each file's chains become separate entries (a second seed of the same set adds independent
    trajectories of the same sequences; split those by set, not by chain).
    """
    import mdtraj

    chains: List[ChainData] = []
    metadata = {}
    for path in reference_paths:
        reference = read_reference(path)
        metadata = reference.metadata
        if "polymer_set" not in metadata:
            raise InputError(f"{path} is not a polymer reference (its metadata has no polymer_set)")
        with open_hdf5(path) as h5:
            masses = np.asarray(h5.attrs["masses_amu"], dtype=np.float64)
        topology = mdtraj.Topology.from_openmm(reference.topology)
        for chain in reference.topology.chains():
            atoms = [atom.index for atom in chain.atoms()]
            first, end = atoms[0], atoms[-1] + 1
            if atoms != list(range(first, end)):
                raise InputError(f"{path}: chain {chain.index} is not contiguous")
            sequence = "".join(atom.residue.name for atom in chain.atoms())
            n = end - first
            assignment = cluster_bond_graph(n, [(k, k + 1) for k in range(n - 1)], particles_per_bead)
            # Beads at their monomers' centre of mass, with their summed forces: the mapping stage's map.
            mapping = build_mapping(topology.subset(range(first, end)),
                                    [np.flatnonzero(assignment == bead).tolist() for bead in range(assignment.max() + 1)],
                                    "com", atom_masses_amu=masses[first:end])
            chains.append(ChainData(
                sequence, assignment,
                mapping.map_positions(reference.positions_nm[:, first:end].astype(np.float64)).astype(np.float32),
                mapping.map_forces(reference.forces_kJ_per_mol_nm[:, first:end].astype(np.float64)).astype(np.float32),
                mapping.masses_amu))
    if not chains:
        raise InputError("no reference files given")
    return PolymerCGData(chains, float(metadata["save_interval_ps"]), float(metadata["temperature_K"]),
                         sorted(metadata["monomers"]), particles_per_bead, metadata)
