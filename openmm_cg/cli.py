"""The ``openmm-cg`` command: one sub-command per pipeline stage, plus ``demo``."""
import argparse
import json
import sys
from pathlib import Path

from .errors import InputError, ModelFileError, OutputExistsError, RolloutStopped, SimulationBlowUpError


def _reference(args):
    from .data.reference import ReferenceConfig, generate_reference

    if args.config:
        import yaml

        config = ReferenceConfig(**yaml.safe_load(Path(args.config).read_text()))
    else:
        config = ReferenceConfig(
            testsystem=None if (args.pdb or args.prmtop) else args.testsystem, pdb=args.pdb, prmtop=args.prmtop,
            forcefield=args.forcefield, temperature_K=args.temperature, timestep_ps=args.timestep,
            friction_per_ps=args.friction, constraints=args.constraints, save_interval_steps=args.save_interval_steps,
            frames_per_seed=args.frames_per_seed, equilibration_steps=args.equilibration_steps, seeds=args.seeds,
            platform=args.platform, threads_per_seed=args.threads_per_seed,
        )
    out = Path(args.out)
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith("seed_") and p.name != "reference_config.json"):
        raise OutputExistsError(f"{out} holds files that are not reference data; choose another folder")
    if args.overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    paths = generate_reference(config, out, n_workers=args.workers)
    print(json.dumps({"reference_files": [str(p) for p in paths]}, indent=2))


def _map(args):
    from .data.datasets import build_cg_dataset, load_references
    from .data.reference import ReferenceConfig, build_system
    from .mapping.cgmap import mapping_from_spec

    references = load_references(directory=args.reference)
    mapping = mapping_from_spec(references[0].topology, args.mapping)
    system = None
    config_path = Path(args.reference) / "reference_config.json"
    if config_path.exists():
        system = build_system(ReferenceConfig(**json.loads(config_path.read_text())))[0]
    dataset = build_cg_dataset(references, mapping, system=system)
    path = dataset.save(args.out, overwrite=args.overwrite)
    print(json.dumps({"dataset": str(path), "frames": dataset.n_frames, "beads": mapping.n_beads,
                      "bead_names": mapping.bead_names, "trajectories": dataset.trajectory_names}, indent=2))


def _train(args):
    from .training.config import load_config
    from .training.train import train

    config = load_config(args.config)
    if args.output:
        config.output = args.output
    if args.max_epochs is not None:
        config.training.max_epochs = args.max_epochs
    summary = train(config, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))


def _export(args):
    from .training.train import export_run

    path = export_run(args.run, args.out, dtype=args.dtype, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(json.dumps({"model": str(path)}, indent=2))


def _pressure_match(args):
    from .data.datasets import CGDataset
    from .training.pressure_matching import PressureMatchingConfig, pressure_match

    config = PressureMatchingConfig(steps=args.steps, timestep_fs=args.timestep_fs, skip_ps=args.skip_ps,
                                    volume_change=args.volume_change, threads=args.threads, seed=args.seed)
    report = pressure_match(args.model, [CGDataset.load(path) for path in args.dataset], args.out, args.work, config,
                            overwrite=args.overwrite)
    print(json.dumps({"model": report["out"], "volume_term": report["volume_term"]}, indent=2))


def _simulate(args):
    from .simulation.potential import CGPotential
    from .simulation.run import SimulationConfig, run_simulation

    potential = CGPotential.load(args.model)
    positions = initial_positions(potential, args.init, args.replicas, args.seed)
    config = SimulationConfig(
        n_steps=args.steps, timestep_ps=args.timestep, temperature_K=args.temperature, friction_per_ps=args.friction,
        report_interval=args.report_interval, checkpoint_interval=args.checkpoint_interval,
        trajectory_format=args.format, platform=args.platform, threads=args.threads, seed=args.seed,
        backend=args.backend, priors_as_openmm_forces=args.native_priors,
    )
    result = run_simulation(potential, positions, config, args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))


