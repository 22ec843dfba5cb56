"""Samplers and likelihoods driven by the EXACT diffused score of Gaussian mixtures.

With the exact score the only errors are the time discretisation, the N(0, I) prior standing in for q_1
(alpha(1) = 6.6e-3) and the finite sample, so the bounds below are the sampling error (standard errors from
the sample itself, and the data-vs-data JS floor at the same sample size) plus those stated biases.
"""

import functools
import math

import numpy as np
import pytest
import torch

from molscore.analysis.distributions import compare_2d
from molscore.diffusion import VPSDE
from molscore.dynamics import EulerMaruyama, Heun, SeededNoise, Simulation, State
from molscore.models import DiffusionModel, ModelSpec
from molscore.models.analytic import GaussianMixtureScore, exact_mixture_model
from molscore.potentials import GaussianMixture
from molscore.sampling import (
    ProbabilityFlow,
    ReverseDiffusion,
    langevin_corrector,
    log_likelihood,
    sample,
    score_evaluations,
    time_grid,
)
from molscore.sampling.diffusion_sampler import CORRECTOR_STREAM, prior_sample
from molscore.system import load_system

Z = 5.0
N_SAMPLES = 10_000
N_REF = 50_000
STEPS = {"sde": 500, "ode": 100}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def system():
    return load_system("gaussian_mixture")


@pytest.fixture(scope="module")
def reference(system):
    return system.potential.sample(N_REF, generator=torch.Generator().manual_seed(100))[:, 0]


@pytest.fixture(scope="module")
def js_floor(system, reference):
    """JS(independent exact samples of size N_SAMPLES, reference): mean and std over 5 draws."""
    rng = tuple(map(tuple, system.settings["histogram_range"]))
    values = [
        compare_2d(
            system.potential.sample(N_SAMPLES, generator=torch.Generator().manual_seed(200 + k))[:, 0],
            reference,
            system.settings["histogram_bins"],
            rng,
        )["js"]
        for k in range(5)
    ]
    return float(np.mean(values)), float(np.std(values, ddof=1))


