"""Autocorrelation of time series pooled over independent replicas: normalised ACF, integrated
autocorrelation time (Sokal's automatic window) and effective sample size.

A *series* argument is one 1-D array (one trajectory, frames in time order) or a list of 1-D arrays, one per
independent replica, of equal or unequal lengths. Replicas are pooled with the **global** mean over all frames:
for slow observables (e.g. the phi > 0 basin indicator of alanine dipeptide) the replica means differ, and
subtracting each replica's own mean would hide exactly the slow fluctuation that sets the error. Lag pairs
never cross a replica boundary. Times are in frames; multiply by the frame interval for physical time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def series_by_replica(values, replica) -> list[np.ndarray]:
    """Split frames into one time-ordered series per replica.

    Parameters
    ----------
    values : array (M,)
        One observable per frame; the frames of a replica are in time order (they need not be contiguous, so
        both the splits' layout, replica after replica, and a simulation's frame-major layout work).
    replica : array (M,) int
        Replica id of each frame.

    Returns
    -------
    list of arrays (n_r,)
        One series per replica, in order of increasing replica id.
    """
    values, replica = np.asarray(values, dtype=np.float64), np.asarray(replica)
    if values.ndim != 1 or replica.shape != values.shape:
        raise ValueError(f"values and replica must be 1-D of one length, got shapes {values.shape} and {replica.shape}")
    return [values[replica == r] for r in np.unique(replica)]


def _as_series(series) -> list[np.ndarray]:
    if isinstance(series, np.ndarray) and series.ndim != 1:
        raise ValueError(
            f"series must be a 1-D array or a list of 1-D arrays (one per replica), got an array of shape "
            f"{series.shape}; for an array (frames, replicas) pass list(x.T)"
        )
    parts = [np.asarray(series, dtype=np.float64)] if isinstance(series, np.ndarray) else series
    if not isinstance(parts, Sequence) or len(parts) == 0:
        raise ValueError("series must be a 1-D array or a non-empty list of 1-D arrays (one per replica)")
    out = []
    for i, x in enumerate(parts):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"replica {i}: each series must be 1-D (frames,), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"replica {i} holds non-finite values; drop blown-up frames first")
        out.append(x)
    if sum(x.size for x in out) < 2:
        raise ValueError("need at least 2 frames in total to estimate an autocorrelation")
    return out


def _is_constant(parts: list[np.ndarray]) -> bool:
    first = next(x[0] for x in parts if x.size)
    return all(np.all(x == first) for x in parts)


def _pooled_autocovariance(parts: list[np.ndarray]) -> np.ndarray:
    """C(k) for k = 0 .. max n_r - 1: mean of (x_t - mu)(x_{t+k} - mu) over all pairs inside one replica."""
    mu = np.concatenate(parts).mean()
    n_max = max(x.size for x in parts)
    sums, pairs = np.zeros(n_max), np.zeros(n_max)
    for x in parts:
        n = x.size
        if n == 0:
            continue
        nfft = 1 << int(2 * n - 1).bit_length()  # >= 2n - 1: no circular wrap-around
        f = np.fft.rfft(x - mu, nfft)
        sums[:n] += np.fft.irfft(f * np.conj(f), nfft)[:n]
        pairs[:n] += np.arange(n, 0, -1)
    return sums / np.maximum(pairs, 1)


def autocorrelation(series, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation function rho(k) = C(k) / C(0), FFT-based, pooled over replicas.

    C(k) averages (x_t - mu)(x_{t+k} - mu) over all pairs (t, t + k) inside one replica, mu the global mean.

    Parameters
    ----------
    series : array (n,) or list of arrays (n_r,)
        One trajectory or one per independent replica.
    max_lag : int, optional
        Largest lag returned (default: longest replica - 1).

    Returns
    -------
    ndarray (max_lag + 1,)
        rho(0) = 1, rho(1), ...; lags in frames.
    """
    parts = _as_series(series)
    if _is_constant(parts):
        raise ValueError("the series is constant (zero variance): its autocorrelation is undefined")
    c = _pooled_autocovariance(parts)
    rho = c / c[0]
    return rho if max_lag is None else rho[: int(max_lag) + 1]


