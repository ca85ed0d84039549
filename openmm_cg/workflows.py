"""The pipelines: each function chains stages (reference MD -> mapping -> dataset -> priors -> training -> model
file -> simulation -> analysis) for the command line, the demo, the examples and the benchmarks.

This is the one module that may import every stage; the stages import only what lies before them. A function
here holds no science of its own: it passes files and settings from one stage to the next.
"""
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .errors import InputError
from .outputs import RunFolder, check_output_file


def reference(config, out, workers: Optional[int] = None, overwrite: bool = False) -> List[Path]:
    """All-atom reference MD with forces (resumable): one HDF5 file per seed in the run folder ``out``."""
    from .data.reference import generate_reference

    return generate_reference(config, out, n_workers=workers, overwrite=overwrite)


def map_reference(reference_dir, mapping, out, overwrite: bool = False):
    """The CG dataset of a reference folder, mapped by ``mapping`` (a preset name, a YAML file or a dict), with the
    force map checked against the reference's constraints. Returns the dataset (saved at ``out``)."""
    from .data.datasets import build_cg_dataset, load_references
    from .data.reference import build_system, reference_config
    from .mapping.cgmap import mapping_from_spec

    check_output_file(out, overwrite)
    references = load_references(directory=reference_dir)
    system = build_system(reference_config(reference_dir))[0]
    dataset = build_cg_dataset(references, mapping_from_spec(references[0].topology, mapping), system=system)
    dataset.save(out, overwrite=overwrite)
    return dataset


def reference_dataset(config, reference_dir, mapping, out, workers: Optional[int] = None):
    """All-atom reference MD (resumable, in ``reference_dir``) mapped to the CG dataset ``out``; returns the
    dataset. The dataset is written once the reference is complete, replacing an older one."""
    reference(config, reference_dir, workers=workers)
    return map_reference(reference_dir, mapping, out, overwrite=True)


def cg_structure(sequence: Optional[str] = None, pdb=None, mapping="protein_backbone"):
    """(CG topology, bead positions in nm) of a capped peptide built from its ``sequence``, or of a protein PDB
    (missing hydrogens added, missing heavy atoms refused), mapped by ``mapping``: a structure to bind a typed
    model to and start a CG simulation from."""
    from openmm import app

    from .data.peptides import add_hydrogens, build_peptide
    from .mapping.cgmap import mapping_from_spec

    if (sequence is None) == (pdb is None):
        raise InputError("give a sequence or a PDB file")
    if sequence is not None:
        topology, positions_nm = build_peptide(sequence)
    else:
        structure = app.PDBFile(str(pdb))
        topology, positions_nm = add_hydrogens(structure.topology, structure.positions)
    cg_mapping = mapping_from_spec(topology, mapping)
    return cg_mapping.cg_topology, cg_mapping.map_positions(positions_nm)