def responsibilities(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Posterior component probabilities r_k(x); E_p[r_k] = w_k exactly."""
    sq = ((x[:, None] - mix.means) ** 2).sum(dim=(-1, -2))
    n_dof = mix.n_particles * mix.dim
    return torch.softmax(torch.log(mix.weights) - 0.5 * sq / mix.stds**2 - n_dof * torch.log(mix.stds), -1)


def mixture_moments(mix: GaussianMixture):
    """Mean and per-coordinate variance of a mixture of isotropic Gaussians, closed form."""
    w = mix.weights[:, None, None]
    mean = (w * mix.means).sum(0)
    second = (w * (mix.means**2 + mix.stds[:, None, None] ** 2)).sum(0)
    return mean, second - mean**2


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_sampler_reproduces_mixture(system, reference, js_floor, method):
    mix = system.potential
    model = exact_mixture_model(mix)
    assert model.dtype == torch.float64
    x = sample(model, N_SAMPLES, method, STEPS[method], batch_size=4096, seed=1, progress=False)
    assert x.shape == (N_SAMPLES, 1, 2) and torch.isfinite(x).all()

    # JS: E[JS(model, ref)] ~ JS_true + floor, so JS <= 2 floor means the error is below what N_SAMPLES
    # samples can resolve; 5 std of the floor's draw-to-draw spread covers the noise of one JS value.
    rng = tuple(map(tuple, system.settings["histogram_range"]))
    js = compare_2d(x[:, 0], reference, system.settings["histogram_bins"], rng)["js"]
    floor_mean, floor_std = js_floor
    assert js < 2 * floor_mean + Z * floor_std, (js, js_floor)

    # component weights: the mean responsibility is an unbiased estimate of w_k
    r = responsibilities(mix, x)
    se = r.std(0) / math.sqrt(N_SAMPLES)
    assert ((r.mean(0) - mix.weights).abs() < Z * se).all(), (r.mean(0), mix.weights, se)

    # first two moments against the closed form
    mean, var = mixture_moments(mix)
    dev = x - mean
    assert ((x.mean(0) - mean).abs() < Z * x.std(0) / math.sqrt(N_SAMPLES)).all()
    se_var = (dev**2).std(0) / math.sqrt(N_SAMPLES)
    assert ((x.var(0) - var).abs() < Z * se_var).all(), (x.var(0), var, se_var)


def test_sampler_is_seeded(system):
    model = exact_mixture_model(system.potential)
    a = sample(model, 300, "sde", 20, batch_size=128, seed=3, progress=False)
    b = sample(model, 300, "sde", 20, batch_size=128, seed=3, progress=False)
    c = sample(model, 300, "sde", 20, batch_size=128, seed=4, progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # batch k uses its own seed: the first batch does not depend on how many samples follow
    d = sample(model, 128, "sde", 20, batch_size=128, seed=3, progress=False)
    assert torch.equal(a[:128], d)


def test_sampler_rejects_bad_arguments(system):
    model = exact_mixture_model(system.potential)
    with pytest.raises(ValueError, match="method"):
        sample(model, 10, "langevin", progress=False)
    with pytest.raises(ValueError, match="positive"):
        sample(model, 0, "sde", progress=False)
    with pytest.raises(ValueError, match="positive"):
        sample(model, 10, "ode", n_steps=0, progress=False)


# centred multi-particle Gaussian ---------------------------------------------------------------------------
CENTRED_MU = torch.tensor([[[0.5, 0.0, 0.1], [-0.3, 0.4, 0.0], [0.2, -0.1, 0.3]]], dtype=torch.float64)
CENTRED_MU = CENTRED_MU - CENTRED_MU.mean(1, keepdim=True)
CENTRED_STD, CENTRED_SCALE = 0.4, 0.7
N_CENTRED, D_CENTRED = 3, 6


def centred_gaussian_model() -> DiffusionModel:
    """N = 3 particles in 3-D, N(mu, s^2 P) on the zero-centroid subspace (diffusion coordinates), scale 0.7.

    ``exact_mixture_model`` always builds an uncentred spec, so the centred model is assembled from its parts.
    The exact score -(x - alpha mu) / var lies in the subspace for centred x, so it is exact there too.
    """
    sde = VPSDE()
    mix = GaussianMixture([1.0], CENTRED_MU, [CENTRED_STD])
    spec = ModelSpec(N_CENTRED, 3, centred=True, network="exact_gaussian_mixture")
    return DiffusionModel(spec, GaussianMixtureScore(mix, sde), sde, scale=CENTRED_SCALE, kT=1.0)


def centred_log_density(pos: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(pos; mean, std^2 P) per unit volume of the D = d (N - 1)-dimensional zero-centroid subspace."""
    sq = ((pos - mean) ** 2).flatten(1).sum(1)
    return -0.5 * sq / std**2 - 0.5 * D_CENTRED * math.log(2 * math.pi * std**2)


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_sampler_centred_gaussian(method):
    model = centred_gaussian_model()
    n = 4000
    x = sample(model, n, method, STEPS[method], seed=2, progress=False)
    assert x.shape == (n, N_CENTRED, 3)
    assert float(x.mean(1).abs().max()) < 1e-12  # the samples stay in the zero-centroid subspace
    mean, std = CENTRED_SCALE * CENTRED_MU[0], CENTRED_SCALE * CENTRED_STD
    dev = x - mean
    assert ((x.mean(0) - mean).abs() < Z * x.std(0) / math.sqrt(n)).all()
    # |x - mu|^2 / s^2 ~ chi^2 with D = d (N - 1) = 6 degrees of freedom: mean D, variance 2 D
    chi2 = (dev**2).flatten(1).sum(1) / std**2
    assert abs(float(chi2.mean()) - D_CENTRED) < Z * math.sqrt(2 * D_CENTRED / n), float(chi2.mean())
    # covariance s^2 P (x) I_3: each particle coordinate has variance s^2 (N - 1) / N
    var = dev.pow(2).mean(0) / std**2
    assert ((var - (N_CENTRED - 1) / N_CENTRED).abs() < Z * math.sqrt(2 / n)).all(), var


# log-likelihood --------------------------------------------------------------------------------------------
def prior_mismatch(model: DiffusionModel, x0: torch.Tensor, n_steps: int, q1_log_prob) -> torch.Tensor:
    """log N(x_1; 0, I) - log q_1(x_1) along the probability-flow path from x0: the bias of using N(0, I)."""
    sde = model.sde
    x = model.to_diffusion(x0)
    dt = (sde.t_max - sde.t_min) / n_steps
    x1 = Simulation(ProbabilityFlow(model), Heun(), State(x, t=sde.t_min), dt, None).run(n_steps, progress=False).pos
    n_dof = model.spec.dim * (model.spec.n_particles - 1 if model.spec.centred else model.spec.n_particles)
    log_normal = -0.5 * (x1**2).flatten(1).sum(1) - 0.5 * n_dof * math.log(2 * math.pi)
    return log_normal - q1_log_prob(x1)


def test_log_likelihood_of_mixture_converges(system):
    mix = system.potential
    model = exact_mixture_model(mix)
    sde = model.sde
    x = mix.sample(48, generator=torch.Generator().manual_seed(5))
    one = torch.tensor(1.0, dtype=torch.float64)
    q1 = mix.diffused(float(sde.alpha(one)), float(sde.sigma(one)))
    errors, raw = {}, {}
    for n_steps in (50, 100, 400):
        ll = log_likelihood(model, x, n_steps=n_steps)
        assert ll.shape == (48,) and ll.dtype == torch.float64
        raw[n_steps] = float((ll - mix.log_prob(x)).abs().max())
        # remove the (known) prior bias: what is left is the Heun discretisation error
        expected = mix.log_prob(x) + prior_mismatch(model, x, n_steps, q1.log_prob)
        errors[n_steps] = float((ll - expected).abs().max())
    # second-order convergence: 8x the steps should give ~64x less error; ask for 16x
    assert errors[400] < errors[50] / 16, errors
    assert errors[100] < errors[50] / 2.5, errors
    assert errors[400] < 1e-3, errors
    # against the closed form itself: the prior bias is ~ alpha(1) <x_1, E mu> <= 6.6e-3 * 4 * 0.22 = 5.8e-3
    # for |x_1| < 4, plus the Heun error
    assert raw[400] < 5.8e-3 + errors[400], raw
    assert raw[400] < raw[50], raw


def test_log_likelihood_hutchinson_is_unbiased(system):
    """With fixed probes the path x(t) is the same as with the exact divergence and the estimate is linear in
    the probe quadratic forms: the mean over probe seeds equals the exact-divergence result."""
    mix = system.potential
    model = exact_mixture_model(mix)
    x = mix.sample(24, generator=torch.Generator().manual_seed(6))
    exact = log_likelihood(model, x, n_steps=60, exact=True)
    seeds = 24
    est = torch.stack([log_likelihood(model, x, n_steps=60, exact=False, n_probes=2, seed=s) for s in range(seeds)])
    assert float(est.std(0).min()) > 0  # it is a random estimate ...
    dev = est - exact
    # ... whose pooled mean (all points and seeds independent) is zero within its standard error
    pooled = float(dev.mean() / (dev.std() / math.sqrt(dev.numel())))
    assert abs(pooled) < Z, pooled
    per_point = dev.mean(0) / (dev.std(0) / math.sqrt(seeds))
    assert float(per_point.abs().max()) < 6.0, per_point  # t with 23 dof, max over 24 points
    # and the exact divergence is the default for D <= 32
    assert torch.equal(log_likelihood(model, x, n_steps=60), exact)


def test_log_likelihood_centred_gaussian_in_physical_units():
    """log p(pos) per nm^D on the D = d (N - 1) subspace: checks the reduced dimension and -D log(scale)."""
    model = centred_gaussian_model()
    sde = model.sde
    mean, std = CENTRED_SCALE * CENTRED_MU[0], CENTRED_SCALE * CENTRED_STD
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(16, N_CENTRED, 3, dtype=torch.float64, generator=g)
    pos = mean + std * (eps - eps.mean(1, keepdim=True))
    one = torch.tensor(1.0, dtype=torch.float64)
    a1, s1 = float(sde.alpha(one)), float(sde.sigma(one))
    v1 = math.sqrt(a1**2 * CENTRED_STD**2 + s1**2)

    def q1(x1):
        return centred_log_density(x1, a1 * CENTRED_MU[0], v1)

    errors = {}
    for n_steps in (50, 400):
        ll = log_likelihood(model, pos, n_steps=n_steps)
        expected = centred_log_density(pos, mean, std) + prior_mismatch(model, pos, n_steps, q1)
        errors[n_steps] = float((ll - expected).abs().max())
    assert errors[400] < errors[50] / 16 and errors[400] < 1e-3, errors
    # a translated copy has the same likelihood (the model lives on the subspace)
    shifted = log_likelihood(model, pos + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), n_steps=50)
    assert torch.allclose(shifted, log_likelihood(model, pos, n_steps=50), rtol=1e-10, atol=1e-10)


