"""Bead-spring polymer chains in implicit solvent: the fine-level systems of the learned-dynamics work.

Every chain is a linear sequence of monomers of a few types that differ in size and stickiness:
harmonic bonds, a weak harmonic bending term, and a truncated-and-shifted Lennard-Jones interaction
between monomers at least three bonds apart. The solvent is implicit (Langevin friction and noise),
so every chain is an isolated molecule: all chains of a set live in one OpenMM System (one Context
steps them all, which is far cheaper than one Context per small chain) with no interactions between
chains: the non-bonded pairs are listed per chain in a CustomBondForce. Chains sit on a grid 10 nm
apart only so that a trajectory viewer shows them separated.

A set is fixed by its seed: chain lengths are drawn uniformly from [min_length, max_length] and each
chain's monomer composition from a Dirichlet distribution, so sticky-rich chains collapse and the
others swell and the radius of gyration spreads across the set. Residue names carry the monomer type.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from .._runtime import openmm
from openmm import app

from ..errors import InputError


@dataclass(frozen=True)
class Monomer:
    sigma_nm: float
    epsilon_kJ_per_mol: float


# kT at 300 K is 2.49 kJ/mol: A is nearly athermal (good solvent), B is near the theta point, C is
# sticky (poor solvent) and larger.
MONOMERS: Dict[str, Monomer] = {"A": Monomer(0.45, 0.5), "B": Monomer(0.50, 2.0), "C": Monomer(0.55, 3.5)}
MONOMER_MASS_AMU = 100.0
BOND_LENGTH_NM = 0.5
BOND_K_KJ_PER_MOL_NM2 = 2000.0
ANGLE_K_KJ_PER_MOL_RAD2 = 4.0
LJ_CUTOFF_SIGMAS = 2.5
MIN_PAIR_SEPARATION = 3  # bonds between monomers that interact through Lennard-Jones
GRID_SPACING_NM = 10.0


@dataclass
class PolymerSetConfig:
    n_chains: int = 120
    min_length: int = 12
    max_length: int = 36
    seed: int = 0
    monomer_types: List[str] = field(default_factory=lambda: sorted(MONOMERS))

    def validate(self) -> None:
        if self.n_chains < 1 or not 4 <= self.min_length <= self.max_length:
            raise InputError("a polymer set needs n_chains >= 1 and 4 <= min_length <= max_length")
        unknown = sorted(set(self.monomer_types) - set(MONOMERS))
        if unknown or not self.monomer_types:
            raise InputError(f"unknown monomer types {unknown} (known: {sorted(MONOMERS)})")


def polymer_set_from_dict(data: dict) -> PolymerSetConfig:
    known = set(PolymerSetConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown polymer set options {unknown} (known: {sorted(known)})")
    config = PolymerSetConfig(**data)
    config.validate()
    return config


def chain_sequences(config: PolymerSetConfig) -> List[str]:
    """The monomer sequence of every chain of the set (deterministic in ``config.seed``)."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    types = list(config.monomer_types)
    sequences = []
    for _ in range(config.n_chains):
        length = int(rng.integers(config.min_length, config.max_length + 1))
        composition = rng.dirichlet(np.ones(len(types)))
        sequences.append("".join(rng.choice(types, size=length, p=composition)))
    return sequences


def build_polymer_system(config: PolymerSetConfig) -> Tuple[openmm.System, app.Topology, np.ndarray]:
    """(System, Topology, positions nm) of every chain of the set, non-interacting, in one System."""
    return build_chains_system(chain_sequences(config))


def build_chains_system(sequences: List[str]) -> Tuple[openmm.System, app.Topology, np.ndarray]:
    """(System, Topology, positions nm) of the given monomer sequences, non-interacting, in one System."""
    unknown = sorted(set("".join(sequences)) - set(MONOMERS))
    if unknown:
        raise InputError(f"unknown monomer types {unknown} (known: {sorted(MONOMERS)})")
    system = openmm.System()
    topology = app.Topology()
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    pairs = openmm.CustomBondForce(
        "step(cutoff - r) * (4 * epsilon * ((sigma / r)^12 - (sigma / r)^6) - shift)")
    for name in ("sigma", "epsilon", "cutoff", "shift"):
        pairs.addPerBondParameter(name)
    positions = []
    side = int(np.ceil(len(sequences) ** (1.0 / 3.0)))
    for index, sequence in enumerate(sequences):
        chain = topology.addChain()
        first = system.getNumParticles()
        origin = GRID_SPACING_NM * np.array([index % side, (index // side) % side, index // side ** 2], dtype=float)
        previous = None
        for k, monomer in enumerate(sequence):
            system.addParticle(MONOMER_MASS_AMU)
            atom = topology.addAtom(monomer, None, topology.addResidue(monomer, chain))
            if previous is not None:
                topology.addBond(previous, atom)
            previous = atom
            # A planar zigzag (bond angle 120 degrees): no overlaps before minimisation.
            positions.append(origin + BOND_LENGTH_NM * np.array([0.866 * k, 0.5 * (k % 2), 0.0]))
        n = len(sequence)
        for k in range(n - 1):
            bonds.addBond(first + k, first + k + 1, BOND_LENGTH_NM, BOND_K_KJ_PER_MOL_NM2)
        for k in range(n - 2):
            angles.addAngle(first + k, first + k + 1, first + k + 2, np.pi, ANGLE_K_KJ_PER_MOL_RAD2)
        for i in range(n):
            for j in range(i + MIN_PAIR_SEPARATION, n):
                a, b = MONOMERS[sequence[i]], MONOMERS[sequence[j]]
                sigma = 0.5 * (a.sigma_nm + b.sigma_nm)
                epsilon = float(np.sqrt(a.epsilon_kJ_per_mol * b.epsilon_kJ_per_mol))
                cutoff = LJ_CUTOFF_SIGMAS * sigma
                shift = 4 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)
                pairs.addBond(first + i, first + j, [sigma, epsilon, cutoff, shift])
    for force in (bonds, angles, pairs):
        system.addForce(force)
    return system, topology, np.array(positions)


def chain_atom_ranges(topology: app.Topology) -> List[Tuple[int, int]]:
    """(first, end) particle index of every chain (chains are contiguous)."""
    ranges = []
    for chain in topology.chains():
        indices = [atom.index for atom in chain.atoms()]
        ranges.append((indices[0], indices[-1] + 1))
    return ranges


def describe(config: PolymerSetConfig) -> dict:
    """What a reference file records about its polymer set (enough to rebuild it)."""
    return {"polymer_set": asdict(config),
            "monomers": {k: asdict(v) for k, v in MONOMERS.items()},
            "monomer_mass_amu": MONOMER_MASS_AMU, "bond_length_nm": BOND_LENGTH_NM,
            "bond_k_kJ_per_mol_nm2": BOND_K_KJ_PER_MOL_NM2, "angle_k_kJ_per_mol_rad2": ANGLE_K_KJ_PER_MOL_RAD2,
            "lj_cutoff_sigmas": LJ_CUTOFF_SIGMAS, "min_pair_separation_bonds": MIN_PAIR_SEPARATION}
