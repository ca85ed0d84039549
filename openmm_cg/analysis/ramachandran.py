"""Backbone (phi, psi) free-energy surfaces, Jensen-Shannon divergences and basin populations.

Dihedrals come from mdtraj (``compute_phi``/``compute_psi``) on either an all-atom or a CG topology
that keeps the backbone atoms' residue and atom names (as the slice maps of this package do), so the
reference and the CG model are measured by the same code.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..topology import md_topology
from ..units import kT_kJ_per_mol

# Basins of alanine dipeptide, in degrees: alpha_R (right-handed helix), beta (extended: C5 and
# PPII), and alpha_L (left-handed; phi > 0 includes C7ax). They tile the whole map.
BASINS = ("alpha_R", "beta", "alpha_L")


@dataclass
class PhiPsi:
    phi: np.ndarray  # radians, (frames,)
    psi: np.ndarray
    groups: np.ndarray  # independent-sample group of each frame (trajectory or replica)


def _paired_dihedrals(trajectory):
    """(residue labels, phi (F, K), psi (F, K)) of the K residues that have both backbone dihedrals, in chain
    order; phi and psi are paired by the residue of their CA."""
    import mdtraj

    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    residue_of = {int(trajectory.topology.atom(quad[2]).residue.index): k for k, quad in enumerate(phi_atoms)}
    labels, phi_columns, psi_columns = [], [], []
    for k, quad in enumerate(psi_atoms):
        residue = trajectory.topology.atom(quad[1]).residue
        if residue.index in residue_of:
            labels.append(f"{residue.name}{residue.resSeq}")
            phi_columns.append(residue_of[residue.index])
            psi_columns.append(k)
    return labels, phi[:, phi_columns], psi[:, psi_columns]



def phi_psi_residues(topology) -> List[str]:
    """Labels (residue name and number) of the residues with a (phi, psi) pair: ``phi_psi(residue=k)`` is the k-th."""
    import mdtraj

    md_top = md_topology(topology)
    return _paired_dihedrals(mdtraj.Trajectory(np.zeros((1, md_top.n_atoms, 3)), md_top))[0]


def phi_psi(positions_nm: np.ndarray, topology, groups: Optional[np.ndarray] = None, residue: int = 0) -> PhiPsi:
    """(phi, psi) of the ``residue``-th residue with both backbone dihedrals, for (frames, atoms, 3) positions."""
    import mdtraj

    md_top = md_topology(topology)
    positions_nm = np.asarray(positions_nm)
    if positions_nm.ndim != 3 or positions_nm.shape[1] != md_top.n_atoms:
        raise InputError(f"positions {positions_nm.shape} do not fit a topology of {md_top.n_atoms} atoms")
    labels, phi, psi = _paired_dihedrals(mdtraj.Trajectory(positions_nm, md_top))
    if len(labels) <= residue:
        raise InputError(f"the topology has {len(labels)} residues with a backbone phi/psi pair (needs C, N, CA, C, N "
                         f"atom names in consecutive residues); residue {residue} was asked for")
    groups = np.zeros(len(positions_nm), dtype=int) if groups is None else np.asarray(groups)
    return PhiPsi(phi[:, residue], psi[:, residue], groups)


def replica_phi_psi(positions_nm: np.ndarray, molecule_topology, n_beads: int, residue: int = 0) -> PhiPsi:
    """(phi, psi) of the ``residue``-th residue of every replica in (frames, R*N, 3) CG positions, grouped by
    replica."""
    n_frames, n_total, _ = positions_nm.shape
    if n_total % n_beads:
        raise InputError(f"{n_total} particles are not a multiple of {n_beads} beads")
    n_replicas = n_total // n_beads
    per_replica = positions_nm.reshape(n_frames, n_replicas, n_beads, 3).transpose(1, 0, 2, 3)
    result = phi_psi(per_replica.reshape(-1, n_beads, 3), molecule_topology, residue=residue)
    result.groups = np.repeat(np.arange(n_replicas), n_frames)
    return result


def histogram(angles: PhiPsi, bins: int = 60) -> np.ndarray:
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    counts, _, _ = np.histogram2d(angles.phi, angles.psi, bins=[edges, edges])
    total = counts.sum()
    if total == 0:
        raise InputError("no frames to histogram")
    return counts / total


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats (0 for identical, at most ln 2) of two normalized histograms."""
    p, q = np.asarray(p, dtype=np.float64).ravel(), np.asarray(q, dtype=np.float64).ravel()
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def basin_of(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """0 = alpha_R, 1 = beta, 2 = alpha_L for angles in radians."""
    phi_deg, psi_deg = np.degrees(phi), np.degrees(psi)
    basin = np.full(phi.shape, 1)
    basin[(phi_deg < 0) & (psi_deg > -120) & (psi_deg <= 50)] = 0
    basin[phi_deg >= 0] = 2
    return basin


def basin_populations(angles: PhiPsi) -> Dict[str, float]:
    basin = basin_of(angles.phi, angles.psi)
    return {name: float(np.mean(basin == k)) for k, name in enumerate(BASINS)}


def split_halves(angles: PhiPsi):
    """Two halves of the data: by group (trajectories) when there are several, else by time."""
    ids = np.unique(angles.groups)
    if len(ids) >= 2:
        first = np.isin(angles.groups, ids[: len(ids) // 2])
    else:
        first = np.arange(len(angles.phi)) < len(angles.phi) // 2
    return (PhiPsi(angles.phi[first], angles.psi[first], angles.groups[first]),
            PhiPsi(angles.phi[~first], angles.psi[~first], angles.groups[~first]))


def free_energy(hist: np.ndarray, temperature_K: float) -> np.ndarray:
    """-kT ln p in kJ/mol, shifted so that its minimum is 0; NaN where p = 0."""
    with np.errstate(divide="ignore"):
        energy = -kT_kJ_per_mol(temperature_K) * np.log(hist)
    energy[~np.isfinite(energy)] = np.nan
    return energy - np.nanmin(energy)


def compare(reference: PhiPsi, model: PhiPsi, bins: int = 60) -> dict:
    """Metrics of a CG model against the all-atom reference, with the reference's own noise floor."""
    half_a, half_b = split_halves(reference)
    p_ref, p_model = histogram(reference, bins), histogram(model, bins)
    return {
        "bins_per_dimension": bins,
        "js_divergence_unit": "nats",
        "js_cg_vs_aa": js_divergence(p_model, p_ref),
        "js_aa_half_vs_half": js_divergence(histogram(half_a, bins), histogram(half_b, bins)),
        "basin_populations": {"aa": basin_populations(reference), "cg": basin_populations(model)},
        "basin_definitions_deg": {"alpha_R": "phi<0, -120<psi<=50", "beta": "phi<0, psi>50 or psi<=-120",
                                  "alpha_L": "phi>=0"},
        "frames": {"aa": int(len(reference.phi)), "cg": int(len(model.phi))},
    }


def plot_free_energy_grid(rows: Sequence[Sequence[PhiPsi]], titles: Sequence[Sequence[str]], temperature_K: float,
                          path, bins: int = 60, vmax_kJ_per_mol: float = 25.0) -> None:
    """A grid of (phi, psi) free-energy surfaces (one title per panel) as one PNG, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_columns = len(rows), max(len(row) for row in rows)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(4.6 * n_columns + 1.0, 4.2 * n_rows), squeeze=False)
    extent = [-180, 180, -180, 180]
    image = None
    for row_axes, row, row_titles in zip(axes, rows, titles):
        for ax in row_axes[len(row):]:
            ax.axis("off")
        for ax, angles, title in zip(row_axes, row, row_titles):
            energy = free_energy(histogram(angles, bins), temperature_K)
            image = ax.imshow(energy.T, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax_kJ_per_mol,
                              aspect="equal")
            ax.set_title(title)
            ax.set_xlabel(r"$\phi$ (deg)")
            ax.set_ylabel(r"$\psi$ (deg)")
            ax.set_xticks([-180, -90, 0, 90, 180])
            ax.set_yticks([-180, -90, 0, 90, 180])
    fig.colorbar(image, ax=axes.ravel().tolist(), label="free energy (kJ/mol)", shrink=0.9)
    fig.savefig(path, dpi=120 if n_rows < 4 else 80)
    plt.close(fig)
