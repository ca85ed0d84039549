"""CG trajectories of polymer chains for learned dynamics: every chain clustered into beads once and its reference
frames mapped by the mapping stage (bead centres of mass, summed forces). Each chain is a CG dataset of its own
(chains have different bead counts), and one HDF5 file holds the whole set, one dataset group per chain;
train / validation / test splits are by chain, never by frame.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .._runtime import openmm  # noqa: F401  (torch before OpenMM)
from openmm import app

from ..data.datasets import CGDataset, hdf5_writer, open_hdf5, read_reference
from ..errors import InputError
from ..mapping.cgmap import CGMapping, build_mapping
from .clustering import bead_bonds, cluster_bond_graph


def chain_mapping(sequence: str, assignment: np.ndarray, monomer_masses_amu) -> CGMapping:
    """The map of one linear chain (one residue and particle per monomer, named by its type) onto its beads:
    centres of mass of each bead's monomers, and their summed forces."""
    topology = app.Topology()
    chain = topology.addChain()
    atoms = [topology.addAtom(letter, None, topology.addResidue(letter, chain)) for letter in sequence]
    for first, second in zip(atoms[:-1], atoms[1:]):
        topology.addBond(first, second)
    groups = [np.flatnonzero(np.asarray(assignment) == bead).tolist() for bead in range(int(np.max(assignment)) + 1)]
    return build_mapping(topology, groups, "com", bead_names=[f"B{bead}" for bead in range(len(groups))],
                         atom_masses_amu=np.broadcast_to(np.asarray(monomer_masses_amu, dtype=np.float64),
                                                         (len(sequence),)))


@dataclass
class ChainData:
    sequence: str                    # one letter per monomer (its type)
    assignment: np.ndarray           # (n_monomers,) bead of every monomer
    dataset: CGDataset               # the chain's frames: bead positions (nm), forces (kJ/mol/nm), its mapping

    @classmethod
    def from_frames(cls, sequence: str, assignment: np.ndarray, positions_nm: np.ndarray,
                    forces_kJ_per_mol_nm: np.ndarray, monomer_masses_amu, temperature_K: float,
                    name: str = "chain") -> "ChainData":
        """A chain from bead frames that are already mapped (frames, beads, 3)."""
        positions_nm = np.asarray(positions_nm, dtype=np.float32)
        return cls(sequence, np.asarray(assignment), CGDataset(
            positions_nm, np.asarray(forces_kJ_per_mol_nm, dtype=np.float32), np.zeros(len(positions_nm), np.int32),
            float(temperature_K), chain_mapping(sequence, assignment, monomer_masses_amu), [name]))

    @property
    def positions_nm(self) -> np.ndarray:
        return self.dataset.positions_nm

    @property
    def forces_kJ_per_mol_nm(self) -> np.ndarray:
        return self.dataset.forces_kJ_per_mol_nm

    @property
    def bead_masses_amu(self) -> np.ndarray:
        return self.dataset.mapping.masses_amu

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
                chain.dataset.write_group(group)
                group.attrs["sequence"] = chain.sequence
                group["assignment"] = chain.assignment
        return Path(path)

    @classmethod
    def load(cls, path) -> "PolymerCGData":
        with open_hdf5(path) as h5:
            metadata = json.loads(h5.attrs.get("metadata", "{}"))
            if metadata.get("kind") != "polymer_cg_data":
                raise InputError(f"{path} is not a polymer CG data file (build one with build_polymer_cg_data)")
            chains = [ChainData(str(h5[name].attrs["sequence"]), h5[name]["assignment"][()],
                                CGDataset.read_group(h5[name], f"{path}:{name}")) for name in sorted(h5.keys())]
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
    chains: List[ChainData] = []
    metadata = {}
    for path in reference_paths:
        reference = read_reference(path)
        metadata = reference.metadata
        if "polymer_set" not in metadata:
            raise InputError(f"{path} is not a polymer reference (its metadata has no polymer_set)")
        with open_hdf5(path) as h5:
            masses = np.asarray(h5.attrs["masses_amu"], dtype=np.float64)
        for chain in reference.topology.chains():
            atoms = [atom.index for atom in chain.atoms()]
            first, end = atoms[0], atoms[-1] + 1
            if atoms != list(range(first, end)):
                raise InputError(f"{path}: chain {chain.index} is not contiguous")
            sequence = "".join(atom.residue.name for atom in chain.atoms())
            n = end - first
            assignment = cluster_bond_graph(n, [(k, k + 1) for k in range(n - 1)], particles_per_bead)
            mapping = chain_mapping(sequence, assignment, masses[first:end])
            chains.append(ChainData(sequence, assignment, CGDataset(
                mapping.map_positions(reference.positions_nm[:, first:end].astype(np.float64)).astype(np.float32),
                mapping.map_forces(reference.forces_kJ_per_mol_nm[:, first:end].astype(np.float64)).astype(np.float32),
                np.zeros(len(reference.positions_nm), np.int32), reference.temperature_K, mapping,
                [f"{reference.name}/chain{chain.index}"])))
    if not chains:
        raise InputError("no reference files given")
    return PolymerCGData(chains, float(metadata["save_interval_ps"]), float(metadata["temperature_K"]),
                         sorted(metadata["monomers"]), particles_per_bead, metadata)
