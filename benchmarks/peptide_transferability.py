"""One typed CGSchNet for capped peptides, judged on dipeptide sequences it never saw.

    python benchmarks/peptide_transferability.py --work runs/peptides [--stage data|...]

Everything (molecules, all-atom budget, models) is in benchmarks/configs/peptide_transferability.yaml.
Stages, each resumable (finished outputs are kept; re-running continues):
1. data: for every molecule, all-atom reference MD of the capped peptide built from its sequence (amber14 +
   GBn2 implicit solvent, HMR with 4 fs steps), mapped by the protein backbone mapping to a CG dataset in
   benchmarks/data/peptides/<SEQUENCE>.h5 (float32, gzip), listed with its SHA-256 in manifest.json there.
   These files are committed: later stages start from them, and a fresh machine reruns everything after
   this stage without any all-atom MD.
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


def load_config(path: Path = CONFIG) -> dict:
    config = yaml.safe_load(Path(path).read_text())
    molecules = all_molecules(config)
    if len(set(molecules)) != len(molecules):
        raise SystemExit(f"{path}: a sequence is listed twice")
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


def stage_data(config: dict, work: Path, data_dir: Path, workers=None) -> dict:
    """Reference MD and mapping, molecule by molecule; a molecule whose dataset is in the manifest with the
    configured settings (and its file's SHA-256) is done."""
    from dataclasses import asdict

    from openmm_cg import workflows
    from openmm_cg.outputs import sha256_of_file

    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_dir)
    for sequence in all_molecules(config):
        path = data_dir / f"{sequence}.h5"
        entry = manifest["datasets"].get(sequence)
        if entry and path.is_file() and entry["reference"] == asdict(reference_config(config, sequence)) \
                and entry["sha256"] == sha256_of_file(path):
            continue
        start = time.time()
        dataset = workflows.reference_dataset(reference_config(config, sequence), work / "reference" / sequence,
                                              config["mapping"], path, workers=workers)
        manifest["datasets"][sequence] = dataset_entry(config, sequence, path, dataset, time.time() - start)
        write_manifest(data_dir, manifest)
        print(f"{sequence}: {dataset.n_frames} frames, {time.time() - start:.0f} s", flush=True)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "peptides", help="run folders (not committed)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data", type=Path, default=DATA, help="the committed CG datasets and their manifest")
    parser.add_argument("--stage", choices=["data", "all"], default="all")
    parser.add_argument("--workers", type=int, default=None, help="parallel seeds in the all-atom stage")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    stage_data(config, args.work, args.data, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
