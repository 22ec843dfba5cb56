"""Entropy-production estimators for overdamped dynamics dx = b dt + sqrt(2 D) dW (SCIENCE.md section 6).

- :func:`drift_identity`: sigma = E[b^T D^-1 b + div b] from steady-state samples and the drift (no score);
- :func:`score_based`: sigma = E[v^T D^-1 v], v = b - D s, from a (learned) steady-state score, with the
  probability velocity and a per-degree-of-freedom decomposition; biased upward by E[ds^T D ds];
- :func:`path_estimate`: the Stratonovich log-ratio of forward and time-reversed paths per unit time;
- :func:`tur_bound`: the thermodynamic uncertainty lower bound 2 <J>^2 / (Delta t Var J) for any current J.

Every estimator takes the drift as a callable and D as a tensor, so a new system needs no estimator code.
Samples are time-major ``(T, B, N, d)`` (T frames of B independent replicas); error bars are standard errors
by blocking over time (replicas averaged first) or by jackknife over time blocks for ratios.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from molscore.analysis.autocorrelation import block_average
from molscore.nonequilibrium.divergence import divergence

Field = Callable[[Tensor], Tensor]


@dataclass
class Estimate:
    """An entropy-production rate (kB per unit time) with its standard error.

    Attributes
    ----------
    method : which estimator
    value, error : estimate and one standard error
    n_samples : frames or windows used
    seconds : wall-clock time of the estimate (excluding the simulation that made the samples)
    per_dof : Tensor (N, d) decomposition of ``value`` over degrees of freedom (score-based only)
    """

    method: str
    value: float
    error: float
    n_samples: int
    seconds: float = float("nan")
    per_dof: Tensor | None = None

    def minus(self, other: "Estimate", method: str | None = None) -> "Estimate":
        """This estimate with ``other`` (e.g. an equilibrium control's bias) subtracted; errors add in quadrature."""
        return Estimate(
            method or f"{self.method} - {other.method}", self.value - other.value, math.hypot(self.error, other.error),
            self.n_samples, self.seconds + other.seconds,
        )  # fmt: skip

    def covers(self, exact: float, n_sigma: float = 3.0) -> bool:
        """Whether ``exact`` lies within ``n_sigma`` standard errors."""
        return abs(self.value - exact) <= n_sigma * self.error

    def as_dict(self) -> dict:
        out = {
            "method": self.method,
            "value": self.value,
            "error": self.error,
            "n_samples": self.n_samples,
            "seconds": self.seconds,
        }
        if self.per_dof is not None:
            out["per_dof"] = self.per_dof.tolist()
        return out


def _frames(samples: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(T, B, N, d) or (M, N, d) -> flat (T*B, N, d) and the (T, B) layout."""
    if samples.ndim == 3:
        samples = samples[:, None]
    if samples.ndim != 4:
        raise ValueError(f"samples must be (T, B, N, d) or (M, N, d), got shape {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or infinite coordinates; drop blown-up frames first")
    return samples.reshape(-1, *samples.shape[2:]), tuple(samples.shape[:2])


def _inverse_diffusion(diffusion, x: Tensor) -> Tensor:
    d = torch.as_tensor(diffusion).to(x)
    try:
        d = torch.broadcast_to(d, x.shape[1:])
    except RuntimeError:
        raise ValueError(
            f"diffusion D of shape {tuple(d.shape)} does not broadcast to one configuration {tuple(x.shape[1:])}"
        ) from None
    if (d <= 0).any():
        raise ValueError("diffusion D must be positive in every degree of freedom")
    return 1.0 / d


def _per_frame(fn, flat: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])


def drift_identity(
    drift: Field, diffusion, samples: Tensor, divergence_method: str = "auto", batch_size: int = 4096, **divergence_options
) -> Estimate:
    """Score-free sigma = E_p[b^T D^-1 b + div b] (overdamped, constant D, steady state).

    Parameters
    ----------
    drift : x (B, N, d) -> b (B, N, d)
    diffusion : D, Tensor broadcastable to (N, d)
    samples : steady-state configurations, (T, B, N, d) time-major or (M, N, d) independent
    divergence_method, divergence_options : see :func:`molscore.nonequilibrium.divergence.divergence`
    """
    start = time.perf_counter()
    flat, layout = _frames(samples)
    inv_d = _inverse_diffusion(diffusion, flat)

    def value(x):
        with torch.no_grad():
            b = drift(x)
        div = divergence(drift, x, divergence_method, **divergence_options)
        return (b * b * inv_d).flatten(1).sum(1) + div

    per_frame = _per_frame(value, flat, batch_size).reshape(layout)
    mean, err = block_average(per_frame.cpu().numpy())
    return Estimate("drift identity", mean, err, len(flat), time.perf_counter() - start)


def probability_velocity(drift: Field, diffusion, score: Field, x: Tensor) -> Tensor:
    """v = b - D s at ``x : (B, N, d)``: the mean local velocity of the steady state; current j = p v."""
    d = 1.0 / _inverse_diffusion(diffusion, x)
    with torch.no_grad():
        return drift(x) - d * score(x)


def score_based(drift: Field, diffusion, score: Field, samples: Tensor, batch_size: int = 4096) -> Estimate:
    """sigma = E_p[v^T D^-1 v] with v = b - D s, and its decomposition per degree of freedom.

    Biased upward by E[ds^T D ds] for a score error ds: measure that on the equilibrium control and subtract
    it (:meth:`Estimate.minus`).

    Parameters
    ----------
    score : x (B, N, d) -> steady-state score grad log p (B, N, d), per unit length
    samples : steady-state configurations (T, B, N, d) or (M, N, d), best not those the score was fitted to
    """
    start = time.perf_counter()
    flat, layout = _frames(samples)
    inv_d = _inverse_diffusion(diffusion, flat)
    parts = []
    for i in range(0, len(flat), batch_size):
        v = probability_velocity(drift, diffusion, score, flat[i : i + batch_size])
        parts.append(v * v * inv_d)
    per_dof = torch.cat(parts)
    per_frame = per_dof.flatten(1).sum(1).reshape(layout)
    mean, err = block_average(per_frame.cpu().numpy())
    return Estimate("score-based", mean, err, len(flat), time.perf_counter() - start, per_dof=per_dof.mean(0).cpu())


def path_estimate(path_increments: Tensor, window_time: float) -> Estimate:
    """sigma = <Delta S> / Delta t from the Stratonovich path entropy of consecutive windows (T, B).

    The boundary term ln p(x_0)/p(x_tau) of each window averages to zero at steady state and is left out.
    """
    inc = torch.as_tensor(path_increments)
    if inc.ndim == 1:
        inc = inc[:, None]
    if inc.ndim != 2 or not window_time > 0:
        raise ValueError(
            f"path increments must be (T, B) with a positive window time, got {tuple(inc.shape)}, {window_time}"
        )
    mean, err = block_average(inc.cpu().numpy() / window_time)
    return Estimate("path (Stratonovich)", mean, err, inc.numel())


def _jackknife(stat, data: np.ndarray, n_groups: int = 20) -> tuple[float, float]:
    """stat(data) and its jackknife standard error over ``n_groups`` contiguous time blocks of data (T, ...)."""
    value = stat(data)
    groups = np.array_split(np.arange(len(data)), min(n_groups, len(data)))
    leave_out = np.array([stat(np.delete(data, g, axis=0)) for g in groups])
    k = len(groups)
    return float(value), float(np.sqrt((k - 1) / k * ((leave_out - leave_out.mean()) ** 2).sum()))


def tur_bound(current_increments: Tensor, window_time: float, method: str = "TUR bound") -> Estimate:
    """Lower bound sigma >= 2 <J>^2 / (Delta t Var J) from a current J integrated over windows of Delta t.

    Parameters
    ----------
    current_increments : Tensor (T, B): J of each window (time-major, replicas independent)
    window_time : Delta t, the window length
    """
    j = torch.as_tensor(current_increments, dtype=torch.float64)
    if j.ndim == 1:
        j = j[:, None]
    if j.ndim != 2 or j.numel() < 4 or not window_time > 0:
        raise ValueError(
            f"current increments must be (T, B) with >= 4 windows and a positive window time, got {tuple(j.shape)}"
        )
    data = j.cpu().numpy()

    def stat(a):
        return 2 * a.mean() ** 2 / (window_time * a.var(ddof=1))

    value, err = _jackknife(stat, data)
    return Estimate(method, value, err, data.size)