# time grids, predictor-corrector, cost ---------------------------------------------------------------------
GAUSS_MU = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
N_GAUSS, D_GAUSS = 4000, 12
SHARP, BROAD = 0.05, 1.0  # data std in diffusion coordinates: a narrow mode, and data at the scale of the prior
GRIDS = ("uniform", "log_sigma", "log_snr", "edm")


def gaussian_model(std: float) -> DiffusionModel:
    """Exact score of N(mu, std^2 I) in 4 x 3 = 12 dimensions (uncentred, scale 1)."""
    return exact_mixture_model(GaussianMixture([1.0], GAUSS_MU, [std]))


def discrete_moments(sde: VPSDE, grid: torch.Tensor, method: str, std: float) -> tuple[float, float]:
    """(c, v): the scheme's exact output per coordinate is N(c mu, v) for data N(mu, std^2) and the N(0, 1) prior.

    With the exact Gaussian score the drift is affine in x, so Euler-Maruyama and Heun map Gaussians to Gaussians:
    the moments follow in closed form step by step on the given grid (the discrete answer, not the continuous one).
    """

    def coefficients(t: float) -> tuple[float, float]:  # drift = a x + b mu
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma, beta = float(sde.alpha(tt)), float(sde.sigma(tt)), sde.beta(t)
        var = alpha**2 * std**2 + sigma**2
        lam = 1.0 if method == "sde" else 0.5  # g^2 s (reverse SDE) or 1/2 g^2 s (probability flow)
        return -0.5 * beta + lam * beta / var, -lam * beta * alpha / var

    c, v = 0.0, 1.0
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        dt = t1 - t0
        a0, b0 = coefficients(t0)
        if method == "sde":  # x' = (1 + a0 dt) x + b0 mu dt + sqrt(beta |dt|) z
            c, v = (1 + a0 * dt) * c + b0 * dt, (1 + a0 * dt) ** 2 * v + sde.beta(t0) * abs(dt)
        else:  # Heun: x' = x + dt/2 (f(x, t0) + f(x + f(x, t0) dt, t1))
            a1, b1 = coefficients(t1)
            p = 1 + 0.5 * dt * (a0 + a1 * (1 + a0 * dt))
            q = 0.5 * dt * (b0 + b1 + a1 * b0 * dt)
            c, v = p * c + q, p**2 * v
    return c, v


