"""Convergence orders: Euler-Maruyama strong and weak order 1 on an Ornstein-Uhlenbeck process (additive
noise), Heun order 2 on a time-dependent linear ODE, forward and backward in time.
"""

import math

import numpy as np
import torch

from molscore.dynamics import ODE, EulerMaruyama, Heun, Overdamped, SeededNoise, State

THETA, S = 2.0, 0.7  # dx = -THETA x dt + S dW for the strong-order test


def ou_term(theta=THETA, s=S):
    """dx = -theta x dt + s dW as an overdamped term with D = s^2 / 2."""
    return Overdamped(lambda x, t: -theta * x, diffusion=s**2 / 2)


def fitted_slope(h, err, err_sd=None):
    """Least-squares slope of log err against log h, and its standard error if ``err_sd`` is given."""
    x, y = np.log(h), np.log(err)
    if err_sd is None:
        return np.polyfit(x, y, 1)[0], None
    w = (np.asarray(err) / np.asarray(err_sd)) ** 2  # var(log err) = (sd / err)^2
    design = np.stack([np.ones_like(x), x], 1)
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    return (cov @ design.T @ (w * y))[1], math.sqrt(cov[1, 1])


class BrownianPath:
    """Noise source replaying one fine Brownian path: the draw of coarse step k is the sum of its fine
    increments divided by sqrt(h), i.e. exactly the standard normal the path implies.
    """

    def __init__(self, fine_increments: torch.Tensor, fine_dt: float, per_step: int):
        self.dw, self.fine_dt, self.per_step = fine_increments, fine_dt, per_step

    def normal(self, step, shape, dtype, device, stream=0):
        block = self.dw[step * self.per_step : (step + 1) * self.per_step]
        return (block.sum(0) / math.sqrt(self.per_step * self.fine_dt)).to(dtype=dtype, device=device)


def test_euler_maruyama_strong_order_one_for_additive_noise():
    t_end, n_fine, shape = 1.0, 4096, (2000, 1, 2)
    delta = t_end / n_fine
    gen = torch.Generator().manual_seed(0)
    dw = math.sqrt(delta) * torch.randn(n_fine, *shape, dtype=torch.float64, generator=gen)
    x0 = torch.ones(shape, dtype=torch.float64)
    # exact solution x_T = e^{-theta T} x0 + S int e^{-theta (T - u)} dW(u), the integral conditioned on the
    # fine increments (each weighted by the mean of its kernel over its interval; residual ~ theta delta)
    starts = delta * torch.arange(n_fine, dtype=torch.float64)
    kernel = (torch.exp(-THETA * (t_end - starts - delta)) - torch.exp(-THETA * (t_end - starts))) / (THETA * delta)
    exact = math.exp(-THETA * t_end) * x0 + S * torch.einsum("k,kbnd->bnd", kernel, dw)

    hs, errs, sds = [], [], []
    for n_steps in (8, 16, 32, 64):
        noise = BrownianPath(dw, delta, n_fine // n_steps)
        state, h = State(x0.clone()), t_end / n_steps
        for _ in range(n_steps):
            state = EulerMaruyama().step(ou_term(), state, h, noise)
        assert state.t == t_end and state.step == n_steps
        err = (state.pos - exact).abs().flatten()
        hs.append(h)
        errs.append(err.mean().item())
        sds.append(err.std().item() / math.sqrt(len(err)))
    slope, slope_sd = fitted_slope(hs, errs, sds)
    assert abs(slope - 1.0) < 0.1 + 4 * slope_sd, (slope, slope_sd, errs)


def test_euler_maruyama_weak_order_one_for_second_moment():
    # theta h <= 0.25 keeps the error in its asymptotic regime (local slopes 1.11, 1.05, 1.02 in closed form)
    theta, s, t_end, shape = 1.0, 1.0, 1.0, (10000, 50, 2)  # 10^6 independent paths from x = 0
    exact = s**2 / (2 * theta) * (1 - math.exp(-2 * theta * t_end))
    hs, errs, sds = [], [], []
    for n_steps in (4, 8, 16, 32):
        h = t_end / n_steps
        state = State(torch.zeros(shape, dtype=torch.float64))
        noise = SeededNoise(100 + n_steps)
        for _ in range(n_steps):
            state = EulerMaruyama().step(ou_term(theta, s), state, h, noise)
        x2 = (state.pos**2).flatten()
        m2, m2_sd = x2.mean().item(), x2.std().item() / math.sqrt(len(x2))
        # EM's own second moment in closed form: m_{n+1} = (1 - theta h)^2 m_n + s^2 h
        m_em = 0.0
        for _ in range(n_steps):
            m_em = (1 - theta * h) ** 2 * m_em + s**2 * h
        assert abs(m2 - m_em) < 5 * m2_sd, (n_steps, m2, m_em, m2_sd)
        hs.append(h)
        errs.append(abs(m2 - exact))
        sds.append(m2_sd)
    slope, slope_sd = fitted_slope(hs, errs, sds)
    assert abs(slope - 1.0) < 0.15 + 4 * slope_sd, (slope, slope_sd, errs)


def _forced_decay(x0, t, omega=1.0):
    """Exact solution of dx/dt = -x + sin(omega t) with x(0) = x0."""
    decay = math.exp(-t)
    return decay * x0 + (math.sin(omega * t) - omega * math.cos(omega * t) + omega * decay) / (1 + omega**2)


def _ode_errors(integrator, backward=False, t_end=1.5):
    # the forcing makes the drift time-dependent: a Heun corrector evaluated at t instead of t + dt would
    # be first order here
    term = ODE(lambda x, t: -x + math.sin(t))
    x0 = torch.tensor([[[1.0, -0.5]]], dtype=torch.float64)
    exact_end = torch.tensor([[[_forced_decay(v, t_end) for v in (1.0, -0.5)]]], dtype=torch.float64)
    hs, errs = [], []
    for n_steps in (10, 20, 40, 80):
        h = t_end / n_steps
        state = State(exact_end.clone(), t=t_end) if backward else State(x0.clone())
        for _ in range(n_steps):
            state = integrator.step(term, state, -h if backward else h)
        target = x0 if backward else exact_end
        assert abs(state.t - (0.0 if backward else t_end)) < 1e-12
        hs.append(h)
        errs.append((state.pos - target).abs().max().item())
    return fitted_slope(hs, errs)[0]


def test_heun_is_second_order_forward_and_backward_in_time():
    assert abs(_ode_errors(Heun()) - 2.0) < 0.1
    assert abs(_ode_errors(Heun(), backward=True) - 2.0) < 0.1


def test_euler_on_an_ode_is_first_order():
    assert abs(_ode_errors(EulerMaruyama()) - 1.0) < 0.1
