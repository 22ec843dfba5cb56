"""The harmonic bond prior: its diffusion-time dependence, fitting, and how models carry and save it."""

import pytest
import torch

from molscore.diffusion import VPSDE
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.models.priors import BondPrior, NoisePrior, PriorSum

pytestmark = pytest.mark.usefixtures("one_thread")

SDE = VPSDE()


def chain(n_frames=256, seed=0):
    """A 3-bead chain, bonds 1.4 +- 0.03 and 1.5 +- 0.05 (diffusion units), random orientation, (M, 3, 3)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1.4, 1.5]) + torch.tensor([0.03, 0.05]) * torch.randn(
        n_frames, 2, generator=g, dtype=torch.float64
    )
    directions = torch.nn.functional.normalize(torch.randn(n_frames, 2, 3, generator=g, dtype=torch.float64), dim=-1)
    x = torch.zeros(n_frames, 3, 3, dtype=torch.float64)
    x[:, 1] = lengths[:, :1] * directions[:, 0]
    x[:, 2] = x[:, 1] + lengths[:, 1:] * directions[:, 1]
    return x - x.mean(1, keepdim=True)


def test_fit_recovers_the_bond_statistics_and_the_energy_follows_the_diffusion():
    prior = BondPrior([[0, 1], [1, 2]]).double()
    x = chain(4096)
    prior.fit(x, SDE)
    torch.testing.assert_close(prior.r0, torch.tensor([1.4, 1.5], dtype=torch.float64), atol=3e-3, rtol=0)
    torch.testing.assert_close(prior.var.sqrt(), torch.tensor([0.03, 0.05], dtype=torch.float64), atol=3e-3, rtol=0)
    one = x[:1]
    small, large = prior(one, torch.tensor([1e-5])), prior(one, torch.tensor([1.0]))
    expected_small = ((prior.lengths(one) - prior.r0) ** 2 / (2 * prior.var)).sum()  # t -> 0: the data's own bonds
    torch.testing.assert_close(small[0], expected_small, rtol=5e-3, atol=1e-6)  # 2 sigma^2 = 2e-6 << var = 9e-4
    alpha = SDE.alpha(torch.tensor(1.0, dtype=torch.float64))  # t = 1: nearly pure noise of variance 2 per bond
    expected_large = ((prior.lengths(one) - alpha * prior.r0) ** 2 / (2 * (alpha**2 * prior.var + 2 * (1 - alpha**2)))).sum()
    torch.testing.assert_close(large[0], expected_large, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("parameterisation", ["energy", "score"])
def test_models_add_the_prior_fit_it_in_training_and_save_it(parameterisation, tmp_path):
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    spec = ModelSpec(n_particles=3, dim=3, parameterisation=parameterisation, network="mlp",
                     network_options={"hidden": [8]}, bonds=[[0, 1], [1, 2]])  # fmt: skip
    x = chain(512)
    est = ScoreEstimator(spec, TrainConfig(steps=3, batch_size=16), dtype=torch.float64)
    est.fit(x, kT=2.5, progress=False)
    model = est.fetch_model()
    prior = next(m for m in model.score_model.modules() if isinstance(m, BondPrior))
    torch.testing.assert_close(prior.r0, prior.lengths(model.to_diffusion(x)).mean(0), rtol=0, atol=1e-12)
    # the score is the network's plus the prior's: switching the prior off changes it by -grad E_prior exactly
    xt, t = model.to_diffusion(x[:4]), torch.full((4,), 0.01, dtype=torch.float64)
    wrapper = model.score_model
    with_prior = wrapper.score(xt, t)
    saved, wrapper.prior = wrapper.prior, None
    without = wrapper.score(xt, t)
    wrapper.prior = saved
    xg = xt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(saved(xg, t).sum(), xg)
    grad = grad - grad.mean(1, keepdim=True)
    torch.testing.assert_close(with_prior - without, -grad, rtol=1e-10, atol=1e-10)
    back = DiffusionModel.load(model.save(tmp_path / "m.safetensors"), dtype=torch.float64)
    torch.testing.assert_close(back.forces(x[:4]), model.forces(x[:4]), rtol=1e-12, atol=1e-12)


def test_a_prior_needs_bonds():
    with pytest.raises(ValueError, match="at least one bond"):
        BondPrior([])
    spec = ModelSpec(n_particles=3, dim=3, network="mlp", network_options={"hidden": [8]})
    assert not any(isinstance(m, BondPrior) for m in build_score_model(spec).modules())


def test_noise_prior_is_the_gaussian_energy_at_large_t_and_vanishes_at_small_t():
    prior = NoisePrior().double()
    prior.fit(chain(8), SDE)
    x = chain(4, seed=1)
    t_large, t_small = torch.ones(4, dtype=torch.float64), torch.full((4,), 1e-5, dtype=torch.float64)
    sigma2 = SDE.sigma(torch.tensor(1.0, dtype=torch.float64)) ** 2
    torch.testing.assert_close(prior(x, t_large), 0.5 * sigma2 * x.pow(2).sum((1, 2)), rtol=1e-12, atol=0)
    assert (prior(x, t_small) < 1e-5 * x.pow(2).sum((1, 2))).all()
    both = PriorSum([BondPrior([[0, 1]]).double(), prior])
    torch.testing.assert_close(both(x, t_large), both.priors[0](x, t_large) + prior(x, t_large))
    spec = ModelSpec(n_particles=3, dim=3, network="mlp", network_options={"hidden": [8]}, noise_prior=True)
    assert any(isinstance(m, NoisePrior) for m in build_score_model(spec).modules())
