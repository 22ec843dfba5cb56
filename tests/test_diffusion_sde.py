"""The VP SDE against its closed form (SCIENCE.md section 1).

Closed forms are evaluated independently with Python's libm (``math.exp``, ``math.expm1``, each correct to
about one ulp); statistical checks use 5 standard errors computed from the sample size.
"""

import math

import pytest
import torch

from molscore.diffusion import VPSDE

BETA_MIN, BETA_MAX = 0.1, 20.0
Z = 5.0  # standard errors allowed in the statistical checks


def int_beta_ref(t: float) -> float:
    return BETA_MIN * t + 0.5 * t * t * (BETA_MAX - BETA_MIN)


def alpha_ref(t: float) -> float:
    return math.exp(-0.5 * int_beta_ref(t))


def sigma2_ref(t: float) -> float:
    return -math.expm1(-int_beta_ref(t))


TIMES = [1e-12, 1e-9, 1e-7, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0]


def test_defaults_match_science_reference():
    sde = VPSDE()
    assert (sde.beta_min, sde.beta_max, sde.t_min, sde.t_max) == (BETA_MIN, BETA_MAX, 1e-5, 1.0)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.beta(t), BETA_MIN + t * (BETA_MAX - BETA_MIN), rtol=1e-15, atol=0)


