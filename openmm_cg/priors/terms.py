"""Prior energy terms: the same functional forms in torch (inside exported models) and in OpenMM.

Forms (energies in kJ/mol, lengths in nm, angles in radians):
  bond       E = 1/2 k (r - r0)^2                  (OpenMM HarmonicBondForce)
  angle      E = 1/2 k (theta - theta0)^2          (OpenMM HarmonicAngleForce)
  dihedral   E = sum_n k_n (1 + cos(n phi - d_n))  (OpenMM PeriodicTorsionForce)
  repulsion  E = c / r^6                           (OpenMM CustomBondForce)
             or, with ``repulsion_cutoff_nm`` set (typed models, whose repulsion runs on a neighbor list),
             E = c / r^6 * S(r / cutoff) with the network's switch S (value, slope, curvature vanish at the cutoff)
"""
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch

from ..geometry import SmoothCutoff, angles, dihedrals, distances

PRIOR_FORMS = {
    "bond": "0.5*k*(r-r0)^2",
    "angle": "0.5*k*(theta-theta0)^2",
    "dihedral": "sum_n k_n*(1+cos(n*phi-phase_n))",
    "repulsion": "c/r^6",
}
SWITCHED_REPULSION_FORM = "c/r^6*S(r/cutoff), S(x)=1-10x^3+15x^4-6x^5 (x<1), 0 (x>=1)"
# The same switch in OpenMM's expression syntax (CustomBondForce, CustomNonbondedForce).
OPENMM_SWITCHED_REPULSION = "c/r^6*select(step(x-1), 0, 1-x^3*(10-15*x+6*x^2)); x=r/rc"


@dataclass
class PriorParameters:
    """Fitted prior parameters (numpy), serializable to JSON."""

    bond_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    bond_k: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bond_r0_nm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angle_triples: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    angle_k: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angle_theta0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dihedral_quads: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    dihedral_k: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))  # (n_dihedrals, n_terms)
    dihedral_phase: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    repulsion_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    repulsion_c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    repulsion_cutoff_nm: float = 0.0  # 0: plain c/r^6; else switched off at this distance

    def to_dict(self) -> dict:
        data = {name: np.asarray(value).tolist() for name, value in self.__dict__.items()
                if name != "repulsion_cutoff_nm"}
        if self.repulsion_cutoff_nm > 0:
            data["repulsion_cutoff_nm"] = float(self.repulsion_cutoff_nm)
        return data | {"forms": PRIOR_FORMS}

    @classmethod
    def from_dict(cls, data: dict) -> "PriorParameters":
        shapes = {"bond_pairs": (-1, 2), "angle_triples": (-1, 3), "dihedral_quads": (-1, 4), "repulsion_pairs": (-1, 2)}
        values = {}
        for name in cls.__dataclass_fields__:
            if name == "repulsion_cutoff_nm":
                values[name] = float(data.get(name, 0.0))
                continue
            array = np.asarray(data[name], dtype=np.int64 if name in shapes else np.float64)
            if name in shapes:
                array = array.reshape(shapes[name])
            values[name] = array
        n_terms = max(1, np.asarray(data["dihedral_k"]).reshape(len(values["dihedral_quads"]), -1).shape[1]) \
            if len(values["dihedral_quads"]) else 1
        values["dihedral_k"] = values["dihedral_k"].reshape(-1, n_terms)
        values["dihedral_phase"] = values["dihedral_phase"].reshape(-1, n_terms)
        return cls(**values)


