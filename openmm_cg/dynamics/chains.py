"""A batch of independent chains as the static graphs the dynamics networks read.

The clustering (monomer -> bead) is computed here from each chain's sequence and the model's
``particles_per_bead``, so a model always sees the clustering it was trained with; a caller that
brings its own assignment gets it checked against that one.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from .clustering import bead_bonds, cluster_bond_graph


@dataclass
class ChainBatch:
    sequences: List[str]
    monomer_types: torch.Tensor   # (M,) type index of every monomer of every chain
    fine_edges: torch.Tensor      # (M - n_chains, 2) bonds, batch indices
    assignment: torch.Tensor      # (M,) bead (batch index) of every monomer
    bead_offsets: List[int]
    bead_counts: List[int]
    pairs: torch.Tensor           # (P, 2) bead pairs within each chain, i < j
    bonded: torch.Tensor          # (P,) True where the beads share a fine bond

    @property
    def n_beads(self) -> int:
        return int(sum(self.bead_counts))

    @property
    def n_chains(self) -> int:
        return len(self.sequences)

    def chain_slices(self) -> List[slice]:
        return [slice(o, o + c) for o, c in zip(self.bead_offsets, self.bead_counts)]

    def bead_chain_index(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(self.n_chains), torch.tensor(self.bead_counts))


@lru_cache(maxsize=4096)
def _chain_graph(n: int, particles_per_bead: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(assignment (n,), all bead pairs i < j, which of them are bonded) of a linear chain of n monomers;
    cached, since training batches repeat the same chain lengths."""
    fine = [(k, k + 1) for k in range(n - 1)]
    assignment = cluster_bond_graph(n, fine, particles_per_bead)
    n_beads = int(assignment.max()) + 1
    bonded_pairs = {tuple(pair) for pair in bead_bonds(assignment, fine).tolist()}
    pairs = torch.triu_indices(n_beads, n_beads, offset=1).T.contiguous()
    bonded = torch.tensor([tuple(pair) in bonded_pairs for pair in pairs.tolist()], dtype=torch.bool)
    return torch.as_tensor(assignment), pairs, bonded


def build_chain_batch(sequences: Sequence[str], monomer_types: Sequence[str], particles_per_bead: int,
                      assignments: Optional[Sequence[np.ndarray]] = None) -> ChainBatch:
    index = {name: k for k, name in enumerate(monomer_types)}
    types, edges, owners, offsets, counts, pairs, bonded = [], [], [], [], [], [], []
    monomer_offset = bead_offset = 0
    for chain, sequence in enumerate(sequences):
        unknown = sorted(set(sequence) - set(index))
        if unknown:
            raise InputError(f"chain {chain} has monomer types {unknown} that the model does not know "
                             f"(it knows {list(monomer_types)})")
        assignment, local_pairs, local_bonded = _chain_graph(len(sequence), particles_per_bead)
        if assignments is not None and not np.array_equal(np.asarray(assignments[chain]), assignment.numpy()):
            raise InputError(f"chain {chain}: its bead assignment differs from the clustering this model was built "
                             f"for ({particles_per_bead} monomers per bead): the model does not apply to it")
        n, n_beads = len(sequence), int(assignment.max()) + 1
        types.append(torch.tensor([index[m] for m in sequence], dtype=torch.long))
        edges.append(torch.stack([torch.arange(n - 1), torch.arange(1, n)], dim=1) + monomer_offset)
        owners.append(assignment + bead_offset)
        pairs.append(local_pairs + bead_offset)
        bonded.append(local_bonded)
        offsets.append(bead_offset)
        counts.append(n_beads)
        monomer_offset += n
        bead_offset += n_beads
    return ChainBatch(list(sequences), torch.cat(types), torch.cat(edges), torch.cat(owners), offsets, counts,
                      torch.cat(pairs), torch.cat(bonded))
