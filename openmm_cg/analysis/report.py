"""``openmm-cg analyze``: the CG model's Ramachandran map against the mapped all-atom reference."""
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.datasets import CGDataset
from ..errors import InputError
from ..outputs import prepare_output_dir, write_json
from .ramachandran import PhiPsi, compare, phi_psi, plot_free_energy_surfaces, replica_phi_psi


def load_simulation_positions(sim_dir) -> np.ndarray:
    """(frames, particles, 3) in nm from a folder written by :func:`openmm_cg.simulation.run.run_simulation`."""
    import mdtraj

    sim_dir = Path(sim_dir)
    for name in ("trajectory.dcd", "trajectory.h5"):
        path = sim_dir / name
        if path.exists():
            if path.suffix == ".h5":
                return mdtraj.load_hdf5(str(path)).xyz
            return mdtraj.load_dcd(str(path), top=str(sim_dir / "topology.pdb")).xyz
    raise InputError(f"{sim_dir} holds no trajectory.dcd or trajectory.h5")


def simulation_phi_psi(sim_dirs: Sequence, molecule_topology, n_beads: int) -> PhiPsi:
    parts = []
    offset = 0
    for sim_dir in sim_dirs:
        angles = replica_phi_psi(load_simulation_positions(sim_dir), molecule_topology, n_beads)
        angles.groups = angles.groups + offset
        offset = angles.groups.max() + 1
        parts.append(angles)
    return PhiPsi(np.concatenate([p.phi for p in parts]), np.concatenate([p.psi for p in parts]),
                  np.concatenate([p.groups for p in parts]))


def analyze_ramachandran(reference_dataset, sim_dirs: Sequence, out_dir, bins: int = 60, overwrite: bool = False,
                         extra_metrics: dict = None) -> dict:
    dataset = CGDataset.load(reference_dataset)
    out_dir = prepare_output_dir(out_dir, overwrite)
    topology = dataset.mapping.cg_topology
    reference = phi_psi(dataset.positions_nm, topology, groups=dataset.trajectory_index)
    model = simulation_phi_psi(sim_dirs, topology, dataset.mapping.n_beads)
    metrics = compare(reference, model, bins)
    metrics["temperature_K"] = dataset.temperature_K
    if extra_metrics:
        metrics.update(extra_metrics)
    plot_free_energy_surfaces([reference, model],
                              [f"all-atom, mapped ({len(reference.phi)} frames)", f"CG model ({len(model.phi)} frames)"],
                              dataset.temperature_K, out_dir / "fes.png", bins)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
