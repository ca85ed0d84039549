"""Linear atom -> bead maps and the matching force maps.

A CG map is a pair of matrices over atoms: ``position_weights`` (beads x atoms, rows sum to 1: slice,
centre of mass or centre of geometry) and ``force_weights`` (beads x atoms, 0/1: which atoms' forces
are summed into each bead). For thermodynamic consistency of force matching the two must satisfy
``force_weights @ position_weights.T = identity``, and every atom that contributes to a bead's
position contributes its force to that bead only (Noid et al., JCP 128, 244114 (2008)). Hydrogens
that belong to no bead's position are added to the force group of the bead holding the heavy atom
they are bonded to: this is allowed by the condition above, lowers the noise of the mapped forces,
and makes the (unreported) constraint forces of X-H bond constraints cancel inside each bead.
"""
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .._runtime import openmm
from openmm import app

from ..errors import InputError
from ..topology import md_topology, topology_from_dict, topology_to_dict
from ..units import ALL_ATOM_BOND_RANGE_NM, check_bond_lengths_nm

METHODS = ("slice", "com", "cog")


@dataclass
class CGMapping:
    bead_names: List[str]
    bead_types: List[int]
    type_names: List[str]
    position_weights: np.ndarray  # (n_beads, n_atoms)
    force_weights: np.ndarray  # (n_beads, n_atoms)
    masses_amu: np.ndarray  # (n_beads,)
    cg_bonds: np.ndarray  # (n_bonds, 2) bead indices
    cg_topology_dict: dict = field(repr=False)
    method: str = "slice"
    n_atoms: int = 0
    # RESNAME:BEADNAME keys that always have a type of their own, never a "*:BEADNAME" type (topology.resolve_bead_types)
    own_type_keys: List[str] = field(default_factory=list)

    @property
    def n_beads(self) -> int:
        return len(self.bead_names)

    @property
    def cg_topology(self) -> app.Topology:
        return topology_from_dict(self.cg_topology_dict)

    def position_groups(self) -> List[List[int]]:
        return [np.flatnonzero(row).tolist() for row in self.position_weights]

    def force_groups(self) -> List[List[int]]:
        return [np.flatnonzero(row).tolist() for row in self.force_weights]

    def map_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """(frames, atoms, 3) or (atoms, 3) in nm -> beads, same leading shape."""
        positions_nm = self._check_atoms(positions_nm, "positions")
        return np.einsum("ba,...ax->...bx", self.position_weights, positions_nm).astype(positions_nm.dtype)

    def map_forces(self, forces: np.ndarray) -> np.ndarray:
        forces = self._check_atoms(forces, "forces")
        return np.einsum("ba,...ax->...bx", self.force_weights, forces).astype(forces.dtype)

    def _check_atoms(self, array: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim not in (2, 3) or array.shape[-1] != 3 or array.shape[-2] != self.n_atoms:
            raise InputError(
                f"{what} have shape {array.shape}; this mapping expects (frames, {self.n_atoms}, 3) or ({self.n_atoms}, 3)"
            )
        return array

    def check_constraints(self, system: openmm.System) -> None:
        """Refuse if constraint forces would not cancel in the mapped forces.

        OpenMM's reported forces omit constraint forces. Summing them per bead is only right if both
        atoms of every constraint give their force to the same bead (or both to none).
        """
        if system.getNumParticles() != self.n_atoms:
            raise InputError(f"system has {system.getNumParticles()} particles, mapping expects {self.n_atoms}")
        bead_of_atom = np.full(self.n_atoms, -1)
        for bead, group in enumerate(self.force_groups()):
            bead_of_atom[group] = bead
        for k in range(system.getNumConstraints()):
            i, j, _ = system.getConstraintParameters(k)
            if bead_of_atom[i] != bead_of_atom[j]:
                raise InputError(
                    f"constraint {k} between atoms {i} and {j} crosses beads ({bead_of_atom[i]} vs {bead_of_atom[j]}, "
                    "-1 = no bead): its constraint force would not cancel in the mapped forces. Aggregate the "
                    "constrained atoms into one bead, or generate the reference without constraints."
                )

    def check_force_map(self, tolerance: float = 1e-10) -> None:
        product = self.force_weights @ self.position_weights.T
        if not np.allclose(product, np.eye(self.n_beads), atol=tolerance):
            raise InputError("force map is inconsistent with the position map (force_weights @ position_weights.T != I)")

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "n_atoms": self.n_atoms,
            "bead_names": list(self.bead_names),
            "bead_types": [int(t) for t in self.bead_types],
            "type_names": list(self.type_names),
            "position_groups": self.position_groups(),
            "position_weights": [self.position_weights[b, g].tolist() for b, g in enumerate(self.position_groups())],
            "force_groups": self.force_groups(),
            "masses_amu": self.masses_amu.tolist(),
            "cg_bonds": self.cg_bonds.tolist(),
            "cg_topology": self.cg_topology_dict,
            **({"own_type_keys": list(self.own_type_keys)} if self.own_type_keys else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CGMapping":
        n_beads, n_atoms = len(data["bead_names"]), data["n_atoms"]
        position_weights = np.zeros((n_beads, n_atoms))
        force_weights = np.zeros((n_beads, n_atoms))
        for bead, (group, weights) in enumerate(zip(data["position_groups"], data["position_weights"])):
            position_weights[bead, group] = weights
        for bead, group in enumerate(data["force_groups"]):
            force_weights[bead, group] = 1.0
        return cls(
            bead_names=list(data["bead_names"]), bead_types=list(data["bead_types"]), type_names=list(data["type_names"]),
            position_weights=position_weights, force_weights=force_weights,
            masses_amu=np.asarray(data["masses_amu"], dtype=np.float64),
            cg_bonds=np.asarray(data["cg_bonds"], dtype=np.int64).reshape(-1, 2),
            cg_topology_dict=data["cg_topology"], method=data["method"], n_atoms=n_atoms,
            own_type_keys=list(data.get("own_type_keys", [])),
        )


def _select(md_topology, selection) -> List[int]:
    if isinstance(selection, str):
        try:
            atoms = md_topology.select(selection).tolist()
        except Exception as error:  # mdtraj raises several types for bad selection strings
            raise InputError(f"cannot parse selection {selection!r}: {error}") from None
    else:
        atoms = [int(a) for a in selection]
        bad = [a for a in atoms if not 0 <= a < md_topology.n_atoms]
        if bad:
            raise InputError(f"atom indices {bad} are out of range for a topology of {md_topology.n_atoms} atoms")
    if not atoms:
        raise InputError(f"selection {selection!r} selects no atoms")
    if len(set(atoms)) != len(atoms):
        raise InputError(f"selection {selection!r} names an atom more than once")
    return atoms


def build_mapping(
    topology,
    selections: Sequence,
    method: str = "slice",
    bead_names: Optional[Sequence[str]] = None,
    bead_types: Optional[Sequence[int]] = None,
    masses_amu: Optional[Sequence[float]] = None,
    aggregate_hydrogens: bool = True,
    atom_masses_amu: Optional[Sequence[float]] = None,
    type_names: Optional[Sequence[str]] = None,
    own_type_keys: Sequence[str] = (),
) -> CGMapping:
    """Build a CG map from one mdtraj selection string (or atom index list) per bead.

    ``method``: "slice" (each selection picks exactly one atom), "com" (centre of mass) or "cog"
    (centre of geometry). ``masses_amu`` defaults to the sum of the masses of each bead's force group
    (for slices: the atom plus its aggregated hydrogens). ``bead_types`` defaults to one type per
    distinct (residue name, bead name) pair, named ``"RESNAME:BEADNAME"``; ``type_names`` names the types of given
    ``bead_types`` (default ``"type0"``, ...), and ``own_type_keys`` the keys that never take a ``"*:BEAD"`` type.
    ``atom_masses_amu`` replaces the element masses (particles
    without an element, such as the monomers of a bead-spring model, take their System's masses).
    """
    if method not in METHODS:
        raise InputError(f"mapping method must be one of {METHODS}, got {method!r}")
    md_top = md_topology(topology)
    n_atoms = md_top.n_atoms
    groups = [_select(md_top, selection) for selection in selections]
    if not groups:
        raise InputError("a mapping needs at least one bead")
    owner = np.full(n_atoms, -1)
    for bead, group in enumerate(groups):
        for atom in group:
            if owner[atom] >= 0:
                raise InputError(
                    f"atom {atom} ({md_top.atom(atom)}) is selected by bead {owner[atom]} and bead {bead}: "
                    "beads must not share atoms"
                )
            owner[atom] = bead
        if method == "slice" and len(group) != 1:
            raise InputError(f"a slice mapping needs exactly one atom per bead; selection {selections[bead]!r} has {len(group)}")

    atom_masses = np.array([a.element.mass if a.element is not None else 0.0 for a in md_top.atoms])
    if atom_masses_amu is not None:
        atom_masses = np.asarray(atom_masses_amu, dtype=np.float64)
        if atom_masses.shape != (n_atoms,) or (atom_masses <= 0).any():
            raise InputError(f"atom_masses_amu needs one positive mass per atom ({n_atoms})")
    position_weights = np.zeros((len(groups), n_atoms))
    for bead, group in enumerate(groups):
        if method == "com":
            masses = atom_masses[group]
            if masses.sum() <= 0:
                raise InputError(f"bead {bead} has zero mass; use method='cog'")
            position_weights[bead, group] = masses / masses.sum()
        else:
            position_weights[bead, group] = 1.0 / len(group)

    force_owner = owner.copy()
    if aggregate_hydrogens:
        for bond in md_top.bonds:
            a, b = bond[0], bond[1]
            for heavy, hydrogen in ((a, b), (b, a)):
                if hydrogen.element is not None and hydrogen.element.symbol == "H" and force_owner[hydrogen.index] < 0 \
                        and owner[heavy.index] >= 0:
                    force_owner[hydrogen.index] = owner[heavy.index]
    force_weights = np.zeros_like(position_weights)
    for atom, bead in enumerate(force_owner):
        if bead >= 0:
            force_weights[bead, atom] = 1.0

    names = list(bead_names) if bead_names is not None else [md_top.atom(group[0]).name if method == "slice"
                                                              else f"B{bead}" for bead, group in enumerate(groups)]
    if len(names) != len(groups):
        raise InputError(f"{len(names)} bead names for {len(groups)} beads")
    residue_names = [md_top.atom(group[0]).residue.name for group in groups]
    if bead_types is None:
        keys = list(zip(residue_names, names))
        distinct = list(dict.fromkeys(keys))
        bead_types = [distinct.index(key) for key in keys]
        type_names = [f"{res}:{name}" for res, name in distinct]
    else:
        bead_types = [int(t) for t in bead_types]
        if len(bead_types) != len(groups) or min(bead_types) < 0:
            raise InputError("bead_types needs one non-negative integer per bead")
        n_types = max(bead_types) + 1
        type_names = list(type_names) if type_names is not None else [f"type{t}" for t in range(n_types)]
        if len(type_names) < n_types or len(set(type_names)) != len(type_names):
            raise InputError(f"type_names needs {n_types} distinct names, got {type_names}")
    if masses_amu is None:
        masses = force_weights @ atom_masses
    else:
        masses = np.asarray(masses_amu, dtype=np.float64)
        if masses.shape != (len(groups),) or (masses <= 0).any():
            raise InputError("masses_amu needs one positive mass per bead")

    cg_bonds = _cg_bonds(md_top, owner, len(groups))
    cg_topology = _cg_topology(md_top, groups, names, cg_bonds, method)
    mapping = CGMapping(
        bead_names=names, bead_types=list(bead_types), type_names=type_names, position_weights=position_weights,
        force_weights=force_weights, masses_amu=np.asarray(masses, dtype=np.float64), cg_bonds=cg_bonds,
        cg_topology_dict=topology_to_dict(cg_topology), method=method, n_atoms=n_atoms,
        own_type_keys=sorted(own_type_keys),
    )
    mapping.check_force_map()
    return mapping


def _cg_bonds(md_top, owner: np.ndarray, n_beads: int) -> np.ndarray:
    """Beads I, J are bonded when an all-atom bond path joins them through atoms of no bead."""
    neighbors = [[] for _ in range(md_top.n_atoms)]
    for bond in md_top.bonds:
        neighbors[bond[0].index].append(bond[1].index)
        neighbors[bond[1].index].append(bond[0].index)
    bonds = set()
    for bead in range(n_beads):
        start = np.flatnonzero(owner == bead).tolist()
        seen, queue = set(start), deque(start)
        while queue:
            atom = queue.popleft()
            for nxt in neighbors[atom]:
                if nxt in seen:
                    continue
                seen.add(nxt)
                if owner[nxt] >= 0:
                    if owner[nxt] != bead:
                        bonds.add(tuple(sorted((bead, int(owner[nxt])))))
                else:
                    queue.append(nxt)
    return np.array(sorted(bonds), dtype=np.int64).reshape(-1, 2)


def _cg_topology(md_top, groups, names, cg_bonds, method) -> app.Topology:
    topology = app.Topology()
    chain_map, residue_map, atoms = {}, {}, []
    for group, name in zip(groups, names):
        first = md_top.atom(group[0])
        residue = first.residue
        if residue.chain.index not in chain_map:
            chain_map[residue.chain.index] = topology.addChain()
        if residue.index not in residue_map:
            residue_map[residue.index] = topology.addResidue(residue.name, chain_map[residue.chain.index],
                                                             str(residue.resSeq))
        element = None
        if method == "slice" and first.element is not None:
            element = app.Element.getBySymbol(first.element.symbol)
        atoms.append(topology.addAtom(name, element, residue_map[residue.index]))
    for i, j in cg_bonds:
        topology.addBond(atoms[i], atoms[j])
    return topology


def map_and_check(mapping: CGMapping, positions_nm: np.ndarray, forces: np.ndarray, aa_bonds: np.ndarray, what: str):
    """Validate an all-atom trajectory (shapes, finiteness, nm) and map it to beads."""
    positions_nm, forces = np.asarray(positions_nm), np.asarray(forces)
    if positions_nm.shape != forces.shape:
        raise InputError(f"{what}: positions {positions_nm.shape} and forces {forces.shape} have different shapes")
    bad_frames = np.flatnonzero(~np.isfinite(forces).all(axis=(-1, -2)) | ~np.isfinite(positions_nm).all(axis=(-1, -2)))
    if len(bad_frames):
        raise InputError(f"{what}: NaN/Inf in frames {bad_frames[:10].tolist()}{' ...' if len(bad_frames) > 10 else ''}")
    check_bond_lengths_nm(positions_nm, aa_bonds, ALL_ATOM_BOND_RANGE_NM, what)
    return mapping.map_positions(positions_nm), mapping.map_forces(forces)


ALANINE_DIPEPTIDE_BACKBONE_CB = [
    "resname ACE and name C",
    "resname ALA and name N",
    "resname ALA and name CA",
    "resname ALA and name CB",
    "resname ALA and name C",
    "resname NME and name N",
]


def alanine_dipeptide_mapping(topology) -> CGMapping:
    """Capped alanine dipeptide: ACE C, N, CA, CB, C, NME N as slices (phi and psi stay defined; CB breaks the
    mirror symmetry)."""
    return build_mapping(topology, ALANINE_DIPEPTIDE_BACKBONE_CB, "slice")


PROTEIN_BACKBONE_BEADS = ("N", "CA", "C", "CB")
CAP_BEADS = {"ACE": (("CH3", "CH3"), ("C", "C")), "NME": (("N", "N"), ("C", "CH3"))}  # (atom, bead name)
# Bead types shared by every residue: the backbone N, CA and C (the acetyl C and N-methyl N included), except
# where the chemistry differs: glycine's CA (two hydrogens, no side chain) and proline's N (no hydrogen, in a
# ring). Every CB has its residue's type. Prior term classes of a new combination of known residues are then
# known classes, which is what lets one model bind to sequences it never saw.
RESIDUE_SPECIFIC_BACKBONE = {("GLY", "CA"), ("PRO", "N")}


def protein_backbone_mapping(topology) -> CGMapping:
    """Capped peptides and proteins: N, CA, C of every residue and CB of every residue but glycine, as slices
    (each bead at its atom, with its hydrogens' forces), plus the acetyl CH3 and C and the N-methyl N and CH3.
    Backbone phi/psi stay defined for every residue, and the CG topology keeps residue names and numbers, so
    ``mdtraj.compute_phi``/``compute_psi`` work on CG trajectories. Bead types: ``*:N``, ``*:CA``, ``*:C`` for
    the backbone (``GLY:CA`` and ``PRO:N`` their own), ``RESNAME:CB`` per residue, ``ACE:CH3`` and ``NME:CH3``."""
    from ..data.peptides import RESIDUE_ALIASES, SIDE_CHAIN_HEAVY_ATOMS

    md_top = md_topology(topology)
    selections, names, type_keys = [], [], []
    for residue in md_top.residues:
        atoms = {atom.name: atom.index for atom in residue.atoms}
        name = RESIDUE_ALIASES.get(residue.name, residue.name)
        if name in CAP_BEADS:
            wanted = CAP_BEADS[name]
        elif name in SIDE_CHAIN_HEAVY_ATOMS:
            wanted = [(bead, bead) for bead in PROTEIN_BACKBONE_BEADS if not (bead == "CB" and name == "GLY")]
        else:
            raise InputError(f"residue {residue} is neither an amino acid nor an ACE/NME cap: the protein backbone "
                             "mapping covers capped peptides and proteins only")
        absent = [atom for atom, _ in wanted if atom not in atoms]
        if absent:
            hint = " (only glycine has no CB)" if "CB" in absent else ""
            raise InputError(f"residue {residue} has no atom {', '.join(absent)}{hint}: the protein backbone mapping "
                             "needs it; rebuild missing heavy atoms first (e.g. PDBFixer)")
        for atom, bead in wanted:
            selections.append([atoms[atom]])
            names.append(bead)
            generic = bead in ("N", "CA", "C") and (name, bead) not in RESIDUE_SPECIFIC_BACKBONE
            type_keys.append(f"*:{bead}" if generic else f"{residue.name}:{bead}")
    distinct = list(dict.fromkeys(type_keys))
    return build_mapping(topology, selections, "slice", bead_names=names,
                         bead_types=[distinct.index(key) for key in type_keys], type_names=distinct,
                         own_type_keys=[f"{residue}:{bead}" for residue, bead in sorted(RESIDUE_SPECIFIC_BACKBONE)])


def molecule_com_mapping(topology) -> CGMapping:
    """One bead per molecule at its centre of mass, every atom's force summed into its molecule's bead.

    Molecules are the connected components of the bond graph; the bead is named after the molecule's
    residue, and molecules with the same residue name share a bead type.
    """
    md_top = md_topology(topology)
    molecules = [sorted(atom.index for atom in molecule) for molecule in md_top.find_molecules()]
    molecules.sort(key=lambda atoms: atoms[0])
    names = [md_top.atom(atoms[0]).residue.name for atoms in molecules]
    return build_mapping(topology, molecules, "com", bead_names=names)


def repeat_unit(mapping: CGMapping) -> dict:
    """The CG description of one molecule of a liquid of identical molecules (bead names, types, masses,
    topology), as a periodic model stores it; refuses mixtures, which one periodic model cannot describe."""
    n_beads, types = mapping.n_beads, np.asarray(mapping.bead_types)
    bonds = np.asarray(mapping.cg_bonds).reshape(-1, 2)
    for size in range(1, n_beads + 1):
        unit = np.arange(n_beads) % size
        if (n_beads % size == 0 and (types[unit] == types).all()
                and np.allclose(mapping.masses_amu[unit], mapping.masses_amu)
                and (bonds[:, 0] // size == bonds[:, 1] // size).all()):
            break
    molecule_bonds = [[int(i), int(j)] for i, j in bonds if i < size and j < size]
    if size == n_beads or len(bonds) != len(molecule_bonds) * (n_beads // size):
        raise InputError("the CG beads are not copies of one molecule: a periodic model needs a liquid of one "
                         "molecule type (bead types, masses and bonds repeated)")
    topology = app.Topology()
    residue = topology.addResidue(mapping.cg_topology_dict["chains"][0]["residues"][0]["name"], topology.addChain())
    atoms = [topology.addAtom(name, None, residue) for name in mapping.bead_names[:size]]
    for i, j in molecule_bonds:
        topology.addBond(atoms[i], atoms[j])
    return {
        "bead_names": mapping.bead_names[:size], "bead_types": types[:size].tolist(),
        "type_names": mapping.type_names, "masses_amu": mapping.masses_amu[:size].tolist(),
        "cg_topology": topology_to_dict(topology), "n_molecules_in_reference": n_beads // size,
    }


# The named mappings: name -> a function of the all-atom topology.
MAPPINGS = {"alanine_dipeptide": alanine_dipeptide_mapping, "molecule_com": molecule_com_mapping,
            "protein_backbone": protein_backbone_mapping}


def mapping_from_spec(topology, spec) -> CGMapping:
    """A mapping from a preset name, a YAML file path, or a dict {method, selections, names?, types?, masses?}."""
    import yaml
    from pathlib import Path

    if isinstance(spec, str) and spec in MAPPINGS:
        return MAPPINGS[spec](topology)
    if isinstance(spec, str):
        if not Path(spec).is_file():
            raise InputError(f"mapping {spec!r} is neither a named mapping ({sorted(MAPPINGS)}) nor a YAML file")
        spec = yaml.safe_load(Path(spec).read_text())
    if not isinstance(spec, dict) or "selections" not in spec:
        raise InputError("a mapping spec needs 'selections' (one mdtraj selection or atom list per bead)")
    unknown = set(spec) - {"method", "selections", "names", "types", "masses_amu", "aggregate_hydrogens"}
    if unknown:
        raise InputError(f"unknown mapping keys {sorted(unknown)}")
    return build_mapping(topology, spec["selections"], spec.get("method", "slice"), spec.get("names"),
                         spec.get("types"), spec.get("masses_amu"), spec.get("aggregate_hydrogens", True))
