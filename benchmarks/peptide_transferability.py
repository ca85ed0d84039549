"""One typed CGSchNet for capped peptides, judged on dipeptide sequences it never saw.

    python benchmarks/peptide_transferability.py --work runs/peptides [--stage data|...]

Everything (molecules, all-atom budget, models) is in benchmarks/configs/peptide_transferability.yaml.
Stages, each resumable (finished outputs are kept; re-running continues):
1. data: for every molecule, all-atom reference MD of the capped peptide built from its sequence (amber14 +
   GBn2 implicit solvent, HMR with 4 fs steps), mapped by the protein backbone mapping to a CG dataset in
   benchmarks/data/peptides/<SEQUENCE>.h5 (float32, gzip), listed with its SHA-256 in manifest.json there.
   These files are committed: later stages start from them, and a fresh machine reruns everything after
   this stage without any all-atom MD. Later stages keep what they make in the same committed folder too: the
   model files in models/, and the (phi, psi) of every CG run in angles/ (a few MB; the trajectories stay in
   --work). A stage whose kept output exists is done.
2. transferable: one typed CGSchNet trained on every single residue and training dipeptide (the held-out
   dipeptides are listed in the dataset list as held out: kept out of priors, training and validation).
3. dedicated: for each held-out dipeptide, a CGSchNet of the same size trained on that molecule alone (the
   one-molecule workflow, model format 1).
4. priors_only: the transferable model's priors without its network.
5. simulate: every held-out molecule with every model: replicas that do not interact, Langevin at the
   reference temperature, started from frames of the molecule's mapped reference.
6. evaluate: for each held-out molecule and each residue, the Ramachandran (phi, psi) Jensen-Shannon divergence
   of each model against the molecule's own all-atom reference, the reference's split-half divergence (its
   noise floor: two of its four trajectories against the other two) and the basin populations; the targets:
   the transferable model's median JS over the held-out residues at most 1.5x the dedicated models' median, and
   its JS (mean over the molecule's residues) below the priors-only model's on every held-out molecule.
   Writes benchmarks/results/peptide_transferability.json and peptide_fes.png (all-atom vs CG for each
   held-out molecule).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = HERE / "configs" / "peptide_transferability.yaml"
DATA = HERE / "data" / "peptides"
MANIFEST = "manifest.json"


MODELS = ("transferable", "dedicated", "priors_only")
STAGES = ("data", "transferable", "dedicated", "priors_only", "simulate", "evaluate")
TARGET_MEDIAN_JS_RATIO = 1.5


def load_config(path: Path = CONFIG) -> dict:
    """The study's config, refused when the held-out molecules are not new combinations of training residues."""
    from openmm_cg.data.peptides import parse_sequence

    config = yaml.safe_load(Path(path).read_text())
    molecules = all_molecules(config)
    if len(set(molecules)) != len(molecules):
        raise SystemExit(f"{path}: a sequence is listed twice")
    training = config["single_residues"] + config["training_dipeptides"]
    known = {residue for sequence in training for residue in parse_sequence(sequence)}
    residues = {sequence: parse_sequence(sequence) for sequence in molecules}
    neighbours = {pair for sequence in training for pair in zip(residues[sequence], residues[sequence][1:])}
    seen_pairs = neighbours | {(b, a) for a, b in neighbours}
    for sequence in config["held_out_dipeptides"]:
        unknown = sorted(set(parse_sequence(sequence)) - known)
        if unknown:
            raise SystemExit(f"{path}: held-out {sequence} has residues no training molecule has: {unknown}")
        chain = residues[sequence]
        repeated = [f"{a}-{b}" for a, b in zip(chain, chain[1:]) if (a, b) in seen_pairs]
        if repeated:
            raise SystemExit(f"{path}: held-out {sequence} repeats the neighbours {repeated} of a training molecule")
    return config


def all_molecules(config: dict) -> list:
    return config["single_residues"] + config["training_dipeptides"] + config["held_out_dipeptides"]


def reference_config(config: dict, sequence: str):
    from openmm_cg.data.reference import ReferenceConfig

    return ReferenceConfig(testsystem=None, sequence=sequence, **config["reference"])


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"datasets": {}}


