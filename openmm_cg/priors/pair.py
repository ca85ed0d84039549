"""The prior of a CG liquid: a short-range pair repulsion fitted from the onset of the reference RDF.

Form (kJ/mol, nm): E(r) = c / r^n * S(r / cutoff), with S the network's quintic switch (value, slope
and curvature vanish at the cutoff), so the prior is as smooth as the network. Where the RDF rises
from zero, the pair's potential of mean force is almost the bare repulsion, and Boltzmann inversion
w(r) = -kT ln g(r) is fitted there by least squares in log-log form: ln w = ln c - n ln r.
"""
from dataclasses import dataclass

import numpy as np
import torch

from ..nn.schnet import SmoothCutoff

PAIR_FORM = "c/r^n*S(r/cutoff), S(x)=1-10x^3+15x^4-6x^5"


@dataclass
class PairPriorParameters:
    c: float            # kJ/mol nm^n
    exponent: float
    cutoff_nm: float
    onset_range_nm: tuple = (0.0, 0.0)  # the RDF window it was fitted on

    def to_dict(self) -> dict:
        return {"c": self.c, "exponent": self.exponent, "cutoff_nm": self.cutoff_nm,
                "onset_range_nm": list(self.onset_range_nm), "form": PAIR_FORM}

    @classmethod
    def from_dict(cls, data: dict) -> "PairPriorParameters":
        return cls(float(data["c"]), float(data["exponent"]), float(data["cutoff_nm"]),
                   tuple(data.get("onset_range_nm", (0.0, 0.0))))


class PairRepulsion(torch.nn.Module):
    """Energies (P,) of pairs at distances r (P,)."""

    def __init__(self, params: PairPriorParameters):
        super().__init__()
        self.c = float(params.c)
        self.exponent = float(params.exponent)
        self.switch = SmoothCutoff(params.cutoff_nm)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.c * torch.pow(r, -self.exponent) * self.switch(r)


def fit_pair_repulsion(r_nm: np.ndarray, g: np.ndarray, temperature_K: float, cutoff_nm: float,
                       g_window: tuple = (1e-3, 0.3)) -> PairPriorParameters:
    """Fit c/r^n to -kT ln g(r) where the RDF first rises through ``g_window``.

    Only the rising edge before the first peak is used: past it, g reflects structure (what the
    network is for), not the bare core.
    """
    from ..units import kT_kJ_per_mol

    r_nm, g = np.asarray(r_nm, float), np.asarray(g, float)
    first_high = int(np.argmax(g >= g_window[1]))
    if g[first_high] < g_window[1] or first_high == 0:
        raise ValueError(f"the RDF never rises through g = {g_window[1]} from below: no onset to fit a repulsion to")
    window = np.arange(first_high + 1)
    window = window[(g[window] > g_window[0]) & (g[window] < 1.0)]  # ln w needs w = -kT ln g > 0
    if len(window) < 3:
        raise ValueError("fewer than 3 RDF bins on the onset: use finer bins or more frames")
    pmf = -kT_kJ_per_mol(temperature_K) * np.log(g[window])
    slope, intercept = np.polyfit(np.log(r_nm[window]), np.log(pmf), 1)
    return PairPriorParameters(c=float(np.exp(intercept)), exponent=float(-slope), cutoff_nm=float(cutoff_nm),
                               onset_range_nm=(float(r_nm[window[0]]), float(r_nm[window[-1]])))