@functools.cache
def grid_run(method: str, grid: str, std: float, n_steps: int = 30, corrector_steps: int = 0) -> torch.Tensor:
    return sample(
        gaussian_model(std),
        N_GAUSS,
        method,
        n_steps,
        seed=11,
        progress=False,
        time_grid=grid,
        corrector_steps=corrector_steps,
    )


def variance_error(x: torch.Tensor, std: float) -> float:
    """|pooled sample variance about the true mean / std^2 - 1|."""
    return abs(float((x - GAUSS_MU[0]).pow(2).mean()) / std**2 - 1)


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("n_steps", [1, 2, 30, 1000])
def test_time_grid_is_monotone_and_uniform_in_its_variable(kind, n_steps):
    sde = VPSDE()
    t = time_grid(sde, n_steps, kind)
    assert t.dtype == torch.float64 and t.shape == (n_steps + 1,)
    assert bool((t[1:] < t[:-1]).all())
    if kind == "uniform":  # the times of the fixed dt (accumulated as t + dt, as the earlier sampler did)
        assert t[0] == sde.t_max and abs(float(t[-1]) - sde.t_min) < 1e-13
        variable = t
    else:
        assert t[0] == sde.t_max and t[-1] == sde.t_min  # exactly
        level = sde.sigma(t) if kind == "log_sigma" else sde.sigma(t) / sde.alpha(t)
        variable = level ** (1 / 7) if kind == "edm" else level.log()  # Karras et al.'s rho = 7
    steps = variable.diff()
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-8, atol=0), (steps.min(), steps.max())
    span = variable[-1] - variable[0]
    assert torch.allclose(steps.sum(), span, rtol=1e-12)


