"""The volume potential of a CG liquid: pressure and compressibility matching (Das & Andersen 2010;
Dunn & Noid 2015).

Force matching fixes the forces, and with them the structure at a given volume, but not the pressure:
a one-bead methanol pair table fitted this way has about +4,700 bar at the all-atom volume at 290 K
(its bulk modulus is close to the all-atom one), so at 1 bar its box keeps growing. The volume potential

    U_V = N [ a (v - v0) + b / (2 v0) (v - v0)^2 ],   v = V / N (volume per molecule),

adds no force on any bead; it adds the pressure -a - b (v - v0) / v0 to every configuration and the
bulk modulus b v / v0. It is extensive (per molecule), so a model fitted on 125 molecules transfers to
larger boxes. ``a`` and ``b`` are fitted so that, at each training state point, the CG model has the
all-atom pressure and bulk modulus at the all-atom volume. For a temperature-aware model, a and b are
linear in the reduced temperature (T - T_ref) / T_ref, like its network; otherwise they are constants
(a least-squares compromise over the training temperatures, and the table shows how that transfers).
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ..errors import InputError
from ..units import kT_kJ_per_mol, pressure_bar

VOLUME_FORM = "N*(a*(v-v0) + b/(2*v0)*(v-v0)^2), v=V/N, a=a0+a1*tau, b=b0+b1*tau, tau=T/T_ref-1"
KJ_PER_MOL_NM3_PER_BAR = float(1.0 / pressure_bar(1.0))


@dataclass
class VolumeTermParameters:
    volume_per_molecule_nm3: float       # v0
    pressure_shift_bar: float            # a0: the pressure this term removes at v0
    bulk_modulus_bar: float              # b0: the bulk modulus it adds at v0
    pressure_shift_slope_bar: float = 0.0  # a1, per unit reduced temperature (temperature-aware models)
    bulk_modulus_slope_bar: float = 0.0    # b1
    temperature_reference_K: float = 0.0   # T_ref (0: a and b do not depend on temperature)
    fitted_at_K: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"volume_per_molecule_nm3": self.volume_per_molecule_nm3,
                "pressure_shift_bar": self.pressure_shift_bar, "bulk_modulus_bar": self.bulk_modulus_bar,
                "pressure_shift_slope_bar": self.pressure_shift_slope_bar,
                "bulk_modulus_slope_bar": self.bulk_modulus_slope_bar,
                "temperature_reference_K": self.temperature_reference_K, "fitted_at_K": list(self.fitted_at_K),
                "form": VOLUME_FORM}

    @classmethod
    def from_dict(cls, data: dict) -> "VolumeTermParameters":
        return cls(float(data["volume_per_molecule_nm3"]), float(data["pressure_shift_bar"]),
                   float(data["bulk_modulus_bar"]), float(data.get("pressure_shift_slope_bar", 0.0)),
                   float(data.get("bulk_modulus_slope_bar", 0.0)), float(data.get("temperature_reference_K", 0.0)),
                   [float(t) for t in data.get("fitted_at_K", [])])

    @property
    def temperature_dependent(self) -> bool:
        return self.temperature_reference_K > 0


class VolumeTerm(torch.nn.Module):
    """Energies (B,) kJ/mol of boxes (B, 3, 3) nm holding ``n_molecules`` each; zero when ``params`` is None.
    Plain float attributes, not buffers: models exported before this term existed load unchanged."""

    def __init__(self, params: Optional[VolumeTermParameters] = None):
        super().__init__()
        self.active = params is not None
        p = params if params is not None else VolumeTermParameters(1.0, 0.0, 0.0)
        self.v0 = float(p.volume_per_molecule_nm3)
        self.a0 = float(p.pressure_shift_bar) * KJ_PER_MOL_NM3_PER_BAR
        self.b0 = float(p.bulk_modulus_bar) * KJ_PER_MOL_NM3_PER_BAR
        self.a1 = float(p.pressure_shift_slope_bar) * KJ_PER_MOL_NM3_PER_BAR
        self.b1 = float(p.bulk_modulus_slope_bar) * KJ_PER_MOL_NM3_PER_BAR
        self.temperature_reference_K = float(p.temperature_reference_K)

    def forward(self, boxes: torch.Tensor, n_molecules: int, temperatures: Optional[torch.Tensor] = None):
        if not self.active:
            return torch.zeros(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
        v = torch.abs(torch.linalg.det(boxes)) / n_molecules
        a = torch.full_like(v, self.a0)
        b = torch.full_like(v, self.b0)
        if self.temperature_reference_K > 0:
            if temperatures is None:
                raise ValueError("openmm-cg: this model's volume term depends on temperature and needs it: set the "
                                 "TorchForce global parameter cg_temperature_K")
            tau = temperatures.to(v.dtype).reshape(-1) / self.temperature_reference_K - 1.0
            a = a + self.a1 * tau
            b = b + self.b1 * tau
        dv = v - self.v0
        return n_molecules * (a * dv + 0.5 * b / self.v0 * dv * dv)


@dataclass
class StatePoint:
    """What pressure matching needs at one temperature: the all-atom volume and its pressure and bulk
    modulus there, and the CG model's own pressure and pressure slope there (from CG NVT runs)."""
    temperature_K: float
    volume_per_molecule_nm3: float
    target_pressure_bar: float
    target_bulk_modulus_bar: float
    cg_pressure_bar: float
    cg_pressure_slope_bar_per_nm3: float  # dP/dv, v the volume per molecule

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def bulk_modulus_from_fluctuations_bar(volume_mean_nm3: float, volume_std_nm3: float, temperature_K: float) -> float:
    """Isothermal bulk modulus K = kT <V> / <dV^2> of an NPT run (bar)."""
    if volume_std_nm3 <= 0:
        raise InputError("a bulk modulus from volume fluctuations needs a nonzero volume standard deviation")
    return float(pressure_bar(kT_kJ_per_mol(temperature_K) * volume_mean_nm3 / volume_std_nm3 ** 2))


