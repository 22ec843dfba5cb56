"""Samplers and likelihoods driven by the EXACT diffused score of Gaussian mixtures.

With the exact score the only errors are the time discretisation, the N(0, I) prior standing in for q_1
(alpha(1) = 6.6e-3) and the finite sample, so the bounds below are the sampling error (standard errors from
the sample itself, and the data-vs-data JS floor at the same sample size) plus those stated biases.
"""

import math

import numpy as np
import pytest
import torch

from molscore.analysis.distributions import compare_2d
from molscore.diffusion import VPSDE
from molscore.dynamics import Heun, Simulation, State
from molscore.models import DiffusionModel, ModelSpec
from molscore.models.analytic import GaussianMixtureScore, exact_mixture_model
from molscore.potentials import GaussianMixture
from molscore.sampling import ProbabilityFlow, log_likelihood, sample
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
