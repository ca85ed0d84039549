"""Periodic neighbor search inside exported models (TorchScript, no compiled extensions).

Boxes are 3x3 with the box vectors a, b, c as rows, in OpenMM's reduced form: a = (ax, 0, 0),
b = (bx, by, 0), c = (cx, cy, cz) with ax, by, cz > 0 (what OpenMM passes to TorchForce, and what
``State.getPeriodicBoxVectors`` returns). Rectangular boxes are the special case with zero
off-diagonals. Minimum image follows OpenMM: remove c, then b, then a multiples, which is exact for
pairs closer than half the smallest box height, and the cutoff is checked against that bound.

Large boxes use a cell list in fractional coordinates (cells at least one cutoff high along every
box direction, 27 neighbor cells), so the cost grows linearly with the number of beads; boxes
fewer than 3 cells across use all pairs, where the cell list saves nothing.

Systems without a box (``open_neighbor_pairs``) use all pairs when small and otherwise a sparse cell
list: only occupied cells are stored, so molecules that drift far apart cost nothing extra.
"""
from typing import List, Optional, Tuple

import torch


def box_heights(box: torch.Tensor) -> torch.Tensor:
    """Distances between opposite faces of the cell spanned by the rows of ``box`` (3,)."""
    volume = torch.abs(torch.linalg.det(box))
    faces = torch.stack([torch.cross(box[1], box[2], dim=0), torch.cross(box[2], box[0], dim=0),
                         torch.cross(box[0], box[1], dim=0)])
    return volume / torch.linalg.vector_norm(faces, dim=1)


def check_box(box: torch.Tensor, cutoff_nm: float) -> None:
    if box.shape != (3, 3):
        raise ValueError("openmm-cg: the box must be 3x3 (box vectors as rows, nm)")
    if bool(box[0, 1] != 0.0) or bool(box[0, 2] != 0.0) or bool(box[1, 2] != 0.0):
        raise ValueError("openmm-cg: box vectors must be in OpenMM's reduced form (a along x, b in the xy plane), "
                         "as State.getPeriodicBoxVectors() returns them")
    if not bool(torch.all(torch.diagonal(box) > 0.0)):
        raise ValueError("openmm-cg: box vectors must have positive diagonal elements (ax, by, cz > 0)")
    shortest = float(box_heights(box.detach()).min())
    if cutoff_nm > 0.5 * shortest:
        raise ValueError("openmm-cg: cutoff " + str(cutoff_nm) + " nm is larger than half the shortest box height "
                         + str(shortest) + " nm; minimum image would miss or double-count neighbors")


