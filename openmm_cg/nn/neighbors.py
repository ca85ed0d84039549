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
from typing import Tuple

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
    shortest = float(box_heights(box).min())
    if cutoff_nm > 0.5 * shortest:
        raise ValueError("openmm-cg: cutoff " + str(cutoff_nm) + " nm is larger than half the shortest box height "
                         + str(shortest) + " nm; minimum image would miss or double-count neighbors")


def minimum_image(delta: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Wrap displacement vectors (P, 3) to their minimum image (reduced-form box)."""
    with torch.no_grad():
        shift = torch.zeros_like(delta)
        wrapped = delta.detach().clone()
        for axis in (2, 1, 0):
            n = torch.round(wrapped[:, axis] / box[axis, axis]).unsqueeze(1)
            shift = shift + n * box[axis]
            wrapped = wrapped - n * box[axis]
    return delta - shift


def _all_pairs(n: int, device: torch.device) -> torch.Tensor:
    return torch.triu_indices(n, n, offset=1, device=device)


def _cell_list_candidates(fractional: torch.Tensor, n_cells: torch.Tensor) -> torch.Tensor:
    """(2, C) candidate pairs (i < j) of beads in the same or adjacent cells, periodic."""
    n = fractional.shape[0]
    device = fractional.device
    cell3 = torch.minimum((fractional * n_cells).long(), n_cells - 1)
    strides = torch.stack([n_cells[1] * n_cells[2], n_cells[2], torch.ones_like(n_cells[2])])
    cell_id = (cell3 * strides).sum(1)
    n_total = int(n_cells.prod())
    order = torch.argsort(cell_id)
    counts = torch.bincount(cell_id, minlength=n_total)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.stack(torch.meshgrid([torch.arange(-1, 2, device=device)] * 3, indexing="ij"), -1).reshape(27, 3)
    neighbor_cells = (((cell3.unsqueeze(1) + offsets.unsqueeze(0)) % n_cells) * strides).sum(-1).reshape(-1)
    per_slot = counts[neighbor_cells]
    i = torch.repeat_interleave(torch.arange(n, device=device).repeat_interleave(27), per_slot)
    slot_start = torch.repeat_interleave(torch.cumsum(per_slot, 0) - per_slot, per_slot)
    within = torch.arange(i.shape[0], device=device) - slot_start
    j = order[torch.repeat_interleave(starts[neighbor_cells], per_slot) + within]
    keep = i < j
    return torch.stack([i[keep], j[keep]])


def neighbor_pairs(positions: torch.Tensor, box: torch.Tensor, cutoff_nm: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (P, 2) with i < j closer than ``cutoff_nm`` under minimum image, and their vectors r_j - r_i (P, 3).

    Indices carry no gradient; the vectors are differentiable with respect to ``positions``.
    """
    check_box(box, cutoff_nm)
    with torch.no_grad():
        x = positions.detach()
        fractional = x @ torch.linalg.inv(box.to(x.dtype))
        fractional = fractional - torch.floor(fractional)
        n_cells = torch.clamp(torch.floor(box_heights(box.to(x.dtype)) / cutoff_nm), min=1.0).long()
        if bool((n_cells < 3).any()):
            candidates = _all_pairs(x.shape[0], x.device)
        else:
            candidates = _cell_list_candidates(fractional, n_cells)
        delta = minimum_image(x[candidates[1]] - x[candidates[0]], box.to(x.dtype))
        close = torch.linalg.vector_norm(delta, dim=1) < cutoff_nm
        pairs = candidates[:, close].T.contiguous()
    vectors = minimum_image(positions[pairs[:, 1]] - positions[pairs[:, 0]], box.to(positions.dtype))
    return pairs, vectors