def initial_positions(potential, init, n_replicas: int, seed: int):
    """(R*N, 3) starting positions: R frames drawn (seeded) from a CG dataset, or a PDB replicated."""
    import numpy as np

    from .data.datasets import CGDataset

    if init is None:
        return potential.example_positions(n_replicas)
    path = Path(init)
    if path.suffix in (".h5", ".hdf5"):
        dataset = CGDataset.load(path)
        if dataset.mapping.n_beads != potential.n_beads:
            raise ModelFileError(f"{path} has {dataset.mapping.n_beads} beads per frame; the model has {potential.n_beads}")
        frames = np.random.default_rng(seed).choice(dataset.n_frames, size=n_replicas, replace=n_replicas > dataset.n_frames)
        return dataset.positions_nm[frames].reshape(-1, 3).astype(np.float64)
    from openmm import app, unit

    pdb = app.PDBFile(str(path))
    xyz = np.array(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    if len(xyz) == potential.n_beads:
        return np.tile(xyz, (n_replicas, 1))
    potential.n_replicas_of(pdb.topology)
    return xyz


def _analyze(args):
    from .analysis.report import analyze_ramachandran

    metrics = analyze_ramachandran(args.reference, args.cg, args.out, bins=args.bins, overwrite=args.overwrite)
    print(json.dumps(metrics, indent=2))


def _info(args):
    from .export import read_metadata

    metadata = read_metadata(args.model)
    if not args.full:
        metadata = {k: v for k, v in metadata.items() if k not in ("mapping", "cg_topology", "priors", "training")}
    print(json.dumps(metadata, indent=2))


def _rollout(args):
    import numpy as np

    from .dynamics.data import PolymerCGData
    from .dynamics.rollout import RolloutConfig, history_from_frames, rollout
    from .dynamics.train import load_dynamics

    _, metadata = load_dynamics(args.dynamics)
    data = PolymerCGData.load(args.data)
    chains = [data.chains[i] for i in args.chains] if args.chains else data.chains
    history = np.concatenate([history_from_frames(c.positions_nm, data.frame_interval_ps, metadata, args.start_frame)
                              for c in chains], axis=1)
    config = RolloutConfig(steps=args.steps, seed=args.seed, report_interval=args.report_interval,
                           checkpoint_interval=args.checkpoint_interval, format=args.format, refinement=args.refinement,
                           stop_on_failure=not args.keep_going)
    summary = rollout(args.dynamics, [c.sequence for c in chains], history, config, args.out, score_path=args.score,
                      chain_tables_path=args.chain_tables,
                      bead_masses_amu=np.concatenate([c.bead_masses_amu for c in chains]), overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))