def test_time_grid_places_steps_where_the_noise_level_changes():
    sde = VPSDE()
    uniform, log_sigma, log_snr, edm = (time_grid(sde, 30, kind) for kind in GRIDS)
    # the last step: uniform in t jumps from sigma ~0.11 to 3e-3; the log grids take 30 equal ratios
    assert float(uniform[-2]) > 0.03 and float(log_sigma[-2]) < 3e-5 and float(log_snr[-2]) < 3e-5
    # the first step: sigma(t) saturates at 1, so uniform log sigma leaves t = 1 in one jump to ~0.31
    assert 0.25 < float(log_sigma[1]) < 0.35 and float(log_snr[1]) > 0.95
    # EDM's grid lies between: finer than uniform at small t, with fewer steps there than log SNR
    assert float(log_snr[-2]) < float(edm[-2]) < float(uniform[-2])
    assert int((edm < 1e-2).sum()) < int((log_snr < 1e-2).sum())
    with pytest.raises(ValueError, match="time_grid"):
        time_grid(sde, 30, "log")
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(sde, 0, "log_sigma")


@pytest.mark.parametrize("std", [SHARP, BROAD])
@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("grid", GRIDS)
def test_sampler_is_the_exact_discrete_scheme_on_every_grid(grid, method, std):
    """Samples with 30 steps match the closed-form moments of the discrete scheme on that grid (per-step dt)."""
    x = grid_run(method, grid, std)
    c, v = discrete_moments(VPSDE(), time_grid(VPSDE(), 30, grid), method, std)
    mean = c * GAUSS_MU[0]
    assert (x.mean(0) - mean).abs().max() < Z * math.sqrt(v / N_GAUSS), (x.mean(0) - mean, v)
    var = float((x - mean).pow(2).mean())
    assert abs(var / v - 1) < Z * math.sqrt(2 / (N_GAUSS * D_GAUSS)), (var, v)