def write_manifest(data_dir: Path, manifest: dict) -> None:
    from openmm_cg.outputs import atomic_path

    with atomic_path(data_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def dataset_entry(config: dict, sequence: str, path: Path, dataset, seconds: float) -> dict:
    from dataclasses import asdict

    from openmm_cg.outputs import sha256_of_file

    reference = reference_config(config, sequence)
    frames_per_trajectory = [int((dataset.trajectory_index == k).sum()) for k in range(len(dataset.trajectory_names))]
    return {
        "file": path.name, "sha256": sha256_of_file(path), "sequence": reference.source_description(),
        "frames": int(dataset.n_frames), "beads": int(dataset.mapping.n_beads),
        "frames_per_trajectory": frames_per_trajectory,
        "all_atom_ns": sum(frames_per_trajectory) * reference.save_interval_ps / 1000.0,
        "reference": asdict(reference), "mapping": config["mapping"], "wall_seconds": round(seconds, 1),
    }


def same_data_settings(kept: dict, configured: dict) -> bool:
    """Whether two reference settings make the same data (where and how fast they run does not matter)."""
    from openmm_cg.data.reference import EXTENDABLE

    def data_settings(settings):
        return {k: v for k, v in settings.items() if k in ("seeds", "frames_per_seed") or k not in EXTENDABLE}

    return data_settings(kept) == data_settings(configured)


def stage_data(config: dict, work: Path, data_dir: Path, workers=None, sequences=None) -> dict:
    """Reference MD and mapping, molecule by molecule (every molecule of the study, or ``sequences``); a molecule
    whose dataset is in the manifest with the configured settings (and its file's SHA-256) is done."""
    from dataclasses import asdict

    from openmm_cg import workflows
    from openmm_cg.outputs import sha256_of_file

    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_dir)
    for sequence in sequences or all_molecules(config):
        path = data_dir / f"{sequence}.h5"
        entry = manifest["datasets"].get(sequence)
        configured = asdict(reference_config(config, sequence))
        if entry and path.is_file() and same_data_settings(entry["reference"], configured) \
                and entry["sha256"] == sha256_of_file(path):
            continue
        start = time.time()
        dataset = workflows.reference_dataset(reference_config(config, sequence), work / "reference" / sequence,
                                              config["mapping"], path, workers=workers)
        manifest["datasets"][sequence] = dataset_entry(config, sequence, path, dataset, time.time() - start)
        write_manifest(data_dir, manifest)
        print(f"{sequence}: {dataset.n_frames} frames, {time.time() - start:.0f} s", flush=True)
    return manifest


def dataset_paths(config: dict, data_dir: Path, sequences) -> list:
    paths = [data_dir / f"{sequence}.h5" for sequence in sequences]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{data_dir} lacks {missing}: run the data stage first (--stage data)")
    return paths


def train_config(config: dict, output: Path, datasets: list, held_out: list, typed: bool, minutes: float):
    from openmm_cg.training.config import config_from_dict

    return config_from_dict({
        "seed": config["seed"], "output": str(output),
        "data": {"dataset": [str(p) for p in datasets], "validation_fraction": config["validation_fraction"],
                 "held_out_molecules": held_out},
        "priors": config["priors"], "model": dict(config["model"], typed=typed),
        "training": dict(config["training"], max_time_minutes=minutes)})


def model_path(data_dir: Path, model: str, sequence: str = "") -> Path:
    """Where a study model is kept (committed, with its JSON and weights beside it)."""
    return data_dir / "models" / {"transferable": "transferable.pt", "dedicated": f"dedicated_{sequence}.pt",
                                  "priors_only": "priors_only.pt"}[model]


def train_once(train_settings, kept: Path) -> Path:
    """The kept model file of a training run: trained (or continued from its last checkpoint) in the run folder
    unless it is kept already, then copied with its sidecars."""
    import shutil

    from openmm_cg import workflows
    from openmm_cg.export import sidecar_paths

    if kept.is_file():
        return kept
    output = Path(train_settings.output)
    model = output / "model.pt"
    if not model.is_file():
        workflows.train(train_settings, resume=(output / "checkpoints" / "last.ckpt").exists())
    kept.parent.mkdir(parents=True, exist_ok=True)
    for source, target in zip((model, *sidecar_paths(model)), (kept, *sidecar_paths(kept))):
        shutil.copyfile(source, target)
    return kept


def stage_transferable(config: dict, work: Path, data_dir: Path) -> Path:
    datasets = dataset_paths(config, data_dir, all_molecules(config))
    return train_once(train_config(config, work / "transferable", datasets, config["held_out_dipeptides"], True,
                                   config["training"]["max_time_minutes"]), model_path(data_dir, "transferable"))


