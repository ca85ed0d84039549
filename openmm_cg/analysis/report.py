"""``openmm-cg analyze``: the CG model's Ramachandran map against the mapped all-atom reference (molecules), or
the partial RDFs of every pair of bead types, optionally against a CG reference dataset (periodic liquids)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.datasets import CGDataset
from ..errors import InputError
from ..outputs import RunFolder
from ..simulation.trajectory import load_run_frames, run_trajectory_path
from ..topology import bead_type_keys
from .liquid import RDF, first_peak, max_rdf_range_nm, partial_rdfs, rdf_error
from .ramachandran import PhiPsi, compare, phi_psi, phi_psi_residues, plot_free_energy_grid, replica_phi_psi


def simulation_phi_psi(sim_dirs: Sequence, molecule_topology, n_beads: int, skip_ps: float = 0.0,
                       residue: int = 0) -> PhiPsi:
    """(phi, psi) of the ``residue``-th residue (``ramachandran.phi_psi_residues``) of every replica of every
    simulation folder, grouped by replica."""
    parts = []
    offset = 0
    for sim_dir in sim_dirs:
        angles = replica_phi_psi(load_run_frames(sim_dir, skip_ps)[0], molecule_topology, n_beads, residue)
        angles.groups = angles.groups + offset
        offset = angles.groups.max() + 1
        parts.append(angles)
    return PhiPsi(np.concatenate([p.phi for p in parts]), np.concatenate([p.psi for p in parts]),
                  np.concatenate([p.groups for p in parts]))


def analyze_ramachandran(reference_dataset, sim_dirs: Sequence, out_dir, bins: int = 60, overwrite: bool = False,
                         extra_metrics: dict = None, skip_ps: float = 0.0) -> dict:
    dataset = CGDataset.load(reference_dataset)
    settings = {"bins": bins, "simulations": [str(s) for s in sim_dirs]}
    if skip_ps:
        settings["skip_ps"] = skip_ps
    run = RunFolder.open(out_dir, "analysis", settings,
                         {"reference": reference_dataset}, overwrite=overwrite, resume_hint="choose another folder")
    topology = dataset.mapping.cg_topology
    rows, titles, per_residue = [], [], {}
    for k, label in enumerate(phi_psi_residues(topology)):
        reference = phi_psi(dataset.positions_nm, topology, groups=dataset.trajectory_index, residue=k)
        model = simulation_phi_psi(sim_dirs, topology, dataset.mapping.n_beads, skip_ps, residue=k)
        per_residue[label] = compare(reference, model, bins)
        rows.append([reference, model])
        titles.append([f"{label} all-atom, mapped ({len(reference.phi)} frames)",
                       f"{label} CG model ({len(model.phi)} frames)"])
    if not per_residue:
        raise InputError(f"{reference_dataset}: the CG topology has no residue with a backbone phi/psi pair")
    # One residue (alanine dipeptide): its metrics at the top level; several: one entry per residue.
    metrics = next(iter(per_residue.values())) if len(per_residue) == 1 else {"residues": per_residue}
    metrics["temperature_K"] = dataset.temperature_K
    if extra_metrics:
        metrics.update(extra_metrics)
    plot_free_energy_grid(rows, titles, dataset.temperature_K, run.file("fes.png"), bins)
    run.write_json("metrics.json", metrics)
    return metrics


def _first_frame(sim_dir):
    """Frame 0 of a simulation folder's trajectory, with the topology exactly as written (no renaming)."""
    import mdtraj

    sim_dir = Path(sim_dir)
    path = run_trajectory_path(sim_dir)
    if path.suffix == ".h5":
        return mdtraj.load_frame(str(path), 0)
    if not (sim_dir / "topology.pdb").exists():
        raise InputError(f"{sim_dir} holds trajectory.dcd but no topology.pdb")
    topology = mdtraj.load_pdb(str(sim_dir / "topology.pdb"), standard_names=False).topology
    return mdtraj.load_frame(str(path), 0, top=topology)


def simulations_are_periodic(sim_dirs: Sequence) -> bool:
    """Whether the frames of the simulation folders have periodic boxes (all of them, or none)."""
    if not sim_dirs:
        raise InputError("no simulation folders to analyze")
    periodic = [_first_frame(sim_dir).unitcell_vectors is not None for sim_dir in sim_dirs]
    if len(set(periodic)) != 1:
        raise InputError("some simulations are periodic and some are not: "
                         f"{[str(s) for s, p in zip(sim_dirs, periodic) if p]} have boxes; analyze them apart")
    return periodic[0]


def simulation_bead_types(sim_dirs: Sequence) -> List[str]:
    """The type key ("RESNAME:BEADNAME") of every bead, the same in every simulation folder."""
    types = [bead_type_keys(_first_frame(sim_dir).topology) for sim_dir in sim_dirs]
    for sim_dir, other in zip(sim_dirs[1:], types[1:]):
        if other != types[0]:
            raise InputError(f"{sim_dir} simulates other beads than {sim_dirs[0]} (types or their order differ); "
                             "analyze them apart")
    return types[0]


