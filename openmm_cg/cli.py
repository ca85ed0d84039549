"""The ``openmm-cg`` command: one sub-command per pipeline stage, plus ``demo``."""
import argparse
import json
import sys
from pathlib import Path

from . import workflows
from .errors import InputError, ModelFileError, OutputExistsError, RolloutStopped, SimulationBlowUpError


def _reference(args):
    from .data.reference import ReferenceConfig

    if args.config:
        import yaml

        config = ReferenceConfig(**yaml.safe_load(Path(args.config).read_text()))
    else:
        config = ReferenceConfig(
            testsystem=None if (args.pdb or args.prmtop or args.sequence) else args.testsystem, sequence=args.sequence,
            pdb=args.pdb, prmtop=args.prmtop, forcefield=args.forcefield, hydrogen_mass_amu=args.hydrogen_mass,
            temperature_K=args.temperature, timestep_ps=args.timestep,
            friction_per_ps=args.friction, constraints=args.constraints, save_interval_steps=args.save_interval_steps,
            frames_per_seed=args.frames_per_seed, equilibration_steps=args.equilibration_steps, seeds=args.seeds,
            platform=args.platform, threads_per_seed=args.threads_per_seed,
        )
    paths = workflows.reference(config, args.out, workers=args.workers, overwrite=args.overwrite)
    return {"reference_files": [str(p) for p in paths]}


def _map(args):
    dataset = workflows.map_reference(args.reference, args.mapping, args.out, overwrite=args.overwrite)
    return {"dataset": str(args.out), "frames": dataset.n_frames, "beads": dataset.mapping.n_beads,
            "bead_names": dataset.mapping.bead_names, "trajectories": dataset.trajectory_names}


def _train(args):
    from .training.config import load_config

    config = load_config(args.config)
    if args.output:
        config.output = args.output
    if args.max_epochs is not None:
        config.training.max_epochs = args.max_epochs
    return workflows.train(config, resume=args.resume, overwrite=args.overwrite)


def _export(args):
    path = workflows.export_run(args.run, args.out, dtype=args.dtype, checkpoint=args.checkpoint,
                                overwrite=args.overwrite)
    return {"model": str(path)}


def _pressure_match(args):
    from .data.datasets import CGDataset

    config = workflows.PressureMatchingConfig(steps=args.steps, timestep_fs=args.timestep_fs, skip_ps=args.skip_ps,
                                              volume_change=args.volume_change, threads=args.threads, seed=args.seed)
    report = workflows.pressure_match(args.model, [CGDataset.load(path) for path in args.dataset], args.out,
                                      args.work, config, overwrite=args.overwrite)
    return {"model": report["out"], "volume_term": report["volume_term"]}


def _simulate(args):
    from .simulation.run import SimulationConfig

    config = SimulationConfig(
        n_steps=args.steps, timestep_ps=args.timestep, temperature_K=args.temperature, friction_per_ps=args.friction,
        report_interval=args.report_interval, checkpoint_interval=args.checkpoint_interval,
        trajectory_format=args.format, platform=args.platform, threads=args.threads, seed=args.seed,
        backend=args.backend, priors_as_openmm_forces=args.native_priors, mts_inner_steps=args.mts_inner_steps,
    )
    return workflows.simulate(args.model, config, args.out, init=args.init, replicas=args.replicas,
                              overwrite=args.overwrite)


def _analyze(args):
    return workflows.analyze(args.reference, args.cg, args.out, bins=args.bins, overwrite=args.overwrite,
                             skip_ps=args.skip_ps, r_max_nm=args.r_max_nm)


def _info(args):
    return workflows.info(args.model, full=args.full)


def _rollout(args):
    from .dynamics.rollout import RolloutConfig

    config = RolloutConfig(steps=args.steps, seed=args.seed, report_interval=args.report_interval,
                           checkpoint_interval=args.checkpoint_interval, format=args.format, refinement=args.refinement,
                           stop_on_failure=not args.keep_going)
    return workflows.rollout(args.dynamics, args.data, config, args.out, chains=args.chains,
                             start_frame=args.start_frame, score=args.score, chain_tables=args.chain_tables,
                             overwrite=args.overwrite)


