"""Stationary distributions of the integrators against exact answers.

Every tolerance is a multiple of a standard error computed from the data: replicas are independent, so the
spread of per-replica time averages gives the error of their mean whatever the autocorrelation in time.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.linalg import solve_discrete_lyapunov
from scipy.stats import chi2

from molscore.dynamics import BAOAB, EulerMaruyama, Overdamped, SeededNoise, State, Underdamped
from molscore.potentials import DoubleWell, Harmonic
from molscore.system import load_system
from molscore.units import kT_from_temperature

Z_TOL = 5.0  # standard errors; with fixed seeds a correct integrator passes, a biased one fails by far more


def time_averages(term, integrator, state, dt, noise, n_burn, n_measure, observables):
    """Per-replica time averages of ``observables(state) -> dict of (B, ...) tensors`` after a burn-in."""
    state = integrator.init(term, state, noise)
    for _ in range(n_burn):
        state = integrator.step(term, state, dt, noise)
    sums = None
    for _ in range(n_measure):
        state = integrator.step(term, state, dt, noise)
        obs = observables(state)
        sums = obs if sums is None else {k: sums[k] + v for k, v in obs.items()}
    return {k: v / n_measure for k, v in sums.items()}, state


def mean_and_error(per_replica: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean over replicas (dim 0) and its standard error."""
    x = per_replica.numpy()
    return x.mean(0), x.std(0, ddof=1) / math.sqrt(len(x))


def boltzmann_moment_1d(u, kT, power, lo=-4.0, hi=4.0):
    z = quad(lambda x: math.exp(-u(x) / kT), lo, hi, points=[-1.0, 1.0])[0]
    return quad(lambda x: x**power * math.exp(-u(x) / kT), lo, hi, points=[-1.0, 1.0])[0] / z


def baoab_harmonic_covariance(k, m, kT, gamma, dt):
    """Exact stationary covariance of (x, v) at full BAOAB steps for U = k x^2 / 2, from the linear map."""
    b = np.array([[1.0, 0.0], [-0.5 * dt * k / m, 1.0]])
    a = np.array([[1.0, 0.5 * dt], [0.0, 1.0]])
    c = math.exp(-gamma * dt)
    o = np.diag([1.0, c])
    noise_in = b @ a @ np.array([0.0, math.sqrt((1 - c**2) * kT / m)])
    step = b @ a @ o @ a @ b
    return solve_discrete_lyapunov(step, np.outer(noise_in, noise_in))


def test_baoab_harmonic_is_exact_in_configurations_and_matches_discrete_kinetic_temperature():
    # three particles of different mass at 300 K, the lightest at omega dt = 1.2 (stability limit 2)
    kT = kT_from_temperature(300.0)
    k, masses, gamma = 400.0, torch.tensor([1.0, 12.0, 16.0], dtype=torch.float64), 5.0
    dt = 1.2 / math.sqrt(k / masses.min().item())
    pot = Harmonic(k, n_particles=3, dim=2)
    term = Underdamped.from_potential(pot, masses, kT, gamma)
    b = 4000
    x0 = pot.sample(b, kT, generator=torch.Generator().manual_seed(0))

    def observables(s):
        return {"x2": (s.pos**2).mean(-1), "v2": (s.vel**2).mean(-1)}  # (B, N)

    avg, _ = time_averages(term, BAOAB(), State(x0), dt, SeededNoise(11), 100, 300, observables)
    x2, x2_err = mean_and_error(avg["x2"])
    v2, v2_err = mean_and_error(avg["v2"])

    for i, m in enumerate(masses.tolist()):
        cov = baoab_harmonic_covariance(k, m, kT, gamma, dt)
        assert cov[0, 0] == pytest.approx(kT / k, rel=1e-10)  # the theorem: exact configurations
        assert abs(x2[i] - kT / k) < Z_TOL * x2_err[i]
        # velocities at full steps are hotter than Maxwell-Boltzmann by a dt-dependent factor
        assert abs(v2[i] - cov[1, 1]) < Z_TOL * v2_err[i], (i, v2[i], cov[1, 1], v2_err[i])
    # the lightest particle's kinetic temperature is measurably off kT/m (the check can tell them apart)
    assert abs(v2[0] - kT / masses[0].item()) > 10 * v2_err[0]