def test_log_grids_against_uniform_at_30_steps():
    """Sample variance error |var / std^2 - 1| at 30 steps (measured, seed 11, 4000 samples in 12-D):

    ============  =====  =========  =======  =======
    data std      meth.  uniform    log_sig  log_snr
    ============  =====  =========  =======  =======
    0.05 (sharp)  sde    14.2       0.17     0.26
    0.05 (sharp)  ode    0.99       0.50     0.004
    1.0 (broad)   sde    0.04       13.5     0.12
    1.0 (broad)   ode    0.004      0.009    0.004
    ============  =====  =========  =======  =======

    The log grids resolve the small-t end, where a narrow mode forms. Uniform log sigma(t) pays for it with its
    first step t = 1 -> 0.31, which Euler-Maruyama cannot take for data at the prior's scale (the reverse drift is
    +beta x / 2 there); uniform log sigma/alpha has no such step.
    """
    err = {(m, g, s): variance_error(grid_run(m, g, s), s) for m in ("sde", "ode") for g in GRIDS for s in (SHARP, BROAD)}
    # sharp data: both log grids at least as accurate as uniform in t, by far for the reverse SDE
    assert err["sde", "log_sigma", SHARP] < err["sde", "uniform", SHARP] / 10, err
    assert err["sde", "log_snr", SHARP] < err["sde", "uniform", SHARP] / 10, err
    assert err["ode", "log_sigma", SHARP] <= err["ode", "uniform", SHARP], err
    assert err["ode", "log_snr", SHARP] < err["ode", "uniform", SHARP] / 10, err
    # broad data: log sigma's long first step ruins the SDE sampler; log snr stays close to uniform
    assert err["sde", "log_sigma", BROAD] > 10 * err["sde", "uniform", BROAD] and err["sde", "log_sigma", BROAD] > 1, err
    assert err["sde", "log_snr", BROAD] < 0.2 and err["ode", "log_snr", BROAD] < 0.05, err


@pytest.mark.parametrize("snr", [0.16, 0.5])
def test_langevin_corrector_relaxes_to_its_discrete_stationary_variance(snr):
    """At fixed t the corrector is Langevin dynamics with eps = 2 snr^2 v^2 / v' for an ensemble of variance v':
    its stationary variance solves v' = v / (1 - eps / 2v), i.e. v' = v (1 + snr^2). Started from 4 v and a shifted
    mean, 150 steps must land there (a wrong noise scale or step rule gives another fixed point)."""
    model, t = gaussian_model(0.5), 0.3
    sde = model.sde
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, v = float(sde.alpha(tt)), float(sde.alpha(tt)) ** 2 * 0.25 + float(sde.sigma(tt)) ** 2
    noise = SeededNoise(5)
    z = noise.normal(0, (N_GAUSS, 4, 3), torch.float64, "cpu", 99)
    x = alpha * GAUSS_MU + 0.5 + 2 * math.sqrt(v) * z
    for k in range(150):
        x = langevin_corrector(model, x, t, snr, noise, k, CORRECTOR_STREAM)
    dev = x - alpha * GAUSS_MU[0]
    expected = v * (1 + snr**2)
    assert dev.mean(0).abs().max() < Z * math.sqrt(expected / N_GAUSS), dev.mean(0)
    var = float(dev.pow(2).mean())
    assert abs(var / expected - 1) < Z * math.sqrt(2 / (N_GAUSS * D_GAUSS)), (var / v, 1 + snr**2)