def _demo(args):
    return workflows.demo(args.out, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: "--ov" must not mean "--overwrite".
    parser = argparse.ArgumentParser(prog="openmm-cg", description="Machine-learned coarse-grained potentials for OpenMM",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, **kwargs):
        return sub.add_parser(name, allow_abbrev=False, **kwargs)

    p = command("demo", help="the whole pipeline on alanine dipeptide with small budgets (~5 min on 2 cores)")
    p.add_argument("--out", default="demo_report")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_demo)

    p = command("reference", help="all-atom Langevin MD with forces saved (resumable: re-run to continue)")
    p.add_argument("--config", help="a reference YAML (ReferenceConfig fields, e.g. openmm_cg/configs/"
                                    "polymer_reference.yaml); replaces the options below")
    p.add_argument("--testsystem", default="AlanineDipeptideImplicit", help="an openmmtools.testsystems name")
    p.add_argument("--sequence", help="a capped peptide (ACE-...-NME) built from its sequence: one-letter (AY) or "
                                      "three-letter codes (ALA-TYR); with --forcefield")
    p.add_argument("--pdb", help="a PDB file (with --forcefield; missing hydrogens are added), or starting "
                                 "coordinates for --prmtop")
    p.add_argument("--prmtop", help="an Amber prmtop (implicit solvent OBC2)")
    p.add_argument("--forcefield", nargs="+", default=["amber14-all.xml", "implicit/gbn2.xml"],
                   help="OpenMM force field files for --sequence and --pdb (default: amber14 + GBn2 implicit solvent)")
    p.add_argument("--hydrogen-mass", type=float, default=None,
                   help="amu: hydrogen mass repartitioning for --sequence/--pdb (3 allows --timestep 0.004)")
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
    p.add_argument("--overwrite", action="store_true", help="delete the reference data this folder holds first")
    p.set_defaults(func=_reference)

    p = command("map", help="map reference trajectories to a CG dataset (HDF5)")
    p.add_argument("--reference", required=True, help="folder written by 'openmm-cg reference'")
    p.add_argument("--mapping", default="alanine_dipeptide", help="a preset name or a mapping YAML file")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_map)

    p = command("train", help="fit priors and train the network by force matching; writes model.pt in the run")
    p.add_argument("config", help="training YAML")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_train)

    p = command("export", help="export a training run as one TorchScript .pt")
    p.add_argument("run", help="training output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export)

    p = command("pressure-match", help="fit a periodic model's volume potential so that it has the all-atom "
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

    p = command("simulate", help="Langevin dynamics of an exported model in OpenMM")
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
    p.add_argument("--mts-inner-steps", type=int, default=None,
                   help="multiple time stepping (with --native-priors): the network once per --timestep, the priors "
                        "this many times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_simulate)

    p = command("analyze", help="Ramachandran free-energy surfaces and divergences, CG vs all-atom (molecules); "
                "partial RDFs of every pair of bead types (periodic simulations)")
    p.add_argument("--reference", help="the CG dataset (.h5) of the mapped reference (required for molecules, "
                   "optional for periodic simulations)")
    p.add_argument("--cg", required=True, nargs="+", help="simulation folder(s) written by 'openmm-cg simulate'")
    p.add_argument("--bins", type=int, default=None, help="bins per angle (default 60) or per RDF (default 100)")
    p.add_argument("--skip-ps", type=float, default=0.0, help="drop each simulation's first frames (equilibration)")
    p.add_argument("--r-max-nm", type=float, default=None,
                   help="RDF range of periodic simulations (default: half the smallest box height)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_analyze)

    p = command("rollout", help="learned large-time-step dynamics of polymer chains (resumable)")
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

    p = command("info", help="print an exported model's metadata")
    p.add_argument("model")
    p.add_argument("--full", action="store_true")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(json.dumps(args.func(args), indent=2))
    except (InputError, ModelFileError, OutputExistsError, SimulationBlowUpError, RolloutStopped) as error:
        print(f"openmm-cg {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