class PriorEnergy(torch.nn.Module):
    """Sum of all prior terms for a batch of configurations (batch, beads, 3) -> (batch,)."""

    def __init__(self, params: PriorParameters):
        super().__init__()
        self.register_buffer("bond_pairs", torch.as_tensor(params.bond_pairs, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("bond_k", torch.as_tensor(params.bond_k, dtype=torch.float32))
        self.register_buffer("bond_r0", torch.as_tensor(params.bond_r0_nm, dtype=torch.float32))
        self.register_buffer("angle_triples", torch.as_tensor(params.angle_triples, dtype=torch.long).reshape(-1, 3))
        self.register_buffer("angle_k", torch.as_tensor(params.angle_k, dtype=torch.float32))
        self.register_buffer("angle_theta0", torch.as_tensor(params.angle_theta0, dtype=torch.float32))
        self.register_buffer("dihedral_quads", torch.as_tensor(params.dihedral_quads, dtype=torch.long).reshape(-1, 4))
        n_terms = params.dihedral_k.shape[1] if params.dihedral_k.ndim == 2 else 1
        self.register_buffer("dihedral_k", torch.as_tensor(params.dihedral_k, dtype=torch.float32).reshape(-1, n_terms))
        self.register_buffer("dihedral_phase",
                             torch.as_tensor(params.dihedral_phase, dtype=torch.float32).reshape(-1, n_terms))
        self.register_buffer("dihedral_n", torch.arange(1, n_terms + 1, dtype=torch.float32))
        self.register_buffer("repulsion_pairs", torch.as_tensor(params.repulsion_pairs, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("repulsion_c", torch.as_tensor(params.repulsion_c, dtype=torch.float32))
        self.switched = params.repulsion_cutoff_nm > 0
        self.switch = SmoothCutoff(params.repulsion_cutoff_nm if self.switched else 1.0)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        energy = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        if self.bond_pairs.shape[0] > 0:
            r = distances(positions, self.bond_pairs)
            energy = energy + (0.5 * self.bond_k * (r - self.bond_r0) ** 2).sum(-1)
        if self.angle_triples.shape[0] > 0:
            theta = angles(positions, self.angle_triples)
            energy = energy + (0.5 * self.angle_k * (theta - self.angle_theta0) ** 2).sum(-1)
        if self.dihedral_quads.shape[0] > 0:
            phi = dihedrals(positions, self.dihedral_quads).unsqueeze(-1)
            terms = self.dihedral_k * (1.0 + torch.cos(self.dihedral_n * phi - self.dihedral_phase))
            energy = energy + terms.sum(-1).sum(-1)
        if self.repulsion_pairs.shape[0] > 0:
            r = distances(positions, self.repulsion_pairs)
            pair_energy = self.repulsion_c / r ** 6
            if self.switched:
                pair_energy = pair_energy * self.switch(r)
            energy = energy + pair_energy.sum(-1)
        return energy


def openmm_prior_forces(params: PriorParameters, n_beads: int, n_replicas: int) -> List:
    """The priors as native OpenMM forces for ``n_replicas`` copies of an ``n_beads`` molecule."""
    import openmm

    bonds = openmm.HarmonicBondForce()
    angle_force = openmm.HarmonicAngleForce()
    torsions = openmm.PeriodicTorsionForce()
    switched = params.repulsion_cutoff_nm > 0
    repulsion = openmm.CustomBondForce(OPENMM_SWITCHED_REPULSION if switched else "c/r^6")
    repulsion.addPerBondParameter("c")
    if switched:
        repulsion.addGlobalParameter("rc", float(params.repulsion_cutoff_nm))
    for replica in range(n_replicas):
        offset = replica * n_beads
        for (i, j), k, r0 in zip(params.bond_pairs, params.bond_k, params.bond_r0_nm):
            bonds.addBond(int(i) + offset, int(j) + offset, float(r0), float(k))
        for (i, j, l), k, theta0 in zip(params.angle_triples, params.angle_k, params.angle_theta0):
            angle_force.addAngle(int(i) + offset, int(j) + offset, int(l) + offset, float(theta0), float(k))
        for quad, ks, phases in zip(params.dihedral_quads, params.dihedral_k, params.dihedral_phase):
            for n, (k, phase) in enumerate(zip(ks, phases), start=1):
                if k != 0.0:
                    torsions.addTorsion(*(int(a) + offset for a in quad), n, float(phase), float(k))
        for (i, j), c in zip(params.repulsion_pairs, params.repulsion_c):
            repulsion.addBond(int(i) + offset, int(j) + offset, [float(c)])
    return [force for force in (bonds, angle_force, torsions, repulsion) if _count(force) > 0]


def _count(force) -> int:
    for method in ("getNumBonds", "getNumAngles", "getNumTorsions"):
        if hasattr(force, method):
            return getattr(force, method)()
    return 0