def test_predictor_corrector_reproduces_the_gaussian():
    # 30 log-snr predictor steps alone leave the variance 18% high; 3 corrector steps each fix it, to within the
    # statistical error plus the corrector's own stationary bias snr^2 (previous test)
    std = 0.5
    se = math.sqrt(2 / (N_GAUSS * D_GAUSS))
    predictor = grid_run("sde", "log_snr", std)
    pc = grid_run("sde", "log_snr", std, corrector_steps=3)
    assert variance_error(predictor, std) > 0.1
    assert variance_error(pc, std) < Z * se + 0.16**2, variance_error(pc, std)
    assert (pc.mean(0) - GAUSS_MU[0]).abs().max() < Z * std / math.sqrt(N_GAUSS)
    # centred: the corrector's noise is projected like the predictor's, so samples stay on the subspace
    model = centred_gaussian_model()
    n = 4000
    x = sample(model, n, "sde", 100, seed=2, progress=False, time_grid="log_snr", corrector_steps=1)
    assert float(x.mean(1).abs().max()) < 1e-12
    mean, std = CENTRED_SCALE * CENTRED_MU[0], CENTRED_SCALE * CENTRED_STD
    assert ((x.mean(0) - mean).abs() < Z * x.std(0) / math.sqrt(n)).all()
    chi2 = ((x - mean) ** 2).flatten(1).sum(1) / std**2
    assert abs(float(chi2.mean()) / D_CENTRED - 1) < Z * math.sqrt(2 / (D_CENTRED * n)) + 0.16**2, float(chi2.mean())


def test_default_sampler_is_the_fixed_dt_simulation():
    """time_grid="uniform", corrector_steps=0 reproduce the earlier sampler (one Simulation with fixed dt) bit for bit."""
    model = gaussian_model(0.3)
    sde = model.sde
    for method, n_steps in (("sde", 37), ("ode", 13)):
        term = ReverseDiffusion(model) if method == "sde" else ProbabilityFlow(model)
        integrator = EulerMaruyama() if method == "sde" else Heun()
        dt = -(sde.t_max - sde.t_min) / n_steps
        old = []
        for k, size in enumerate((128, 128, 44)):
            noise = SeededNoise(3 * 1_000_003 + k)
            x1 = prior_sample(model, size, noise, model.device, model.dtype)
            sim = Simulation(term, integrator, State(x1, t=sde.t_max), dt, noise, max_abs_position=1e4)
            old.append(model.to_physical(sim.run(n_steps, progress=False).pos))
        new = sample(model, 300, method, n_steps, batch_size=128, seed=3, progress=False)
        assert torch.equal(new, torch.cat(old)), method


def test_sampler_with_new_options_is_seeded():
    model = centred_gaussian_model()
    options = {"time_grid": "log_sigma", "corrector_steps": 2, "batch_size": 128, "progress": False}
    a = sample(model, 300, "sde", 15, seed=3, **options)
    b = sample(model, 300, "sde", 15, seed=3, **options)
    c = sample(model, 300, "sde", 15, seed=4, **options)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(a[:128], sample(model, 128, "sde", 15, seed=3, **options))
    assert not torch.allclose(a, sample(model, 300, "sde", 15, seed=3, **(options | {"corrector_steps": 0})))


