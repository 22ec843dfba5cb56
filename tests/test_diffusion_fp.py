"""The Fokker-Planck residual of energy models (SCIENCE.md section 2) and the DSM loss.

Ground truth: the diffused Gaussian mixture q_t is known in closed form at every t, so its energy
-log q_t solves the FP equation of the VP SDE exactly. Two estimators are checked:

- ``fp_residual`` with the exact divergence (autograd Jacobian trace): the residual of the exact energy is
  zero per sample, to rounding, relative to the size of the terms it balances;
- ``loss_terms``' product R1 R2 of two finite-difference Hutchinson residuals: unbiased for R^2, so its
  mean over samples matches the exact-divergence R^2 within the standard error (zero for the exact energy),
  and per probe its divergence matches p^T (ds/dx) p up to the O(h^2) truncation of the central difference.
"""

import math

import pytest
import torch
from torch import nn

from molscore.diffusion import VPSDE
from molscore.models import EnergyScore
from molscore.models.analytic import GaussianMixtureScore
from molscore.models.mlp import MLP
from molscore.potentials import GaussianMixture
from molscore.sampling.likelihood import subspace_basis
from molscore.system import load_system
from molscore.train.losses import dsm_from_score, fp_residual, loss_terms

Z = 5.0
TIMES = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return load_system("gaussian_mixture").potential


class MixtureEnergy(nn.Module):
    """Energy net ``(x, t) -> (B,)`` of a diffused mixture, evaluated at x / c - shift (c = 1, shift = 0: exact)."""

    def __init__(self, mixture, sde, c=1.0, shift=0.0):
        super().__init__()
        self.exact, self.c, self.shift = GaussianMixtureScore(mixture, sde), c, shift

    def forward(self, x, t):
        return self.exact.energy(x / self.c - self.shift, t)


class CentredGaussianEnergy(nn.Module):
    """Exact -log q_t on the zero-centroid subspace of N(mu, s^2 P) diffused: D = d (N - 1) in the normaliser."""

    def __init__(self, mu, s, sde):
        super().__init__()
        self.mu, self.s, self.sde = mu, s, sde
        self.n_dof = mu.shape[-1] * (mu.shape[-2] - 1)

    def forward(self, x, t):
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        var = alpha**2 * self.s**2 + sigma**2
        sq = ((x - alpha[:, None, None] * self.mu) ** 2).flatten(1).sum(1)
        return 0.5 * sq / var + 0.5 * self.n_dof * torch.log(2 * math.pi * var)


def exact_divergence(score_fn, x, basis):
    """sum_k q_k^T (ds/dx) q_k over an orthonormal basis ``(D, N, d)`` of the space, ``(B,)``."""
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    div = torch.zeros(len(x), dtype=x.dtype)
    for k, q in enumerate(basis):
        (jq,) = torch.autograd.grad(s, x, grad_outputs=q.expand_as(x), retain_graph=k < len(basis) - 1)
        div = div + (jq * q).flatten(1).sum(1)
    return div


def residual_and_size(model, sde, xt, t, n_dof, basis):
    """Exact-divergence residual R ``(B,)`` and the size of the terms it balances."""
    score, dE_dt = model.score_and_time_derivative(xt, t, create_graph=True)
    div = exact_divergence(lambda y: model.score(y, t, create_graph=True), xt, basis)
    r = fp_residual(sde, xt, t, score, dE_dt, div, n_dof)
    sq = (score**2).flatten(1).sum(1)
    xs = (xt * score).flatten(1).sum(1)
    size = dE_dt.abs() + 0.5 * sde.beta(t) * (div.abs() + sq + xs.abs() + n_dof)
    return r.detach(), size.detach()


def diffused_batch(mixture, sde, t_value, n, seed, centred=False):
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, generator=g)
    if centred:
        x0 = x0 - x0.mean(1, keepdim=True)
    t = torch.full((n,), t_value, dtype=torch.float64)
    eps = sde.noise(x0.shape, centred, g, torch.float64)
    return x0, t, eps, g


def perturbed_models(mixture, sde):
    return {
        "stds x1.2": EnergyScore(MixtureEnergy(mixture, sde, c=1.2), centred=False),
        "means shifted": EnergyScore(
            MixtureEnergy(mixture, sde, shift=torch.tensor([0.3, -0.2], dtype=torch.float64)), centred=False
        ),
    }


