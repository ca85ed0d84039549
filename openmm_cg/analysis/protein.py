"""Folding observables of proteins on all-atom or CG trajectories: C-alpha RMSD to a folded structure, the
fraction folded, and C-alpha distance features (for TICA). Positions are (frames, atoms, 3) in nm; atoms
named CA are the C-alphas, in any topology that keeps them (the protein backbone mapping does)."""
import numpy as np

from ..errors import InputError


def _md_topology(topology):
    import mdtraj

    return topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)


def ca_indices(topology) -> np.ndarray:
    indices = _md_topology(topology).select("name CA")
    if len(indices) < 3:
        raise InputError(f"the topology has {len(indices)} atoms named CA; C-alpha observables need at least 3")
    return indices


def compute_ca_rmsd(positions_nm: np.ndarray, topology, folded_positions_nm: np.ndarray, folded_topology) -> np.ndarray:
    """(frames,) C-alpha RMSD in nm of every frame to the folded structure, after optimal superposition."""
    import mdtraj

    ours, theirs = ca_indices(topology), ca_indices(folded_topology)
    if len(ours) != len(theirs):
        raise InputError(f"the trajectory has {len(ours)} C-alphas and the folded structure {len(theirs)}")
    positions_nm = np.asarray(positions_nm, dtype=np.float32)
    if positions_nm.ndim != 3 or positions_nm.shape[1] != _md_topology(topology).n_atoms:
        raise InputError(f"positions {positions_nm.shape} do not fit a topology of {_md_topology(topology).n_atoms} atoms")
    frames = mdtraj.Trajectory(positions_nm[:, ours], None)
    folded = mdtraj.Trajectory(np.asarray(folded_positions_nm, dtype=np.float32).reshape(1, -1, 3)[:, theirs], None)
    return mdtraj.rmsd(frames, folded, 0).astype(np.float64)


def fraction_folded(rmsd_nm: np.ndarray, threshold_nm: float) -> float:
    return float(np.mean(np.asarray(rmsd_nm) < threshold_nm))


def compute_ca_distances(positions_nm: np.ndarray, topology, min_separation: int = 3) -> np.ndarray:
    """(frames, pairs) distances in nm between C-alphas at least ``min_separation`` apart in sequence."""
    indices = ca_indices(topology)
    i, j = np.triu_indices(len(indices), k=min_separation)
    x = np.asarray(positions_nm, dtype=np.float64)[:, indices]
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1)


def histogram_2d(points: np.ndarray, edges) -> np.ndarray:
    """Normalised 2D histogram of (frames, 2) points on shared ``edges`` (two arrays)."""
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=edges)
    if counts.sum() == 0:
        raise InputError("no points fall inside the histogram range")
    return counts / counts.sum()


def plot_free_energy_2d(panels, titles, labels, edges, temperature_K: float, path, vmax_kJ_per_mol: float = 25.0) -> None:
    """Side-by-side free-energy surfaces -kT ln p of (frames, 2) point sets on shared bin ``edges``, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .ramachandran import free_energy

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.0, 4.2), squeeze=False)
    extent = [edges[0][0], edges[0][-1], edges[1][0], edges[1][-1]]
    image = None
    for ax, points, title in zip(axes[0], panels, titles):
        energy = free_energy(histogram_2d(points, edges), temperature_K)
        image = ax.imshow(energy.T, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax_kJ_per_mol,
                          aspect="auto")
        ax.set_title(title)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    fig.colorbar(image, ax=axes[0].tolist(), label="free energy (kJ/mol)", shrink=0.9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