def test_alpha_sigma_closed_form_float64():
    sde = VPSDE()
    t = torch.tensor(TIMES, dtype=torch.float64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    assert alpha.dtype == sigma.dtype == torch.float64
    a_ref = torch.tensor([alpha_ref(v) for v in TIMES], dtype=torch.float64)
    s_ref = torch.tensor([math.sqrt(sigma2_ref(v)) for v in TIMES], dtype=torch.float64)
    # both are a few floating-point operations from the closed form: relative error ~ 1e-16
    assert torch.allclose(alpha, a_ref, rtol=1e-13, atol=0)
    assert torch.allclose(sigma, s_ref, rtol=1e-13, atol=0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_sigma_small_t_relative_accuracy(dtype, rtol):
    """sigma(t)^2 = -expm1(-int beta) ~ beta_min t: a naive 1 - alpha^2 loses every digit as t -> 0."""
    sde = VPSDE()
    small = [1e-12, 1e-10, 1e-8, 1e-6, 1e-5]
    t = torch.tensor(small, dtype=dtype)
    s2 = sde.sigma(t).to(torch.float64) ** 2
    t64 = t.to(torch.float64).tolist()  # the times actually represented in this dtype
    ref = torch.tensor([sigma2_ref(v) for v in t64], dtype=torch.float64)
    # relative accuracy of sigma^2: a few ulp of the dtype (sqrt then square doubles it)
    assert torch.allclose(s2, ref, rtol=rtol, atol=0)
    # asymptotics sigma^2 / (beta_min t) = 1 + t (beta_max - beta_min) / (2 beta_min) - beta_min t / 2 + O(t^2)
    ratio = s2 / (BETA_MIN * torch.tensor(t64, dtype=torch.float64))
    bound = torch.tensor(t64, dtype=torch.float64) * (BETA_MAX - BETA_MIN) / BETA_MIN + rtol
    assert ((ratio - 1).abs() <= bound).all(), ratio


def test_alpha_and_variance_solve_the_forward_sde():
    """Mean and variance of the VP SDE obey d alpha/dt = -beta alpha / 2 and d sigma^2/dt = beta (1 - sigma^2)."""
    sde = VPSDE()
    t = torch.tensor([1e-3, 0.05, 0.2, 0.5, 0.8, 0.99], dtype=torch.float64)
    h = 1e-6
    d_alpha = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    d_s2 = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    beta = sde.beta(t)
    # central differences: truncation ~ h^2 |f'''| < 1e-8, rounding ~ 1e-16 / h = 1e-10
    assert torch.allclose(d_alpha, -0.5 * beta * sde.alpha(t), rtol=1e-7, atol=1e-9)
    assert torch.allclose(d_s2, beta * (1 - sde.sigma(t) ** 2), rtol=1e-7, atol=1e-9)
    # int_beta is the integral of beta
    d_int = (sde.int_beta(t + h) - sde.int_beta(t - h)) / (2 * h)
    assert torch.allclose(d_int, beta, rtol=1e-8, atol=0)


def test_drift():
    sde = VPSDE()
    x = torch.randn(5, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sde.drift(x, 0.3), -0.5 * (BETA_MIN + 0.3 * (BETA_MAX - BETA_MIN)) * x, rtol=1e-15)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    expected = -0.5 * sde.beta(t)[:, None, None] * x
    assert torch.allclose(sde.drift(x, t), expected, rtol=1e-15)


def test_perturb_is_per_sample():
    sde = VPSDE()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, 3, dtype=torch.float64, generator=g)
    eps = torch.randn(6, 2, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([1e-5, 0.01, 0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    xt = sde.perturb(x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        expected = alpha_ref(ti) * x0[i] + math.sqrt(sigma2_ref(ti)) * eps[i]
        assert torch.allclose(xt[i], expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("t", [1e-4, 0.05, 0.3, 1.0])
def test_perturb_marginal_moments(t):
    """x0 ~ N(m, s^2 I) gives x_t ~ N(alpha m, (alpha^2 s^2 + sigma^2) I)."""
    sde = VPSDE()
    n, m, s = 40_000, torch.tensor([[1.5, -0.7]], dtype=torch.float64), 0.3
    g = torch.Generator().manual_seed(2)
    x0 = m + s * torch.randn(n, 1, 2, dtype=torch.float64, generator=g)
    eps = sde.noise((n, 1, 2), centred=False, generator=g, dtype=torch.float64)
    xt = sde.perturb(x0, torch.full((n,), t, dtype=torch.float64), eps)
    a2, s2 = alpha_ref(t) ** 2, sigma2_ref(t)
    var = a2 * s**2 + s2
    mean_err = (xt.mean(0) - alpha_ref(t) * m).abs()
    assert (mean_err < Z * math.sqrt(var / n)).all(), mean_err
    var_err = (xt.var(0) - var).abs()
    assert (var_err < Z * var * math.sqrt(2 / (n - 1))).all(), var_err


def test_noise_and_prior_centred_projection():
    """Centred noise lives in the zero-centroid subspace with covariance P = I - 11^T/N (per dimension)."""
    sde = VPSDE()
    n, n_particles, dim = 20_000, 4, 3
    g = torch.Generator().manual_seed(3)
    z = sde.prior((n, n_particles, dim), centred=True, generator=g, dtype=torch.float64)
    assert z.shape == (n, n_particles, dim) and z.dtype == torch.float64
    assert z.mean(dim=1).abs().max() < 1e-14  # zero centroid exactly, up to rounding
    cov = z.reshape(n, -1).T @ z.reshape(n, -1) / n  # mean is zero by construction
    proj = torch.eye(n_particles, dtype=torch.float64) - 1.0 / n_particles
    expected = torch.kron(proj, torch.eye(dim, dtype=torch.float64))
    # each entry of a sample covariance of unit-variance coordinates has standard error <= sqrt(2 / n)
    assert (cov - expected).abs().max() < Z * math.sqrt(2 / n)
    # D = d (N - 1) degrees of freedom
    assert abs(float(torch.trace(cov)) - dim * (n_particles - 1)) < Z * math.sqrt(2 * dim * n_particles / n)


def test_noise_uncentred_is_standard_normal_and_seeded():
    sde = VPSDE()
    n = 20_000
    z = sde.noise((n, 2, 2), centred=False, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cov = z.reshape(n, -1).T @ z.reshape(n, -1) / n
    assert (cov - torch.eye(4, dtype=torch.float64)).abs().max() < Z * math.sqrt(2 / n)
    # the centroid is NOT removed: its variance is 1 / N per dimension
    assert abs(float(z.mean(1).var()) - 0.5) < Z * 0.5 * math.sqrt(2 / n)
    again = sde.noise((n, 2, 2), centred=False, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(z, again)
