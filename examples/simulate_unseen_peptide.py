"""A peptide the transferable model never saw: from its sequence to a CG simulation in plain OpenMM.

    python examples/simulate_unseen_peptide.py --sequence KW --replicas 8 --steps 20000

The capped peptide (ACE-LYS-TRP-NME here) is built from its sequence, mapped to its backbone beads (N, CA, C,
CB), and the typed model binds to that CG topology: one model for any sequence of the residues it was trained
on. Replicas are copies of the peptide that do not interact, in one System. The basin populations of every
residue's (phi, psi) are printed at the end.
"""
import argparse
import sys

import numpy as np

import openmm_cg  # noqa: F401  (imports torch before OpenMM, which openmm-torch needs)
from openmm import LangevinMiddleIntegrator, Platform, unit
from openmm.app import DCDReporter, Simulation, StateDataReporter

from openmm_cg import CGPotential
from openmm_cg.analysis.ramachandran import basin_populations, phi_psi_residues, replica_phi_psi
from openmm_cg.topology import replicate_topology
from openmm_cg.workflows import cg_structure


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="KW", help="one-letter or three-letter codes; ACE/NME caps are added")
    parser.add_argument("--model", default="peptide_backbone_cgschnet", help="a shipped model name or a typed .pt")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--timestep-fs", type=float, default=4.0)
    parser.add_argument("--report-interval", type=int, default=50)
    parser.add_argument("--dcd", default=None, help="write the trajectory here")
    args = parser.parse_args()

    molecule, positions_nm = cg_structure(sequence=args.sequence)
    potential = CGPotential.load(args.model)
    topology = replicate_topology(molecule, args.replicas)
    system = potential.createSystem(topology, intermolecular=False)  # errors name any residue the model lacks
    integrator = LangevinMiddleIntegrator(potential.temperature_K * unit.kelvin, 1.0 / unit.picosecond,
                                          args.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(7)
    simulation = Simulation(topology, system, integrator, Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(np.tile(positions_nm, (args.replicas, 1)))
    simulation.minimizeEnergy()  # the built structure is ideal, not the model's minimum
    simulation.context.setVelocitiesToTemperature(potential.temperature_K * unit.kelvin, 7)
    simulation.reporters.append(StateDataReporter(sys.stdout, max(args.steps // 10, 1), step=True,
                                                  potentialEnergy=True, temperature=True, speed=True))
    if args.dcd:
        simulation.reporters.append(DCDReporter(args.dcd, args.report_interval))

    frames = []
    for _ in range(args.steps // args.report_interval):
        simulation.step(args.report_interval)
        state = simulation.context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    n_beads = molecule.getNumAtoms()
    for k, label in enumerate(phi_psi_residues(molecule)):
        angles = replica_phi_psi(np.array(frames), molecule, n_beads, residue=k)
        print(f"{label} basin populations:", {name: round(p, 3) for name, p in basin_populations(angles).items()})


if __name__ == "__main__":
    main()
