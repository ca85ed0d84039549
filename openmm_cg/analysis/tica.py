"""Time-lagged independent component analysis (TICA): the slowest linear combinations of features.

For mean-free features x(t), TICA solves C(tau) v = lambda C(0) v with C(0) = <x(t) x(t)^T> and the
symmetrized time-lagged covariance C(tau) = (<x(t) x(t+tau)^T> + <x(t+tau) x(t)^T>) / 2, estimated over every
trajectory (pairs never cross from one trajectory to the next). lambda_k is the autocorrelation at lag tau of
the k-th component (Perez-Hernandez et al., J. Chem. Phys. 139, 015102 (2013)); its implied timescale is
-tau / ln(lambda_k). Directions of C(0) with eigenvalues below ``epsilon`` times the largest are dropped, so
redundant features do not make the problem singular.
"""
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError


@dataclass
class TICA:
    mean: np.ndarray  # (n_features,)
    eigenvalues: np.ndarray  # (n_components,), descending: autocorrelations at the lag
    eigenvectors: np.ndarray  # (n_features, n_components), C(0)-orthonormal
    lag_frames: int

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(frames, n_features) -> (frames, n_components): the independent components of each frame."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.mean):
            raise InputError(f"features of shape {features.shape}; this TICA takes (frames, {len(self.mean)})")
        return (features - self.mean) @ self.eigenvectors

    def implied_timescales(self, frame_interval: float) -> np.ndarray:
        """-tau / ln(lambda) in the unit of ``frame_interval`` (inf where lambda >= 1, NaN where lambda <= 0)."""
        values = self.eigenvalues
        with np.errstate(divide="ignore", invalid="ignore"):
            timescales = -self.lag_frames * frame_interval / np.log(values)
        return np.where(values >= 1.0, np.inf, np.where(values <= 0.0, np.nan, timescales))


def compute_tica(trajectories: Sequence[np.ndarray], lag_frames: int, n_components: int = 2,
                 epsilon: float = 1e-8) -> TICA:
    """TICA of one or more feature trajectories, each (frames, n_features)."""
    trajectories = [np.asarray(t, dtype=np.float64) for t in trajectories]
    if lag_frames < 1:
        raise InputError("the TICA lag must be at least one frame")
    if not trajectories or any(t.ndim != 2 for t in trajectories) or len({t.shape[1] for t in trajectories}) != 1:
        raise InputError("TICA takes one or more (frames, n_features) arrays with the same features")
    usable = [t for t in trajectories if len(t) > lag_frames]
    if not usable:
        raise InputError(f"no trajectory is longer than the lag ({lag_frames} frames)")
    mean = np.concatenate([np.concatenate([t[:-lag_frames], t[lag_frames:]]) for t in usable]).mean(axis=0)
    n_features = len(mean)
    c0, ctau, n_pairs = np.zeros((n_features, n_features)), np.zeros((n_features, n_features)), 0
    for t in usable:
        x, y = t[:-lag_frames] - mean, t[lag_frames:] - mean
        c0 += x.T @ x + y.T @ y
        ctau += x.T @ y + y.T @ x
        n_pairs += len(x)
    c0 /= 2 * n_pairs
    ctau /= 2 * n_pairs
    values, vectors = np.linalg.eigh(c0)
    keep = values > epsilon * values.max()
    whiten = vectors[:, keep] / np.sqrt(values[keep])
    lagged = whiten.T @ ctau @ whiten
    eigenvalues, rotation = np.linalg.eigh(lagged)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    if len(order) < n_components:
        raise InputError(f"the features span {len(order)} independent directions; {n_components} components asked for")
    return TICA(mean, eigenvalues[order], whiten @ rotation[:, order], lag_frames)
