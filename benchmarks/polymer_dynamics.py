"""Learned large-time-step dynamics of bead-spring chains (Fu et al., TMLR 2023), judged on held-out chains.

    python benchmarks/polymer_dynamics.py --work runs/polymers

Stages (each resumable: finished outputs are kept and re-running continues):
1. reference: 120 chains (12-36 monomers, three monomer types) in implicit solvent, one OpenMM run of
   the whole set (openmm_cg/configs/polymer_reference.yaml: 5 ns, frames every 1 ps).
2. CG data: every chain clustered into beads of 4 monomers, frames mapped (centres of mass, force sums).
3. training: the dynamics network (mean and spread of accelerations) and the score network, on the
   train chains only (openmm_cg/configs/polymer_dynamics.yaml).
4. rollouts of every test chain, all batched together, from the first reference frames over the
   reference's length (a collision: two beads without a shared bond closer than 0.9 x the closest
   approach in the training chains): (a) no refinement, (b) score-based refinement after every step, (c) a few
   OpenMM Langevin steps after every step with a CG potential force-matched on the train chains
   (openmm_cg.classical.chain_force_matching). A chain whose frame fails the checks (bead collision,
   blow-up) is frozen and counted.
   Each test chain is rolled out ``--replicas`` times (independent random streams), all in one batch.
5. observables per test chain, learned vs reference: mean Rg, Rg^2 autocorrelation and relaxation time
   (reference at the learned step's spacing; learned: averaged over replicas), centre-of-mass diffusion;
   r^2 across chains.
6. speed: simulated ps per wall-clock second of each rollout (all replicas) against OpenMM MD of the same
   chains, replicas included (one System, the reference's 20 fs Langevin steps, the CPU platform), in
   the same run.
Writes benchmarks/results/polymer_dynamics.json and polymer_rg.png (15 ps steps, the config's). The
10 and 20 ps variants in results/polymer_dynamics_step10ps.json and _step20ps.json came from
``--work runs/polymers_s10 --stride-frames 10`` and ``--work runs/polymers_s20 --stride-frames 20`` with
``--out`` elsewhere (the same reference and CG data, linked into each work folder).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ROOT / "openmm_cg" / "configs"
CONTACT_NM = 1.0  # two beads (of ~4 monomers, 0.5 nm each) in contact
VARIANTS = {"a_no_refinement": "none", "b_score_refinement": "score", "c_openmm_relaxation": "openmm"}


def stage_reference(work: Path, frames: int = None):
    from openmm_cg.data.reference import ReferenceConfig, generate_reference

    config = ReferenceConfig(**yaml.safe_load((CONFIGS / "polymer_reference.yaml").read_text()))
    if frames:
        config.frames_per_seed = frames
    return generate_reference(config, work / "reference")


def stage_cg_data(work: Path, reference_paths, particles_per_bead: int):
    from openmm_cg.dynamics.data import PolymerCGData, build_polymer_cg_data

    path = work / "cg.h5"
    if not path.exists():
        build_polymer_cg_data(reference_paths, particles_per_bead).save(path)
    return PolymerCGData.load(path)


def stage_train(work: Path, args) -> dict:
    from openmm_cg.dynamics.train import load_dynamics_config
    from openmm_cg.workflows import train_propagator

    out = work / "dynamics"
    if (out / "dynamics.pt").exists() and (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    overrides = {"data": str(work / "cg.h5"), "output": str(out)}
    if args.max_train_minutes:
        overrides["max_time_minutes"] = args.max_train_minutes
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    if args.stride_frames:
        overrides["stride_frames"] = args.stride_frames
    config = load_dynamics_config(CONFIGS / "polymer_dynamics.yaml", **overrides)
    return train_propagator(config, resume=(out / "checkpoints" / "last.ckpt").exists())


def stage_chain_tables(work: Path, data, summary: dict) -> Path:
    from openmm_cg.classical.chain_force_matching import fit_chain_force_tables

    path = work / "chain_tables.json"
    if not path.exists():
        tables = fit_chain_force_tables([data.chains[i] for i in summary["train_chains"]], data.temperature_K)
        path.write_text(json.dumps(tables.to_dict()))
    return path


def collision_threshold_nm(chains) -> float:
    """0.9 x the closest approach of two beads without a shared bond in the given (training) chains: a
    learned frame closer than anything the reference ever sampled is a collision."""
    closest = np.inf
    for chain in chains:
        i, j = np.triu_indices(chain.n_beads, 2)
        x = chain.positions_nm.astype(np.float64)
        closest = min(closest, float(np.linalg.norm(x[:, j] - x[:, i], axis=-1).min()))
    return 0.9 * closest


def stage_rollouts(work: Path, data, summary: dict, args) -> dict:
    from openmm_cg.dynamics.rollout import RolloutConfig, history_from_frames, load_dynamics, rollout

    _, metadata = load_dynamics(work / "dynamics" / "dynamics.pt")
    test = [data.chains[i] for i in summary["test_chains"]] * args.replicas  # replica r of chain k: r * n_test + k
    history = np.concatenate([history_from_frames(c.positions_nm, data.frame_interval_ps, metadata) for c in test],
                             axis=1)
    n_frames = min(len(c.positions_nm) for c in test)
    steps = args.rollout_steps or int((n_frames - 1) * data.frame_interval_ps / metadata["step_ps"])
    results = {}
    collision_nm = collision_threshold_nm([data.chains[i] for i in summary["train_chains"]])
    for name, refinement in VARIANTS.items():
        out = work / "rollouts" / name
        config = RolloutConfig(steps=steps, seed=args.seed, report_interval=1, checkpoint_interval=100,
                               format="dcd", refinement=refinement, collision_nm=collision_nm, stop_on_failure=False)
        result = rollout(work / "dynamics" / "dynamics.pt", [c.sequence for c in test], history, config, out,
                         score_path=work / "dynamics" / "score.pt", chain_tables_path=stage_chain_tables(work, data, summary),
                         bead_masses_amu=np.concatenate([c.bead_masses_amu for c in test]))
        result["collision_nm"] = collision_nm
        results[name] = result
    return results


def learned_speed(work: Path, data, summary: dict, refinement: str, steps: int) -> dict:
    """Simulated ps per wall-clock second of the learned propagator on the same batch as the rollouts
    (every test chain x replicas), timed here, next to the MD timing, without file output."""
    import torch

    from openmm_cg.classical.chain_force_matching import ChainForceTables
    from openmm_cg.dynamics.chains import build_chain_batch
    from openmm_cg.dynamics.propagator import OpenMMRelaxer, Propagator, RolloutChecks, score_refiner
    from openmm_cg.dynamics.rollout import history_from_frames, load_dynamics, load_score

    model, metadata = load_dynamics(work / "dynamics" / "dynamics.pt")
    test = [data.chains[i] for i in summary["test_chains"]] * summary["replicas"]
    chains = build_chain_batch([c.sequence for c in test], metadata["monomer_types"], metadata["particles_per_bead"])
    history = np.concatenate([history_from_frames(c.positions_nm, data.frame_interval_ps, metadata) for c in test], 1)
    refine = None
    if refinement == "score":
        refine = score_refiner(load_score(work / "dynamics" / "score.pt")[0])
    elif refinement == "openmm":
        tables = ChainForceTables.from_dict(json.loads((work / "chain_tables.json").read_text()))
        refine = OpenMMRelaxer(tables, np.concatenate([c.bead_masses_amu for c in test]), chains.bead_counts,
                                metadata["temperature_K"])
    propagator = Propagator(model, chains, torch.as_tensor(history), 0, RolloutChecks(stop_on_failure=False), refine)
    propagator.run(3)  # warm-up
    start = time.perf_counter()
    propagator.run(steps)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "ps_per_second": steps * metadata["step_ps"] / seconds,
            "torch_threads": torch.get_num_threads()}


def md_speed(sequences, steps: int, threads: int) -> dict:
    """Simulated ps per wall-clock second of the fine-level OpenMM MD of these chains (one System)."""
    from openmm_cg._runtime import langevin_integrator, openmm, platform

    from openmm_cg.data.polymers import build_chains_system

    config = yaml.safe_load((CONFIGS / "polymer_reference.yaml").read_text())
    system, _, x = build_chains_system(list(sequences))
    integrator = langevin_integrator(config["temperature_K"], config["friction_per_ps"], config["timestep_ps"], seed=0)
    context = openmm.Context(system, integrator, *platform("CPU", threads))
    context.setPositions(x)
    openmm.LocalEnergyMinimizer.minimize(context)
    integrator.step(200)
    start = time.perf_counter()
    integrator.step(steps)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "timestep_ps": config["timestep_ps"],
            "ps_per_second": steps * config["timestep_ps"] / seconds, "threads": threads}


def chain_observables(trajectories, masses, interval_ps: float, max_lag_ps: float) -> dict:
    """Observables of one chain from one or more independent trajectories (frames, beads, 3): the mean Rg
    over all frames, the Rg^2 autocorrelation averaged over trajectories, the mean diffusion coefficients of
    the centre of mass and of the beads (their MSD, centre-of-mass motion included)."""
    from openmm_cg.analysis.liquid import msd_nm2, self_diffusion_nm2_per_ps
    from openmm_cg.analysis.polymer import (autocorrelation, chain_diffusion_nm2_per_ps, contact_map,
                                            radius_of_gyration_nm, relaxation_time_ps)

    rgs = [radius_of_gyration_nm(x, masses) for x in trajectories]
    contacts = np.mean([contact_map(x, CONTACT_NM) for x in trajectories], axis=0)
    shortest = min(len(rg) for rg in rgs)
    max_lag = max(2, min(shortest // 4, int(round(max_lag_ps / interval_ps))))
    acf = np.mean([autocorrelation(rg ** 2, max_lag) for rg in rgs], axis=0)
    return {"mean_rg_nm": float(np.mean(np.concatenate(rgs))), "rg_std_nm": float(np.std(np.concatenate(rgs))),
            "rg2_relaxation_ps": relaxation_time_ps(acf, interval_ps), "trajectories": len(rgs),
            "diffusion_nm2_per_ps": float(np.mean([chain_diffusion_nm2_per_ps(x, masses, interval_ps,
                                                                              max(5, len(x) // 10))
                                                   for x in trajectories])),
            "bead_diffusion_nm2_per_ps": float(np.mean([self_diffusion_nm2_per_ps(
                msd_nm2(x, max(5, len(x) // 10)), interval_ps) for x in trajectories])),
            "contact_map": contacts.tolist(), "rg_nm_series": rgs[0].tolist(), "rg_nm_all": np.concatenate(rgs)}


def r_squared(reference, learned) -> dict:
    reference, learned = np.asarray(reference), np.asarray(learned)
    pearson = float(np.corrcoef(reference, learned)[0, 1] ** 2)
    determination = float(1 - ((learned - reference) ** 2).sum() / ((reference - reference.mean()) ** 2).sum())
    return {"pearson_r2": pearson, "coefficient_of_determination": determination}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/polymers")
    parser.add_argument("--stage", choices=["reference", "data", "train", "all"], default="all")
    parser.add_argument("--frames", type=int, help="override the reference length (smoke runs)")
    parser.add_argument("--particles-per-bead", type=int, default=4)
    parser.add_argument("--max-train-minutes", type=float)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--stride-frames", type=int, help="override the learned step (reference frames per step)")
    parser.add_argument("--rollout-steps", type=int, help="default: as long as the reference")
    parser.add_argument("--max-lag-ps", type=float, default=500.0)
    parser.add_argument("--md-steps", type=int, default=5000)
    parser.add_argument("--speed-steps", type=int, default=50, help="learned steps timed per variant")
    parser.add_argument("--replicas", type=int, default=8, help="independent rollouts of every test chain")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of OpenMM and of torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    import torch

    from openmm_cg.analysis.polymer import distribution_overlap
    from openmm_cg.dynamics.rollout import load_dynamics
    from openmm_cg.machine import machine_info
    from openmm_cg.simulation.trajectory import load_run_frames

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    reference_paths = stage_reference(work, args.frames)
    if args.stage == "reference":
        return
    data = stage_cg_data(work, reference_paths, args.particles_per_bead)
    if args.stage == "data":
        return
    summary = stage_train(work, args)
    if args.stage == "train":
        return
    rollouts = stage_rollouts(work, data, summary, args)
    _, metadata = load_dynamics(work / "dynamics" / "dynamics.pt")
    step_ps = metadata["step_ps"]
    stride = int(round(step_ps / data.frame_interval_ps))
    test_ids = summary["test_chains"]
    test = [data.chains[i] for i in test_ids]

    per_chain = []
    for chain_id, chain in zip(test_ids, test):
        per_chain.append({"chain": int(chain_id), "sequence": chain.sequence, "n_beads": chain.n_beads,
                          "reference": chain_observables([chain.positions_nm[::stride]], chain.bead_masses_amu,
                                                         step_ps, args.max_lag_ps)})
    variants = {}
    for name, result in rollouts.items():
        out = work / "rollouts" / name
        positions_nm, _ = load_run_frames(out)
        failed = {int(c): step for c, step in ((c, f["step"]) for c, f in result["failures"].items())}
        counts = [c.n_beads for c in test] * args.replicas
        offsets = np.cumsum([0] + counts)
        learned_rg, reference_rg, learned_tau, reference_tau, contact_errors, diffusion_ratios = [], [], [], [], [], []
        rg_overlaps, bead_diffusion_ratios = [], []
        for k, (entry, chain) in enumerate(zip(per_chain, test)):
            pieces = []
            for replica in range(args.replicas):
                b = replica * len(test) + k
                x = positions_nm[:, offsets[b]:offsets[b + 1]]
                if b in failed:
                    x = x[:failed[b] - 1]  # frames after a failure are the frozen last good frame
                if len(x) >= 20:
                    pieces.append(x)
            entry[name] = {"failed_replicas": sum(replica * len(test) + k in failed for replica in range(args.replicas))}
            if not pieces:
                continue
            entry[name].update(chain_observables(pieces, chain.bead_masses_amu, step_ps, args.max_lag_ps))
            learned_rg.append(entry[name]["mean_rg_nm"])
            reference_rg.append(entry["reference"]["mean_rg_nm"])
            learned_tau.append(entry[name]["rg2_relaxation_ps"])
            reference_tau.append(entry["reference"]["rg2_relaxation_ps"])
            pairs = np.triu_indices(chain.n_beads, 2)
            entry[name]["contact_map_mean_abs_error"] = float(np.abs(
                np.array(entry[name]["contact_map"])[pairs] - np.array(entry["reference"]["contact_map"])[pairs]).mean())
            contact_errors.append(entry[name]["contact_map_mean_abs_error"])
            diffusion_ratios.append(entry[name]["diffusion_nm2_per_ps"] / entry["reference"]["diffusion_nm2_per_ps"])
            entry[name]["rg_distribution_overlap"] = distribution_overlap(entry[name]["rg_nm_all"],
                                                                          entry["reference"]["rg_nm_all"])
            rg_overlaps.append(entry[name]["rg_distribution_overlap"])
            bead_diffusion_ratios.append(entry[name]["bead_diffusion_nm2_per_ps"]
                                         / entry["reference"]["bead_diffusion_nm2_per_ps"])
        variants[name] = {
            "chains_evaluated": len(learned_rg), "collision_threshold_nm": result["collision_nm"],
            "collision_or_blowup_fraction": len(failed) / (len(test) * args.replicas),
            "mean_rg_r2": r_squared(reference_rg, learned_rg),
            "rg2_relaxation_r2": r_squared(reference_tau, learned_tau),
            "contact_map_mean_abs_error": float(np.mean(contact_errors)),
            "com_diffusion_ratio_learned_over_reference_median": float(np.median(diffusion_ratios)),
            "bead_diffusion_ratio_learned_over_reference_median": float(np.median(bead_diffusion_ratios)),
            "rg_distribution_overlap_median": float(np.median(rg_overlaps)),
        }
    md = md_speed([c.sequence for c in test] * args.replicas, args.md_steps, args.threads)
    for name, entry in variants.items():
        entry["speed"] = learned_speed(work, data, dict(summary, replicas=args.replicas), VARIANTS[name],
                                       args.speed_steps)
        entry["speedup_vs_openmm_md"] = entry["speed"]["ps_per_second"] / md["ps_per_second"]

    result = {"machine": machine_info(), "reference": {
                  "chains": len(data.chains), "test_chains": len(test), "rollout_replicas_per_chain": args.replicas,
                  "frame_interval_ps": data.frame_interval_ps,
                  "frames_per_chain": int(len(test[0].positions_nm)), "particles_per_bead": data.particles_per_bead},
              "model": {"step_ps": step_ps, "history": metadata["history"],
                        "md_steps_per_learned_step": step_ps / md["timestep_ps"],
                        "training": {k: v for k, v in summary.items() if k not in ("train_chains",)}},
              "openmm_md": md, "variants": variants,
              "targets": {"mean_rg_r2": 0.90, "rg2_relaxation_r2": 0.48, "speedup": 100},
              "contact_cutoff_nm": CONTACT_NM,
              "per_chain": [{k: ({kk: vv for kk, vv in v.items() if kk not in ("rg_nm_series", "rg_nm_all", "contact_map")}
                                 if isinstance(v, dict) else v)
                             for k, v in entry.items()} for entry in per_chain]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "polymer_dynamics.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(per_chain, variants, step_ps, out / "polymer_rg.png")
    print(json.dumps(variants, indent=2))


def plot(per_chain, variants, step_ps: float, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for name in variants:
        pairs = [(e["reference"], e[name]) for e in per_chain if name in e and "mean_rg_nm" in e[name]]
        axes[0].scatter([r["mean_rg_nm"] for r, _ in pairs], [l["mean_rg_nm"] for _, l in pairs], s=12, label=name)
        axes[1].scatter([r["rg2_relaxation_ps"] for r, _ in pairs], [l["rg2_relaxation_ps"] for _, l in pairs], s=12,
                        label=name)
    for ax, label in zip(axes[:2], ("mean Rg (nm)", "Rg$^2$ relaxation time (ps)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"learned {label}")
        ax.legend(fontsize=7)
    example = per_chain[0]
    t = np.arange(len(example["reference"]["rg_nm_series"])) * step_ps
    axes[2].plot(t, example["reference"]["rg_nm_series"], "k-", lw=0.8, label="reference MD")
    for name in variants:
        if name in example and "rg_nm_series" in example[name]:
            series = example[name]["rg_nm_series"]
            axes[2].plot(np.arange(len(series)) * step_ps, series, lw=0.8, label=name)
    axes[2].set_xlabel("time (ps)")
    axes[2].set_ylabel(f"Rg (nm), chain {example['chain']}")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
