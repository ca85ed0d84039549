"""Observables of single polymer chains: radius of gyration, its autocorrelation and relaxation time,
bead and centre-of-mass diffusion, contact maps. Plain functions on (frames, beads, 3) arrays in nm."""
import numpy as np

from ..errors import InputError
from .liquid import msd_nm2, self_diffusion_nm2_per_ps


def radius_of_gyration_nm(positions_nm: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """Mass-weighted Rg of every frame (F,)."""
    x = np.asarray(positions_nm, dtype=np.float64)
    w = np.asarray(masses_amu, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != len(w):
        raise InputError(f"positions {x.shape} and {len(w)} masses disagree")
    w = w / w.sum()
    centre = np.einsum("b,fbx->fx", w, x)
    return np.sqrt(np.einsum("b,fb->f", w, ((x - centre[:, None]) ** 2).sum(-1)))


def autocorrelation(series: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation C(lag) = <dy(t) dy(t+lag)> / <dy^2>, lags 0..max_lag, over all time origins."""
    y = np.asarray(series, dtype=np.float64)
    y = y - y.mean()
    if len(y) <= max_lag or not np.any(y):
        raise InputError(f"an autocorrelation to lag {max_lag} needs a longer, non-constant series (got {len(y)} values)")
    variance = (y * y).mean()
    return np.array([1.0] + [(y[lag:] * y[:-lag]).mean() / variance for lag in range(1, max_lag + 1)])


def relaxation_time_ps(acf: np.ndarray, frame_interval_ps: float) -> float:
    """Integral of the autocorrelation up to its first zero crossing (trapezoidal), in ps. For an exponential
    decay exp(-t / tau) sampled finely this is tau; it is robust to the noisy tail of a finite run."""
    acf = np.asarray(acf, dtype=np.float64)
    negative = np.flatnonzero(acf <= 0)
    end = int(negative[0]) if negative.size else len(acf)
    if end < 2:
        return 0.5 * frame_interval_ps  # decorrelated within one frame
    return float(np.trapezoid(acf[:end], dx=frame_interval_ps))


def chain_diffusion_nm2_per_ps(positions_nm: np.ndarray, masses_amu: np.ndarray, frame_interval_ps: float,
                               max_lag: int) -> float:
    """Self-diffusion coefficient of the chain's centre of mass (Einstein relation on its MSD)."""
    w = np.asarray(masses_amu, dtype=np.float64)
    centre = np.einsum("b,fbx->fx", w / w.sum(), np.asarray(positions_nm, dtype=np.float64))
    return self_diffusion_nm2_per_ps(msd_nm2(centre[:, None], max_lag), frame_interval_ps)


def contact_map(positions_nm: np.ndarray, cutoff_nm: float) -> np.ndarray:
    """(beads, beads) fraction of frames in which two beads are closer than ``cutoff_nm``."""
    x = np.asarray(positions_nm, dtype=np.float64)
    d = np.linalg.norm(x[:, :, None] - x[:, None, :], axis=-1)
    return (d < cutoff_nm).mean(0)


def distribution_overlap(a: np.ndarray, b: np.ndarray, bins: int = 30) -> float:
    """Overlap (sum of bin-wise minima, 1 = identical, 0 = disjoint) of the histograms of two samples
    on shared bins spanning both."""
    a, b = np.ravel(a), np.ravel(b)
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), bins + 1)
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(p, q).sum())