@pytest.mark.parametrize("t_value", TIMES)
def test_exact_mixture_energy_solves_fokker_planck(mixture, t_value):
    sde = VPSDE()
    basis = subspace_basis(1, 2, False, torch.float64, "cpu")
    x0, t, eps, _ = diffused_batch(mixture, sde, t_value, 256, seed=1)
    xt = sde.perturb(x0, t, eps)
    r, size = residual_and_size(GaussianMixtureScore(mixture, sde), sde, xt, t, 2, basis)
    # float64 cancellation of O(size) terms: |R| ~ 1e-16 size
    assert (r.abs() <= 1e-12 * size).all(), float((r.abs() / size).max())
    for name, model in perturbed_models(mixture, sde).items():
        r_bad, size_bad = residual_and_size(model, sde, xt, t, 2, basis)
        # an energy that does not solve the FP equation: residual a sizeable fraction of the terms
        assert float((r_bad.abs() / size_bad).median()) > 1e-3, name


@pytest.mark.parametrize("t_value", [1e-4, 0.05, 0.7])
def test_exact_centred_energy_solves_fokker_planck_with_reduced_dimension(t_value):
    """Centred systems: D = d (N - 1) in the residual and the divergence on the subspace."""
    sde = VPSDE()
    mu = torch.tensor([[[0.5, 0.0, 0.1], [-0.3, 0.4, 0.0], [0.2, -0.1, 0.3], [0.0, 0.1, -0.2]]], dtype=torch.float64)
    mu = mu - mu.mean(1, keepdim=True)
    mixture = GaussianMixture([1.0], mu, [0.4])
    model = EnergyScore(CentredGaussianEnergy(mu, 0.4, sde), centred=True)
    n_dof = 3 * 3
    basis = subspace_basis(4, 3, True, torch.float64, "cpu")
    assert basis.shape == (n_dof, 4, 3)
    x0, t, eps, _ = diffused_batch(mixture, sde, t_value, 128, seed=2, centred=True)
    xt = sde.perturb(x0, t, eps)
    assert float(xt.mean(1).abs().max()) < 1e-14
    r, size = residual_and_size(model, sde, xt, t, n_dof, basis)
    assert (r.abs() <= 1e-12 * size).all(), float((r.abs() / size).max())
    # with the full dimension N d the same exact energy has a residual of -beta/2 d (1 - 1/var) != 0
    r_full, _ = residual_and_size(model, sde, xt, t, 4 * 3, basis)
    assert (r_full.abs() > 1e-3 * size).all()


def hutchinson_statistics(model, sde, mixture, n_per_t=4000, seed=3):
    """Per-t z-scores of mean(R1 R2 / D^2 - R^2 / D^2) and of mean(R1 R2 / D^2)."""
    basis = subspace_basis(1, 2, False, torch.float64, "cpu")
    z_unbiased, z_signal = [], []
    for i, t_value in enumerate(TIMES):
        x0, t, eps, g = diffused_batch(mixture, sde, t_value, n_per_t, seed=seed + i)
        terms = loss_terms(model, sde, x0, t, eps, 2, False, n_per_t, 1e-2, g)
        fp = terms.fp.detach()
        r, _ = residual_and_size(model, sde, sde.perturb(x0, t, eps), t, 2, basis)
        diff = fp - r**2 / 4
        z_unbiased.append(float(diff.mean() / (diff.std() / math.sqrt(n_per_t))))
        z_signal.append(float(fp.mean() / (fp.std() / math.sqrt(n_per_t))))
    return z_unbiased, z_signal


def test_hutchinson_fp_product_is_unbiased_and_detects_a_wrong_energy(mixture):
    sde = VPSDE()
    exact = EnergyScore(MixtureEnergy(mixture, sde), centred=False)
    z_unbiased, z_signal = hutchinson_statistics(exact, sde, mixture)
    # exact energy: R = 0, so E[R1 R2] = 0 at every t
    assert max(abs(z) for z in z_unbiased) < Z, z_unbiased
    assert abs(sum(z_signal)) / math.sqrt(len(TIMES)) < Z, z_signal
    wrong = perturbed_models(mixture, sde)["stds x1.2"]
    z_unbiased, z_signal = hutchinson_statistics(wrong, sde, mixture)
    # E[R1 R2] = R^2 still holds for a wrong energy ...
    assert max(abs(z) for z in z_unbiased) < Z, z_unbiased
    # ... and R^2 > 0 is resolved: combined over t far beyond the exact model's spread
    assert sum(z_signal) / math.sqrt(len(TIMES)) > 2 * Z, z_signal


