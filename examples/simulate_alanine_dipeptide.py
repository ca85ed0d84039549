"""Simulate the shipped alanine dipeptide CG model with plain OpenMM, then read its Ramachandran basins.

    python examples/simulate_alanine_dipeptide.py --replicas 16 --steps 50000

The model is an ordinary OpenMM force (openmm-torch TorchForce): any integrator, reporter or platform
works. Replicas are independent copies of the molecule in one System (one model call per step).
"""
import argparse
import sys

import numpy as np

import openmm_cg  # noqa: F401  (imports torch before OpenMM, which openmm-torch needs)
from openmm import LangevinMiddleIntegrator, Platform, unit
from openmm.app import DCDReporter, Simulation, StateDataReporter

from openmm_cg import CGPotential
from openmm_cg.analysis.ramachandran import basin_populations, replica_phi_psi


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alanine_dipeptide_cgschnet", help="a shipped model name or a .pt path")
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--report-interval", type=int, default=100)
    parser.add_argument("--dcd", default=None, help="write the trajectory here")
    args = parser.parse_args()

    potential = CGPotential.load(args.model)
    topology = potential.topology(args.replicas)
    system = potential.createSystem(topology)
    integrator = LangevinMiddleIntegrator(potential.temperature_K * unit.kelvin, 1.0 / unit.picosecond,
                                          2.0 * unit.femtosecond)
    integrator.setRandomNumberSeed(7)
    simulation = Simulation(topology, system, integrator, Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(potential.example_positions(args.replicas))
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
    angles = replica_phi_psi(np.array(frames), potential.topology(1), potential.n_beads)
    print("basin populations:", {k: round(v, 3) for k, v in basin_populations(angles).items()})


if __name__ == "__main__":
    main()
