"""The fixed priors (bond, noise, angle, repulsion, dihedral): their diffusion-time dependence, fitting, and how
models carry and save them."""

import pytest
import torch

from molscore.diffusion import VPSDE
from molscore.geometry import dihedral, dihedral_cos_sin
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.models.priors import (
    AnglePrior,
    BondPrior,
    DihedralPrior,
    NoisePrior,
    PriorSum,
    RepulsionPrior,
    bond_angles,
    nonbonded_pairs,
    proper_dihedrals,
)

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


def angle_chain(n_frames=4096, seed=0, dihedral_spread=None):
    """A 4-bead chain (diffusion units): bonds 1.0 +- 0.02, angles 110 +- 3 and 120 +- 5 degrees, random
    orientation and a dihedral uniform or, with ``dihedral_spread`` (rad), pi + that spread x N(0, 1);
    ``(M, 4, 3)`` and the angles ``(M, 2)``."""
    g = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    theta = torch.deg2rad(torch.tensor([110.0, 120.0]) + torch.tensor([3.0, 5.0]) * normal(n_frames, 2))
    lengths = 1.0 + 0.02 * normal(n_frames, 3)
    dihedral = 2 * torch.pi * torch.rand(n_frames, generator=g, dtype=torch.float64)
    if dihedral_spread is not None:
        dihedral = torch.pi + dihedral_spread * normal(n_frames)
    x = torch.zeros(n_frames, 4, 3, dtype=torch.float64)
    x[:, 1, 0] = lengths[:, 0]  # bead 0 at the origin, bead 1 on the x axis
    x[:, 2, 0] = x[:, 1, 0] - lengths[:, 1] * torch.cos(theta[:, 0])
    x[:, 2, 1] = lengths[:, 1] * torch.sin(theta[:, 0])
    b1 = torch.nn.functional.normalize(x[:, 2] - x[:, 1], dim=-1)  # bead 3 from angle 1-2-3 and the dihedral
    n = torch.nn.functional.normalize(torch.linalg.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 1], dim=-1), dim=-1)
    m = torch.linalg.cross(n, b1, dim=-1)
    d = -torch.cos(theta[:, 1:2]) * b1 + torch.sin(theta[:, 1:2]) * (
        torch.cos(dihedral)[:, None] * m + torch.sin(dihedral)[:, None] * n
    )
    x[:, 3] = x[:, 2] + lengths[:, 2:] * d
    rotation = torch.linalg.qr(normal(3, 3))[0]
    x = x @ rotation.T
    return x - x.mean(1, keepdim=True), theta


def test_angles_and_nonbonded_pairs_come_from_the_bonds():
    bonds = [[0, 1], [1, 2], [2, 3], [1, 4]]  # a branched chain: 4 hangs on 1
    assert bond_angles(bonds, 5).tolist() == [[0, 1, 2], [0, 1, 4], [2, 1, 4], [1, 2, 3]]
    assert nonbonded_pairs(bonds, 5).tolist() == [[0, 3], [3, 4]]


def test_angle_prior_fits_the_angles_and_fades_with_the_noise():
    x, theta = angle_chain()
    prior = AnglePrior([[0, 1], [1, 2], [2, 3]], 4).double()
    prior.fit(x, SDE)
    torch.testing.assert_close(prior.values(x), theta, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        torch.rad2deg(prior.theta0), torch.tensor([110.0, 120.0], dtype=torch.float64), rtol=0, atol=0.3
    )
    torch.testing.assert_close(
        torch.rad2deg(prior.var.sqrt()), torch.tensor([3.0, 5.0], dtype=torch.float64), rtol=0, atol=0.2
    )
    t_small, t_large = torch.full((8,), 1e-6, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    expected = ((theta[:8] - prior.theta0) ** 2 / (2 * prior.var)).sum(-1)  # t -> 0: the data's own angles
    torch.testing.assert_close(prior(x[:8], t_small), expected, rtol=2e-3, atol=1e-8)
    assert (prior(x[:8], t_large) < 1e-3 * expected.clamp_min(1e-3)).all()  # pure noise: nothing left


def test_angle_prior_forbids_a_folded_angle():
    """Two hydrogens of one carbon meeting (angle 0) cost far more than kT; the energy is smooth up to 180 degrees."""
    x, _ = angle_chain(64)
    prior = AnglePrior([[0, 1], [1, 2], [2, 3]], 4).double()
    prior.fit(x, SDE)
    folded = x[:1].clone()
    folded[0, 2] = folded[0, 0] + 1e-3 * (folded[0, 2] - folded[0, 0])  # bead 2 onto bead 0: angle 0-1-2 near 0
    assert prior(folded, torch.full((1,), 1e-5, dtype=torch.float64)).item() > 500
    straight = x[:1].clone()
    straight[0, 2] = 2 * straight[0, 1] - straight[0, 0]  # angle 0-1-2 exactly 180 degrees
    straight.requires_grad_(True)
    (grad,) = torch.autograd.grad(prior(straight, torch.full((1,), 1e-5, dtype=torch.float64)).sum(), straight)
    assert torch.isfinite(grad).all()


def test_repulsion_prior_is_zero_on_the_data_and_a_wall_below_their_closest_approach():
    x, _ = angle_chain()
    prior = RepulsionPrior([[0, 1], [1, 2], [2, 3]], 4).double()
    prior.fit(x, SDE)
    closest = (x[:, 3] - x[:, 0]).norm(dim=-1).min()
    torch.testing.assert_close(prior.rho, 0.8 * closest[None], rtol=1e-12, atol=0)
    t_small = torch.full((len(x),), 1e-6, dtype=torch.float64)
    assert (prior(x, t_small) == 0).all()
    rho = prior.rho[0]
    for fraction, energy in [(0.75, 12.5), (0.5, 50.0), (0.0, 200.0)]:  # (1 - fraction)^2 / (2 * 0.05^2)
        y = x[:1].clone()
        y[0, 3] = y[0, 0] + fraction * rho * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        y.requires_grad_(True)
        e = prior(y, t_small[:1])
        torch.testing.assert_close(e, torch.tensor([energy], dtype=torch.float64), rtol=1e-3, atol=1e-3)
        (grad,) = torch.autograd.grad(e.sum(), y)
        assert torch.isfinite(grad).all()
    near = x[:1].clone()
    near[0, 3] = near[0, 0] + 0.5 * rho * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    energies = [prior(near, torch.full((1,), t, dtype=torch.float64)).item() for t in (1e-6, 0.05, 0.2, 1.0)]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)) and energies[-1] < 1e-3  # fades with noise


