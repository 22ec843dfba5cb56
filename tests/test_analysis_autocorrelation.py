"""Autocorrelation times against processes with exact answers: AR(1) and a two-state telegraph chain."""

import numpy as np
import pytest
from scipy.signal import lfilter

from molscore.analysis.autocorrelation import (
    autocorrelation,
    effective_sample_size,
    integrated_autocorrelation_time,
    series_by_replica,
)


def ar1(a, n, rng, n_rep=1):
    """Stationary AR(1) x_t = a x_{t-1} + e_t, shape (n_rep, n)."""
    e = rng.normal(size=(n_rep, n))
    e[:, 0] /= np.sqrt(1 - a**2)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -a], e, axis=1)


def telegraph(p, n, rng):
    """Symmetric 2-state chain flipping with probability p per frame, started at random."""
    flips = rng.random(n) < p
    flips[0] = rng.random() < 0.5
    return (np.cumsum(flips) % 2).astype(float)


def sokal_tolerance(tau, n, c=5.0, n_sigma=4.0):
    """n_sigma standard errors of tau_int (Madras-Sokal: var = 2 (2M + 1) / N tau^2, M ~ c tau)."""
    m = c * tau
    return n_sigma * tau * np.sqrt(2 * (2 * m + 1) / n)


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9])
def test_ar1_tau_matches_exact(a):
    n = 2**20
    x = ar1(a, n, np.random.default_rng(1))[0]
    exact = (1 + a) / (1 - a)
    tau = integrated_autocorrelation_time(x)
    assert abs(tau - exact) < sokal_tolerance(exact, n)  # 4 sigma: 1.3 % at a = 0, 7.9 % at a = 0.9
    assert effective_sample_size(x) == pytest.approx(n / tau)
    rho = autocorrelation(x, max_lag=5)
    np.testing.assert_allclose(rho, a ** np.arange(6), atol=0.01)


def test_iid_tau_is_one():
    x = np.random.default_rng(2).normal(size=100_000)
    assert integrated_autocorrelation_time(x) == pytest.approx(1.0, abs=sokal_tolerance(1.0, x.size))


def test_replicas_pooled_like_one_long_series():
    rng = np.random.default_rng(3)
    a, n_rep, n = 0.8, 64, 8192
    reps = ar1(a, n, rng, n_rep)
    exact = (1 + a) / (1 - a)
    pooled = integrated_autocorrelation_time(list(reps))
    single = integrated_autocorrelation_time(ar1(a, n_rep * n, rng)[0])
    tol = sokal_tolerance(exact, n_rep * n)
    assert abs(pooled - exact) < tol and abs(single - exact) < tol
    # unequal lengths work too, and lag pairs never cross a replica boundary
    uneven = [reps[0][:100], reps[1], reps[2][:3000]]
    assert autocorrelation(uneven).shape == (n,)


def test_global_mean_keeps_slow_replica_offsets():
    # replicas stuck in different basins: with per-replica means tau would look like 1; with the global mean
    # the indicator is fully correlated within a replica and tau reaches the window limit (a lower bound).
    reps = [np.zeros(50), np.ones(50), np.zeros(50), np.ones(50)]
    reps = [r + 1e-3 * np.random.default_rng(i).normal(size=50) for i, r in enumerate(reps)]
    with pytest.warns(RuntimeWarning, match="lower bound"):
        tau = integrated_autocorrelation_time(reps)
    assert tau > 20


@pytest.mark.parametrize("p", [0.05, 0.2])
def test_telegraph_indicator_tau(p):
    n = 2**20
    x = telegraph(p, n, np.random.default_rng(4))
    exact = (1 - p) / p  # rho(k) = (1 - 2p)^k
    assert abs(integrated_autocorrelation_time(x) - exact) < sokal_tolerance(exact, n)


def test_constant_and_bad_input():
    assert integrated_autocorrelation_time(np.ones(100)) == 1.0
    assert integrated_autocorrelation_time([np.zeros(10), np.zeros(5)]) == 1.0
    assert effective_sample_size([np.zeros(10), np.zeros(5)]) == 15.0
    with pytest.raises(ValueError, match="constant"):
        autocorrelation(np.ones(10))
    with pytest.raises(ValueError, match="list"):
        integrated_autocorrelation_time(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        integrated_autocorrelation_time(np.array([1.0, np.nan, 2.0]))


def test_series_by_replica_keeps_time_order():
    values = np.arange(6.0)
    frame_major = np.array([0, 1, 0, 1, 0, 1])  # a simulation's (frames, replicas) flattened
    parts = series_by_replica(values, frame_major)
    np.testing.assert_array_equal(parts[0], [0, 2, 4])
    np.testing.assert_array_equal(parts[1], [1, 3, 5])