def _pdb_spelling(key: str) -> str:
    residue, _, name = key.partition(":")
    return f"{residue[:3]}:{name[:4]}"


def _in_reference_spelling(types: List[str], reference_types: List[str]) -> List[str]:
    """The simulations' type keys, checked against the reference's: the same set of types. A DCD run's
    topology.pdb holds residue names cut to 3 and atom names cut to 4 characters, so a key that matches one
    reference key only in that form is given the reference's full key."""
    reference = set(reference_types)
    spellings: Dict[str, set] = {}
    for key in reference:
        spellings.setdefault(_pdb_spelling(key), set()).add(key)
    renamed = [t if t in reference or len(spellings.get(t, ())) != 1 else next(iter(spellings[t])) for t in types]
    if set(renamed) != reference:
        raise InputError(f"the reference's bead types {sorted(reference)} are not the simulations' "
                         f"{sorted(set(types))}")
    return renamed


def _rdf_metrics(rdf: RDF) -> dict:
    peak_r, peak_g = first_peak(rdf)
    return {"r_nm": rdf.r_nm.tolist(), "g": rdf.g.tolist(), "first_peak_r_nm": peak_r, "first_peak_g": peak_g}


def plot_partial_rdfs(model: Dict[str, RDF], path, reference: Optional[Dict[str, RDF]] = None,
                      labels=("CG model", "reference")) -> None:
    """One panel per pair of bead types: the model's g(r), and the reference's where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(set(model) | set(reference or {}))
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        if key in model:
            ax.plot(model[key].r_nm, model[key].g, label=f"{labels[0]} ({model[key].n_frames} frames)")
        if reference and key in reference:
            ax.plot(reference[key].r_nm, reference[key].g, "--",
                    label=f"{labels[1]} ({reference[key].n_frames} frames)")
        ax.axhline(1.0, color="grey", lw=0.5, ls=":")
        ax.set(title=key, xlabel="r (nm)", ylabel="g(r)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze_liquid(sim_dirs: Sequence, out_dir, reference_dataset=None, bins: int = 100,
                   r_max_nm: Optional[float] = None, skip_ps: float = 0.0, overwrite: bool = False) -> dict:
    """Partial RDFs (one per unordered pair of bead types) of periodic CG simulations, their frames pooled,
    written to ``rdf.png`` and ``metrics.json``; against the partial RDFs of a periodic CG dataset
    (``reference_dataset``, types from its mapping's topology) where given, with ``rdf_error`` per pair.
    ``r_max_nm`` defaults to half the smallest box height of all frames (rounded down to 0.001 nm)."""
    settings = {"kind": "partial_rdf", "bins": bins, "r_max_nm": r_max_nm, "skip_ps": skip_ps,
                "simulations": [str(s) for s in sim_dirs]}
    inputs = {"reference": reference_dataset} if reference_dataset is not None else {}
    reference = CGDataset.load(reference_dataset) if reference_dataset is not None else None
    if reference is not None and not reference.periodic:
        raise InputError(f"{reference_dataset} holds a non-periodic dataset; the simulations are periodic")
    types = simulation_bead_types(sim_dirs)
    if reference is not None:
        reference_types = bead_type_keys(reference.mapping.cg_topology)
        types = _in_reference_spelling(types, reference_types)
    run = RunFolder.open(out_dir, "analysis", settings, inputs, overwrite=overwrite,
                         resume_hint="choose another folder")
    frames = [load_run_frames(sim_dir, skip_ps) for sim_dir in sim_dirs]
    positions = np.concatenate([x for x, _ in frames])
    boxes = np.concatenate([b for _, b in frames])
    if r_max_nm is None:
        limit = max_rdf_range_nm(boxes if reference is None else np.concatenate([boxes, reference.box_vectors_nm]))
        r_max_nm = float(np.floor(limit * 1000.0) / 1000.0)
    model = partial_rdfs(positions, boxes, types, r_max_nm, bins)
    names, counts = np.unique(types, return_counts=True)
    metrics = {"kind": "partial_rdf", "n_frames": len(positions), "n_beads": len(types),
               "types": {str(n): int(c) for n, c in zip(names, counts)}, "r_max_nm": r_max_nm, "bins": bins,
               "skip_ps": skip_ps, "simulations": [str(s) for s in sim_dirs],
               "pairs": {key: _rdf_metrics(rdf) for key, rdf in model.items()}}
    reference_rdfs = None
    if reference is not None:
        reference_rdfs = partial_rdfs(reference.positions_nm, reference.box_vectors_nm, reference_types, r_max_nm, bins)
        metrics["reference"] = {"path": str(reference_dataset), "n_frames": reference.n_frames,
                                "temperature_K": reference.temperature_K}
        for key, rdf in reference_rdfs.items():
            entry = metrics["pairs"].setdefault(key, {"r_nm": rdf.r_nm.tolist()})
            entry["reference"] = {k: v for k, v in _rdf_metrics(rdf).items() if k != "r_nm"}
            if key in model:
                entry["rdf_error"] = rdf_error(rdf, model[key])
    plot_partial_rdfs(model, run.file("rdf.png"), reference_rdfs)
    run.write_json("metrics.json", metrics)
    return metrics