def test_models_carry_angle_and_repulsion_priors_and_need_bonds_for_them(tmp_path):
    with pytest.raises(ValueError, match="give the spec's bonds"):
        build_score_model(ModelSpec(n_particles=4, dim=3, network="mlp", network_options={"hidden": [8]}, angle_prior=True))
    with pytest.raises(ValueError, match="no bond angle"):
        AnglePrior([[0, 1], [2, 3]], 4)
    with pytest.raises(ValueError, match="more than two bonds apart"):
        RepulsionPrior([[0, 1], [1, 2]], 3)
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    extra = {"angle_prior": True, "repulsion_prior": True, "dihedral_prior": True}
    spec = ModelSpec(
        n_particles=4, dim=3, network="mlp", network_options={"hidden": [8]}, bonds=[[0, 1], [1, 2], [2, 3]], **extra
    )
    x, _ = angle_chain(512)
    est = ScoreEstimator(spec, TrainConfig(steps=3, batch_size=16), dtype=torch.float64)
    est.fit(x, kT=2.5, progress=False)
    model = est.fetch_model()
    kinds = [type(m) for m in model.score_model.prior.priors]
    assert kinds == [BondPrior, AnglePrior, RepulsionPrior, DihedralPrior]
    fitted = model.score_model.prior.priors[2].rho
    assert (fitted > 0).all()
    back = DiffusionModel.load(model.save(tmp_path / "m.safetensors"), dtype=torch.float64)
    torch.testing.assert_close(back.score_model.prior.priors[2].rho, fitted, rtol=0, atol=0)
    torch.testing.assert_close(back.forces(x[:4]), model.forces(x[:4]), rtol=1e-12, atol=1e-12)


def test_dihedral_prior_holds_narrow_dihedrals_and_leaves_broad_ones_to_the_network():
    bonds = [[0, 1], [1, 2], [2, 3], [1, 4]]
    assert proper_dihedrals(bonds, 5).tolist() == [[0, 1, 2, 3], [4, 1, 2, 3]]
    broad, _ = angle_chain()
    prior = DihedralPrior([[0, 1], [1, 2], [2, 3]], 4).double()
    prior.fit(broad, SDE)
    assert prior.active.tolist() == [0.0] and (prior(broad[:8], torch.full((8,), 1e-6, dtype=torch.float64)) == 0).all()

    planar, _ = angle_chain(dihedral_spread=0.1)  # a trans peptide bond: 180 +- 6 degrees
    prior.fit(planar, SDE)
    assert prior.active.tolist() == [1.0]
    assert abs(abs(float(prior.phi0)) - torch.pi) < 0.01 and abs(float(prior.var.sqrt()) - 0.1) < 0.005
    t_small = torch.full((1,), 1e-6, dtype=torch.float64)
    phi = dihedral(planar[:1], prior.dihedrals)  # the shared dihedral, as the CVs compute it
    cos, sin = dihedral_cos_sin(planar, prior.dihedrals)
    phi_all = dihedral(planar, prior.dihedrals)
    torch.testing.assert_close(torch.stack([cos, sin]), torch.stack([phi_all.cos(), phi_all.sin()]), rtol=0, atol=1e-12)
    torch.testing.assert_close(phi_all[:, 0], dihedral(planar, prior.dihedrals[0]), rtol=0, atol=0)  # (D, 4) == (4,)
    expected = (1 - torch.cos(phi - prior.phi0)) / prior.var
    torch.testing.assert_close(prior(planar[:1], t_small), expected[:, 0], rtol=1e-3, atol=1e-8)
    cis = planar[:1].clone()  # bead 3 reflected through the plane of beads 0, 1, 2 and turned: dihedral near 0
    axis = torch.nn.functional.normalize(cis[0, 2] - cis[0, 1], dim=-1)
    r = cis[0, 3] - cis[0, 2]
    cis[0, 3] = cis[0, 2] + 2 * (r @ axis) * axis - r  # rotation by pi about the central bond
    assert prior(cis, t_small).item() > 150  # ~2 / 0.01 kT: planar groups do not flip
    mirror = planar[:4] * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # phi -> -phi around phi0 = pi
    t4 = torch.full((4,), 1e-6, dtype=torch.float64)
    torch.testing.assert_close(prior(mirror, t4), prior(planar[:4], t4), rtol=0.05, atol=0.05)
    energies = [prior(cis, torch.full((1,), t, dtype=torch.float64)).item() for t in (1e-6, 0.05, 0.2, 1.0)]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)) and energies[-1] < 1e-3  # fades with noise
    with pytest.raises(ValueError, match="no dihedral"):
        DihedralPrior([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="3-D coordinates"):
        build_score_model(
            ModelSpec(n_particles=4, dim=2, network="mlp", bonds=[[0, 1], [1, 2], [2, 3]], dihedral_prior=True)
        )