def stage_dedicated(config: dict, work: Path, data_dir: Path) -> None:
    for sequence in config["held_out_dipeptides"]:
        datasets = dataset_paths(config, data_dir, [sequence])
        train_once(train_config(config, work / "dedicated" / sequence, datasets, [], False,
                                config["dedicated_max_time_minutes"]), model_path(data_dir, "dedicated", sequence))


def stage_priors_only(config: dict, data_dir: Path) -> None:
    from openmm_cg import workflows

    path = model_path(data_dir, "priors_only")
    if not path.is_file():
        workflows.priors_only_model(model_path(data_dir, "transferable"), path)


def simulation_config(config: dict):
    from openmm_cg.simulation.run import SimulationConfig

    settings = {k: v for k, v in config["simulation"].items() if k != "replicas"}
    return SimulationConfig(**{"platform": "CPU", "seed": config["seed"], **settings})


def angles_path(data_dir: Path, model: str, sequence: str) -> Path:
    return data_dir / "angles" / f"{model}_{sequence}.npz"


def stage_simulate(config: dict, work: Path, data_dir: Path) -> None:
    """Every held-out molecule with every model, each run kept as the (phi, psi) of every residue and frame (float32)
    with each frame's replica. A run that blows up is kept as its error (with its step) and the study goes on:
    its Ramachandran map counts as maximally wrong."""
    import numpy as np

    from openmm_cg import workflows
    from openmm_cg.analysis.ramachandran import phi_psi_residues
    from openmm_cg.analysis.report import simulation_phi_psi
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.errors import SimulationBlowUpError
    from openmm_cg.outputs import atomic_path

    for sequence in config["held_out_dipeptides"]:
        dataset = CGDataset.load(data_dir / f"{sequence}.h5")
        topology = dataset.mapping.cg_topology
        for model in MODELS:
            kept = angles_path(data_dir, model, sequence)
            if kept.is_file():
                continue
            out = work / "simulations" / model / sequence
            try:
                workflows.simulate(model_path(data_dir, model, sequence), simulation_config(config), out,
                                   init=data_dir / f"{sequence}.h5", replicas=config["simulation"]["replicas"],
                                   progress=False)
                residues = phi_psi_residues(topology)
                angles = [simulation_phi_psi([out], topology, dataset.mapping.n_beads, residue=k)
                          for k in range(len(residues))]
                arrays = {"residues": np.array(residues), "groups": angles[0].groups.astype(np.int32),
                          "phi": np.array([a.phi for a in angles], dtype=np.float32),
                          "psi": np.array([a.psi for a in angles], dtype=np.float32)}
            except SimulationBlowUpError as error:
                arrays = {"blew_up": np.array(str(error))}
                print(f"{model} {sequence}: {error}", flush=True)
            kept.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(kept) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, **arrays)