def fit_volume_term(points: List[StatePoint], temperature_reference_K: Optional[float] = None) -> VolumeTermParameters:
    """a and b such that P_CG(v_k) - a - b (v_k - v0)/v0 = P_AA and -v_k (P_CG'(v_k) - b/v0) = K_AA at every
    state point k, by least squares (exact for one point, or two with ``temperature_reference_K``).
    v0 is the mean all-atom volume per molecule."""
    if not points:
        raise InputError("pressure matching needs at least one state point")
    temperature_dependent = temperature_reference_K is not None
    if temperature_dependent and len({p.temperature_K for p in points}) < 2:
        raise InputError("a temperature-dependent volume term needs state points at two or more temperatures")
    v0 = float(np.mean([p.volume_per_molecule_nm3 for p in points]))
    rows, rhs = [], []
    for p in points:
        tau = p.temperature_K / temperature_reference_K - 1.0 if temperature_dependent else 0.0
        basis = [1.0, tau] if temperature_dependent else [1.0]
        zeros = [0.0] * len(basis)
        scale = (p.volume_per_molecule_nm3 - v0) / v0
        # Unknowns: a coefficients, then b coefficients. The two conditions are scaled to bar.
        rows.append(basis + [scale * c for c in basis])
        rhs.append(p.cg_pressure_bar - p.target_pressure_bar)
        rows.append(zeros + [c * p.volume_per_molecule_nm3 / v0 for c in basis])
        rhs.append(p.target_bulk_modulus_bar + p.volume_per_molecule_nm3 * p.cg_pressure_slope_bar_per_nm3)
    solution = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    n = 2 if temperature_dependent else 1
    a, b = solution[:n], solution[n:]
    return VolumeTermParameters(
        volume_per_molecule_nm3=v0, pressure_shift_bar=float(a[0]), bulk_modulus_bar=float(b[0]),
        pressure_shift_slope_bar=float(a[1]) if temperature_dependent else 0.0,
        bulk_modulus_slope_bar=float(b[1]) if temperature_dependent else 0.0,
        temperature_reference_K=float(temperature_reference_K) if temperature_dependent else 0.0,
        fitted_at_K=sorted({float(p.temperature_K) for p in points}))


def all_atom_targets(dataset):
    """(pressure bar, bulk modulus bar) of the all-atom reference behind a CG ``dataset``: its barostat pressure
    (its box is the NPT mean) and the bulk modulus of the NPT volume fluctuations stored with the reference."""
    npt = [m.get("npt") for m in dataset.source_metadata.values()]
    if not npt or any(n is None or "volume_nm3_second_half_std" not in n for n in npt):
        raise InputError("pressure matching needs a reference equilibrated by NPT (its volume fluctuations give the "
                         "all-atom bulk modulus); this dataset's metadata has no 'npt' record")
    pressures = {float(n["pressure_bar"]) for n in npt}
    if len(pressures) != 1:
        raise InputError(f"the dataset mixes reference pressures {sorted(pressures)}")
    bulk = np.mean([bulk_modulus_from_fluctuations_bar(n["volume_nm3_second_half_mean"],
                                                       n["volume_nm3_second_half_std"], dataset.temperature_K)
                    for n in npt])
    return pressures.pop(), float(bulk)


def pressure_and_slope_at(volume_nm3: float, volumes_nm3, pressures_bar, errors_bar):
    """(P(v0), dP/dv(v0), their standard errors) of the exact parabola through three (volume, pressure) points.

    P(V) is convex, so the mean of two runs at v0 -+ d would overestimate P(v0) (by about 100 bar for CG
    methanol at d = 5%); the parabola in powers of (v - v0) gives both numbers as its first two coefficients,
    and their errors follow linearly from the points' standard errors."""
    inverse = np.linalg.inv(np.vander(np.asarray(volumes_nm3) - volume_nm3, 3, increasing=True))
    pressure, slope, _ = inverse @ np.asarray(pressures_bar)
    covariance = inverse @ np.diag(np.asarray(errors_bar) ** 2) @ inverse.T
    return float(pressure), float(slope), float(np.sqrt(covariance[0, 0])), float(np.sqrt(covariance[1, 1]))