def test_baoab_double_well_reproduces_boltzmann_marginal():
    system = load_system("double_well")
    pot, kT = system.potential, system.kT
    assert isinstance(pot, DoubleWell)
    term = Underdamped.from_potential(pot, system.masses, kT, friction=1.0)
    dt, b = 0.01, 20000  # omega_well dt = 0.063: BAOAB's O(dt^2) bias ~1e-4, below the error 7e-4
    x0 = pot.sample(b, kT, generator=torch.Generator().manual_seed(1))

    def observables(s):
        return {"x2": s.pos[:, 0, 0] ** 2, "y2": s.pos[:, 0, 1] ** 2}

    avg, final = time_averages(term, BAOAB(), State(x0), dt, SeededNoise(2), 50, 200, observables)

    def u_x(x):
        return pot.barrier * (x**2 - 1) ** 2

    exact_x2 = boltzmann_moment_1d(u_x, kT, 2)
    x2, x2_err = mean_and_error(avg["x2"])
    y2, y2_err = mean_and_error(avg["y2"])
    assert abs(x2 - exact_x2) < Z_TOL * x2_err
    assert abs(y2 - kT / pot.k_y) < Z_TOL * y2_err

    # histogram of x in the final snapshot (independent replicas) against quadrature, chi-square test
    edges = np.linspace(-1.8, 1.8, 25)
    x = final.pos[:, 0, 0].numpy()
    counts = np.histogram(x, bins=np.concatenate([[-np.inf], edges, [np.inf]]))[0]
    z = quad(lambda s: math.exp(-u_x(s) / kT), -4, 4)[0]
    probs = [
        quad(lambda s: math.exp(-u_x(s) / kT), lo, hi)[0] / z
        for lo, hi in zip(np.concatenate([[-4.0], edges]), np.concatenate([edges, [4.0]]), strict=True)
    ]
    expected = b * np.array(probs)
    stat = ((counts - expected) ** 2 / expected).sum()
    assert chi2.sf(stat, len(counts) - 1) > 1e-4, stat


def test_euler_maruyama_harmonic_has_the_exact_discrete_time_variance():
    # dx = -(D k / kT) x dt + sqrt(2 D) dW; EM's stationary variance is kT / (k (1 - k D dt / (2 kT)))
    kT, k, diffusion = kT_from_temperature(300.0), 100.0, 0.5
    dt = 0.4 * kT / (k * diffusion)  # k D dt / kT = 0.4: a 25 % excess variance
    pot = Harmonic(k, n_particles=2, dim=3)
    term = Overdamped.from_force(pot.forces, kT, diffusion)
    b = 4000
    x0 = pot.sample(b, kT, generator=torch.Generator().manual_seed(3))
    avg, _ = time_averages(
        term,
        EulerMaruyama(),
        State(x0),
        dt,
        SeededNoise(4),
        60,
        200,
        lambda s: {"x2": (s.pos**2).mean((1, 2))},
    )
    x2, err = mean_and_error(avg["x2"])
    exact_discrete = kT / (k * (1 - k * diffusion * dt / (2 * kT)))
    assert abs(x2 - exact_discrete) < Z_TOL * err
    assert abs(x2 - kT / k) > 10 * err  # distinguishable from the continuous-time answer


def test_euler_maruyama_double_well_extrapolates_to_boltzmann():
    pot, kT, diffusion = DoubleWell(), 1.0, 1.0
    term = Overdamped.from_force(pot.forces, kT, diffusion)
    b, dts = 40000, np.array([0.001, 0.002, 0.004])  # well curvature 40: relaxation time 0.025
    means, errors = [], []
    for i, dt in enumerate(dts):
        x0 = pot.sample(b, kT, generator=torch.Generator().manual_seed(10 + i))  # independent estimates
        avg, _ = time_averages(
            term,
            EulerMaruyama(),
            State(x0),
            dt,
            SeededNoise(20 + i),
            int(0.15 / dt),
            int(0.4 / dt),
            lambda s: {"x2": s.pos[:, 0, 0] ** 2},
        )
        m, e = mean_and_error(avg["x2"])
        means.append(float(m))
        errors.append(float(e))
    # weighted least squares <x^2>(dt) = a + c dt; cov is the covariance of (a, c)
    design = np.stack([np.ones_like(dts), dts], 1)
    w = 1 / np.array(errors) ** 2
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    a, _ = cov @ design.T @ (w * np.array(means))
    exact = boltzmann_moment_1d(lambda x: pot.barrier * (x**2 - 1) ** 2, kT, 2)
    assert abs(a - exact) < Z_TOL * math.sqrt(cov[0, 0]), (a, exact, math.sqrt(cov[0, 0]))
    # the O(dt) bias at the largest dt is real, so extrapolating mattered
    assert abs(means[-1] - exact) > 5 * errors[-1]
