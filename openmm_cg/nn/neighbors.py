"""Periodic neighbor search inside exported models (TorchScript, no compiled extensions).

Boxes are 3x3 with the box vectors a, b, c as rows, in OpenMM's reduced form: a = (ax, 0, 0),
b = (bx, by, 0), c = (cx, cy, cz) with ax, by, cz > 0 (what OpenMM passes to TorchForce, and what
``State.getPeriodicBoxVectors`` returns). Rectangular boxes are the special case with zero
off-diagonals. Minimum image follows OpenMM: remove c, then b, then a multiples, which is exact for
pairs closer than half the smallest box height, and the cutoff is checked against that bound.

Large boxes use a cell list in fractional coordinates (cells at least one cutoff high along every
box direction, 27 neighbor cells), so the cost grows linearly with the number of beads; boxes
fewer than 3 cells across use all pairs, where the cell list saves nothing.
"""
from typing import List, Tuple

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
        size = size.reshape(-1)
        i = torch.repeat_interleave(own.repeat_interleave(shell.shape[0]), size)
        slot_begin = torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
        j = torch.repeat_interleave(begin.reshape(-1), size) + torch.arange(i.shape[0], device=device) - slot_begin
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