def integrated_autocorrelation_time(series, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau_int = 1 + 2 sum_{k=1}^{M} rho(k), in frames.

    The window M is Sokal's automatic choice, the smallest M with M >= c tau_int(M). The statistical error of
    the estimate is about tau_int sqrt(2 (2M + 1) / N) for N frames in total (Madras and Sokal 1988). If no
    such window exists (series shorter than ~c tau) the estimate at the longest lag is returned with a
    warning: it is then a lower bound. A constant series (e.g. a basin indicator of a trajectory that never
    leaves its basin) has no measurable correlation; 1.0 is returned, so its variance-based errors are 0.

    Parameters
    ----------
    series : array (n,) or list of arrays (n_r,)
        One trajectory or one per independent replica (pooled with the global mean).
    c : float
        Window factor (5 for nearly exponential decays; larger for slowly decaying tails).

    Returns
    -------
    float
        tau_int in frames (1 for uncorrelated frames).
    """
    tau, converged = tau_with_window(series, c)
    if not converged:
        n = sum(np.asarray(x).size for x in _as_series(series))
        warnings.warn(
            f"series too short for Sokal's window (c = {c}): tau_int >= {tau:.1f} frames is a lower bound from "
            f"{n} frames; run longer or use more replicas",
            RuntimeWarning,
            stacklevel=2,
        )
    return tau


def tau_with_window(series, c: float = 5.0) -> tuple[float, bool]:
    """As :func:`integrated_autocorrelation_time` without the warning: ``(tau_int, converged)``, where
    ``converged`` is False when no Sokal window fits in the data and tau_int is a lower bound."""
    if not c > 0:
        raise ValueError(f"window factor c must be positive, got {c}")
    parts = _as_series(series)
    if _is_constant(parts):
        return 1.0, True
    rho = _pooled_autocovariance(parts)
    rho = rho / rho[0]
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{k=1}^{M} rho(k)
    ok = np.flatnonzero(np.arange(taus.size) >= c * taus)
    if ok.size == 0:
        return float(max(taus[-1], 1.0)), False
    return float(max(taus[ok[0]], 1.0)), True


def effective_sample_size(series, c: float = 5.0) -> float:
    """Number of effectively independent frames, total frames / tau_int.

    Parameters
    ----------
    series : array (n,) or list of arrays (n_r,)
        As in :func:`integrated_autocorrelation_time`.
    c : float
        Sokal window factor.

    Returns
    -------
    float
        N / tau_int (N for a constant series).
    """
    n = sum(np.asarray(x).size for x in _as_series(series))
    return n / integrated_autocorrelation_time(series, c)


def block_average(series, min_blocks: int = 16, min_replicas: int = 8) -> tuple[float, float]:
    """Mean of a correlated time series and its standard error by blocking (Flyvbjerg & Petersen 1989).

    Consecutive frames are averaged in pairs, level after level; the standard error of the mean grows with
    the block length until blocks are longer than the correlation time. The largest estimate over the levels
    that keep at least ``min_blocks`` blocks is used (a conservative plateau value). For (T, B) input with at
    least ``min_replicas`` independent replicas, the spread of the replica means gives a second estimate that
    holds however short the series are; the larger of the two is returned.

    Parameters
    ----------
    series : array (T,) in time order, or (T, B) for B independent replicas

    Returns
    -------
    (mean, standard error)
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim not in (1, 2) or len(x) < 2:
        raise ValueError(f"series must be (T,) or (T, B) with T >= 2 frames, got shape {np.shape(series)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("series holds non-finite values")
    replica_error = 0.0
    if x.ndim == 2:
        if x.shape[1] >= min_replicas:
            replica_error = float(x.mean(axis=0).std(ddof=1) / np.sqrt(x.shape[1]))
        x = x.mean(axis=1)
    mean, error = float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))
    while len(x) >= 2 * min_blocks:
        x = 0.5 * (x[: len(x) // 2 * 2 : 2] + x[1 : len(x) // 2 * 2 : 2])
        error = max(error, float(x.std(ddof=1) / np.sqrt(len(x))))
    return mean, max(error, replica_error)
