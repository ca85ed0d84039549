"""The prior of a CG liquid: a short-range pair repulsion fitted from the onset of the reference RDF, and
the RDF itself (minimum image, periodic boxes), which the analysis of liquids shares.

Form (kJ/mol, nm): E(r) = c / r^n * S(r / cutoff), with S the network's quintic switch (value, slope
and curvature vanish at the cutoff), so the prior is as smooth as the network. Where the RDF rises
from zero, the pair's potential of mean force is almost the bare repulsion, and Boltzmann inversion
w(r) = -kT ln g(r) is fitted there by least squares in log-log form: ln w = ln c - n ln r.
"""
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..geometry import SmoothCutoff

PAIR_FORM = "c/r^n*S(r/cutoff), S(x)=1-10x^3+15x^4-6x^5"


@dataclass
class PairPriorParameters:
    c: float            # kJ/mol nm^n
    exponent: float
    cutoff_nm: float
    onset_range_nm: tuple = (0.0, 0.0)  # the RDF window it was fitted on

    def to_dict(self) -> dict:
        return {"c": self.c, "exponent": self.exponent, "cutoff_nm": self.cutoff_nm,
                "onset_range_nm": list(self.onset_range_nm), "form": PAIR_FORM}

    @classmethod
    def from_dict(cls, data: dict) -> "PairPriorParameters":
        return cls(float(data["c"]), float(data["exponent"]), float(data["cutoff_nm"]),
                   tuple(data.get("onset_range_nm", (0.0, 0.0))))


class PairRepulsion(torch.nn.Module):
    """Energies (P,) of pairs at distances r (P,)."""

    def __init__(self, params: PairPriorParameters):
        super().__init__()
        self.c = float(params.c)
        self.exponent = float(params.exponent)
        self.switch = SmoothCutoff(params.cutoff_nm)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.c * torch.pow(r, -self.exponent) * self.switch(r)


def fit_pair_repulsion(r_nm: np.ndarray, g: np.ndarray, temperature_K: float, cutoff_nm: float,
                       g_window: tuple = (1e-3, 0.3)) -> PairPriorParameters:
    """Fit c/r^n to -kT ln g(r) where the RDF first rises through ``g_window``.

    Only the rising edge before the first peak is used: past it, g reflects structure (what the
    network is for), not the bare core.
    """
    from ..units import kT_kJ_per_mol

    r_nm, g = np.asarray(r_nm, float), np.asarray(g, float)
    first_high = int(np.argmax(g >= g_window[1]))
    if g[first_high] < g_window[1] or first_high == 0:
        raise ValueError(f"the RDF never rises through g = {g_window[1]} from below: no onset to fit a repulsion to")
    window = np.arange(first_high + 1)
    window = window[(g[window] > g_window[0]) & (g[window] < 1.0)]  # ln w needs w = -kT ln g > 0
    if len(window) < 3:
        raise ValueError("fewer than 3 RDF bins on the onset: use finer bins or more frames")
    pmf = -kT_kJ_per_mol(temperature_K) * np.log(g[window])
    slope, intercept = np.polyfit(np.log(r_nm[window]), np.log(pmf), 1)
    return PairPriorParameters(c=float(np.exp(intercept)), exponent=float(-slope), cutoff_nm=float(cutoff_nm),
                               onset_range_nm=(float(r_nm[window[0]]), float(r_nm[window[-1]])))


@dataclass
class RDF:
    r_nm: np.ndarray  # bin centres
    g: np.ndarray
    n_frames: int


def max_rdf_range_nm(box_vectors_nm: np.ndarray) -> float:
    """Half the smallest box height over all frames: the range where the minimum image is exact."""
    boxes = np.asarray(box_vectors_nm).reshape(-1, 3, 3)
    volumes = np.abs(np.linalg.det(boxes))
    heights = np.stack([volumes / np.linalg.norm(np.cross(boxes[:, 1], boxes[:, 2]), axis=1),
                        volumes / np.linalg.norm(np.cross(boxes[:, 2], boxes[:, 0]), axis=1),
                        volumes / np.linalg.norm(np.cross(boxes[:, 0], boxes[:, 1]), axis=1)], axis=1)
    return float(0.5 * heights.min())


def radial_distribution(positions_nm: np.ndarray, box_vectors_nm: np.ndarray, r_max_nm: float,
                        n_bins: int = 100, bead_stride: int = 1, pairs: np.ndarray = None) -> RDF:
    """g(r) of all bead pairs, frames (F, N, 3) in boxes (F, 3, 3), on [0, r_max_nm).

    Minimum-image distances (mdtraj); ``r_max_nm`` may not exceed half the smallest box height.
    ``pairs`` (P, 2), when given, are the (distinct, unordered, i != j) bead pairs to count instead of
    all of them: g is normalised by their number, P * sum_frames(1 / V) * shell volume, so that it
    tends to 1 at large r for uncorrelated beads whatever the pairs are (like or unlike types).
    """
    import mdtraj

    positions_nm = np.asarray(positions_nm, dtype=np.float32)
    boxes = np.asarray(box_vectors_nm, dtype=np.float32)
    if positions_nm.ndim != 3 or boxes.shape != (len(positions_nm), 3, 3):
        raise InputError(f"an RDF needs frames (F, N, 3) and boxes (F, 3, 3); got {positions_nm.shape} and {boxes.shape}")
    limit = max_rdf_range_nm(boxes)
    if r_max_nm > limit + 1e-9:
        raise InputError(f"RDF range {r_max_nm} nm exceeds half the smallest box height ({limit:.4f} nm)")
    n_beads = positions_nm.shape[1]
    topology = mdtraj.Topology()
    residue = topology.add_residue("B", topology.add_chain())
    for _ in range(n_beads):
        topology.add_atom("B", mdtraj.element.virtual, residue)
    trajectory = mdtraj.Trajectory(positions_nm, topology)
    trajectory.unitcell_vectors = boxes
    if pairs is None:
        beads = np.arange(0, n_beads, bead_stride)
        pairs = np.array([(i, j) for k, i in enumerate(beads) for j in beads[k + 1:]], dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0 or pairs.min() < 0 or pairs.max() >= n_beads or (pairs[:, 0] == pairs[:, 1]).any():
        raise InputError(f"an RDF needs at least one pair of two different beads among {n_beads}")
    r, g = mdtraj.compute_rdf(trajectory, pairs, r_range=(0.0, r_max_nm), n_bins=n_bins)
    return RDF(np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64), len(positions_nm))


def fit_pair_repulsion_to_frames(positions_nm: np.ndarray, box_vectors_nm: np.ndarray, temperature_K: float,
                                 cutoff_nm: float, max_frames: int = 1000) -> PairPriorParameters:
    """The pair repulsion fitted to the RDF of (at most ``max_frames``, evenly spaced) frames of a liquid."""
    frames = np.linspace(0, len(positions_nm) - 1, min(len(positions_nm), max_frames)).astype(int)
    rdf = radial_distribution(positions_nm[frames], box_vectors_nm[frames], cutoff_nm, n_bins=400)
    try:
        return fit_pair_repulsion(rdf.r_nm, rdf.g, temperature_K, cutoff_nm)
    except ValueError as error:
        raise InputError(f"pair repulsion prior: {error}") from None