def minimum_image_counts(delta: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Integer-valued counts (P, 3) of box vectors such that ``delta - counts @ box`` is the minimum image of
    each displacement (P, 3) in a reduced-form box. No gradient: counts are constants."""
    with torch.no_grad():
        counts = torch.zeros_like(delta)
        wrapped = delta.detach().clone()
        for axis in (2, 1, 0):
            n = torch.round(wrapped[:, axis] / box[axis, axis])
            counts[:, axis] = n
            wrapped = wrapped - n.unsqueeze(1) * box[axis]
    return counts


def _half_shell(device: torch.device) -> torch.Tensor:
    """The own cell and the 13 neighbor offsets whose first nonzero component is positive (14, 3)."""
    offsets = torch.stack(torch.meshgrid([torch.arange(-1, 2, device=device)] * 3, indexing="ij"), -1).reshape(27, 3)
    weights = torch.tensor([9, 3, 1], device=device)
    return offsets[(offsets * weights).sum(1) >= 0]


def _expand_ranges(own: torch.Tensor, begin: torch.Tensor, size: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate pairs of a cell list: bead ``own[k]`` (chunk,) against the sorted beads
    ``begin[k, c] .. begin[k, c] + size[k, c] - 1`` of each of its cells c (chunk, cells).

    Returns i and j (candidates,) in sorted order, and ``size`` flattened (chunk * cells,), so that callers
    can repeat per-cell data (periodic images) the same way. All of it is index arithmetic on whole
    tensors: no Python loop over beads or cells.
    """
    size = size.reshape(-1)
    i = torch.repeat_interleave(own.repeat_interleave(begin.shape[1]), size)
    slot_begin = torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
    j = torch.repeat_interleave(begin.reshape(-1), size) + torch.arange(i.shape[0], device=own.device) - slot_begin
    return i, j, size


def _cell_list_pairs(x: torch.Tensor, box: torch.Tensor, fractional: torch.Tensor, cell_image: torch.Tensor,
                     n_cells: torch.Tensor, cutoff_nm: float, chunk: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (P, 2) closer than the cutoff and their image counts (P, 3) such that r_j - r_i + counts @ box is
    the minimum image.

    ``fractional`` is wrapped into [0, 1) and ``cell_image`` is what was subtracted. Each pair of cells
    is visited once (half shell; the own cell only for j after i), so with at least 3 cells per
    direction every close pair appears exactly once, with its image given by the cell offset: no
    rounding, no duplicates. Candidates are generated for ``chunk`` beads at a time, so the working
    memory stays constant and the cost grows linearly with the number of beads.
    """
    n = fractional.shape[0]
    device = fractional.device
    cell3 = torch.minimum((fractional * n_cells).long(), n_cells - 1)
    strides = torch.stack([n_cells[1] * n_cells[2], n_cells[2], torch.ones_like(n_cells[2])])
    order = torch.argsort((cell3 * strides).sum(1))
    cell3 = cell3[order]  # from here on beads are in cell order: each cell is a contiguous range
    xs = x[order]
    images_s = cell_image[order].long()
    cell_id = (cell3 * strides).sum(1)
    counts = torch.bincount(cell_id, minlength=int(n_cells.prod()))
    starts = torch.cumsum(counts, 0) - counts
    shell = _half_shell(device)
    pair_chunks: List[torch.Tensor] = []
    count_chunks: List[torch.Tensor] = []
    for first in range(0, n, chunk):
        own = torch.arange(first, min(n, first + chunk), device=device)
        target = cell3[own].unsqueeze(1) + shell.unsqueeze(0)  # (chunk, 14, 3)
        image = torch.div(target, n_cells, rounding_mode="floor")
        target_id = ((target - image * n_cells) * strides).sum(-1)
        begin = starts[target_id]
        size = counts[target_id]
        begin[:, 0] = own + 1  # own cell: only beads after this one
        size[:, 0] = starts[cell_id[own]] + counts[cell_id[own]] - own - 1
        i, j, size = _expand_ranges(own, begin, size)
        # integer multiples of the box vectors, exact, then one product with the box
        images = torch.repeat_interleave(image.reshape(-1, 3), size, dim=0) - images_s[j] + images_s[i]
        close = torch.linalg.vector_norm(xs[j] - xs[i] + images.to(x.dtype) @ box, dim=1) < cutoff_nm
        pair_chunks.append(torch.stack([order[i[close]], order[j[close]]], 1))
        count_chunks.append(images[close].to(x.dtype))
    return torch.cat(pair_chunks), torch.cat(count_chunks)


def neighbor_pairs(positions: torch.Tensor, box: torch.Tensor, cutoff_nm: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (P, 2) with i < j closer than ``cutoff_nm`` under minimum image, and their vectors r_j - r_i (P, 3).

    Indices carry no gradient; the vectors are differentiable with respect to ``positions`` and ``box``
    (r_j - r_i + n @ box with integer n), so derivatives under box scaling (the virial) are right.
    """
    check_box(box, cutoff_nm)
    box = box.to(positions.dtype)
    with torch.no_grad():
        x = positions.detach()
        fractional = x @ torch.linalg.inv(box)
        cell_image = torch.floor(fractional)  # bead k sits at x_k - cell_image_k @ box inside the box
        fractional = fractional - cell_image
        n_cells = torch.clamp(torch.floor(box_heights(box) / cutoff_nm), min=1.0).long()
        if bool((n_cells < 3).any()):
            pairs = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device).T
            raw = x[pairs[:, 1]] - x[pairs[:, 0]]
            counts = -minimum_image_counts(raw, box)
            close = torch.linalg.vector_norm(raw + counts @ box, dim=1) < cutoff_nm
            pairs, counts = pairs[close], counts[close]
        else:
            pairs, counts = _cell_list_pairs(x, box, fractional, cell_image, n_cells, cutoff_nm)
        flip = pairs[:, 0] > pairs[:, 1]
        pairs = torch.where(flip.unsqueeze(1), pairs.flip(1), pairs)
        counts = torch.where(flip.unsqueeze(1), -counts, counts)
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + counts @ box
    return pairs.contiguous(), vectors


# Below this many beads the open search checks all pairs. The cell list costs ~2 ms of fixed work (sorting,
# binary searches, a dozen small steps) and all pairs grow as N^2: on one CPU thread, cutoff 1 nm, random-walk
# chains (0.38 nm steps), all pairs took 2.2 ms against 3.6 ms at 256 beads, about the same at 384, and
# 8.6 ms against 5.4 ms at 512. TorchScript cannot read module-level numbers, so open_neighbor_pairs spells
# the value out; a test ties the two together.
OPEN_ALL_PAIRS_BELOW = 384


def _compress_cells(cells: torch.Tensor) -> torch.Tensor:
    """Relabel integer cell coordinates along one axis (N,) so that occupied values that were adjacent stay
    adjacent and any gap becomes a single empty value; the result lies in [1, 2 * unique - 1].

    Neighbor relations between occupied cells (same, next, farther) survive unchanged, but the range no
    longer depends on how far apart the beads are: molecules thousands of nm apart cost no more memory
    than molecules side by side.
    """
    cells = cells.contiguous()
    values = torch.unique(cells)  # sorted
    step = torch.where(values[1:] - values[:-1] == 1, 1, 2)
    labels = torch.cat([torch.ones(1, dtype=torch.long, device=cells.device), 1 + torch.cumsum(step, 0)])
    return labels[torch.searchsorted(values, cells)]


def _open_cell_list_pairs(x: torch.Tensor, cutoff_nm: float, molecule: Optional[torch.Tensor],
                          chunk: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) (P,) of beads closer than the cutoff, each once, in any order, without a box.

    Cells are slightly longer than the cutoff; their integer coordinates are compressed per axis
    (``_compress_cells``) so one int64 key per cell needs O(N) range on each axis. Beads are sorted by key,
    each occupied cell is a contiguous range, and a neighbor cell's range is found by binary search among
    the occupied keys (absent cells: none). The half shell visits each pair of cells once and the own cell
    only for beads after the current one, so no pair repeats. With ``molecule``, molecules are shifted
    apart along x in cell space by more than their extent, so beads of different molecules never share
    or neighbor a cell: replicas on top of each other cost no cross-replica candidates.
    Memory: O(N) for the bookkeeping plus one chunk of candidates.
    """
    n = x.shape[0]
    device = x.device
    if not bool(torch.isfinite(x).all()):
        raise ValueError("openmm-cg: positions are not finite; the neighbor search cannot place them in cells")
    # Cells are 1e-5 longer than the cutoff and assigned in float64, so neither the rounding of the
    # assignment (relative 1e-16 of the extent, checked below) nor that of the distance check (float32
    # included, relative ~1e-7) can put two beads closer than the cutoff into cells that are not neighbors.
    x64 = x.to(torch.float64)
    scaled = (x64 - x64.min(0).values) / (cutoff_nm * (1.0 + 1e-5))
    if float(scaled.max()) > 1e9:
        raise ValueError("openmm-cg: positions span more than 1e9 cutoffs; the neighbor search cannot place "
                         "them in cells without rounding errors")
    cells = torch.floor(scaled).long()  # >= 0
    if molecule is not None:
        rank = torch.searchsorted(torch.unique(molecule), molecule)
        cells[:, 0] = cells[:, 0] + rank * (cells[:, 0].max() + 2)  # a gap of >= 2 cells between molecules
    cell3 = torch.stack([_compress_cells(cells[:, 0]), _compress_cells(cells[:, 1]),
                         _compress_cells(cells[:, 2])], 1)
    lengths = cell3.max(0).values + 2  # labels and their +-1 neighbors lie in [0, length - 1]
    if float(lengths.double().prod()) >= 2.0 ** 62:
        raise ValueError("openmm-cg: too many separate cells for the neighbor search's int64 cell keys")
    strides = torch.stack([lengths[1] * lengths[2], lengths[2], torch.ones_like(lengths[2])])
    key = (cell3 * strides).sum(1)
    order = torch.argsort(key)
    cell3 = cell3[order]  # from here on beads are in cell order: each occupied cell is a contiguous range
    xs = x[order]
    cell_keys, inverse, counts = torch.unique_consecutive(key[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    shell = _half_shell(device)
    last = cell_keys.shape[0] - 1
    i_chunks: List[torch.Tensor] = []
    j_chunks: List[torch.Tensor] = []
    for first in range(0, n, chunk):
        own = torch.arange(first, min(n, first + chunk), device=device)
        target = ((cell3[own].unsqueeze(1) + shell.unsqueeze(0)) * strides).sum(-1)  # (chunk, 14) keys
        found = torch.clamp(torch.searchsorted(cell_keys, target), max=last)
        begin = starts[found]
        size = torch.where(cell_keys[found] == target, counts[found], torch.zeros_like(target))
        begin[:, 0] = own + 1  # own cell: only beads after this one
        size[:, 0] = starts[inverse[own]] + counts[inverse[own]] - own - 1
        i, j, _ = _expand_ranges(own, begin, size)
        close = torch.linalg.vector_norm(xs[j] - xs[i], dim=1) < cutoff_nm
        i_chunks.append(order[i[close]])
        j_chunks.append(order[j[close]])
    return torch.cat(i_chunks), torch.cat(j_chunks)


def _open_all_pairs(x: torch.Tensor, cutoff_nm: float, molecule: Optional[torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) (P,) with i < j closer than the cutoff, by checking every pair: for small molecules one
    distance per pair is cheaper than sorting beads into cells."""
    n = x.shape[0]
    pairs = torch.triu_indices(n, n, offset=1, device=x.device)
    close = torch.linalg.vector_norm(x[pairs[1]] - x[pairs[0]], dim=1) < cutoff_nm
    if molecule is not None:
        close = close & (molecule[pairs[0]] == molecule[pairs[1]])
    return pairs[0][close], pairs[1][close]


def open_neighbor_pairs(positions: torch.Tensor, cutoff_nm: float, molecule: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (P, 2) with i < j closer than ``cutoff_nm`` without periodic images, and their vectors
    r_j - r_i (P, 3), for positions (N, 3) in nm.

    ``molecule`` (N,) long, if given, keeps only pairs within one molecule (a model that holds several
    molecules that must not interact, such as independent replicas). Below OPEN_ALL_PAIRS_BELOW beads all
    pairs are checked (faster there, measured); above, a cell list whose memory and time grow linearly with
    the number of beads however far apart the molecules drift. The distance check is done in the positions'
    dtype on the same differences that are returned. Indices carry no gradient; the vectors are
    differentiable with respect to ``positions``.
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("openmm-cg: positions must be (N, 3)")
    if molecule is not None and molecule.shape != (positions.shape[0],):
        raise ValueError("openmm-cg: molecule must hold one index per bead")
    with torch.no_grad():
        x = positions.detach()
        if x.shape[0] < 384:  # OPEN_ALL_PAIRS_BELOW (TorchScript cannot read module-level ints)
            first, second = _open_all_pairs(x, cutoff_nm, molecule)
        else:
            i, j = _open_cell_list_pairs(x, cutoff_nm, molecule)
            first, second = torch.minimum(i, j), torch.maximum(i, j)
        pairs = torch.stack([first, second], 1)
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]]
    return pairs, vectors
