"""Folding observables of proteins on all-atom or CG trajectories: C-alpha RMSD to a folded structure, the
fraction folded, and C-alpha distance features (for TICA). Positions are (frames, atoms, 3) in nm; atoms
named CA are the C-alphas, in any topology that keeps them (the protein backbone mapping does)."""
import numpy as np

from ..errors import InputError
from ..topology import md_topology



def ca_indices(topology) -> np.ndarray:
    indices = md_topology(topology).select("name CA")
    if len(indices) < 3:
        raise InputError(f"the topology has {len(indices)} atoms named CA; C-alpha observables need at least 3")
    return indices


def load_ca_positions(pdb_path) -> np.ndarray:
    """(C-alphas, 3) positions in nm of the first chain of a PDB file (waters, ions and ligands are ignored; a
    crystal structure needs no hydrogens or termini for this)."""
    import mdtraj

    structure = mdtraj.load_pdb(str(pdb_path))
    indices = structure.topology.select("protein and name CA and chainid 0")
    if len(indices) < 3:
        raise InputError(f"{pdb_path} has {len(indices)} protein C-alphas in its first chain; at least 3 are needed")
    return structure.xyz[0, indices].astype(np.float64)


def compute_ca_rmsd(positions_nm: np.ndarray, topology, folded_ca_nm: np.ndarray) -> np.ndarray:
    """(frames,) C-alpha RMSD in nm of every frame to the folded structure's C-alphas (``load_ca_positions``), after
    optimal superposition."""
    import mdtraj

    ours = ca_indices(topology)
    folded_ca_nm = np.asarray(folded_ca_nm, dtype=np.float32).reshape(-1, 3)
    if len(ours) != len(folded_ca_nm):
        raise InputError(f"the trajectory has {len(ours)} C-alphas and the folded structure {len(folded_ca_nm)}")
    positions_nm = np.asarray(positions_nm, dtype=np.float32)
    if positions_nm.ndim != 3 or positions_nm.shape[1] != md_topology(topology).n_atoms:
        raise InputError(f"positions {positions_nm.shape} do not fit a topology of {md_topology(topology).n_atoms} atoms")
    frames = mdtraj.Trajectory(positions_nm[:, ours], None)
    return mdtraj.rmsd(frames, mdtraj.Trajectory(folded_ca_nm[None], None), 0).astype(np.float64)


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