def stage_evaluate(config: dict, data_dir: Path, results: Path) -> dict:
    import numpy as np

    from openmm_cg.analysis.ramachandran import PhiPsi, compare, phi_psi, phi_psi_residues, plot_free_energy_grid
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.machine import machine_info

    worst = float(np.log(2.0))  # the largest JS divergence: what a run that blew up counts as
    molecules, rows, titles, failures = {}, [], [], {}
    for sequence in config["held_out_dipeptides"]:
        dataset = CGDataset.load(data_dir / f"{sequence}.h5")
        topology = dataset.mapping.cg_topology
        runs = {}
        for model in MODELS:
            path = angles_path(data_dir, model, sequence)
            if not path.is_file():
                raise SystemExit(f"{path} is missing: run the simulate stage first")
            runs[model] = dict(np.load(path))
            if "blew_up" in runs[model]:
                failures[f"{model}/{sequence}"] = str(runs[model]["blew_up"])
        entry = {"residues": {}}
        for k, label in enumerate(phi_psi_residues(topology)):
            reference = phi_psi(dataset.positions_nm, topology, groups=dataset.trajectory_index, residue=k)
            residue = {}
            row, row_titles = [reference], [f"{sequence} {label}: all-atom"]
            for model in MODELS:
                if "blew_up" in runs[model]:
                    residue[model] = {"js_cg_vs_aa": worst, "blew_up": str(runs[model]["blew_up"])}
                    continue
                run = runs[model]
                if str(run["residues"][k]) != label:
                    raise SystemExit(f"{angles_path(data_dir, model, sequence)} holds residues {run['residues']}, "
                                     f"not {label} at {k}: delete it and rerun the simulate stage")
                angles = PhiPsi(run["phi"][k].astype(np.float64), run["psi"][k].astype(np.float64), run["groups"])
                residue[model] = compare(reference, angles, config["bins"])
                if model != "priors_only":
                    row.append(angles)
                    row_titles.append(f"{sequence} {label}: {model}")
            residue["js_aa_half_vs_half"] = next((r["js_aa_half_vs_half"] for r in residue.values()
                                                  if isinstance(r, dict) and "js_aa_half_vs_half" in r), None)
            entry["residues"][label] = residue
            rows.append(row)
            titles.append(row_titles)
        entry["mean_js"] = {model: float(np.mean([r[model]["js_cg_vs_aa"] for r in entry["residues"].values()]))
                            for model in MODELS}
        molecules[sequence] = entry

    def per_residue(model):
        return [r[model]["js_cg_vs_aa"] for m in molecules.values() for r in m["residues"].values()]

    median = {model: float(np.median(per_residue(model))) for model in MODELS}
    ratio = median["transferable"] / median["dedicated"]
    below = {s: m["mean_js"]["transferable"] < m["mean_js"]["priors_only"] for s, m in molecules.items()}
    manifest = read_manifest(data_dir)["datasets"]
    summary = json.loads(model_path(data_dir, "transferable").with_suffix(".json").read_text())["training"]["summary"]
    result = {
        "machine": machine_info(),
        "training_sequences": config["single_residues"] + config["training_dipeptides"],
        "held_out_sequences": config["held_out_dipeptides"],
        "all_atom_ns_per_molecule": {s: manifest[s]["all_atom_ns"] for s in all_molecules(config)},
        "all_atom_wall_hours": sum(manifest[s]["wall_seconds"] for s in all_molecules(config)) / 3600.0,
        "reference": config["reference"],
        "model": config["model"],
        "cg_simulation": dict(config["simulation"], ns_per_molecule_and_model=config["simulation"]["replicas"]
                              * config["simulation"]["n_steps"] * config["simulation"]["timestep_ps"] / 1000.0),
        "js_divergence_unit": "nats",
        "bins_per_dimension": config["bins"],
        "median_js_held_out_residues": median,
        "median_js_ratio_transferable_over_dedicated": ratio,
        "target_median_js_ratio_at_most": TARGET_MEDIAN_JS_RATIO,
        "target_median_js_ratio_met": bool(ratio <= TARGET_MEDIAN_JS_RATIO),
        "held_out_js_below_priors_only_per_molecule": below,
        "held_out_js_below_priors_only": bool(all(below.values())),
        "held_out_force_rmse_kJ_per_mol_nm": summary["held_out_molecules"],
        "simulation_failures": failures,
        "molecules": molecules,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "peptide_transferability.json").write_text(json.dumps(result, indent=1) + "\n")
    temperature = config["reference"]["temperature_K"]
    plot_free_energy_grid(rows, titles, temperature, results / "peptide_fes.png", config["bins"])
    print(json.dumps({k: result[k] for k in ("median_js_held_out_residues", "median_js_ratio_transferable_over_dedicated",
                                             "held_out_js_below_priors_only_per_molecule")}, indent=1))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "peptides", help="run folders (not committed)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data", type=Path, default=DATA, help="the committed CG datasets and their manifest")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--stage", choices=STAGES + ("all",), default="all",
                        help="one stage, or all of them in order (each skips what is done)")
    parser.add_argument("--workers", type=int, default=None, help="parallel seeds in the all-atom stage")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    run = {
        "data": lambda: stage_data(config, args.work, args.data, args.workers),
        "transferable": lambda: stage_transferable(config, args.work, args.data),
        "dedicated": lambda: stage_dedicated(config, args.work, args.data),
        "priors_only": lambda: stage_priors_only(config, args.data),
        "simulate": lambda: stage_simulate(config, args.work, args.data),
        "evaluate": lambda: stage_evaluate(config, args.data, args.results),
    }
    run_stages(run, args.stage)
    return 0


def run_stages(stages: dict, chosen: str) -> None:
    """Every stage in order (``chosen`` "all"), or the chosen one."""
    for stage in stages if chosen == "all" else (chosen,):
        print(f"stage {stage}", flush=True)
        stages[stage]()


if __name__ == "__main__":
    sys.exit(main())
