"""Angles, dihedrals and non-bonded pairs derived from a CG bond graph."""
from collections import Counter
from itertools import combinations
from typing import List, Tuple

import numpy as np


def _neighbors(n_beads: int, bonds: np.ndarray) -> List[set]:
    neighbors = [set() for _ in range(n_beads)]
    for i, j in np.asarray(bonds).reshape(-1, 2):
        neighbors[int(i)].add(int(j))
        neighbors[int(j)].add(int(i))
    return neighbors


def angle_triples(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    neighbors = _neighbors(n_beads, bonds)
    triples = [(i, j, k) for j in range(n_beads) for i, k in combinations(sorted(neighbors[j]), 2)]
    return np.array(triples, dtype=np.int64).reshape(-1, 3)


def dihedral_quads(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    neighbors = _neighbors(n_beads, bonds)
    quads = set()
    for j, k in np.asarray(bonds).reshape(-1, 2):
        j, k = int(j), int(k)
        for i in neighbors[j] - {k}:
            for l in neighbors[k] - {j}:
                if i != l:
                    quad = (i, j, k, l)
                    quads.add(min(quad, quad[::-1]))
    return np.array(sorted(quads), dtype=np.int64).reshape(-1, 4)


def graph_distances(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    """Number of bonds on the shortest path between beads (a large number when unconnected)."""
    unreachable = n_beads + 1
    hops = np.full((n_beads, n_beads), unreachable, dtype=np.int64)
    np.fill_diagonal(hops, 0)
    for i, j in np.asarray(bonds).reshape(-1, 2):
        hops[i, j] = hops[j, i] = 1
    for k in range(n_beads):  # Floyd-Warshall; CG molecules are small
        hops = np.minimum(hops, hops[:, [k]] + hops[[k], :])
    return hops


def nonbonded_pairs(n_beads: int, bonds: np.ndarray, min_bond_separation: int = 4) -> np.ndarray:
    """Pairs i<j separated by at least ``min_bond_separation`` bonds.

    1-4 pairs are excluded by default: their distance is a function of the dihedral across the middle
    bond, so the dihedral prior already describes them, and the onset of their distance distribution is
    set by geometry, not by a repulsive wall (a wall fitted there would add a second, steep torsional
    term).
    """
    hops = graph_distances(n_beads, bonds)
    i, j = np.triu_indices(n_beads, k=1)
    keep = hops[i, j] >= min_bond_separation
    return np.stack([i[keep], j[keep]], axis=1).astype(np.int64).reshape(-1, 2)


def topology_terms(n_beads: int, bonds: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return angle_triples(n_beads, bonds), dihedral_quads(n_beads, bonds), nonbonded_pairs(n_beads, bonds)


def dihedrals_per_central_bond(quads: np.ndarray) -> np.ndarray:
    """For each quad (i, j, k, l), how many quads share its central bond {j, k}."""
    central = [tuple(sorted(q[1:3])) for q in np.asarray(quads).reshape(-1, 4).tolist()]
    counts = Counter(central)
    return np.array([counts[bond] for bond in central], dtype=np.int64)


def molecule_index(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    """(n_beads,) index of each bead's molecule: the connected components of the bond graph, numbered in the
    order of their first bead."""
    parent = np.arange(n_beads)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in np.asarray(bonds).reshape(-1, 2):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(n_beads)], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def close_pairs(n_beads: int, bonds: np.ndarray, max_bonds: int) -> np.ndarray:
    """Pairs i<j joined by a path of at most ``max_bonds`` bonds: the exclusions of a non-bonded term.

    A breadth-first walk of ``max_bonds`` steps from every bead, so the cost grows with the number of beads
    (not its square, as ``graph_distances`` does), for systems of any size."""
    neighbors = _neighbors(n_beads, bonds)
    found = set()
    for start in range(n_beads):
        frontier, seen = {start}, {start}
        for _ in range(max_bonds):
            frontier = {k for bead in frontier for k in neighbors[bead]} - seen
            seen |= frontier
        found.update((start, k) for k in seen if k > start)
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)
