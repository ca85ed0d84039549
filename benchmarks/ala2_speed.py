"""Speed of the alanine dipeptide CG model, measured in one run on this machine.

    python benchmarks/ala2_speed.py --model openmm_cg/models/alanine_dipeptide_cgschnet.pt

Writes benchmarks/results/ala2_speed.json. Every comparison is a ratio of timings taken in the same
run, alternated over several rounds (medians), because shared machines are noisy:
- openmm_vs_torch_loop: CG steps/s in OpenMM (CPU platform, TorchForce) over the same scripted model
  stepped by a plain PyTorch BAOAB Langevin loop (how the reference CG codes simulate), same threads;
- the PythonForce backend beside them;
- cg_speedup_vs_aa: ns/day of one CG molecule over ns/day of the all-atom reference of the same
  molecule (same platform and threads, 2 fs both), and the same with replicas batched in one System;
- training throughput (frames/s) and peak memory of training and of simulation, each measured in a
  process of its own.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def openmm_steps_per_second(potential, n_replicas: int, n_steps: int, backend: str, threads: int) -> float:
    from openmm import Context, unit

    from openmm_cg._runtime import langevin_integrator, platform

    system = potential.createSystem(potential.topology(n_replicas), backend=backend)
    integrator = langevin_integrator(300.0, 1.0, 0.002, seed=0)
    context = Context(system, integrator, *platform("CPU", threads))
    context.setPositions(potential.example_positions(n_replicas))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(20)
    start = time.perf_counter()
    integrator.step(n_steps)
    context.getState(getEnergy=True)  # waits for the last step
    return n_steps / (time.perf_counter() - start)


def torch_loop_steps_per_second(module, masses_amu, positions_nm, n_steps: int, temperature_K: float = 300.0,
                                dt_ps: float = 0.002, friction_per_ps: float = 1.0) -> float:
    """BAOAB Langevin in plain PyTorch with forces by autograd (units: nm, ps, amu, kJ/mol)."""
    import torch

    from openmm_cg.units import kT_kJ_per_mol

    n_beads = len(masses_amu)
    x = torch.tensor(positions_nm, dtype=torch.float32).reshape(-1, n_beads, 3)
    mass = torch.tensor(masses_amu, dtype=torch.float32).reshape(1, n_beads, 1)
    kT = kT_kJ_per_mol(temperature_K)
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=generator) * torch.sqrt(kT / mass)
    c1 = float(np.exp(-friction_per_ps * dt_ps))
    c2 = torch.sqrt((1 - c1 ** 2) * kT / mass)

    def force(positions):
        positions = positions.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(module.energy_batch(positions).sum(), positions)
        return -grad

    f = force(x)
    start = time.perf_counter()
    for _ in range(n_steps):
        v = v + 0.5 * dt_ps * f / mass
        x = x + 0.5 * dt_ps * v
        v = c1 * v + c2 * torch.randn(x.shape, generator=generator)
        x = x + 0.5 * dt_ps * v
        f = force(x)
        v = v + 0.5 * dt_ps * f / mass
    return n_steps / (time.perf_counter() - start)


def all_atom_ns_per_day(n_steps: int, threads: int) -> float:
    from openmm import Context, LocalEnergyMinimizer

    from openmm_cg._runtime import langevin_integrator, platform
    from openmm_cg.data.reference import ReferenceConfig, build_system

    system, _, positions = build_system(ReferenceConfig())
    integrator = langevin_integrator(300.0, 1.0, 0.002, seed=0)
    context = Context(system, integrator, *platform("CPU", threads))
    context.setPositions(positions)
    LocalEnergyMinimizer.minimize(context)
    integrator.step(100)
    start = time.perf_counter()
    integrator.step(n_steps)
    context.getState(getEnergy=True)
    return n_steps * 0.002e-3 / (time.perf_counter() - start) * 86400


def _child(kind: str, model: str, threads: int, seconds: float) -> dict:
    """Run one measurement in a fresh process so that its peak memory is its own."""
    result = subprocess.run([sys.executable, __file__, "--child", kind, "--model", model, "--threads", str(threads),
                             "--child-seconds", str(seconds)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(kind: str, model: str, threads: int, seconds: float) -> None:
    import torch

    torch.set_num_threads(threads)
    from openmm_cg.export import load_eager
    from openmm_cg.simulation.potential import CGPotential

    potential = CGPotential.load(model)
    if kind == "training":
        eager, metadata = load_eager(model)
        eager.train()
        optimizer = torch.optim.AdamW(eager.network.parameters(), lr=1e-4)
        batch = torch.tensor(potential.example_positions(256), dtype=torch.float32).reshape(256, -1, 3)
        batch = batch + 0.005 * torch.randn(batch.shape, generator=torch.Generator().manual_seed(0))
        target = torch.zeros_like(batch)
        frames, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            x = batch.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(eager.network_energy(x).sum(), x, create_graph=True)
            loss = ((-grad - target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            frames += len(batch)
        rate = frames / (time.perf_counter() - start)
    else:
        rate = openmm_steps_per_second(potential, 64, 200, "torchforce", threads)
    print(json.dumps({"rate": rate, "peak_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "openmm_cg" / "models" / "alanine_dipeptide_cgschnet.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "results" / "ala2_speed.json"))
    parser.add_argument("--child", choices=["training", "simulation"])
    parser.add_argument("--child-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.model, args.threads, args.child_seconds)
        return

    import torch

    torch.set_num_threads(args.threads)
    from openmm_cg.export import load_exported
    from openmm_cg.machine import machine_info
    from openmm_cg.simulation.potential import CGPotential

    potential = CGPotential.load(args.model)
    scripted, _ = load_exported(args.model)
    rates = {key: [] for key in ("openmm_1", "torch_loop_1", "pythonforce_1", f"openmm_{args.replicas}",
                                 f"torch_loop_{args.replicas}", "all_atom_ns_per_day")}
    for _ in range(args.rounds):
        for n in (1, args.replicas):
            rates[f"openmm_{n}"].append(openmm_steps_per_second(potential, n, args.steps, "torchforce", args.threads))
            rates[f"torch_loop_{n}"].append(torch_loop_steps_per_second(
                scripted, potential.masses_amu, potential.example_positions(n), args.steps))
        rates["pythonforce_1"].append(openmm_steps_per_second(potential, 1, args.steps, "pythonforce", args.threads))
        rates["all_atom_ns_per_day"].append(all_atom_ns_per_day(20 * args.steps, args.threads))
    median = {key: float(np.median(values)) for key, values in rates.items()}
    ns_per_day = lambda steps_per_second: steps_per_second * 0.002e-3 * 86400  # noqa: E731
    training = _child("training", args.model, args.threads, 30.0)
    simulation = _child("simulation", args.model, args.threads, 0.0)
    R = args.replicas
    result = {
        "machine": machine_info(),
        "model": str(Path(args.model).relative_to(ROOT)) if Path(args.model).resolve().is_relative_to(ROOT) else args.model,
        "timestep_fs": 2.0,
        "rounds": args.rounds,
        "steps_per_measurement": args.steps,
        "cg_steps_per_s": {"openmm_torchforce_1_molecule": median["openmm_1"],
                           "torch_loop_1_molecule": median["torch_loop_1"],
                           "openmm_pythonforce_1_molecule": median["pythonforce_1"],
                           f"openmm_torchforce_{R}_replicas": median[f"openmm_{R}"],
                           f"torch_loop_{R}_replicas": median[f"torch_loop_{R}"]},
        "openmm_vs_torch_loop": median["openmm_1"] / median["torch_loop_1"],
        f"openmm_vs_torch_loop_{R}_replicas": median[f"openmm_{R}"] / median[f"torch_loop_{R}"],
        "pythonforce_vs_torchforce": median["pythonforce_1"] / median["openmm_1"],
        "all_atom_ns_per_day": median["all_atom_ns_per_day"],
        "cg_ns_per_day_1_molecule": ns_per_day(median["openmm_1"]),
        f"cg_ns_per_day_{R}_replicas_aggregate": ns_per_day(median[f"openmm_{R}"]) * R,
        "cg_speedup_vs_aa": ns_per_day(median["openmm_1"]) / median["all_atom_ns_per_day"],
        f"cg_speedup_vs_aa_{R}_replicas_aggregate": ns_per_day(median[f"openmm_{R}"]) * R / median["all_atom_ns_per_day"],
        "training_frames_per_s": training["rate"],
        "training_peak_memory_MB": training["peak_memory_MB"],
        f"simulation_peak_memory_MB_{R}_replicas": simulation["peak_memory_MB"],
        "raw_rates": rates,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw_rates"}, indent=2))


if __name__ == "__main__":
    main()
