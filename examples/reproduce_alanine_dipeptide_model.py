"""Reproduce openmm_cg/models/alanine_dipeptide_cgschnet.pt from nothing: one command, resumable.

    python examples/reproduce_alanine_dipeptide_model.py --work runs/ala2

40 ns of all-atom reference (8 seeds, parallel workers) -> 6-bead backbone+CB map -> priors +
CGSchNet force matching -> TorchScript export. Every stage continues where it stopped when re-run.
About 1 h of reference MD and 1-2 h of training on 2 CPU cores.
"""
import argparse
from pathlib import Path

import yaml

from openmm_cg.data.reference import ReferenceConfig
from openmm_cg.training.config import load_config
from openmm_cg.workflows import export_run, map_reference, reference, train

CONFIGS = Path(__file__).resolve().parents[1] / "openmm_cg" / "configs"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/ala2", help="folder for reference data, dataset and training")
    parser.add_argument("--out", default="runs/ala2/alanine_dipeptide_cgschnet.pt",
                        help="the model file (compare it with the shipped openmm_cg/models/alanine_dipeptide_cgschnet.pt)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--frames-per-seed", type=int, default=None, help="override (for a quick smoke run)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override (for a quick smoke run)")
    args = parser.parse_args()
    work = Path(args.work)

    reference_config = ReferenceConfig(**yaml.safe_load((CONFIGS / "alanine_dipeptide_reference.yaml").read_text()))
    if args.frames_per_seed:
        reference_config.frames_per_seed = args.frames_per_seed
    reference(reference_config, work / "reference", workers=args.workers)

    dataset_path = work / "cg_dataset.h5"
    if not dataset_path.exists():
        map_reference(work / "reference", "alanine_dipeptide", dataset_path)

    config = load_config(CONFIGS / "alanine_dipeptide_cgschnet.yaml")
    config.data.dataset, config.output = str(dataset_path), str(work / "train")
    if args.max_epochs:
        config.training.max_epochs = args.max_epochs
    train(config, resume=(work / "train").exists())
    print(export_run(work / "train", args.out, overwrite=True))


if __name__ == "__main__":
    main()
