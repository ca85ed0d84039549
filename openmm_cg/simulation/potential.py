"""CGPotential: an exported model as OpenMM Systems (the openmm-ml convention).

    pot = CGPotential.load("alanine_dipeptide_cgschnet")   # a shipped model's name, or a path to a .pt
    system = pot.createSystem(pot.topology(n_replicas=10))

A typed (transferable) model binds to any topology made of its bead types: ``createSystem(topology)`` binds
it on the way, and ``pot.bind(topology).save("system.pt")`` writes the bound potential as a file that a bare
``openmmtorch.TorchForce`` runs.
"""
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .._runtime import NETWORK_FORCE_GROUP, openmm, openmmtorch
from openmm import app

from ..errors import ModelFileError
from ..export import DTYPES, load_eager, load_exported, save_model
from ..nn.kinds import file_metadata, kind_of
from ..nn.periodic import TEMPERATURE_PARAMETER
from ..priors.terms import PriorParameters, openmm_prior_forces
from ..priors.typed import TypedPriors, openmm_typed_prior_forces, unique_bonds
from ..topology import (bead_type_keys, bonds_array, replicate_topology, resolve_bead_types, topology_from_dict,
                        topology_to_dict)

# Shipped models are package data: the catalog lists each one with its model card.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
CATALOG = MODELS_DIR / "catalog.json"


def shipped_models() -> dict:
    """Name -> path of every model in the package's catalog."""
    catalog = json.loads(CATALOG.read_text())
    return {name: MODELS_DIR / entry["file"] for name, entry in catalog["models"].items()}


def _declared_bonds(topology: app.Topology):
    """A zero-strength bond for every CG bond: OpenMM learns molecules only from bonds its own forces declare, and a
    MonteCarloBarostat scales each molecule's centre, so without them it would move every bead on its own and
    stretch the molecules. Adds no energy and no force."""
    force = openmm.HarmonicBondForce()
    force.setName("openmm-cg declared CG bonds (zero strength)")
    for bond in topology.bonds():
        force.addBond(bond.atom1.index, bond.atom2.index, 0.0, 0.0)
    force.setUsesPeriodicBoundaryConditions(True)
    return force