class CountingScore(torch.nn.Module):
    """Wraps a score model and counts its score evaluations (calls and samples)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.samples = inner, 0, 0
        self.parameterisation = inner.parameterisation

    def score(self, x, t):
        self.calls += 1
        self.samples += len(x)
        return self.inner.score(x, t)


@pytest.mark.parametrize(
    ("method", "grid", "corrector_steps"), [("sde", "uniform", 0), ("sde", "log_snr", 2), ("ode", "log_sigma", 0)]
)
def test_score_evaluations_match_counted_calls(method, grid, corrector_steps):
    model = gaussian_model(0.3)
    counter = CountingScore(model.score_model)
    counted = DiffusionModel(model.spec, counter, model.sde, model.scale, model.kT)
    n, n_steps = 300, 7
    sample(counted, n, method, n_steps, batch_size=128, progress=False, time_grid=grid, corrector_steps=corrector_steps)
    per_sample = score_evaluations(method, n_steps, corrector_steps)
    assert per_sample == n_steps * ((1 if method == "sde" else 2) + corrector_steps)
    assert counter.samples == n * per_sample and counter.calls == 3 * per_sample  # 3 batches


def test_new_sampler_options_are_checked():
    model = gaussian_model(0.3)
    with pytest.raises(ValueError, match="corrector_steps=1 with method='ode'"):
        sample(model, 10, "ode", 5, corrector_steps=1, progress=False)
    with pytest.raises(ValueError, match="method='ode'"):
        score_evaluations("ode", 5, 1)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=f"corrector_steps must be an integer >= 0, got {bad}"):
            sample(model, 10, "sde", 5, corrector_steps=bad, progress=False)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"snr must be a positive finite number, got {bad}"):
            sample(model, 10, "sde", 5, corrector_steps=1, snr=bad, progress=False)
    with pytest.raises(ValueError, match="time_grid must be one of"):
        sample(model, 10, "sde", 5, time_grid="log", progress=False)


def test_sample_config_checks_and_sample_stage_passes_the_options(tmp_path, monkeypatch):
    from molscore.config import ConfigError
    from molscore.pipeline import load_run_config, stages

    base = {"system": "gaussian_mixture", "run_dir": str(tmp_path / "run")}
    for key, bad in (("n_steps", 0), ("corrector_steps", -2), ("snr", 0.0), ("snr", -0.5)):
        with pytest.raises(ConfigError, match=f"sample.{key} must be .*got {bad}"):
            load_run_config(base | {"sample": {key: bad}})
    with pytest.raises(ConfigError, match="sample.corrector_steps = 1 needs method 'sde'"):
        load_run_config(base | {"sample": {"method": "ode", "corrector_steps": 1}})
    with pytest.raises(ConfigError, match="did you mean 'log_snr'"):
        load_run_config(base | {"sample": {"time_grid": "log_sn"}})
    options = {"n_samples": 200, "n_steps": 12, "batch_size": 64, "seed": 5}
    new = {"time_grid": "log_sigma", "corrector_steps": 2, "snr": 0.3}
    cfg = load_run_config(base | {"sample": options | new})
    model = gaussian_model(0.3)
    monkeypatch.setattr(stages, "_load_model", lambda cfg: model)
    written = np.load(stages.sample(cfg, progress=False))
    expected = sample(model, 200, "sde", 12, batch_size=64, seed=5, progress=False, **new)
    assert np.array_equal(written, expected.numpy())


def test_denoise_keeps_data_with_the_exact_score_and_shows_where_a_wrong_one_departs(system):
    """Partial denoising: with the exact score, data noised to any t_start comes back with the data's component
    weights; with the score of a mixture of other weights, the output moves from the data's weights (small
    t_start: the noise forgets nothing) to the wrong model's (t_start = 1: it forgets everything)."""
    from molscore.sampling import denoise

    mix = system.potential
    n = 6000
    data = mix.sample(n, generator=torch.Generator().manual_seed(5))
    exact = exact_mixture_model(mix)
    out = denoise(exact, data, 0.5, n_steps=300, seed=2)
    assert out.shape == data.shape and torch.isfinite(out).all()
    r = responsibilities(mix, out)
    assert ((r.mean(0) - mix.weights).abs() < Z * r.std(0) / math.sqrt(n)).all(), r.mean(0)

    wrong_weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    wrong = exact_mixture_model(GaussianMixture(wrong_weights, mix.means, mix.stds))
    early = responsibilities(mix, denoise(wrong, data, 0.02, n_steps=300, seed=2)).mean(0)
    late = responsibilities(mix, denoise(wrong, data, 1.0, n_steps=300, seed=2)).mean(0)
    assert (early - mix.weights).abs().max() < 0.03, early
    assert (late - wrong_weights).abs().max() < 0.03, late
    assert torch.equal(denoise(wrong, data[:100], 0.3, 50, seed=4), denoise(wrong, data[:100], 0.3, 50, seed=4))
    with pytest.raises(ValueError, match="t_start"):
        denoise(exact, data, 0.0)
    with pytest.raises(ValueError, match=r"pos must be \(B, 1, 2\)"):
        denoise(exact, data[:, 0], 0.5)
