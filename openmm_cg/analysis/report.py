"""``openmm-cg analyze``: the CG model's Ramachandran map against the mapped all-atom reference."""
from typing import Sequence

import numpy as np

from ..data.datasets import CGDataset
from ..outputs import RunFolder
from ..simulation.trajectory import load_run_frames
from .ramachandran import PhiPsi, compare, phi_psi, plot_free_energy_surfaces, replica_phi_psi


def simulation_phi_psi(sim_dirs: Sequence, molecule_topology, n_beads: int) -> PhiPsi:
    parts = []
    offset = 0
    for sim_dir in sim_dirs:
        angles = replica_phi_psi(load_run_frames(sim_dir)[0], molecule_topology, n_beads)
        angles.groups = angles.groups + offset
        offset = angles.groups.max() + 1
        parts.append(angles)
    return PhiPsi(np.concatenate([p.phi for p in parts]), np.concatenate([p.psi for p in parts]),
                  np.concatenate([p.groups for p in parts]))


def analyze_ramachandran(reference_dataset, sim_dirs: Sequence, out_dir, bins: int = 60, overwrite: bool = False,
                         extra_metrics: dict = None) -> dict:
    dataset = CGDataset.load(reference_dataset)
    run = RunFolder.open(out_dir, "analysis", {"bins": bins, "simulations": [str(s) for s in sim_dirs]},
                         {"reference": reference_dataset}, overwrite=overwrite, resume_hint="choose another folder")
    topology = dataset.mapping.cg_topology
    reference = phi_psi(dataset.positions_nm, topology, groups=dataset.trajectory_index)
    model = simulation_phi_psi(sim_dirs, topology, dataset.mapping.n_beads)
    metrics = compare(reference, model, bins)
    metrics["temperature_K"] = dataset.temperature_K
    if extra_metrics:
        metrics.update(extra_metrics)
    plot_free_energy_surfaces([reference, model],
                              [f"all-atom, mapped ({len(reference.phi)} frames)", f"CG model ({len(model.phi)} frames)"],
                              dataset.temperature_K, run.file("fes.png"), bins)
    run.write_json("metrics.json", metrics)
    return metrics
