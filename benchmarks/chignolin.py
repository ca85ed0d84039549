"""Chignolin (CLN025, YYDPETGTWY) through the peptide study's pipeline, ready for a GPU machine.

    python benchmarks/chignolin.py --work runs/chignolin --platform CUDA --folded-pdb 5awl.pdb

Settings in benchmarks/configs/chignolin.yaml. Stages (resumable, each skips what is done):
1. data: all-atom reference of capped CLN025 at 340 K (amber14 + GBn2, HMR 4 fs; the study's data stage), mapped
   by the protein backbone mapping to benchmarks/data/chignolin/<SEQUENCE>.h5 with its manifest. The measured
   all-atom rate and the wall time of the configured budget are printed and saved.
2. train: a typed CGSchNet trained from scratch on that dataset (the study's trainer), kept in models/.
3. simulate: CG replicas (non-interacting copies in one System); their C-alpha positions are kept (float32).
4. evaluate: fraction folded (C-alpha RMSD to the folded structure below ``folded_rmsd_nm``; needs the folded
   structure as a local PDB, --folded-pdb, since nothing is downloaded) of the all-atom reference and of the
   CG model, and TICA of C-alpha distances (fitted on the all-atom trajectories) with the free-energy surface
   of both on the first two components. Writes benchmarks/results/chignolin.json and chignolin_tica.png.

With --platform CUDA every all-atom and CG step runs on the GPU; nothing else changes.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peptide_transferability as study  # noqa: E402  (the same stages)

CONFIG = HERE / "configs" / "chignolin.yaml"
STAGES = ("data", "train", "simulate", "evaluate")


def load_config(path: Path, platform=None, folded_pdb=None) -> dict:
    """The config, with the platform and folded structure given on the command line; a folded structure whose
    C-alphas do not match the sequence is refused now, before any MD."""
    from openmm_cg.analysis.protein import load_ca_positions
    from openmm_cg.data.peptides import parse_sequence

    config = yaml.safe_load(Path(path).read_text())
    if platform:
        config["reference"]["platform"] = platform
        config["simulation"]["platform"] = platform
    if folded_pdb:
        config["folded_pdb"] = str(folded_pdb)
    if config.get("folded_pdb"):
        n_ca, n_residues = len(load_ca_positions(config["folded_pdb"])), len(parse_sequence(config["sequence"]))
        if n_ca != n_residues:
            raise SystemExit(f"{config['folded_pdb']} has {n_ca} C-alphas in its first chain; {config['sequence']} has "
                             f"{n_residues} residues")
    return config


def dataset_path(config: dict, data_dir: Path) -> Path:
    return data_dir / f"{config['sequence']}.h5"


def stage_data(config: dict, work: Path, data_dir: Path, workers) -> dict:
    manifest = study.stage_data(config, work, data_dir, workers, sequences=[config["sequence"]])
    entry = manifest["datasets"][config["sequence"]]
    reference = config["reference"]
    budget_ns = len(reference["seeds"]) * reference["frames_per_seed"] * reference["save_interval_steps"] \
        * reference["timestep_ps"] / 1000.0
    rate = entry["all_atom_ns"] / entry["wall_seconds"] * 86400.0  # all seeds together, as they ran here
    budget = {"all_atom_ns_per_day_here": rate, "platform": reference["platform"], "configured_budget_ns": budget_ns,
              "configured_budget_wall_days_at_this_rate": budget_ns / rate, "statement": config["gpu_budget"]}
    (data_dir / "budget.json").write_text(json.dumps(budget, indent=1) + "\n")
    print(f"all-atom: {rate:.0f} ns/day on {reference['platform']}; the configured {budget_ns:.0f} ns take "
          f"{budget_ns / rate:.2f} days at this rate", flush=True)
    return budget


def model_path(data_dir: Path) -> Path:
    return data_dir / "models" / "chignolin.pt"


def stage_train(config: dict, work: Path, data_dir: Path) -> Path:
    settings = study.train_config(config, work / "train", [dataset_path(config, data_dir)], [], True,
                                  config["training"]["max_time_minutes"])
    return study.train_once(settings, model_path(data_dir))


def ca_path(data_dir: Path) -> Path:
    return data_dir / "cg_ca_positions.npz"


def stage_simulate(config: dict, work: Path, data_dir: Path) -> None:
    import numpy as np

    from openmm_cg import workflows
    from openmm_cg.analysis.protein import ca_indices
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.errors import SimulationBlowUpError
    from openmm_cg.outputs import atomic_path
    from openmm_cg.simulation.trajectory import load_run_frames

    if ca_path(data_dir).is_file():
        return
    dataset = CGDataset.load(dataset_path(config, data_dir))
    replicas = config["simulation"]["replicas"]
    blew_up = ""
    try:
        workflows.simulate(model_path(data_dir), study.simulation_config(config), work / "simulation",
                           init=dataset_path(config, data_dir), replicas=replicas, progress=False)
    except SimulationBlowUpError as error:  # reported, and the frames before it are judged
        blew_up = str(error)
        print(blew_up, flush=True)
    trajectory = work / "simulation" / f"trajectory.{study.simulation_config(config).trajectory_format}"
    if not trajectory.is_file():
        raise SystemExit(f"the CG run left no frames ({blew_up or 'no trajectory'}); nothing to judge")
    frames = load_run_frames(work / "simulation")[0]
    n_beads = dataset.mapping.n_beads
    per_replica = frames.reshape(len(frames), replicas, n_beads, 3).transpose(1, 0, 2, 3)
    ca = per_replica[:, :, ca_indices(dataset.mapping.cg_topology)].astype(np.float32)
    with atomic_path(ca_path(data_dir)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, ca_positions_nm=ca, blew_up=np.array(blew_up))  # (replicas, frames, CA, 3)


def stage_evaluate(config: dict, data_dir: Path, results: Path) -> dict:
    import numpy as np

    from openmm_cg.analysis.protein import (ca_indices, compute_ca_distances, compute_ca_rmsd, fraction_folded,
                                            histogram_2d, load_ca_positions, plot_free_energy_2d)
    from openmm_cg.analysis.ramachandran import js_divergence
    from openmm_cg.analysis.tica import compute_tica
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.machine import machine_info

    dataset = CGDataset.load(dataset_path(config, data_dir))
    topology = dataset.mapping.cg_topology
    ca = ca_indices(topology)
    aa = [dataset.positions_nm[dataset.trajectory_index == k][:, ca] for k in range(len(dataset.trajectory_names))]
    kept = np.load(ca_path(data_dir))
    cg = list(kept["ca_positions_nm"].astype(np.float64))
    ca_topology = _ca_topology(topology, ca)

    settings = config["tica"]
    tica = compute_tica([compute_ca_distances(x, ca_topology) for x in aa], settings["lag_frames"],
                        settings["components"])
    aa_ics = np.concatenate([tica.transform(compute_ca_distances(x, ca_topology)) for x in aa])[:, :2]
    cg_ics = np.concatenate([tica.transform(compute_ca_distances(x, ca_topology)) for x in cg])[:, :2]
    both = np.concatenate([aa_ics, cg_ics])
    edges = [np.linspace(both[:, k].min(), both[:, k].max(), settings["bins"] + 1) for k in range(2)]
    temperature = config["reference"]["temperature_K"]
    results.mkdir(parents=True, exist_ok=True)
    plot_free_energy_2d([aa_ics, cg_ics], [f"all-atom, mapped ({len(aa_ics)} frames)", f"CG ({len(cg_ics)} frames)"],
                        ["TIC 1", "TIC 2"], edges, temperature, results / "chignolin_tica.png")
    save_interval_ps = config["reference"]["save_interval_steps"] * config["reference"]["timestep_ps"]
    folded = None
    if config.get("folded_pdb"):
        folded_ca = load_ca_positions(config["folded_pdb"])
        threshold = config["folded_rmsd_nm"]
        rmsd = {name: np.concatenate([compute_ca_rmsd(x, ca_topology, folded_ca) for x in xs])
                for name, xs in (("all_atom", aa), ("cg", cg))}
        folded = {"folded_pdb": Path(config["folded_pdb"]).name, "threshold_nm": threshold,
                  "fraction_folded": {name: fraction_folded(r, threshold) for name, r in rmsd.items()},
                  "median_ca_rmsd_nm": {name: float(np.median(r)) for name, r in rmsd.items()},
                  "min_ca_rmsd_nm": {name: float(np.min(r)) for name, r in rmsd.items()}}
    budget_path = data_dir / "budget.json"
    result = {
        "machine": machine_info(),
        "sequence": config["sequence"], "capped": True, "temperature_K": temperature,
        "all_atom_ns": dataset.n_frames * save_interval_ps / 1000.0,
        "all_atom_trajectories": len(aa),
        "all_atom_budget": json.loads(budget_path.read_text()) if budget_path.is_file() else None,
        "cg_replicas": len(cg), "cg_frames": int(len(cg_ics)), "cg_blew_up": str(kept["blew_up"]) or None,
        "folding": folded if folded is not None else "no folded structure given (--folded-pdb): fraction folded not computed",
        "tica": {"lag_frames": tica.lag_frames, "lag_ps": tica.lag_frames * save_interval_ps,
                 "all_atom_ic_mean": aa_ics.mean(axis=0).tolist(), "all_atom_ic_covariance": np.cov(aa_ics.T).tolist(),
                 "eigenvalues": tica.eigenvalues.tolist(),
                 "implied_timescales_ps": tica.implied_timescales(save_interval_ps).tolist(),
                 "js_cg_vs_aa_2d": js_divergence(histogram_2d(aa_ics, edges), histogram_2d(cg_ics, edges)),
                 "bins": settings["bins"]},
    }
    (results / "chignolin.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("folding", "tica")}, indent=1))
    return result


def _ca_topology(topology, ca):
    """A topology of the C-alphas alone (for the distance features of (frames, C-alphas, 3) arrays)."""
    import mdtraj

    return mdtraj.Topology.from_openmm(topology).subset(ca)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE.parent / "runs" / "chignolin")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "chignolin")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--platform", help="OpenMM platform of every all-atom and CG run (CUDA on a GPU machine)")
    parser.add_argument("--folded-pdb", type=Path, help="the folded structure (e.g. PDB 5AWL), a local file")
    parser.add_argument("--stage", choices=STAGES + ("all",), default="all")
    parser.add_argument("--workers", type=int, default=None, help="parallel all-atom trajectories")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.platform, args.folded_pdb)
    run = {"data": lambda: stage_data(config, args.work, args.data, args.workers),
           "train": lambda: stage_train(config, args.work, args.data),
           "simulate": lambda: stage_simulate(config, args.work, args.data),
           "evaluate": lambda: stage_evaluate(config, args.data, args.results)}
    study.run_stages(run, args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
