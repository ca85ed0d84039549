"""All-atom peptides from a sequence, or from a user's PDB, ready for reference MD.

Geometry comes from PeptideBuilder (an extended chain from ideal internal coordinates); hydrogens come from
OpenMM's ``Modeller`` with the force field's templates (histidine takes the protonation state ``Modeller``
assigns at pH 7). The caps are acetyl (ACE) and N-methylamide (NME): the chain is built with a glycine at
each end, whose N-terminal one keeps only its carbonyl and methyl carbon (ACE) and whose C-terminal one keeps
only its amide nitrogen and methyl carbon (NME).

Sequences are one-letter codes (``"AY"``) or three-letter codes separated by ``-``, spaces or commas
(``"ALA-TYR"``; ``"ACE-ALA-TYR-NME"`` names the caps explicitly, which are the default anyway). A single
token that is a three-letter code (``"ALA"``) is that residue, not a one-letter tripeptide (``"A L A"`` is).
"""
import io
import re
from typing import List, Sequence, Tuple

import numpy as np

from .._runtime import openmm
from openmm import app, unit

from ..errors import InputError

ONE_LETTER = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS",
    "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
    "Y": "TYR", "V": "VAL",
}
THREE_LETTER = {three: one for one, three in ONE_LETTER.items()}
CAPS = ("ACE", "NME")
# Heavy atoms of each amino acid besides the backbone N, CA, C, O (PDB names).
SIDE_CHAIN_HEAVY_ATOMS = {
    "ALA": ["CB"], "ARG": ["CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"], "ASN": ["CB", "CG", "OD1", "ND2"],
    "ASP": ["CB", "CG", "OD1", "OD2"], "CYS": ["CB", "SG"], "GLN": ["CB", "CG", "CD", "OE1", "NE2"],
    "GLU": ["CB", "CG", "CD", "OE1", "OE2"], "GLY": [], "HIS": ["CB", "CG", "ND1", "CD2", "CE1", "NE2"],
    "ILE": ["CB", "CG1", "CG2", "CD1"], "LEU": ["CB", "CG", "CD1", "CD2"], "LYS": ["CB", "CG", "CD", "CE", "NZ"],
    "MET": ["CB", "CG", "SD", "CE"], "PHE": ["CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"],
    "PRO": ["CB", "CG", "CD"], "SER": ["CB", "OG"], "THR": ["CB", "OG1", "CG2"],
    "TRP": ["CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"],
    "TYR": ["CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"], "VAL": ["CB", "CG1", "CG2"],
}
CAP_HEAVY_ATOMS = {"ACE": ["CH3", "C", "O"], "NME": ["N", "C"]}
# Histidine variants and other names force fields give residues that are still the standard amino acid.
RESIDUE_ALIASES = {"HID": "HIS", "HIE": "HIS", "HIP": "HIS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS",
                   "CYX": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS"}
DEFAULT_FORCEFIELD = ("amber14-all.xml", "implicit/gbn2.xml")


def parse_sequence(sequence: str) -> List[str]:
    """The three-letter names of a sequence's amino acids, caps left out. Raises ``InputError`` for an empty
    sequence or unknown codes (all of them listed)."""
    text = (sequence or "").strip().upper()
    if not text:
        raise InputError("the sequence is empty: give one-letter codes (AY) or three-letter codes (ALA-TYR)")
    tokens = [t for t in re.split(r"[\s,\-]+", text) if t]
    three_letter = len(tokens) > 1 or tokens[0] in THREE_LETTER or tokens[0] in CAPS
    if not three_letter or all(len(t) == 1 for t in tokens):
        letters = "".join(tokens)
        unknown = sorted({c for c in letters if c not in ONE_LETTER})
        if unknown:
            raise InputError(f"unknown one-letter residue codes {unknown} in {sequence!r}; known: "
                             f"{''.join(sorted(ONE_LETTER))}")
        residues = [ONE_LETTER[c] for c in letters]
    else:
        if tokens and tokens[0] == "ACE":
            tokens = tokens[1:]
        if tokens and tokens[-1] == "NME":
            tokens = tokens[:-1]
        unknown = sorted({t for t in tokens if t not in THREE_LETTER})
        if unknown:
            raise InputError(f"unknown residue codes {unknown} in {sequence!r}; known: {', '.join(sorted(THREE_LETTER))} "
                             "(caps ACE/NME only at the ends)")
        residues = tokens
    if not residues:
        raise InputError(f"{sequence!r} has caps but no amino acid")
    return residues


def sequence_name(residues: Sequence[str]) -> str:
    """The one-letter name of a residue list (``["ALA", "TYR"]`` -> ``"AY"``)."""
    return "".join(THREE_LETTER[r] for r in residues)


def build_peptide(sequence: str, forcefield_files: Sequence[str] = DEFAULT_FORCEFIELD) -> Tuple[app.Topology, np.ndarray]:
    """(Topology, positions in nm) of the capped peptide ACE-sequence-NME with all hydrogens."""
    from Bio.PDB import PDBIO
    from PeptideBuilder import PeptideBuilder

    residues = parse_sequence(sequence)
    n = len(residues) + 2
    # An extended, trans chain (phi -120, psi 140, omega 180); minimisation and equilibration do the rest.
    structure = PeptideBuilder.make_structure("G" + sequence_name(residues) + "G", [-120.0] * (n - 1),
                                              [140.0] * (n - 1), [180.0] * (n - 1))
    chain = list(structure.get_residues())
    _to_cap(chain[0], "ACE", {"CA": "CH3", "C": "C", "O": "O"})
    _to_cap(chain[-1], "NME", {"N": "N", "CA": "C"})
    writer = PDBIO()
    writer.set_structure(structure)
    text = io.StringIO()
    writer.save(text)
    pdb = app.PDBFile(io.StringIO(text.getvalue()))
    return add_hydrogens(pdb.topology, pdb.positions, forcefield_files)


def _to_cap(residue, name: str, keep: dict) -> None:
    for atom in list(residue):
        if atom.get_id() not in keep:
            residue.detach_child(atom.get_id())
    for atom in list(residue):
        new = keep[atom.get_id()]
        atom.id, atom.name, atom.fullname = new, new, f" {new:<3}"
    residue.resname = name


def check_heavy_atoms(topology: app.Topology) -> None:
    """Refuse a protein topology with missing heavy atoms, naming each residue and atom."""
    missing = []
    for residue in topology.residues():
        name = RESIDUE_ALIASES.get(residue.name, residue.name)
        if name in CAP_HEAVY_ATOMS:
            expected = CAP_HEAVY_ATOMS[name]
        elif name in SIDE_CHAIN_HEAVY_ATOMS:
            expected = ["N", "CA", "C", "O"] + SIDE_CHAIN_HEAVY_ATOMS[name]
        else:
            continue  # not an amino acid (water, ions, ligands): the force field's templates judge it
        present = {atom.name for atom in residue.atoms()}
        absent = [atom for atom in expected if atom not in present]
        if absent:
            missing.append(f"{residue.name}{residue.id} (chain {residue.chain.id}): {', '.join(absent)}")
    if missing:
        raise InputError("the structure misses heavy atoms: " + "; ".join(missing) + ". Rebuild them first, e.g. with "
                         "PDBFixer (pdbfixer in.pdb --add-atoms=heavy --output=fixed.pdb) or Modeller.")


def add_hydrogens(topology: app.Topology, positions, forcefield_files: Sequence[str] = DEFAULT_FORCEFIELD):
    """(Topology, positions in nm) with the hydrogens the force field's templates want, after checking that no
    heavy atom is missing."""
    import random

    check_heavy_atoms(topology)
    forcefield = app.ForceField(*forcefield_files)
    modeller = app.Modeller(topology, positions)
    # Modeller places new hydrogens with Python's global random numbers, then minimises them. A fixed seed and
    # the CPU platform with one thread (sums in a fixed order, on a GPU machine too) make the structure, and so
    # every run started from it, reproducible to the bit; the caller's random stream and thread default are
    # restored.
    cpu = openmm.Platform.getPlatformByName("CPU")
    threads = cpu.getPropertyDefaultValue("Threads")
    state = random.getstate()
    random.seed(0)
    cpu.setPropertyDefaultValue("Threads", "1")
    try:
        modeller.addHydrogens(forcefield, pH=7.0, platform=cpu)
    finally:
        random.setstate(state)
        cpu.setPropertyDefaultValue("Threads", threads)
    positions_nm = np.array(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    return modeller.topology, positions_nm
