"""One typed (transferable) CG model, two different molecules in one OpenMM System.

    python examples/one_model_many_molecules.py typed.pt \
        --molecule MOL:A,MOL:B,MOL:C,MOL:A --molecule MOL:C,MOL:C,MOL:B --steps 1000

``typed.pt`` is a model trained with ``model.typed: true`` (``openmm-cg train``). Each ``--molecule`` is a
chain of bead types RESIDUE:BEAD, bonded in order. The model binds to the whole topology (any molecules
made of its bead types), the System's energy is checked against the sum of each molecule's own energy
(the molecules start far apart), a short Langevin run follows, and the bound potential is saved as
``system.pt``: a file that a bare ``openmmtorch.TorchForce`` runs, with no openmm-cg needed.
"""
import argparse

import numpy as np

import openmm_cg  # noqa: F401  (imports torch before OpenMM, which openmm-torch needs)
from openmm import Context, LangevinMiddleIntegrator, Platform, VerletIntegrator, app, unit

from openmm_cg import CGPotential


def chain_topology(molecules) -> app.Topology:
    """One chain per molecule, one residue per bead (its type's residue name), bonds in sequence."""
    topology = app.Topology()
    for types in molecules:
        chain = topology.addChain()
        atoms = []
        for key in types:
            residue_name, bead_name = key.split(":")
            atoms.append(topology.addAtom(bead_name, None, topology.addResidue(residue_name, chain)))
        for a, b in zip(atoms[:-1], atoms[1:]):
            topology.addBond(a, b)
    return topology


def random_chain_nm(n_beads: int, rng, start) -> np.ndarray:
    steps = rng.normal(size=(n_beads, 3))
    steps *= 0.38 / np.linalg.norm(steps, axis=1, keepdims=True)
    steps[0] = 0.0
    return np.asarray(start) + np.cumsum(steps, axis=0)


def energy_kJ_per_mol(system, positions_nm) -> float:
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("CPU"))
    context.setPositions(positions_nm)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a typed model file (format 2)")
    parser.add_argument("--molecule", action="append", required=True,
                        help="bead types of one chain, comma-separated RESIDUE:BEAD keys (give two or more)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--temperature-K", type=float, default=300.0)
    parser.add_argument("--out", default="system.pt", help="the bound potential's file")
    args = parser.parse_args()

    potential = CGPotential.load(args.model)
    molecules = [m.split(",") for m in args.molecule]
    rng = np.random.default_rng(0)
    # 20 nm apart: beyond the cutoff, so the System's energy is the sum of the molecules' own energies
    parts = [random_chain_nm(len(types), rng, (20.0 * k, 0.0, 0.0)) for k, types in enumerate(molecules)]
    positions = np.concatenate(parts)

    topology = chain_topology(molecules)
    system = potential.createSystem(topology)  # binds the typed model to this topology
    total = energy_kJ_per_mol(system, positions)
    alone = [energy_kJ_per_mol(potential.createSystem(chain_topology([types])), x) for types, x in zip(molecules, parts)]
    print(f"System energy {total:.6f} kJ/mol; molecules alone {' + '.join(f'{e:.6f}' for e in alone)} "
          f"= {sum(alone):.6f} kJ/mol")

    integrator = LangevinMiddleIntegrator(args.temperature_K * unit.kelvin, 1.0 / unit.picosecond,
                                          0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(topology, system, integrator, Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(positions)
    simulation.context.setVelocitiesToTemperature(args.temperature_K * unit.kelvin, 1)
    simulation.step(args.steps)
    state = simulation.context.getState(getEnergy=True)
    print(f"after {args.steps} steps: potential energy "
          f"{state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole):.3f} kJ/mol")

    path = potential.bind(topology).save(args.out, overwrite=True)
    print(f"bound potential written to {path} (openmmtorch.TorchForce({str(path)!r}) runs it alone)")


if __name__ == "__main__":
    main()