def _demo(args):
    from .demo import run_demo

    report = run_demo(args.out, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmm-cg", description="Machine-learned coarse-grained potentials for OpenMM")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on alanine dipeptide with small budgets (~8 min on 2 cores)")
    p.add_argument("--out", default="demo_report")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("reference", help="all-atom Langevin MD with forces saved (resumable: re-run to continue)")
    p.add_argument("--config", help="a reference YAML (ReferenceConfig fields, e.g. openmm_cg/configs/"
                                    "polymer_reference.yaml); replaces the options below")
    p.add_argument("--testsystem", default="AlanineDipeptideImplicit", help="an openmmtools.testsystems name")
    p.add_argument("--pdb", help="a PDB file (with --forcefield, or starting coordinates for --prmtop)")
    p.add_argument("--prmtop", help="an Amber prmtop (implicit solvent OBC2)")
    p.add_argument("--forcefield", nargs="+", default=["amber14-all.xml", "implicit/obc2.xml"])
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.002, help="ps")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--constraints", default="HBonds", help="HBonds (default) or none")
    p.add_argument("--save-interval-steps", type=int, default=50)
    p.add_argument("--frames-per-seed", type=int, default=10000)
    p.add_argument("--equilibration-steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--platform", default="CPU")
    p.add_argument("--threads-per-seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=None, help="parallel seeds (default: one per core)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="delete existing reference data first")
    p.set_defaults(func=_reference)

    p = sub.add_parser("map", help="map reference trajectories to a CG dataset (HDF5)")
    p.add_argument("--reference", required=True, help="folder written by 'openmm-cg reference'")
    p.add_argument("--mapping", default="alanine_dipeptide", help="a preset name or a mapping YAML file")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_map)

    p = sub.add_parser("train", help="fit priors and train the network by force matching")
    p.add_argument("config", help="training YAML")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="export a training run as one TorchScript .pt")
    p.add_argument("run", help="training output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export)

    p = sub.add_parser("pressure-match", help="fit a periodic model's volume potential so that it has the all-atom "
                                              "pressure and bulk modulus (resumable CG NVT runs)")
    p.add_argument("model", help="an exported periodic model without a volume term")
    p.add_argument("--dataset", required=True, nargs="+", help="CG dataset(s) of NPT-equilibrated references, one "
                                                               "per training temperature")
    p.add_argument("--work", required=True, help="folder for the CG runs (re-run to continue)")
    p.add_argument("--steps", type=int, default=25000, help="per volume")
    p.add_argument("--timestep-fs", type=float, default=4.0)
    p.add_argument("--skip-ps", type=float, default=10.0, help="equilibration dropped at each volume")
    p.add_argument("--volume-change", type=float, default=0.05, help="runs at 1 - this, 1 and 1 + this x the all-atom volume")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_pressure_match)

    p = sub.add_parser("simulate", help="Langevin dynamics of an exported model in OpenMM")
    p.add_argument("model", help="a .pt file or a shipped model name")
    p.add_argument("--init", default=None,
                   help="a CG dataset .h5 (random frames) or a PDB of the CG beads (default: the model's example structure)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--timestep", type=float, default=0.002, help="ps")
    p.add_argument("--temperature", type=float, default=None, help="K (default: the model's)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--report-interval", type=int, default=100)
    p.add_argument("--checkpoint-interval", type=int, default=10000)
    p.add_argument("--format", default="dcd", choices=["dcd", "h5"])
    p.add_argument("--platform", default=None, help="CUDA/CPU/Reference (default: the fastest present)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="torchforce", choices=["torchforce", "pythonforce"])
    p.add_argument("--native-priors", action="store_true", help="priors as native OpenMM forces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("analyze", help="Ramachandran free-energy surfaces and divergences, CG vs all-atom")
    p.add_argument("--reference", required=True, help="the CG dataset (.h5) of the mapped reference")
    p.add_argument("--cg", required=True, nargs="+", help="simulation folder(s) written by 'openmm-cg simulate'")
    p.add_argument("--bins", type=int, default=60)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("rollout", help="learned large-time-step dynamics of polymer chains (resumable)")
    p.add_argument("--dynamics", required=True, help="dynamics.pt of a trained propagator")
    p.add_argument("--score", help="score.pt, for --refinement score")
    p.add_argument("--data", required=True, help="polymer CG data (.h5): the chains and their start frames")
    p.add_argument("--chains", type=int, nargs="*", help="chain indices (default: all)")
    p.add_argument("--start-frame", type=int, default=None, help="last history frame (default: the first possible)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--refinement", default="none", choices=["none", "score", "openmm"])
    p.add_argument("--chain-tables", help="force-matched chain tables (JSON), for --refinement openmm")
    p.add_argument("--report-interval", type=int, default=1)
    p.add_argument("--checkpoint-interval", type=int, default=100)
    p.add_argument("--format", default="dcd", choices=["dcd", "h5"])
    p.add_argument("--keep-going", action="store_true", help="freeze a chain that collides instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_rollout)

    p = sub.add_parser("info", help="print an exported model's metadata")
    p.add_argument("model")
    p.add_argument("--full", action="store_true")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, ModelFileError, OutputExistsError, SimulationBlowUpError, RolloutStopped) as error:
        print(f"openmm-cg {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
