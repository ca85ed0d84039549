"""Cost of one CG step of a periodic liquid model in OpenMM versus system size.

    python benchmarks/liquid_scaling.py

One-bead methanol at its liquid density (14.85 beads/nm^3) in cubic boxes of 1k, 8k and 64k beads;
the exported periodic model (pair prior + CGSchNet, neighbor search inside the model) runs through
TorchForce with periodic boundary conditions on the CPU platform. The cost does not depend on the
weights, so an untrained model of the liquid architecture is timed unless --model names one.
Writes benchmarks/results/liquid_scaling.json: ms per step, ms per step per 1000 beads, and the
growth of the per-bead cost from 8k to 64k beads (target < 1.5: linear scaling), plus the
neighbor search alone (cell list) against all pairs at the smallest size as the in-run baseline.

Each size is timed in a subprocess for two exports of the same model: the network passing its pairs
through in blocks (the default, nn.schnet.PAIR_BLOCK, nn.hipnnts.PAIR_BLOCK) and in one block (the
whole pair list at once, as before blocks). With one block every per-pair buffer of a 64k-bead step is
hundreds of MB; glibc serves each such allocation by a fresh mmap and returns it on free, so the
step page-faults all of its memory again every time, and the per-bead cost grows with size. Blocks of
a few MB are reused from the heap and stay in cache. --model times one given export as it is.

--architecture hipnnts times the HIP-NN-TS of the methanol study (configs/methanol_models.yaml) and
writes liquid_scaling_hipnnts.json. A third export there uses one block and contracts every layer with
its weights first ("weights_first_one_block": the code before blocks and before the first layer summed
over neighbours first), so the JSON gives the speed-up of both changes in the same run.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHANOL_BEADS_PER_NM3 = 14.85  # 0.79 g/cm^3, 32.04 g/mol
ONE_BLOCK = 2 ** 62
WARMUP_STEPS = 4


def liquid_positions(n_beads: int, seed: int = 0):
    """A jittered simple-cubic lattice at the liquid density: (positions nm (n, 3), box nm (3, 3))."""
    per_side = int(round(n_beads ** (1 / 3)))
    if per_side ** 3 != n_beads:
        raise ValueError("n_beads must be a cube number")
    spacing = METHANOL_BEADS_PER_NM3 ** (-1 / 3)
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    jitter = np.random.default_rng(seed).uniform(-0.05, 0.05, grid.shape)
    return grid + jitter, np.eye(3) * per_side * spacing


def network_config(args):
    from openmm_cg.nn.schnet import SchNetConfig
    from openmm_cg.training.config import load_config

    if args.architecture == "hipnnts":
        return load_config(HERE.parent / "openmm_cg" / "configs" / "methanol_models.yaml").model.hipnnts
    return SchNetConfig(n_features=args.features, n_interactions=args.interactions, n_rbf=args.rbf,
                        cutoff_nm=args.cutoff_nm)


def build_model(path: Path, args, pair_block: int, weights_first: bool = False):
    from openmm_cg.export import save_model
    from openmm_cg.nn.kinds import potential_metadata
    from openmm_cg.nn.periodic import PeriodicCGPotentialModule
    from openmm_cg.priors.pair import PairPriorParameters

    config = network_config(args)
    prior = PairPriorParameters(c=1e-6, exponent=12.0, cutoff_nm=0.5)
    module = PeriodicCGPotentialModule([0], prior, config)
    module.network.pair_block = pair_block
    if weights_first:
        for layer in module.network.blocks:
            layer.interaction.environment_first = False
    bead = {"bead_names": ["MOH"], "bead_types": [0], "type_names": ["MOH"], "masses_amu": [32.042],
            "cg_topology": {"chains": [{"id": "A", "residues": [{"name": "MOH", "id": "1", "atoms": [
                {"name": "MOH", "element": None}]}]}], "bonds": []}}
    return save_model(module, potential_metadata(module, bead, [300.0], "untrained"), path)


def ms_per_step(potential, n_beads: int, n_steps: int, threads: int) -> float:
    from openmm import Context

    from openmm_cg._runtime import langevin_integrator, platform

    positions, box = liquid_positions(n_beads)
    system = potential.createSystem(potential.topology(n_beads, box_vectors_nm=box))
    integrator = langevin_integrator(300.0, 1.0, 0.002, seed=0)
    context = Context(system, integrator, *platform("CPU", threads))
    context.setPositions(positions)
    # TorchScript's profiling executor runs the first two calls as they are and optimises the graph on
    # the third; the first touch of a 64k-bead step's memory is slow too. Time only after both.
    integrator.step(WARMUP_STEPS)
    start = time.perf_counter()
    integrator.step(n_steps)
    context.getState(getEnergy=True)
    return (time.perf_counter() - start) / n_steps * 1e3


def neighbor_search_ms(n_beads: int, cutoff_nm: float, repeats: int = 3) -> dict:
    import torch

    from openmm_cg.nn.neighbors import minimum_image_counts, neighbor_pairs

    positions, box = liquid_positions(n_beads)
    x, b = torch.tensor(positions, dtype=torch.float32), torch.tensor(box, dtype=torch.float32)
    search = torch.jit.script(neighbor_pairs)
    search(x, b, cutoff_nm)
    start = time.perf_counter()
    for _ in range(repeats):
        pairs, _ = search(x, b, cutoff_nm)
    cell_list = (time.perf_counter() - start) / repeats * 1e3
    start = time.perf_counter()
    for _ in range(repeats):
        i, j = torch.triu_indices(n_beads, n_beads, offset=1)
        delta = x[j] - x[i]
        close = torch.linalg.vector_norm(delta - minimum_image_counts(delta, b) @ b, dim=1) < cutoff_nm
    all_pairs = (time.perf_counter() - start) / repeats * 1e3
    assert int(close.sum()) == len(pairs)
    return {"cell_list_ms": cell_list, "all_pairs_ms": all_pairs, "pairs": len(pairs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported periodic model (default: untrained liquid architecture)")
    parser.add_argument("--architecture", choices=["cgschnet", "hipnnts"], default="cgschnet",
                        help="the untrained network timed (hipnnts: the methanol study's; the size options are "
                             "CGSchNet's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 64000])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 5, 2], help="timed steps per size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--interactions", type=int, default=3)
    parser.add_argument("--rbf", type=int, default=32)
    parser.add_argument("--cutoff-nm", type=float, default=0.8)
    parser.add_argument("--out", help="default: results/liquid_scaling.json, _hipnnts.json for HIP-NN-TS")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        from openmm_cg.simulation.potential import CGPotential

        potential = CGPotential.load(args.model)
        print(json.dumps({"ms_per_step": ms_per_step(potential, args.sizes[0], args.steps[0], args.threads),
                          "peak_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    from openmm_cg.machine import machine_info

    from openmm_cg.export import read_metadata
    from openmm_cg.nn import hipnnts, schnet

    hip = args.architecture == "hipnnts"
    pair_block = hipnnts.PAIR_BLOCK if hip else schnet.PAIR_BLOCK
    settings = {"pairs_in_blocks": f"pair blocks of {pair_block}",
                "one_block": "the whole pair list at once (the code before blocks)"}
    if hip:
        settings["weights_first_one_block"] = "one block, every layer summed weights first (the code before both)"
    cutoff_nm = read_metadata(args.model)["cutoff_nm"] if args.model else network_config(args).cutoff_nm
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            models = {"given_model": Path(args.model)}
        else:
            models = {"pairs_in_blocks": build_model(Path(tmp) / "blocks.pt", args, pair_block),
                      "one_block": build_model(Path(tmp) / "one_block.pt", args, ONE_BLOCK)}
            if hip:
                models["weights_first_one_block"] = build_model(Path(tmp) / "weights_first.pt", args, ONE_BLOCK,
                                                                weights_first=True)
        runs = {}
        for setting, path in models.items():
            runs[setting] = {}
            for n, steps in zip(args.sizes, args.steps):
                command = [sys.executable, __file__, "--worker", "--model", str(path), "--sizes", str(n),
                           "--steps", str(steps), "--threads", str(args.threads)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                runs[setting][n] = json.loads(output.strip().splitlines()[-1])
    result = {
        "machine": machine_info(),
        "model": args.model or {"architecture": f"{args.architecture} (untrained: cost does not depend on weights)",
                                **asdict(network_config(args)), "pair_prior": True, "dtype": "float32"},
        "platform": "CPU", "threads": args.threads, "density_beads_per_nm3": METHANOL_BEADS_PER_NM3,
        f"neighbor_search_{args.sizes[0]}_beads": neighbor_search_ms(args.sizes[0], cutoff_nm),
    }
    if not args.model:
        result["settings"] = settings
    for setting, timings in runs.items():
        per_bead = {n: run["ms_per_step"] / n * 1000 for n, run in timings.items()}
        entry = {"ms_per_step": {str(n): run["ms_per_step"] for n, run in timings.items()},
                 "ms_per_step_per_1000_beads": {str(n): v for n, v in per_bead.items()},
                 "peak_memory_MB": {str(n): run["peak_memory_MB"] for n, run in timings.items()}}
        if 8000 in per_bead and 64000 in per_bead:
            entry["per_bead_cost_growth_8k_to_64k"] = per_bead[64000] / per_bead[8000]
            entry["target_growth_below_1_5"] = entry["per_bead_cost_growth_8k_to_64k"] < 1.5
        result[setting] = entry
    for setting in ("one_block", "weights_first_one_block"):
        if "pairs_in_blocks" in result and setting in result:
            result[f"{setting}_over_blocks_ms_per_step"] = {
                n: result[setting]["ms_per_step"][n] / result["pairs_in_blocks"]["ms_per_step"][n]
                for n in result["pairs_in_blocks"]["ms_per_step"]}
    out = Path(args.out or HERE / "results" / f"liquid_scaling{'_hipnnts' if hip else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
