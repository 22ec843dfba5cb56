"""Exact steady-state entropy production of solvable overdamped systems: linear (Ornstein-Uhlenbeck)
dynamics by the Lyapunov equation, and a particle driven round a ring by the stationary Fokker-Planck
solution. These are the references the estimators are tested against (SCIENCE.md section 6).
"""

import numpy as np
import scipy.integrate
import scipy.linalg


def linear_entropy_production(drift_matrix, diffusion) -> float:
    """sigma of dx = A x dt + sqrt(2 D) dW at steady state (kB per unit time).

    The stationary density is N(0, C) with A C + C A^T + 2 D = 0, its score s = -C^-1 x, the probability
    velocity v = (A + D C^-1) x = M x and sigma = E[v^T D^-1 v] = tr(M^T D^-1 M C).

    Parameters
    ----------
    drift_matrix : A, array (n, n), all eigenvalues with negative real part
    diffusion : D, array (n, n) symmetric positive definite, or (n,) for a diagonal D
    """
    a = np.asarray(drift_matrix, dtype=np.float64)
    d = np.asarray(diffusion, dtype=np.float64)
    d = np.diag(d) if d.ndim == 1 else d
    if a.ndim != 2 or a.shape[0] != a.shape[1] or d.shape != a.shape:
        raise ValueError(f"need a square drift matrix A and D of its shape, got {a.shape} and {d.shape}")
    if np.max(np.linalg.eigvals(a).real) >= 0:
        raise ValueError("drift matrix A has an eigenvalue with real part >= 0: there is no steady state")
    cov = scipy.linalg.solve_continuous_lyapunov(a, -2.0 * d)
    m = a + d @ np.linalg.inv(cov)
    return float(np.trace(m.T @ np.linalg.solve(d, m) @ cov))


def ring_mean_velocity(potential, force: float, diffusion: float, kT: float, period: float, n_grid: int = 4000) -> float:
    """Mean velocity <dx/dt> of overdamped motion on a ring of length ``period`` in the tilted potential
    V(x) = U(x) - f x, with dx = -D/kT V'(x) dt + sqrt(2 D) dW (units of length per time).

    The stationary current j solves j = -D (p' + V'/kT p); with p periodic,
    p(x) = j/D e^{-V(x)/kT} int_x^{x+L} e^{V(y)/kT} dy / (1 - e^{-f L/kT}), and <dx/dt> = j L.

    Parameters
    ----------
    potential : callable U(x) on numpy arrays, periodic with ``period``
    """
    if force == 0:
        return 0.0
    beta = 1.0 / kT
    x = np.linspace(0.0, 2.0 * period, 2 * n_grid + 1)
    v = np.asarray(potential(x), dtype=np.float64) - force * x
    shift = v.max()
    cumulative = scipy.integrate.cumulative_simpson(np.exp(beta * (v - shift)), x=x, initial=0.0)
    inner = cumulative[n_grid : 2 * n_grid + 1] - cumulative[: n_grid + 1]  # int_x^{x+L}, x in [0, L]
    weight = np.exp(-beta * (v[: n_grid + 1] - shift)) * inner / -np.expm1(-beta * force * period)
    norm = scipy.integrate.simpson(weight, x=x[: n_grid + 1])  # = D / j
    return float(diffusion * period / norm)
