"""``openmm-cg demo``: the whole pipeline on capped alanine dipeptide with small budgets.

Stages: all-atom reference (2 seeds) -> backbone+CB slice map -> priors + CGSchNet force matching ->
TorchScript export -> OpenMM Langevin simulation of replicas -> Ramachandran comparison. Writes a
report folder with figures, ``metrics.json`` and the exported model. About 7.5 minutes on 2 cores (442 s measured).
"""
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .outputs import prepare_output_dir, write_json


def run_demo(out_dir, overwrite: bool = False, reference_frames_per_seed: int = 10000, train_minutes: float = 3.0,
             cg_replicas: int = 32, cg_steps: int = 25000) -> dict:
    from .analysis.report import analyze_ramachandran
    from .analysis.training_curves import plot_training_curves
    from .cli import initial_positions
    from .data.datasets import build_cg_dataset, load_references
    from .data.reference import ReferenceConfig, build_system, generate_reference
    from .mapping.cgmap import mapping_from_spec
    from .simulation.potential import CGPotential
    from .simulation.run import SimulationConfig, run_simulation
    from .training.config import config_from_dict
    from .training.train import train

    out = prepare_output_dir(out_dir, overwrite)
    work = out / "work"
    timings = {}

    def stage(name):
        print(f"\n=== openmm-cg demo: {name} ===", flush=True)
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = round(time.perf_counter() - timings[name], 1)

    stage("reference")
    reference_config = ReferenceConfig(testsystem="AlanineDipeptideImplicit", frames_per_seed=reference_frames_per_seed,
                                       save_interval_steps=50, equilibration_steps=2500, seeds=[0, 1])
    generate_reference(reference_config, work / "reference")
    done("reference")

    stage("mapping")
    references = load_references(directory=work / "reference")
    mapping = mapping_from_spec(references[0].topology, "alanine_dipeptide")
    dataset = build_cg_dataset(references, mapping, system=build_system(reference_config)[0])
    dataset_path = dataset.save(work / "cg_dataset.h5")
    done("mapping")

    stage("training")
    train_config = config_from_dict({
        "seed": 0, "output": str(work / "train"),
        "data": {"dataset": str(dataset_path), "validation_fraction": 0.5},
        "model": {"cgschnet": {"n_features": 64, "n_interactions": 2, "n_rbf": 32, "n_output_hidden": 32}},
        "training": {"batch_size": 128, "max_epochs": 50, "learning_rate": 2e-3, "max_time_minutes": train_minutes},
    })
    summary = train(train_config)
    shutil.copy(summary["model"], out / "model.pt")
    done("training")

    stage("simulation")
    potential = CGPotential.load(out / "model.pt")
    simulation = run_simulation(
        potential, initial_positions(potential, dataset_path, cg_replicas, seed=0),
        SimulationConfig(n_steps=cg_steps, report_interval=250, checkpoint_interval=5000, platform="CPU", seed=0),
        work / "simulation")
    done("simulation")

    stage("analysis")
    metrics = analyze_ramachandran(dataset_path, [work / "simulation"], work / "analysis")
    shutil.copy(work / "analysis" / "fes.png", out / "fes.png")
    plot_training_curves(work / "train", out / "training_curve.png")
    done("analysis")

    report = {
        "pipeline": "alanine dipeptide (AlanineDipeptideImplicit, 300 K) -> 6-bead CG (C,N,CA,CB,C,N) -> CGSchNet",
        "reference_ns": dataset.n_frames * reference_config.save_interval_ps * 1e-3,
        "cg_ns": simulation["simulated_ns_per_replica"] * simulation["n_replicas"],
        "ramachandran": metrics,
        "training": {k: v for k, v in summary.items() if k != "model"},
        "simulation": simulation,
        "stage_seconds": timings,
        "model": str(out / "model.pt"),
        "reference_config": asdict(reference_config),
    }
    write_json(out / "metrics.json", report)
    return report
