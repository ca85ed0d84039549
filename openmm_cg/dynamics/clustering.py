"""A fixed clustering of a molecule's fine (monomer) graph into CG beads, computed once per topology.

Beads are contiguous groups of roughly equal size along a depth-first walk of the bond graph that
starts at a terminal particle: for a linear chain this cuts the chain into consecutive segments whose
sizes differ by at most one; for branched molecules the walk keeps each group local. Every group
must be connected in the bond graph (checked), so a bead never spans unbonded pieces.
"""
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import InputError


def _adjacency(n_particles: int, bonds: Sequence[Tuple[int, int]]) -> List[List[int]]:
    neighbors: List[List[int]] = [[] for _ in range(n_particles)]
    for i, j in bonds:
        if not (0 <= i < n_particles and 0 <= j < n_particles) or i == j:
            raise InputError(f"bond ({i}, {j}) is not between two distinct particles of {n_particles}")
        neighbors[i].append(j)
        neighbors[j].append(i)
    return [sorted(n) for n in neighbors]


def depth_first_order(n_particles: int, bonds: Sequence[Tuple[int, int]]) -> List[int]:
    """Particles in depth-first order from the lowest-index terminal particle; the graph must be connected."""
    neighbors = _adjacency(n_particles, bonds)
    terminals = [i for i in range(n_particles) if len(neighbors[i]) <= 1]
    start = terminals[0] if terminals else 0
    order, seen, stack = [], {start}, [start]
    while stack:
        node = stack.pop()
        order.append(node)
        for other in reversed(neighbors[node]):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    if len(order) != n_particles:
        raise InputError(f"the bond graph is not connected ({len(order)} of {n_particles} particles reachable): "
                         "cluster each molecule on its own")
    return order


def cluster_bond_graph(n_particles: int, bonds: Sequence[Tuple[int, int]], particles_per_bead: int) -> np.ndarray:
    """Bead index (0..n_beads-1) of every particle: n_beads = round(n / particles_per_bead), at least 1."""
    if particles_per_bead < 1:
        raise InputError("particles_per_bead must be at least 1")
    order = depth_first_order(n_particles, bonds)
    n_beads = max(1, int(round(n_particles / particles_per_bead)))
    assignment = np.empty(n_particles, dtype=np.int64)
    for bead, members in enumerate(np.array_split(np.array(order), n_beads)):
        assignment[members] = bead
    neighbors = _adjacency(n_particles, bonds)
    for bead in range(n_beads):
        members = set(np.flatnonzero(assignment == bead).tolist())
        first = next(iter(members))
        reached, stack = {first}, [first]
        while stack:
            for other in neighbors[stack.pop()]:
                if other in members and other not in reached:
                    reached.add(other)
                    stack.append(other)
        if reached != members:
            raise InputError(f"bead {bead} would join unbonded particles {sorted(members)}; "
                             "choose another particles_per_bead")
    return assignment


def bead_bonds(assignment: np.ndarray, bonds: Sequence[Tuple[int, int]]) -> np.ndarray:
    """(n, 2) pairs of beads joined by at least one fine bond, i < j, sorted."""
    pairs = {tuple(sorted((int(assignment[i]), int(assignment[j])))) for i, j in bonds
             if assignment[i] != assignment[j]}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