def train(config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Force matching in the run folder ``config.output``, then its model file ``model.pt``; returns the summary
    with the model's path."""
    from .export import save_model
    from .training.train import train as train_model

    trained = train_model(config, resume=resume, overwrite=overwrite, progress=progress)
    run = RunFolder.attach(trained.run_dir, "training")
    path = save_model(trained.module, trained.metadata, model_file(run, "model.pt"), config.training.export_dtype,
                      overwrite=True)
    summary = dict(trained.summary, model=str(path))
    run.write_json("summary.json", summary)
    return summary


def model_file(run: RunFolder, name: str) -> Path:
    """The path of model file ``name`` in a run folder, recorded with its sidecars as the package's own."""
    from .export import sidecar_paths

    path = run.file(name)
    for sidecar in sidecar_paths(path):
        run.file(sidecar.name)
    return path


def export_run(run_dir, out, dtype: str = "float32", checkpoint: str = "best", overwrite: bool = False) -> Path:
    """The model of a training run folder (its best or last checkpoint) as one model file."""
    from .export import save_model
    from .training.train import load_trained

    trained = load_trained(run_dir, checkpoint)
    return save_model(trained.module, trained.metadata, out, dtype, overwrite)


def fit_pair_table(dataset, cutoff_nm: float, out, overwrite: bool = False) -> Path:
    """The classical baseline of a liquid: a force-matched pair table, written as a model file."""
    from .classical.pair_force_matching import fit_pair_force_matching, pair_table_model
    from .export import save_model

    check_output_file(out, overwrite)
    module, metadata = pair_table_model(fit_pair_force_matching(dataset, cutoff_nm), dataset)
    return save_model(module, metadata, out, dtype="float64", overwrite=overwrite)


def simulate(model, config, out, init=None, replicas: int = 1, overwrite: bool = False,
             progress: bool = True, box_vectors_nm=None) -> dict:
    """Langevin dynamics of a model (a file or a shipped name) from ``init`` (a CG dataset, a PDB of the beads,
    or the model's example structure) in the run folder ``out``; resumable. A typed model is bound to ``replicas``
    non-interacting copies of the molecule of ``init`` (a CG dataset)."""
    from .simulation.potential import CGPotential
    from .simulation.run import bind_replicas, initial_positions, run_simulation

    potential = CGPotential.load(model)
    if potential.kind == "typed":
        potential, positions = bind_replicas(potential, init, replicas, config.seed)
    else:
        positions = initial_positions(potential, init, replicas, config.seed)
    return run_simulation(potential, positions, config, out, overwrite=overwrite, progress=progress,
                          box_vectors_nm=box_vectors_nm)


def priors_only_model(model, out, overwrite: bool = False) -> Path:
    """The priors of a typed model file without its network, as a typed model file (the baseline that shows
    what the network adds)."""
    from .export import read_metadata, save_model
    from .nn.kinds import file_metadata
    from .nn.typed import TypedCGModule
    from .priors.typed import TypedPriors

    metadata = read_metadata(model)
    if metadata.get("model_kind") != "typed":
        raise InputError(f"{model} is a {metadata.get('model_kind')} model; priors_only_model takes typed models")
    module = TypedCGModule(metadata["type_names"], metadata["type_masses_amu"],
                           TypedPriors.from_dict(metadata["typed_priors"]), None,
                           own_type_keys=metadata.get("own_type_keys", ()))
    extra = {"priors_of": {"file": Path(model).name,
                           "weights_sha256": metadata.get("integrity", {}).get("weights_sha256")}}
    return save_model(module, file_metadata(module, metadata["temperatures_K"], metadata["training_data_sha256"], extra),
                      out, metadata.get("dtype", "float32"), overwrite)


def analyze(reference_dataset, simulations: Sequence, out, bins: Optional[int] = None, overwrite: bool = False,
            skip_ps: float = 0.0, r_max_nm: Optional[float] = None) -> dict:
    """Judge CG simulations. Molecules: Ramachandran free-energy surfaces and divergences against the mapped
    reference (``reference_dataset`` required; ``bins`` per angle, default 60). Periodic simulations (frames
    with boxes): the partial RDF of every pair of bead types (``bins`` default 100, up to ``r_max_nm``), against
    a periodic CG reference dataset where one is given. ``skip_ps`` drops each simulation's first frames."""
    from .analysis.report import analyze_liquid, analyze_ramachandran, simulations_are_periodic

    if simulations_are_periodic(simulations):
        return analyze_liquid(simulations, out, reference_dataset, bins=100 if bins is None else bins,
                              r_max_nm=r_max_nm, skip_ps=skip_ps, overwrite=overwrite)
    if reference_dataset is None:
        raise InputError("the simulations are not periodic: a Ramachandran analysis needs the mapped reference "
                         "CG dataset (--reference cg.h5)")
    if r_max_nm is not None:
        raise InputError("an RDF range (--r-max-nm) applies to periodic simulations only")
    return analyze_ramachandran(reference_dataset, simulations, out, bins=60 if bins is None else bins,
                                overwrite=overwrite, skip_ps=skip_ps)


def info(model, full: bool = False) -> dict:
    """A model file's metadata, without building a System."""
    from .export import read_metadata

    metadata = read_metadata(model)
    typed = metadata.get("typed_model", metadata) if metadata.get("model_kind") in ("typed", "bound") else None
    if not full:
        metadata = {k: v for k, v in metadata.items() if k not in ("mapping", "cg_topology", "priors", "training",
                                                                   "typed_priors", "typed_model", "molecules")}
    if typed is not None:  # a transferable model: what it can bind to
        from .priors.typed import TypedPriors

        metadata["bead_type_masses_amu"] = dict(zip(typed["type_names"], typed["type_masses_amu"]))
        metadata["prior_term_classes"] = TypedPriors.from_dict(typed["typed_priors"]).classes()
    return metadata


@dataclass
class PressureMatchingConfig:
    steps: int = 25000              # per volume: 100 ps of 4 fs steps
    timestep_fs: float = 4.0
    report_interval: int = 25
    skip_ps: float = 10.0           # equilibration dropped at each volume
    volume_change: float = 0.05     # d: runs at 1 - d, 1 and 1 + d times the all-atom volume
    n_blocks: int = 10              # block averages for the standard errors
    threads: int = 1
    seed: int = 0


def pressure_match(model, datasets: Sequence, out, work, config: Optional[PressureMatchingConfig] = None,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Fit the volume potential of the periodic model ``model`` (``priors.volume``) so that at every training
    temperature (one dataset each) it has the all-atom pressure and bulk modulus, and write the model with it to
    ``out``. At each temperature the model runs NVT in the all-atom box scaled to 1 - d, 1 and 1 + d times its
    volume (resumable runs in the run folder ``work``); the parabola through the virial pressures gives the CG
    pressure and its slope at the all-atom volume. Returns the report (also ``work/pressure_matching.json``)."""
    from .analysis.liquid import block_mean_and_error, virial_pressure_bar
    from .export import add_volume_term, potential_energy_function
    from .priors.volume import StatePoint, all_atom_targets, fit_volume_term, pressure_and_slope_at
    from .simulation.potential import CGPotential
    from .simulation.run import SimulationConfig, run_simulation
    from .simulation.trajectory import load_run_frames

    config = config or PressureMatchingConfig()
    check_output_file(out, overwrite)  # before the CG runs, not after
    potential = CGPotential.load(model)
    if potential.metadata.get("volume_term"):
        raise InputError(f"{model} already has a volume term; match the model without one")
    if any(not d.periodic for d in datasets):
        raise InputError("pressure matching needs periodic (liquid) datasets")
    # The CG runs always continue (--overwrite is for the output model); their length and threads may change.
    run = RunFolder.open(work, "pressure-matching", asdict(config), {"model": potential.path}, resume=True,
                         mutable=("steps", "threads", "skip_ps", "n_blocks"))
    points, details = [], []
    for dataset in datasets:
        temperature = dataset.temperature_K
        target_pressure, target_bulk = all_atom_targets(dataset)
        n_molecules = dataset.positions_nm.shape[1] // potential.n_beads
        volume = float(np.mean(np.abs(np.linalg.det(dataset.box_vectors_nm)))) / n_molecules
        start = np.flatnonzero(dataset.trajectory_index == dataset.trajectory_index[0])[-1]
        energy = potential_energy_function(potential.path, temperature)
        measured = []
        for factor in (1.0 - config.volume_change, 1.0, 1.0 + config.volume_change):
            scale = factor ** (1.0 / 3.0)
            folder = run.file(f"T{temperature:g}_V{factor:g}")
            run_simulation(potential, dataset.positions_nm[start] * scale,
                           SimulationConfig(n_steps=config.steps, timestep_ps=config.timestep_fs * 1e-3,
                                            temperature_K=temperature, report_interval=config.report_interval,
                                            checkpoint_interval=config.report_interval * 40, platform="CPU",
                                            threads=config.threads, seed=config.seed),
                           folder, box_vectors_nm=dataset.box_vectors_nm[start] * scale, progress=progress)
            x, boxes = load_run_frames(folder, config.skip_ps)
            v = float(np.mean(np.abs(np.linalg.det(boxes)))) / n_molecules
            measured.append((v,) + block_mean_and_error(virial_pressure_bar(energy, x, boxes, temperature),
                                                        config.n_blocks))
        pressure, slope, pressure_error, slope_error = pressure_and_slope_at(volume, *zip(*measured))
        point = StatePoint(temperature, volume, target_pressure, target_bulk, cg_pressure_bar=pressure,
                           cg_pressure_slope_bar_per_nm3=slope)
        points.append(point)
        details.append({"state_point": point.to_dict(), "cg_pressure_standard_error_bar": pressure_error,
                        "cg_bulk_modulus_bar": -volume * slope, "cg_bulk_modulus_standard_error_bar": volume * slope_error,
                        "runs": [{"volume_per_molecule_nm3": v, "pressure_bar": p, "standard_error_bar": e}
                                 for v, p, e in measured]})
    temperature_input = potential.metadata.get("temperature_input")
    params = fit_volume_term(points, temperature_input["reference_K"] if temperature_input else None)
    add_volume_term(potential.path, params, out, overwrite=overwrite)
    report = {"model": str(model), "out": str(out), "volume_term": params.to_dict(), "state_points": details,
              "config": asdict(config)}
    run.write_json("pressure_matching.json", report)
    return report


def train_propagator(config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Learned dynamics: train the propagator and its score network in the run folder ``config.output`` and write
    ``dynamics.pt`` and ``score.pt`` there; returns the summary."""
    from .dynamics.train import train_dynamics
    from .export import save_model

    trained = train_dynamics(config, resume=resume, overwrite=overwrite, progress=progress)
    run = RunFolder.attach(trained.run_dir, "dynamics-training")
    dtype = config.export_dtype
    save_model(trained.dynamics, trained.dynamics_metadata(), model_file(run, "dynamics.pt"), dtype, overwrite=True)
    save_model(trained.score, trained.score_metadata(), model_file(run, "score.pt"), dtype, overwrite=True)
    return trained.summary


def rollout(dynamics, data, config, out, chains: Optional[Sequence[int]] = None, start_frame: Optional[int] = None,
            score=None, chain_tables=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Learned large-time-step dynamics of chains of polymer CG data (all, or the indices ``chains``), starting
    from the history that ends at ``start_frame`` of each; resumable in the run folder ``out``."""
    from .dynamics.data import PolymerCGData
    from .dynamics.rollout import history_from_frames, load_dynamics, rollout as run_rollout

    _, metadata = load_dynamics(dynamics)
    data = PolymerCGData.load(data)
    selected = [data.chains[i] for i in chains] if chains else data.chains
    history = np.concatenate([history_from_frames(c.positions_nm, data.frame_interval_ps, metadata, start_frame)
                              for c in selected], axis=1)
    return run_rollout(dynamics, [c.sequence for c in selected], history, config, out, score_path=score,
                       chain_tables_path=chain_tables,
                       bead_masses_amu=np.concatenate([c.bead_masses_amu for c in selected]), overwrite=overwrite,
                       progress=progress)


def demo(out, overwrite: bool = False, reference_frames_per_seed: int = 10000, train_minutes: float = 3.0,
         cg_replicas: int = 32, cg_steps: int = 25000, max_epochs: int = 50) -> dict:
    """The whole pipeline on capped alanine dipeptide with small budgets: all-atom reference (2 seeds) ->
    backbone+CB slice map -> priors + CGSchNet force matching -> model file -> OpenMM Langevin simulation of
    replicas -> Ramachandran comparison. Writes a report folder with figures, ``metrics.json`` and the model.
    About 5 minutes on 2 cores (280 s measured)."""
    import shutil

    from .analysis.training_curves import plot_training_curves
    from .data.reference import ReferenceConfig
    from .export import sidecar_paths
    from .simulation.run import SimulationConfig
    from .training.config import config_from_dict

    settings = {"reference_frames_per_seed": reference_frames_per_seed, "train_minutes": train_minutes,
                "cg_replicas": cg_replicas, "cg_steps": cg_steps, "max_epochs": max_epochs}
    run = RunFolder.open(out, "demo", settings, overwrite=overwrite, resume_hint="choose another folder")
    work = run.file("work")
    timings = {}

    def stage(name, function, *args, **kwargs):
        print(f"\n=== openmm-cg demo: {name} ===", flush=True)
        started = time.perf_counter()
        result = function(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 1)
        return result

    reference_config = ReferenceConfig(testsystem="AlanineDipeptideImplicit", frames_per_seed=reference_frames_per_seed,
                                       save_interval_steps=50, equilibration_steps=2500, seeds=[0, 1])
    stage("reference", reference, reference_config, work / "reference")
    dataset_path = work / "cg_dataset.h5"
    dataset = stage("mapping", map_reference, work / "reference", "alanine_dipeptide", dataset_path)
    train_config = config_from_dict({
        "seed": 0, "output": str(work / "train"),
        "data": {"dataset": str(dataset_path), "validation_fraction": 0.5},
        "model": {"cgschnet": {"n_features": 64, "n_interactions": 2, "n_rbf": 32, "n_output_hidden": 32}},
        "training": {"batch_size": 128, "max_epochs": max_epochs, "learning_rate": 2e-3,
                     "max_time_minutes": train_minutes},
    })
    summary = stage("training", train, train_config)
    model = model_file(run, "model.pt")
    for source in (summary["model"], *sidecar_paths(summary["model"])):
        shutil.copy(source, run.path / Path(source).name)
    simulation = stage("simulation", simulate, model, SimulationConfig(
        n_steps=cg_steps, report_interval=250, checkpoint_interval=5000, platform="CPU", seed=0),
        work / "simulation", init=dataset_path, replicas=cg_replicas)
    metrics = stage("analysis", analyze, dataset_path, [work / "simulation"], work / "analysis")
    shutil.copy(work / "analysis" / "fes.png", run.file("fes.png"))
    plot_training_curves(work / "train", run.file("training_curve.png"))
    report = {
        "pipeline": "alanine dipeptide (AlanineDipeptideImplicit, 300 K) -> 6-bead CG (C,N,CA,CB,C,N) -> CGSchNet",
        "reference_ns": dataset.n_frames * reference_config.save_interval_ps * 1e-3,
        "cg_ns": simulation["simulated_ns_per_replica"] * simulation["n_replicas"],
        "ramachandran": metrics,
        "training": {k: v for k, v in summary.items() if k != "model"},
        "simulation": simulation,
        "stage_seconds": timings,
        "model": str(model),
        "reference_config": asdict(reference_config),
    }
    run.write_json("metrics.json", report)
    return report