class _NetworkOnly(torch.nn.Module):
    """The network part of an exported potential (its priors then live in native OpenMM forces)."""

    def __init__(self, potential: torch.jit.ScriptModule, n_beads: int):
        super().__init__()
        self.potential = potential
        self.n_beads = n_beads

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch = positions.reshape(positions.shape[0] // self.n_beads, self.n_beads, 3)
        x = batch.to(self.potential.dtype_probe.dtype)
        boxes: Optional[torch.Tensor] = None
        if box is not None:
            boxes = box.unsqueeze(0).to(x.dtype)
        return self.potential.network_energy(x, boxes, None).sum().to(positions.dtype)


class CGPotential:
    def __init__(self, path: Path, module: torch.jit.ScriptModule, metadata: dict,
                 eager: Optional[torch.nn.Module] = None):
        self.path = Path(path)
        self.module = module
        self.metadata = metadata
        self._eager = eager  # a potential bound in memory: its eager module, for saving and the PythonForce

    @classmethod
    def load(cls, name_or_path) -> "CGPotential":
        path = Path(name_or_path)
        if not path.exists():
            models = shipped_models()
            if str(name_or_path) not in models:
                raise ModelFileError(f"{name_or_path} is neither a file nor a shipped model (shipped: {sorted(models)})")
            path = models[str(name_or_path)]
        module, metadata = load_exported(path)
        return cls(path, module, metadata)

    @property
    def kind(self) -> str:
        return kind_of(self.metadata).name

    @property
    def n_beads(self) -> int:
        if self.kind == "typed":
            raise ModelFileError(f"{self.path.name} is a typed model: it has as many beads as the topology it is "
                                 "bound to")
        return int(self.metadata["n_beads"])

    def bind(self, topology: app.Topology, intermolecular: bool = True) -> "CGPotential":
        """This typed model as the potential of ``topology`` (periodic when the topology has box vectors): every
        pair within the cutoff interacts, or only pairs within one molecule with ``intermolecular=False``.
        ``.save(path)`` writes it; ``.createSystem(topology)`` makes its System."""
        if self.kind != "typed":
            raise ModelFileError(f"{self.path.name} is a {self.kind} model, bound to its own molecule; only typed "
                                 "(format 2) models bind to other topologies")
        dtype = DTYPES[self.metadata.get("dtype", "float32")]
        typed = kind_of(self.metadata).build(self.metadata).to(dtype)
        typed.load_state_dict(self.module.state_dict())
        bound = typed.bind(topology_to_dict(topology), topology.getPeriodicBoxVectors() is not None, intermolecular)
        source = {"file": self.path.name, "weights_sha256": self.metadata.get("integrity", {}).get("weights_sha256")}
        metadata = file_metadata(bound, self.metadata["temperatures_K"], self.metadata["training_data_sha256"],
                                 {"bound_from": source, "dtype": self.metadata.get("dtype", "float32")})
        return CGPotential(self.path, torch.jit.script(bound), metadata, eager=bound)

    def save(self, path, overwrite: bool = False) -> Path:
        """Write a bound potential as a model file (its own TorchScript, metadata and weights)."""
        if self._eager is None:
            raise ModelFileError(f"{self.path.name} is already a file; save() writes potentials bound in memory "
                                 "(CGPotential.load(typed_model).bind(topology).save(path))")
        return save_model(self._eager, self.metadata, path, self.metadata.get("dtype", "float32"), overwrite)

    @property
    def periodic(self) -> bool:
        return bool(self.metadata.get("periodic", False))

    @property
    def masses_amu(self) -> np.ndarray:
        return np.asarray(self.metadata["masses_amu"], dtype=np.float64)

    @property
    def temperature_K(self) -> float:
        return float(self.metadata["temperatures_K"][0])

    @property
    def temperature_aware(self) -> bool:
        """True for models that take the temperature as input (the TorchForce global parameter
        ``cg_temperature_K``; ``createSystem(temperature_K=...)`` sets it, ``Context.setParameter`` changes it)."""
        return bool(self.metadata.get("temperature_input"))

    def topology(self, n_replicas: int = 1, box_vectors_nm=None) -> app.Topology:
        """The CG topology the model was trained for, replicated ``n_replicas`` times.

        ``box_vectors_nm`` (3x3, rows a, b, c) makes it periodic; periodic models need one.
        """
        if self.kind == "typed":
            raise ModelFileError(f"{self.path.name} is a typed model: it has no topology of its own; build the CG "
                                 "topology of your molecules (bead names and residue names as its types) and bind it")
        topology = replicate_topology(topology_from_dict(self.metadata["cg_topology"]), n_replicas)
        if box_vectors_nm is not None:
            from openmm import Vec3, unit

            topology.setPeriodicBoxVectors([Vec3(*map(float, row)) for row in np.asarray(box_vectors_nm)] * unit.nanometer)
        return topology

    def example_positions(self, n_replicas: int = 1) -> np.ndarray:
        """A starting structure (nm) stored with the model (one mapped reference frame), replicated."""
        if "example_positions_nm" not in self.metadata:
            raise ModelFileError(f"{self.path} stores no example structure: give initial positions explicitly")
        return np.tile(np.asarray(self.metadata["example_positions_nm"], dtype=np.float64), (n_replicas, 1))

    def n_replicas_of(self, topology: app.Topology) -> int:
        if self.kind == "bound":
            self._check_bound_topology(topology)
            return 1
        n_atoms = topology.getNumAtoms()
        if n_atoms == 0 or n_atoms % self.n_beads != 0:
            raise ModelFileError(f"the topology has {n_atoms} particles, not a multiple of the model's "
                                 f"{self.n_beads} beads ({', '.join(self.metadata['bead_names'])})")
        names = [atom.name for atom in topology.atoms()]
        expected = list(self.metadata["bead_names"])
        for replica in range(n_atoms // self.n_beads):
            block = names[replica * self.n_beads:(replica + 1) * self.n_beads]
            if block != expected:
                raise ModelFileError(f"replica {replica} of the topology has beads {block}; the model expects "
                                     f"{expected} in this order")
        return n_atoms // self.n_beads

    def _check_bound_topology(self, topology: app.Topology) -> None:
        bound = topology_from_dict(self.metadata["cg_topology"])
        ours, theirs = bead_type_keys(bound), bead_type_keys(topology)
        bonds = unique_bonds(self.metadata["cg_topology"]["bonds"]).tolist()
        their_bonds = unique_bonds(bonds_array(topology)).tolist()
        periodic = topology.getPeriodicBoxVectors() is not None
        if ours != theirs or bonds != their_bonds or periodic != self.periodic:
            what = ("bead types" if ours != theirs else "bonds" if bonds != their_bonds else "periodicity")
            raise ModelFileError(f"{self.path.name} was bound to a different topology ({len(ours)} beads, "
                                 f"{len(bonds)} bonds, {'periodic' if self.periodic else 'no box'}); this one has "
                                 f"{len(theirs)} beads, {len(their_bonds)} bonds, "
                                 f"{'periodic' if periodic else 'no box'} and differs in its {what}: bind the typed "
                                 "model to this topology instead")

    def createSystem(self, topology: app.Topology, backend: str = "torchforce",
                     priors_as_openmm_forces: bool = False, compile: bool = False,
                     torch_device: Optional[str] = None, temperature_K: Optional[float] = None,
                     intermolecular: bool = True) -> openmm.System:
        """A System with bead masses and the potential for every replica in ``topology``.

        backend "torchforce": openmm-torch's TorchForce (C++, no Python per step). "pythonforce":
        openmm.PythonForce calling the eager model (any torch; ``compile=True`` applies torch.compile).
        ``priors_as_openmm_forces``: priors become HarmonicBond/HarmonicAngle/PeriodicTorsion/CustomBond
        forces and only the network stays in torch; this also declares the molecule's bonds to OpenMM.
        ``temperature_K``: required by temperature-aware models (the thermostat's temperature), ignored otherwise.
        A typed model is bound to ``topology`` first (``bind``; ``intermolecular`` is passed on).
        The network's force is in force group ``NETWORK_FORCE_GROUP`` and everything else in group 0, so a
        multiple-time-step integrator (``_runtime.mts_langevin_integrator``) can evaluate the cheap native priors
        at every inner step and the network once per outer step.
        """
        if self.kind == "typed":
            return self.bind(topology, intermolecular).createSystem(topology, backend, priors_as_openmm_forces,
                                                                    compile, torch_device, temperature_K)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)}")
        if self.temperature_aware and temperature_K is None:
            raise ValueError(f"{self.path.name} is a temperature-aware model: pass createSystem(temperature_K=...), "
                             "the temperature the System will be simulated at")
        n_replicas = self.n_replicas_of(topology)
        system = openmm.System()
        for _ in range(n_replicas):
            for mass in self.masses_amu:
                system.addParticle(float(mass))
        if self.periodic:
            box = topology.getPeriodicBoxVectors()
            if box is None:
                raise ModelFileError(f"{self.path.name} is a periodic model: the topology needs periodic box vectors "
                                     "(topology.setPeriodicBoxVectors)")
            system.setDefaultPeriodicBoxVectors(*box)
            if priors_as_openmm_forces and self.kind != "bound":
                raise ValueError("priors_as_openmm_forces is for molecular and typed models; a periodic model's pair "
                                 "prior stays inside the TorchScript module")
            if topology.getNumBonds():
                system.addForce(_declared_bonds(topology))
        if priors_as_openmm_forces:
            for force in self._prior_forces(n_replicas):
                system.addForce(force)
        force = BACKENDS[backend](self, priors_as_openmm_forces, compile, torch_device, temperature_K)
        force.setUsesPeriodicBoundaryConditions(self.periodic)
        force.setForceGroup(NETWORK_FORCE_GROUP)
        system.addForce(force)
        return system

    def _prior_forces(self, n_replicas: int) -> list:
        if self.kind == "bound":
            typed = self.metadata["typed_model"]
            topology = topology_from_dict(self.metadata["cg_topology"])
            types = resolve_bead_types(bead_type_keys(topology), typed["type_names"], typed.get("own_type_keys", ()))[0]
            return openmm_typed_prior_forces(TypedPriors.from_dict(typed["typed_priors"]), typed["type_names"],
                                             types, np.asarray(self.metadata["cg_topology"]["bonds"]),
                                             self.periodic, bool(self.metadata.get("intermolecular", True)))
        return openmm_prior_forces(PriorParameters.from_dict(self.metadata["priors"]), self.n_beads, n_replicas)

    def _torch_force(self, network_only: bool, compile: bool, torch_device: Optional[str],
                     temperature_K: Optional[float]):
        module = torch.jit.script(_NetworkOnly(self.module, self.n_beads)) if network_only else self.module
        force = openmmtorch().TorchForce(module)
        if self.temperature_aware:
            force.addGlobalParameter(TEMPERATURE_PARAMETER, float(temperature_K))
        return force

    def _python_force(self, network_only: bool, compile: bool, torch_device: Optional[str],
                      temperature_K: Optional[float]):
        from openmm import unit

        eager = self._eager if self._eager is not None else load_eager(self.path)[0]
        device = torch.device(torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        eager = eager.to(device)
        n_beads = self.n_beads
        energy_fn = eager.network_energy if network_only else eager.energy_batch
        if compile:
            energy_fn = torch.compile(energy_fn)
        dtype = eager.dtype_probe.dtype
        periodic = self.periodic
        temperature_aware = self.temperature_aware

        def compute(state):
            xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            positions = torch.tensor(np.asarray(xyz), dtype=dtype, device=device)
            boxes, temperatures = None, None
            if periodic:
                box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
                positions = positions.unsqueeze(0).requires_grad_(True)
                boxes = torch.tensor(np.asarray(box), dtype=dtype, device=device).unsqueeze(0)
            else:
                positions = positions.reshape(-1, n_beads, 3).requires_grad_(True)
            if temperature_aware:
                temperatures = torch.tensor([state.getParameters()[TEMPERATURE_PARAMETER]], dtype=dtype, device=device)
            energy = energy_fn(positions, boxes, temperatures).sum()
            (grad,) = torch.autograd.grad(energy, positions)
            return float(energy.detach()), (-grad).reshape(-1, 3).detach().cpu().numpy().astype(np.float64)

        parameters = {TEMPERATURE_PARAMETER: float(temperature_K)} if temperature_aware else {}
        return openmm.PythonForce(compute, parameters)


# How each backend makes the force: (potential, network_only, compile, torch_device, temperature_K) -> Force.
BACKENDS = {"torchforce": CGPotential._torch_force, "pythonforce": CGPotential._python_force}
