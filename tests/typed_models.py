"""Typed (transferable) models with known parameters for the tests: a toy family of chain molecules made of
three bead types (MOL:A, MOL:B, MOL:C) and one-bead species for mixtures."""
from itertools import product

import numpy as np
import torch
from openmm import app

from openmm_cg.export import save_model
from openmm_cg.nn.kinds import file_metadata
from openmm_cg.nn.schnet import SchNetConfig
from openmm_cg.nn.typed import TypedCGModule
from openmm_cg.priors.typed import TermRules, TypedPriors, canonical

TYPES = ["MOL:A", "MOL:B", "MOL:C"]
MASSES = [12.0, 14.0, 16.0]
BOND_NM = 0.38


def toy_priors(types=TYPES, cutoff_nm: float = 1.0, rules: TermRules = None) -> TypedPriors:
    """A class for every type combination, parameters that differ by class (so a wrong lookup shows)."""
    rules = rules or TermRules(n_dihedral_terms=2)
    code = {name: k + 1 for k, name in enumerate(types)}
    priors = TypedPriors(rules, cutoff_nm)
    for key in {canonical(k) for k in product(types, repeat=2)}:
        s = sum(code[t] for t in key)
        priors.bonds[key] = (3000.0 + 100.0 * s, BOND_NM + 0.005 * s)
        priors.repulsion[key] = 1e-4 * s
    for key in {canonical(k) for k in product(types, repeat=3)}:
        s = code[key[0]] + 2 * code[key[1]] + code[key[2]]
        priors.angles[key] = (60.0 + 5.0 * s, 1.8 + 0.02 * s)
    for key in {canonical(k) for k in product(types, repeat=4)}:
        s = code[key[0]] + 2 * code[key[1]] + 3 * code[key[2]] + 4 * code[key[3]]
        priors.dihedrals[key] = ([0.5 + 0.1 * s, 0.2], [0.1 * s, -0.3])
    return priors


def toy_typed_module(priors: TypedPriors = None, types=TYPES, masses=MASSES, seed: int = 0,
                     network: bool = True) -> TypedCGModule:
    torch.manual_seed(seed)
    priors = priors or toy_priors(types)
    config = SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff_nm=priors.cutoff_nm,
                          n_output_hidden=8) if network else None
    module = TypedCGModule(list(types), list(masses), priors, config, energy_scale_kJ_per_mol=2.0)
    if network:
        torch.nn.init.normal_(module.network.output[-1].weight, std=0.5)  # a network with an energy to test
    return module


def save_typed(module: TypedCGModule, path, dtype: str = "float64"):
    return save_model(module, file_metadata(module, [300.0], "toy"), path, dtype=dtype)


def chain_topology(sequences, residue: str = "MOL", box_nm=None) -> app.Topology:
    """One chain (molecule) per sequence of bead names, bonded in order."""
    topology = app.Topology()
    for sequence in sequences:
        chain = topology.addChain()
        res = topology.addResidue(residue, chain)
        atoms = [topology.addAtom(name, None, res) for name in sequence]
        for a, b in zip(atoms[:-1], atoms[1:]):
            topology.addBond(a, b)
    if box_nm is not None:
        from openmm import Vec3, unit

        topology.setPeriodicBoxVectors([Vec3(box_nm, 0, 0), Vec3(0, box_nm, 0), Vec3(0, 0, box_nm)] * unit.nanometer)
    return topology


def chain_positions(n_beads: int, rng, start=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A self-avoiding-ish random walk of bond length ~0.38 nm with angles near 110 degrees (nm)."""
    x = [np.asarray(start, dtype=np.float64)]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for _ in range(n_beads - 1):
        trial = direction + 0.9 * rng.normal(size=3)
        trial /= np.linalg.norm(trial)
        direction = trial
        x.append(x[-1] + BOND_NM * direction * rng.uniform(0.97, 1.03))
    return np.array(x)


MIXTURE_TYPES = ["MXA:A", "MXB:B"]


def mixture_module(cutoff_nm: float = 0.9) -> TypedCGModule:
    """Two one-bead species with soft repulsions of different sizes (walls near 0.30, 0.33 and 0.36 nm) and a
    small random network: a binary fluid."""
    priors = TypedPriors(TermRules(), cutoff_nm)
    for (a, b), wall_nm in {("MXA:A", "MXA:A"): 0.30, ("MXA:A", "MXB:B"): 0.33, ("MXB:B", "MXB:B"): 0.36}.items():
        priors.repulsion[(a, b)] = 2.5 * wall_nm ** 6 * 4.0  # 4 kT at the wall, 300 K
    torch.manual_seed(1)
    config = SchNetConfig(n_features=8, n_interactions=1, n_rbf=8, cutoff_nm=cutoff_nm, n_output_hidden=8)
    module = TypedCGModule(MIXTURE_TYPES, [40.0, 60.0], priors, config, energy_scale_kJ_per_mol=1.0)
    torch.nn.init.normal_(module.network.output[-1].weight, std=0.05)
    return module


def mixture_topology(n_per_side: int, box_nm: float) -> app.Topology:
    """n_per_side^3 one-bead molecules, A and B alternating, in a cubic box."""
    from openmm import Vec3, unit

    topology = app.Topology()
    chain = topology.addChain()
    for k in range(n_per_side ** 3):
        residue = topology.addResidue("MXA" if k % 2 == 0 else "MXB", chain)
        topology.addAtom("A" if k % 2 == 0 else "B", None, residue)
    topology.setPeriodicBoxVectors([Vec3(box_nm, 0, 0), Vec3(0, box_nm, 0), Vec3(0, 0, box_nm)] * unit.nanometer)
    return topology
