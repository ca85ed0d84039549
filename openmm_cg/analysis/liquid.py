"""Observables of CG liquids under periodic boundary conditions: RDF, diffusion, virial pressure."""
from typing import Dict, Sequence

import numpy as np

from ..errors import InputError
from ..priors.pair import RDF, max_rdf_range_nm, radial_distribution  # noqa: F401  (observables of liquids)

# Frames x pairs per distance computation: the RDF is accumulated over blocks of frames this size.
_DISTANCES_PER_BLOCK = 5_000_000


def type_pair_key(type_a: str, type_b: str) -> str:
    """The key of an unordered pair of bead types, ``"A-B"`` with A <= B."""
    return "-".join(sorted((type_a, type_b)))


def partial_rdfs(positions_nm: np.ndarray, box_vectors_nm: np.ndarray, bead_types: Sequence[str], r_max_nm: float,
                 n_bins: int = 100) -> Dict[str, RDF]:
    """The partial RDF g_AB(r) of every unordered pair of bead types, keyed ``type_pair_key(A, B)``.

    Frames (F, N, 3) in boxes (F, 3, 3), one type key per bead (``topology.bead_type_keys``), bins on
    [0, r_max_nm), minimum image (``r_max_nm`` at most half the smallest box height). g_AB counts the
    N_A * N_B pairs of an A and a B bead (N_A (N_A - 1) / 2 for A = B) and is normalised by that number
    of pairs, so g_AB -> 1 at large r in a homogeneous mixture, like and unlike pairs alike. A type with a
    single bead has no like pair: its A-A entry is left out. Frames are taken in blocks (bounded memory);
    the blocks' g are combined with the weights sum(1 / V) of their frames, which is the same as counting
    all frames at once.
    """
    positions_nm = np.asarray(positions_nm, dtype=np.float64)
    boxes = np.asarray(box_vectors_nm, dtype=np.float64)
    if positions_nm.ndim != 3 or positions_nm.shape[-1] != 3 or len(positions_nm) == 0 \
            or boxes.shape != (len(positions_nm), 3, 3):
        raise InputError(f"partial RDFs need frames (F, N, 3) and boxes (F, 3, 3); got {positions_nm.shape} "
                         f"and {boxes.shape}")
    types = [str(t) for t in bead_types]
    if len(types) != positions_nm.shape[1]:
        raise InputError(f"{len(types)} bead types for {positions_nm.shape[1]} beads")
    limit = max_rdf_range_nm(boxes)
    if not 0 < r_max_nm <= limit + 1e-9:
        raise InputError(f"RDF range {r_max_nm} nm must be positive and at most half the smallest box height "
                         f"({limit:.4f} nm)")
    if n_bins < 1:
        raise InputError(f"an RDF needs at least one bin, got {n_bins}")
    members = {name: np.flatnonzero(np.array(types) == name) for name in sorted(set(types))}
    inverse_volumes = 1.0 / np.abs(np.linalg.det(boxes))
    names = list(members)
    out = {}
    for a, type_a in enumerate(names):
        for type_b in names[a:]:
            i, j = members[type_a], members[type_b]
            if type_a == type_b:
                first, second = np.triu_indices(len(i), 1)
                pairs = np.stack([i[first], i[second]], axis=1)
            else:
                pairs = np.stack(np.meshgrid(i, j, indexing="ij"), axis=-1).reshape(-1, 2)
            if len(pairs) == 0:
                continue
            block = max(1, _DISTANCES_PER_BLOCK // len(pairs))
            g, weight = 0.0, 0.0
            for start in range(0, len(positions_nm), block):
                frames = slice(start, start + block)
                part = radial_distribution(positions_nm[frames], boxes[frames], r_max_nm, n_bins, pairs=pairs)
                g = g + part.g * inverse_volumes[frames].sum()
                weight += inverse_volumes[frames].sum()
            out[type_pair_key(type_a, type_b)] = RDF(part.r_nm, g / weight, len(positions_nm))
    return out


def first_peak(rdf: RDF):
    """(r_nm, g) of the first peak: the highest bin of the first run of bins with g > 1 (the first shell of
    neighbours), or of the whole RDF where g never exceeds 1."""
    above = np.asarray(rdf.g) > 1.0
    if not above.any():
        k = int(np.argmax(rdf.g))
    else:
        start = int(np.argmax(above))
        stop = start + (int(np.argmin(above[start:])) if not above[start:].all() else len(above) - start)
        k = start + int(np.argmax(rdf.g[start:stop]))
    return float(rdf.r_nm[k]), float(rdf.g[k])


def rdf_error(reference: RDF, model: RDF) -> float:
    """Integrated absolute difference, int |g_model(r) - g_reference(r)| dr in nm, on the same bins."""
    if reference.r_nm.shape != model.r_nm.shape or not np.allclose(reference.r_nm, model.r_nm):
        raise InputError("RDFs must share their bins to be compared")
    width = float(reference.r_nm[1] - reference.r_nm[0])
    return float(np.abs(model.g - reference.g).sum() * width)


def rdf_sampling_error(trajectories_nm, boxes_nm, n_frames: int, r_max_nm: float, n_bins: int = 100):
    """(mean, std) RDF error (``rdf_error``, nm) of ``n_frames``-frame segments of each trajectory against
    the RDF of the other trajectories: the error a model that reproduced the reference exactly would show
    with runs of that length, i.e. the noise floor of a comparison with them.

    ``trajectories_nm`` and ``boxes_nm`` are lists of (F, N, 3) frames and (F, 3, 3) boxes, at least two
    independent trajectories (a segment compared with its own trajectory would share its noise).
    """
    if len(trajectories_nm) < 2 or len(boxes_nm) != len(trajectories_nm):
        raise InputError("a sampling error needs at least two independent trajectories, each with its boxes")
    errors = []
    for k, (positions, boxes) in enumerate(zip(trajectories_nm, boxes_nm)):
        if len(positions) < n_frames:
            raise InputError(f"trajectory {k} has {len(positions)} frames, fewer than one segment of {n_frames}")
        others = [i for i in range(len(trajectories_nm)) if i != k]
        reference = radial_distribution(np.concatenate([trajectories_nm[i] for i in others]),
                                        np.concatenate([boxes_nm[i] for i in others]), r_max_nm, n_bins)
        for start in range(0, len(positions) - n_frames + 1, n_frames):
            segment = slice(start, start + n_frames)
            errors.append(rdf_error(reference, radial_distribution(positions[segment], boxes[segment], r_max_nm,
                                                                   n_bins)))
    return float(np.mean(errors)), float(np.std(errors))


def mean_squared_displacement(positions_nm: np.ndarray, box_vectors_nm: np.ndarray, max_lag: int):
    """MSD (nm^2) at lags 0..max_lag frames, averaged over beads and time origins, system drift removed.

    Positions must be continuous (not wrapped into the box); a jump of more than half a box height
    between frames is refused, since it means the trajectory was wrapped.
    """
    x = np.asarray(positions_nm, dtype=np.float64)
    if len(x) < 2 or max_lag < 1 or max_lag >= len(x):
        raise InputError(f"an MSD needs 1 <= max_lag < frames; got max_lag {max_lag} for {len(x)} frames")
    jumps = np.abs(np.diff(x, axis=0)).max()
    if jumps > max_rdf_range_nm(box_vectors_nm):
        raise InputError(f"a bead moves {jumps:.3f} nm between frames, more than half the box: the positions look "
                         "wrapped into the box; diffusion needs continuous (unwrapped) positions")
    return msd_nm2(x - x.mean(axis=1, keepdims=True), max_lag)  # without the drift of the whole system


def msd_nm2(positions_nm: np.ndarray, max_lag: int) -> np.ndarray:
    """MSD (nm^2) of continuous positions (F, N, 3) at lags 0..max_lag frames, over particles and time origins."""
    x = np.asarray(positions_nm, dtype=np.float64)
    msd = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        msd[lag] = ((x[lag:] - x[:-lag]) ** 2).sum(-1).mean()
    return msd


def self_diffusion_nm2_per_ps(msd_nm2: np.ndarray, frame_interval_ps: float, fit_fraction=(0.2, 1.0)) -> float:
    """Einstein relation: D = slope / 6 of a straight-line fit of the MSD over the given part of the lags
    (the start is skipped: there the motion is ballistic or caged, not diffusive)."""
    lags = np.arange(len(msd_nm2))
    window = (lags >= fit_fraction[0] * lags[-1]) & (lags <= fit_fraction[1] * lags[-1]) & (lags > 0)
    if window.sum() < 3:
        raise InputError("too few lags to fit a diffusion coefficient")
    slope = np.polyfit(lags[window] * frame_interval_ps, msd_nm2[window], 1)[0]
    return float(slope / 6.0)


def block_mean_and_error(values: np.ndarray, n_blocks: int):
    """(mean, standard error) of a correlated time series, the error from the spread of ``n_blocks``
    block means (the tail that does not fill a block is left out of the blocks)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values) // n_blocks * n_blocks
    if n < n_blocks * 2:
        raise InputError(f"{len(values)} values are too few for {n_blocks} blocks")
    blocks = values[:n].reshape(n_blocks, -1).mean(1)
    return float(values.mean()), float(blocks.std(ddof=1) / np.sqrt(n_blocks))


def virial_pressure_bar(energy_fn, positions_nm: np.ndarray, box_vectors_nm: np.ndarray, temperature_K: float) -> np.ndarray:
    """Instantaneous pressure of every frame (bar) from the volume derivative of the potential energy.

    P = (N kT - dU/ds / 3) / V, where every coordinate and box vector is scaled by s (the virial of
    any potential, pairwise or many-body, as long as it is a function of positions and box alone);
    N counts the particles, so for one bead per molecule it is the molecular pressure. ``energy_fn``
    maps (1, N, 3) positions and (1, 3, 3) boxes (float64 tensors) to energies (1,) in kJ/mol. A
    force-matched CG potential has no volume-dependent term, so its pressure need not match the
    all-atom one even where its structure does (Das & Andersen 2010).
    """
    import torch

    from ..units import kT_kJ_per_mol, pressure_bar

    x = np.asarray(positions_nm, dtype=np.float64)
    boxes = np.asarray(box_vectors_nm, dtype=np.float64)
    if x.ndim != 3 or boxes.shape != (len(x), 3, 3):
        raise InputError(f"a pressure needs frames (F, N, 3) and boxes (F, 3, 3); got {x.shape} and {boxes.shape}")
    out = np.empty(len(x))
    for k in range(len(x)):
        scale = torch.ones((), dtype=torch.float64, requires_grad=True)
        energy = energy_fn(scale * torch.as_tensor(x[k:k + 1]), scale * torch.as_tensor(boxes[k:k + 1])).sum()
        (dU_ds,) = torch.autograd.grad(energy, scale)
        volume = abs(float(np.linalg.det(boxes[k])))
        out[k] = (x.shape[1] * kT_kJ_per_mol(temperature_K) - float(dU_ds) / 3.0) / volume
    return pressure_bar(out)