def mlp_energy(n_particles, dim, centred, seed=0):
    torch.manual_seed(seed)
    return EnergyScore(MLP(n_particles, dim, hidden=(32, 32), activation="tanh"), centred).double()


@pytest.mark.parametrize("n_particles, dim, centred", [(1, 2, False), (3, 2, False), (4, 3, True)])
def test_finite_difference_hutchinson_matches_jacobian(n_particles, dim, centred):
    """Each FD probe divergence equals p^T (ds/dx) p (autograd) up to the O(h^2) central-difference error."""
    sde = VPSDE()
    n, m = 48, 32
    n_dof = dim * (n_particles - 1 if centred else n_particles)
    model = mlp_energy(n_particles, dim, centred)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(n, n_particles, dim, dtype=torch.float64, generator=g)
    if centred:
        x0 = x0 - x0.mean(1, keepdim=True)
    t = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-4), 0.0, generator=g))
    eps = sde.noise(x0.shape, centred, g, torch.float64)
    xt = sde.perturb(x0, t, eps)
    score, dE_dt = (v.detach() for v in model.score_and_time_derivative(xt[:m], t[:m]))
    rest = -dE_dt - 0.5 * sde.beta(t[:m]) * ((score**2).flatten(1).sum(1) + (xt[:m] * score).flatten(1).sum(1) + n_dof)

    errors = {}
    for fp_step in (1e-2, 1e-3):
        seed = 123
        terms = loss_terms(model, sde, x0, t, eps, n_dof, centred, m, fp_step, torch.Generator().manual_seed(seed))
        # the same probes loss_terms draws: the first draw from its generator, projected if centred
        probes = torch.randn((2, m, n_particles, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        if centred:
            probes = probes - probes.mean(-2, keepdim=True)
        quad = [_probe_quadratic(model, xt[:m], t[:m], p) for p in probes]
        half_beta = 0.5 * sde.beta(t[:m])
        r1, r2 = rest - half_beta * quad[0], rest - half_beta * quad[1]
        # d(R1 R2) = -beta/2 (R2 d div1 + R1 d div2): normalise to a relative error of the divergences
        scale = (r1.abs() + r2.abs()) * half_beta * (quad[0].abs() + quad[1].abs()) / n_dof**2
        errors[fp_step] = float(((terms.fp.detach() - r1 * r2 / n_dof**2).abs() / scale).max())
        assert terms.fp.shape == (m,) and terms.dsm.shape == (n,)
    # second-order central differences: ~1e-4 relative at fp_step 1e-2, 100x smaller at 1e-3
    assert errors[1e-2] < 1e-3, errors
    assert errors[1e-3] < errors[1e-2] / 30 or errors[1e-3] < 1e-10, errors


def _probe_quadratic(model, x, t, p):
    """p^T (ds/dx) p per sample by one vector-Jacobian product."""
    x = x.detach().requires_grad_(True)
    s = model.score(x, t, create_graph=True)
    (jp,) = torch.autograd.grad(s, x, grad_outputs=p)
    return (jp * p).flatten(1).sum(1).detach()


def test_time_derivative_matches_finite_difference():
    model = mlp_energy(2, 2, False)
    x = torch.randn(16, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0.01, 0.99, 16, dtype=torch.float64)
    _, dE_dt = model.score_and_time_derivative(x, t)
    h = 1e-6
    fd = (model.energy(x, t + h) - model.energy(x, t - h)) / (2 * h)
    assert torch.allclose(dE_dt, fd, rtol=1e-6, atol=1e-8)


def test_dsm_part_is_independent_of_fp_subset_and_matches_formula(mixture):
    sde = VPSDE()
    model = mlp_energy(1, 2, False)
    x0, _, eps, g = diffused_batch(mixture, sde, 0.3, 64, seed=6)
    t = torch.rand(64, dtype=torch.float64, generator=g) * (1 - 1e-5) + 1e-5
    plain = loss_terms(model, sde, x0, t, eps, 2, False)
    with_fp = loss_terms(model, sde, x0, t, eps, 2, False, 16, 1e-2, g)
    assert plain.fp is None and with_fp.fp.shape == (16,)
    assert torch.allclose(plain.dsm, with_fp.dsm, rtol=1e-12, atol=1e-14)
    xt = sde.alpha(t)[:, None, None] * x0 + sde.sigma(t)[:, None, None] * eps
    s = model.score(xt, t)
    manual = ((sde.sigma(t)[:, None, None] * s + eps) ** 2).sum((1, 2)) / 2
    assert torch.allclose(plain.dsm, manual, rtol=1e-12)
    assert torch.allclose(dsm_from_score(s, eps, sde.sigma(t), 2), manual, rtol=1e-12)


def test_dsm_of_exact_score_has_closed_form_mean(mixture):
    """For the exact score E||sigma s + eps||^2 / D is minimal; for N(0, I) data it equals alpha(t)^2."""
    sde = VPSDE()
    gauss = GaussianMixture([1.0], torch.zeros(1, 1, 2, dtype=torch.float64), [1.0])
    exact = GaussianMixtureScore(gauss, sde)
    n = 20_000
    for t_value in (0.01, 0.2, 0.6):
        x0, t, eps, _ = diffused_batch(gauss, sde, t_value, n, seed=7)
        dsm = loss_terms(exact, sde, x0, t, eps, 2, False).dsm.detach()
        a2 = float(sde.alpha(torch.tensor(t_value, dtype=torch.float64))) ** 2
        assert abs(float(dsm.mean()) - a2) < Z * float(dsm.std()) / math.sqrt(n)


def test_fp_needs_an_energy_model(mixture):
    from molscore.models import DirectScore

    sde = VPSDE()
    model = DirectScore(MLP(1, 2, hidden=(8,), output="score"), False).double()
    x0, t, eps, g = diffused_batch(mixture, sde, 0.3, 8, seed=8)
    with pytest.raises(TypeError, match="energy model"):
        loss_terms(model, sde, x0, t, eps, 2, False, 4, 1e-2, g)


class OffsetEnergy(nn.Module):
    """The exact mixture energy plus a t-only offset 300 t^2 + 40 log(t) (a different normaliser Z(t)): the same
    density at every t, so the same scores, but R shifted by -(600 t + 40 / t) for every x."""

    def __init__(self, mixture, sde):
        super().__init__()
        self.exact = MixtureEnergy(mixture, sde)

    def forward(self, x, t):
        return self.exact(x, t) + 300 * t**2 + 40 * torch.log(t)


def grouped_fp_z(model, sde, mixture, group, n_per_t=4000, seed=5):
    """Per-t z-scores of mean(FP term) with FP samples in groups of ``group`` sharing t (1: ungrouped)."""
    z = []
    for i, t_value in enumerate(TIMES):
        x0, t, eps, g = diffused_batch(mixture, sde, t_value, n_per_t, seed=seed + i)
        fp = loss_terms(model, sde, x0, t, eps, 2, False, n_per_t, 1e-2, g, fp_group=group).fp.detach()
        z.append(float(fp.mean() / (fp.std() / math.sqrt(n_per_t))))
    return z


def test_grouped_fp_ignores_the_normaliser_and_still_detects_a_wrong_energy(mixture):
    """An unnormalised energy is FP consistent iff R(., t) is constant in x: grouping penalises Var_x R only."""
    sde = VPSDE()
    offset = EnergyScore(OffsetEnergy(mixture, sde), centred=False)
    assert min(grouped_fp_z(offset, sde, mixture, group=1)) > 2 * Z  # E R^2 punishes the normaliser at every t
    z = grouped_fp_z(offset, sde, mixture, group=4)
    assert max(abs(v) for v in z) < Z, z  # the variance over x does not
    wrong = grouped_fp_z(perturbed_models(mixture, sde)["stds x1.2"], sde, mixture, group=4)
    assert sum(wrong) / math.sqrt(len(TIMES)) > 2 * Z, wrong  # a wrong shape is still resolved


def test_grouped_fp_needs_groups_that_share_their_time(mixture):
    sde = VPSDE()
    x0, t, eps, g = diffused_batch(mixture, sde, 0.1, 8, seed=0)
    t[1] = 0.2
    model = EnergyScore(MixtureEnergy(mixture, sde), centred=False)
    with pytest.raises(ValueError, match="groups of 4 sharing one t"):
        loss_terms(model, sde, x0, t, eps, 2, False, 8, 1e-2, g, fp_group=4)
