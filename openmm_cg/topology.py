"""Topologies as plain JSON (stored in HDF5 files and model metadata) and replicated for batches."""
import json
from typing import List

from ._runtime import openmm
from openmm import app


def topology_to_dict(topology: app.Topology) -> dict:
    chains = []
    for chain in topology.chains():
        residues = []
        for residue in chain.residues():
            atoms = [
                {"name": atom.name, "element": atom.element.symbol if atom.element is not None else None}
                for atom in residue.atoms()
            ]
            residues.append({"name": residue.name, "id": residue.id, "atoms": atoms})
        chains.append({"id": chain.id, "residues": residues})
    bonds = [[bond.atom1.index, bond.atom2.index] for bond in topology.bonds()]
    return {"chains": chains, "bonds": bonds}


def topology_from_dict(data: dict) -> app.Topology:
    topology = app.Topology()
    atoms = []
    for chain_data in data["chains"]:
        chain = topology.addChain(chain_data.get("id"))
        for residue_data in chain_data["residues"]:
            residue = topology.addResidue(residue_data["name"], chain, residue_data.get("id"))
            for atom_data in residue_data["atoms"]:
                symbol = atom_data["element"]
                element = app.Element.getBySymbol(symbol) if symbol else None
                atoms.append(topology.addAtom(atom_data["name"], element, residue))
    for i, j in data["bonds"]:
        topology.addBond(atoms[i], atoms[j])
    return topology


def topology_to_json(topology: app.Topology) -> str:
    return json.dumps(topology_to_dict(topology))


def topology_from_json(text: str) -> app.Topology:
    return topology_from_dict(json.loads(text))


def replicate_topology(topology: app.Topology, n_replicas: int) -> app.Topology:
    """A topology holding ``n_replicas`` independent copies of ``topology`` (one chain set each)."""
    if n_replicas < 1:
        raise ValueError("n_replicas must be at least 1")
    data = topology_to_dict(topology)
    n_atoms = topology.getNumAtoms()
    replicated = {"chains": [], "bonds": []}
    for replica in range(n_replicas):
        for chain in data["chains"]:
            replicated["chains"].append(dict(chain, id=_chain_id(len(replicated["chains"]))))
        replicated["bonds"].extend([[i + replica * n_atoms, j + replica * n_atoms] for i, j in data["bonds"]])
    return topology_from_dict(replicated)


def _chain_id(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index % 26] + ("" if index < 26 else str(index // 26))


def bonds_array(topology: app.Topology):
    import numpy as np

    return np.array([[b.atom1.index, b.atom2.index] for b in topology.bonds()], dtype=np.int64).reshape(-1, 2)


def md_topology(topology):
    """An mdtraj ``Topology`` of an ``openmm.app.Topology`` (or the mdtraj one itself)."""
    import mdtraj

    return topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)


def bead_type_keys(topology) -> List[str]:
    """The type key ``"RESNAME:BEADNAME"`` (residue name, colon, atom name) of every bead (atom), in order,
    of an ``openmm.app.Topology`` or an mdtraj ``Topology``."""
    atoms = topology.atoms() if callable(topology.atoms) else topology.atoms
    return [f"{atom.residue.name}:{atom.name}" for atom in atoms]


ANY_RESIDUE = "*"


def resolve_bead_types(keys: List[str], type_names, own_type_keys=()) -> tuple:
    """Each bead's type among ``type_names``, from its key ``"RESNAME:BEADNAME"``: the type of that exact key, else
    the type ``"*:BEADNAME"`` (the bead name in any residue without a type of its own). Keys in ``own_type_keys``
    (chemically distinct beads, such as glycine's CA) only ever take their own type: a model that lacks it does not
    know them. Returns (types, the keys that resolve to no type, sorted)."""
    known, own = set(type_names), set(own_type_keys)
    types, unknown = [], set()
    for key in keys:
        bead = key.split(":", 1)[-1]
        generic = f"{ANY_RESIDUE}:{bead}"
        if key in known:
            types.append(key)
        elif generic in known and key not in own:
            types.append(generic)
        else:
            types.append(None)
            unknown.add(key)
    return types, sorted(unknown)
