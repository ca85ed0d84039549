"""Reproduce models/alanine_dipeptide_cgschnet.pt from nothing: one command, resumable.

    python examples/reproduce_alanine_dipeptide_model.py --work runs/ala2

40 ns of all-atom reference (8 seeds, parallel workers) -> 6-bead backbone+CB map -> priors +
CGSchNet force matching -> TorchScript export. Every stage continues where it stopped when re-run.
About 1 h of reference MD and 1-2 h of training on 2 CPU cores.
"""
import argparse
from pathlib import Path

import yaml

from openmm_cg.data.datasets import build_cg_dataset, load_references
from openmm_cg.data.reference import ReferenceConfig, build_system, generate_reference
from openmm_cg.mapping.cgmap import mapping_from_spec
from openmm_cg.training.config import load_config
from openmm_cg.training.train import export_run, train

CONFIGS = Path(__file__).resolve().parents[1] / "openmm_cg" / "configs"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/ala2", help="folder for reference data, dataset and training")
    parser.add_argument("--out", default="models/alanine_dipeptide_cgschnet.pt")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--frames-per-seed", type=int, default=None, help="override (for a quick smoke run)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override (for a quick smoke run)")
    args = parser.parse_args()
    work = Path(args.work)

    reference = ReferenceConfig(**yaml.safe_load((CONFIGS / "alanine_dipeptide_reference.yaml").read_text()))
    if args.frames_per_seed:
        reference.frames_per_seed = args.frames_per_seed
    generate_reference(reference, work / "reference", n_workers=args.workers)

    dataset_path = work / "cg_dataset.h5"
    if not dataset_path.exists():
        references = load_references(directory=work / "reference")
        mapping = mapping_from_spec(references[0].topology, "alanine_dipeptide")
        build_cg_dataset(references, mapping, system=build_system(reference)[0]).save(dataset_path)

    config = load_config(CONFIGS / "alanine_dipeptide_cgschnet.yaml")
    config.data.dataset, config.output = str(dataset_path), str(work / "train")
    if args.max_epochs:
        config.training.max_epochs = args.max_epochs
    train(config, resume=(work / "train").exists())
    print(export_run(work / "train", args.out, overwrite=True))


if __name__ == "__main__":
    main()
