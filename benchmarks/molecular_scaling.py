"""Cost of one CG step of a typed model bound to protein-like chains, versus the number of beads.

    python benchmarks/molecular_scaling.py

Chains of 100 beads (random walks of 0.38 nm steps, the size of a small protein's C-alpha trace, radius
of gyration about 1.5 nm) on a grid 6 nm apart, no box: 100, 1k, 10k and 100k beads. The model is a typed
CGSchNet of the alanine dipeptide model's size (128 features, 3 interactions, 50 radial functions, 1.5 nm
cutoff) over six bead types with bonds, angles, dihedrals and repulsion, bound to the chains (neighbors
searched inside the model every step: ``nn.neighbors.open_neighbor_pairs``) and run through TorchForce on
OpenMM's CPU platform. The cost does not depend on the weights, so the model is untrained.

Autograd keeps every pair's activations, so memory grows linearly too: about 17 kB per pair at this width,
some 40 GB for 100k beads. Sizes that would not fit in the machine's memory are skipped (and said so);
a second series with 32 features reaches 100k beads on a 23 GB machine (--features).

The in-run baseline is the version-1 path, every pair of the system evaluated (a molecular model whose one
"molecule" is every chain), at the sizes where it fits in memory. Writes results/molecular_scaling.json: ms
per step and per 1000 beads at each size, peak memory, the ratio to the all-pairs baseline, and
``per_bead_growth_10k_to_100k`` (target < 1.3: linear cost).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHAIN_BEADS = 100
TYPES = [f"RES:T{k}" for k in range(6)]
WARMUP_STEPS = 5


FEATURES = [128]  # set by --features: 128 is the alanine dipeptide model's width


def _network():
    from openmm_cg.nn.schnet import SchNetConfig

    return SchNetConfig(n_features=FEATURES[0], n_interactions=3, n_rbf=50, cutoff_nm=1.5)


def chains(n_beads: int, seed: int = 0):
    """(positions nm (n, 3), bead type keys, bonds (n - chains, 2)) of n_beads / 100 chains on a grid."""
    rng = np.random.default_rng(seed)
    n_chains = max(1, n_beads // CHAIN_BEADS)
    size = n_beads // n_chains
    side = int(np.ceil(n_chains ** (1 / 3)))
    positions, types, bonds = [], [], []
    for c in range(n_chains):
        corner = 6.0 * np.array(np.unravel_index(c, (side, side, side)), dtype=np.float64)
        steps = rng.normal(size=(size, 3))
        steps *= 0.38 / np.linalg.norm(steps, axis=1, keepdims=True)
        steps[0] = 0.0
        positions.append(corner + np.cumsum(steps, axis=0))
        types += [TYPES[k % len(TYPES)] for k in range(size)]
        bonds += [[c * size + k, c * size + k + 1] for k in range(size - 1)]
    return np.concatenate(positions), types, np.array(bonds, dtype=np.int64).reshape(-1, 2)


def typed_module():
    from openmm_cg.nn.typed import TypedCGModule
    from openmm_cg.priors.typed import TermRules, TypedPriors, canonical

    priors = TypedPriors(TermRules(n_dihedral_terms=3), 1.5)
    for key in {canonical(k) for k in product(TYPES, repeat=2)}:
        priors.bonds[key], priors.repulsion[key] = (3000.0, 0.38), 1e-4
    for key in {canonical(k) for k in product(TYPES, repeat=3)}:
        priors.angles[key] = (50.0, 1.9)
    for key in {canonical(k) for k in product(TYPES, repeat=4)}:
        priors.dihedrals[key] = ([1.0, 0.5, 0.2], [0.0, 0.0, 0.0])
    return TypedCGModule(TYPES, [110.0] * len(TYPES), priors, _network(), 1.0)


def topology_of(types, bonds):
    from openmm import app

    topology = app.Topology()
    atoms, chain, residue = [], None, None
    bonded = set(map(tuple, bonds.tolist()))
    for k, key in enumerate(types):
        if chain is None or (k - 1, k) not in bonded:
            chain = topology.addChain()
            residue = topology.addResidue("RES", chain)
        atoms.append(topology.addAtom(key.split(":")[1], None, residue))
    for i, j in bonds:
        topology.addBond(atoms[i], atoms[j])
    return topology


def time_steps(system, positions, n_steps: int, threads: int) -> float:
    from openmm import Context

    from openmm_cg._runtime import langevin_integrator, platform

    integrator = langevin_integrator(300.0, 1.0, 0.002, seed=0)
    context = Context(system, integrator, *platform("CPU", threads))
    context.setPositions(positions)
    integrator.step(WARMUP_STEPS)  # TorchScript optimises its graph on the third call; the first steps touch new memory
    start = time.perf_counter()
    integrator.step(n_steps)
    context.getState(getEnergy=True)
    return (time.perf_counter() - start) / n_steps * 1e3


def worker(n_beads: int, n_steps: int, threads: int, path: str, baseline: bool) -> dict:
    import openmm

    import openmm_cg  # noqa: F401
    from openmm_cg import CGPotential

    positions, types, bonds = chains(n_beads)
    topology = topology_of(types, bonds)
    if baseline:
        import torch

        from openmm_cg._runtime import openmmtorch
        from openmm_cg.nn.potential import CGPotentialModule

        module = CGPotentialModule([TYPES.index(t) for t in types], typed_module().priors.molecule_terms(types, bonds),
                                   _network(), n_types=len(TYPES))
        system = openmm.System()
        for _ in types:
            system.addParticle(110.0)
        system.addForce(openmmtorch().TorchForce(torch.jit.script(module)))
    else:
        system = CGPotential.load(path).createSystem(topology)
    ms = time_steps(system, positions, n_steps, threads)
    return {"beads": n_beads, "chains": n_beads // CHAIN_BEADS, "ms_per_step": ms,
            "ms_per_step_per_1000_beads": ms / n_beads * 1000, "timed_steps": n_steps,
            "peak_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 5, 3, 3], help="timed steps per size")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", type=int, nargs="+", default=[128, 32],
                        help="network widths, one series each (128: the alanine dipeptide model's)")
    parser.add_argument("--out", default=str(HERE / "results" / "molecular_scaling.json"))
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        n_beads, n_steps, path, baseline = args.worker
        FEATURES[0] = args.features[0]
        print(json.dumps(worker(int(n_beads), int(n_steps), args.threads, path, baseline == "1")))
        return

    import openmm_cg  # noqa: F401
    from openmm_cg.export import save_model
    from openmm_cg.machine import machine_info
    from openmm_cg.nn.kinds import file_metadata

    total_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20

    def run(n_beads, n_steps, path, baseline, features):
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--features", str(features),
                              "--worker", str(n_beads), str(n_steps), str(path), "1" if baseline else "0"],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{features} features, " + ("all pairs " if baseline else "bound ") + json.dumps(result), flush=True)
        return result

    series = []
    for features in args.features:
        FEATURES[0] = features
        with tempfile.TemporaryDirectory() as tmp:
            module = typed_module()
            path = save_model(module, file_metadata(module, [300.0], "untrained"), Path(tmp) / "typed.pt")
            bound, skipped = {}, {}
            for n, steps in zip(args.sizes, args.steps):
                # Memory grows linearly too (autograd keeps every pair's activations): a size whose projected
                # peak exceeds 80% of this machine's memory is skipped and said so, not run into the OOM killer.
                known = [r for r in bound.values() if r["beads"] >= 1000]
                if known:
                    projected = known[-1]["peak_memory_MB"] * n / known[-1]["beads"]
                    if projected > 0.8 * total_MB:
                        skipped[str(n)] = f"needs about {projected / 1024:.0f} GB, the machine has {total_MB / 1024:.0f} GB"
                        continue
                bound[n] = run(n, steps, path, False, features)
            baseline = {n: run(n, max(2, 2000 // n), path, True, features) for n in args.baseline_sizes}
        per_bead = {n: r["ms_per_step_per_1000_beads"] for n, r in bound.items()}
        series.append({
            "n_features": features, "bound_neighbor_search": list(bound.values()), "skipped": skipped,
            "all_pairs_baseline": list(baseline.values()),
            "ratio_all_pairs_to_bound": {str(n): baseline[n]["ms_per_step"] / bound[n]["ms_per_step"]
                                         for n in baseline if n in bound},
            "per_bead_growth_10k_to_100k": per_bead[100000] / per_bead[10000]
            if {10000, 100000} <= set(per_bead) else None})
    growth = next((s["per_bead_growth_10k_to_100k"] for s in series if s["per_bead_growth_10k_to_100k"]), None)
    report = {
        "benchmark": "molecular_scaling", "machine": machine_info(), "threads": args.threads,
        "model": {"kind": "typed CGSchNet bound to chains", "n_interactions": 3, "n_rbf": 50, "cutoff_nm": 1.5,
                  "types": len(TYPES), "chain_beads": CHAIN_BEADS, "chain_spacing_nm": 6.0},
        "series": series,
        "per_bead_growth_10k_to_100k": growth,
        "per_bead_growth_from_features": next((s["n_features"] for s in series if s["per_bead_growth_10k_to_100k"]),
                                              None),
        "target_per_bead_growth": 1.3,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({"per_bead_growth_10k_to_100k": growth,
                      "ratios": [s["ratio_all_pairs_to_bound"] for s in series]}, indent=2))


if __name__ == "__main__":
    main()
