"""Score and energy models: forces = -grad E, mixture-of-experts routing, saving and loading.

Finite differences are central, in float64, with a step h well inside the length scale of each function:
truncation error ~ h^2 |E'''| / 6 and rounding ~ 1e-16 |E| / h are both below 1e-8 of the force scale here,
so a relative tolerance of 1e-6 leaves a wide margin while any real error (a missing factor of the scale or
kT, a sign, a missing projection) is of order one.
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from molscore.diffusion import VPSDE
from molscore.models import DiffusionModel, EnergyScore, MixtureOfExperts, ModelSpec, build_score_model
from molscore.models.mlp import MLP
from molscore.potentials import DoubleWell, GaussianMixture, Harmonic, MuellerBrown

FD_RTOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def fd_gradient(fn, pos: torch.Tensor, h: float) -> torch.Tensor:
    """Central finite-difference gradient of ``fn : (B, N, d) -> (B,)`` w.r.t. every coordinate."""
    grad = torch.zeros_like(pos)
    flat = grad.view(len(pos), -1)
    with torch.no_grad():
        for i in range(flat.shape[1]):
            step = torch.zeros_like(pos).view(len(pos), -1)
            step[:, i] = h
            step = step.view_as(pos)
            flat[:, i] = (fn(pos + step) - fn(pos - step)) / (2 * h)
    return grad


def assert_forces_match(forces: torch.Tensor, fd_grad: torch.Tensor):
    scale = float(fd_grad.abs().max())
    assert scale > 0
    err = float((forces + fd_grad).abs().max())
    assert err <= FD_RTOL * scale, f"max |F + dE/dx| = {err:.3g} vs force scale {scale:.3g}"


def gaussian_mixture_2particle():
    means = torch.tensor([[[0.0, 0.1, -0.2], [0.5, 0.0, 0.3]], [[0.4, -0.3, 0.0], [-0.2, 0.2, 0.1]]])
    return GaussianMixture([0.3, 0.7], means, [0.25, 0.4], kT=2.5)


POTENTIALS = {
    "harmonic": (lambda: Harmonic([[1.0, 3.0], [2.0, 0.5]], n_particles=2, dim=2, centre=[[0.1, 0.2], [0, 1]])),
    "double_well": DoubleWell,
    "mueller_brown": MuellerBrown,
    "gaussian_mixture": gaussian_mixture_2particle,
}


@pytest.mark.parametrize("name", list(POTENTIALS))
def test_potential_forces_are_minus_energy_gradient(name):
    pot = POTENTIALS[name]()
    g = torch.Generator().manual_seed(0)
    if name == "mueller_brown":  # points spread over the interesting region (minima and saddles)
        pos = torch.stack(
            [
                torch.rand(16, dtype=torch.float64, generator=g) * 2.2 - 1.5,
                torch.rand(16, dtype=torch.float64, generator=g) * 2.0 - 0.2,
            ],
            -1,
        )[:, None]
    else:
        pos = torch.randn(16, pot.n_particles, pot.dim, dtype=torch.float64, generator=g)
    forces = pot.forces(pos)
    assert forces.shape == pos.shape and forces.dtype == torch.float64
    assert_forces_match(forces, fd_gradient(pot.energy, pos, 1e-5))


def test_gaussian_mixture_score_is_grad_log_prob():
    mix = gaussian_mixture_2particle()
    pos = torch.randn(32, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos = pos.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(pos).sum(), pos)
    assert torch.allclose(mix.score(pos.detach()), grad, rtol=1e-12, atol=1e-12)
    # energy = -kT log p
    assert torch.allclose(mix.energy(pos.detach()), -2.5 * mix.log_prob(pos.detach()), rtol=1e-14)


def test_gaussian_mixture_log_prob_is_normalised():
    """Closed form against a direct quadrature in 2-D (one particle)."""
    mix = GaussianMixture([0.5, 0.3, 0.2], [[[-1.0, 0.0]], [[1.0, 0.5]], [[0.0, -1.2]]], [0.3, 0.25, 0.2])
    axis = torch.linspace(-4, 4, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
    integral = float(mix.log_prob(grid).exp().sum()) * float(axis[1] - axis[0]) ** 2
    assert abs(integral - 1) < 1e-6  # Riemann sum of a smooth density on a fine grid: spectrally accurate


MODEL_CASES = {
    "mlp_single": dict(n_particles=1, dim=2, centred=False, scale=1.0, kT=1.0),
    "mlp_scaled": dict(n_particles=2, dim=2, centred=False, scale=0.37, kT=2.5),
    "mlp_centred": dict(n_particles=4, dim=3, centred=True, scale=0.37, kT=2.5),
    "moe": dict(n_particles=1, dim=2, centred=False, scale=0.6, kT=1.7, mixture_boundaries=[0.1, 0.6]),
    "moe_centred": dict(n_particles=4, dim=3, centred=True, scale=0.45, kT=2.5, mixture_boundaries=[0.1, 0.6]),
}


def build_model(case: dict, seed: int = 0, dtype=torch.float64) -> DiffusionModel:
    case = dict(case)
    scale, kT = case.pop("scale"), case.pop("kT")
    spec = ModelSpec(network_options={"hidden": [24, 24], "activation": "tanh"}, **case)
    torch.manual_seed(seed)
    return DiffusionModel(spec, build_score_model(spec).to(dtype), VPSDE(), scale, kT)


@pytest.mark.parametrize("case", list(MODEL_CASES))
@pytest.mark.parametrize("t", [None, 0.3, 0.8])
def test_learned_forces_are_minus_energy_gradient(case, t):
    model = build_model(MODEL_CASES[case])
    spec = model.spec
    g = torch.Generator().manual_seed(2)
    pos = 0.5 * torch.randn(8, spec.n_particles, spec.dim, dtype=torch.float64, generator=g) + 0.3
    forces = model.forces(pos, t)
    assert forces.shape == pos.shape and forces.dtype == torch.float64
    h = 1e-5 * model.scale
    assert_forces_match(forces, fd_gradient(lambda p: model.energy(p, t), pos, h))
    if spec.centred:
        # translation invariance: zero net force, energy unchanged by a rigid shift
        assert float(forces.sum(1).abs().max()) < 1e-12 * float(forces.abs().max())
        shift = torch.tensor([0.7, -1.1, 0.4], dtype=torch.float64)
        assert torch.allclose(model.energy(pos + shift, t), model.energy(pos, t), rtol=1e-13, atol=1e-13)


def test_forces_units():
    """F = kT s(x, t_min) / scale with x = (pos - centroid) / scale."""
    model = build_model(MODEL_CASES["mlp_centred"])
    pos = torch.randn(5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = (pos - pos.mean(1, keepdim=True)) / model.scale
    t = torch.full((5,), model.sde.t_min, dtype=torch.float64)
    expected = model.kT * model.score_model.score(x, t) / model.scale
    assert torch.allclose(model.forces(pos), expected, rtol=1e-14, atol=1e-14)
    assert torch.allclose(model.energy(pos), model.kT * model.score_model.energy(x, t), rtol=1e-14)


def test_mixed_parameterisation_mixture_has_energy_at_small_t():
    spec = ModelSpec(
        1,
        2,
        centred=False,
        mixture_boundaries=[0.1, 0.6],
        large_t_parameterisation="score",
        network_options={"hidden": [16]},
    )
    torch.manual_seed(0)
    model = DiffusionModel(spec, build_score_model(spec).double(), VPSDE(), 0.5, 2.0)
    pos = torch.randn(4, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert_forces_match(model.forces(pos), fd_gradient(model.energy, pos, 1e-6))


def test_direct_score_model_has_no_energy():
    spec = ModelSpec(1, 2, centred=False, parameterisation="score", network_options={"hidden": [8]})
    model = DiffusionModel(spec, build_score_model(spec), VPSDE(), 1.0, 1.0)
    with pytest.raises(TypeError, match="direct score"):
        model.energy(torch.zeros(1, 1, 2))


# mixture of experts -------------------------------------------------------------------------------------
def make_moe(centred=False, dtype=torch.float64):
    torch.manual_seed(5)
    experts = [EnergyScore(MLP(3, 2, hidden=(16,), activation="tanh"), centred).to(dtype) for _ in range(3)]
    return MixtureOfExperts(experts, [0.1, 0.6])


def test_moe_routes_each_time_to_its_expert():
    moe = make_moe()
    t = torch.tensor([1e-5, 0.05, 0.6, 0.99, 0.1, 0.3, 0.0999, 0.61, 1.0, 0.5, 0.1001, 0.7], dtype=torch.float64)
    x = torch.randn(len(t), 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    index = moe.expert_index(t)
    for i, ti in enumerate(t.tolist()):
        lo, hi = moe.time_range(int(index[i]))
        assert lo <= ti <= hi, (ti, int(index[i]))
        if ti not in (0.1, 0.6):  # interior points: exactly one expert covers them
            assert int(index[i]) == sum(ti > b for b in (0.1, 0.6))
    score, energy = moe.score(x, t), moe.energy(x, t)
    for k, expert in enumerate(moe.experts):
        mask = index == k
        assert mask.any()
        assert torch.equal(score[mask], expert.score(x[mask], t[mask]))
        assert torch.equal(energy[mask], expert.energy(x[mask], t[mask]))
        # and the other experts give something else (the comparison above is not vacuous)
        other = moe.experts[(k + 1) % 3]
        assert not torch.allclose(score[mask], other.score(x[mask], t[mask]))
    assert moe.time_range(0) == (0.0, 0.1) and moe.time_range(2) == (0.6, 1.0)


def test_moe_gradients_reach_only_the_routed_expert():
    moe = make_moe()
    x = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0.2, 0.3, 0.4, 0.5], dtype=torch.float64)  # all in expert 1
    loss = moe.score(x, t, create_graph=True).pow(2).sum()
    loss.backward()
    grads = [sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in e.parameters()) for e in moe.experts]
    assert grads[1] > 0 and grads[0] == 0 and grads[2] == 0


def test_moe_rejects_bad_boundaries():
    experts = [EnergyScore(MLP(1, 2, hidden=(4,)), False) for _ in range(3)]
    with pytest.raises(ValueError):
        MixtureOfExperts(experts, [0.6, 0.1])
    with pytest.raises(ValueError):
        MixtureOfExperts(experts, [0.5])


# saving and loading --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["mlp_scaled", "mlp_centred", "moe", "moe_centred"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_load_roundtrip_is_exact(case, dtype, tmp_path):
    model = build_model(MODEL_CASES[case], seed=11, dtype=dtype)
    path = model.save(tmp_path / "sub" / "model.safetensors")
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    loaded = DiffusionModel.load(path, dtype=dtype)
    assert loaded.spec == model.spec and loaded.sde == model.sde
    assert loaded.scale == model.scale and loaded.kT == model.kT
    assert type(loaded.score_model) is type(model.score_model)
    spec = model.spec
    pos = torch.randn(9, spec.n_particles, spec.dim, dtype=dtype, generator=torch.Generator().manual_seed(8))
    for t in (None, 0.05, 0.3, 0.9):  # every expert of a mixture
        assert torch.equal(loaded.forces(pos, t), model.forces(pos, t))
        assert torch.equal(loaded.energy(pos, t), model.energy(pos, t))
        x = model.to_diffusion(pos)
        assert torch.equal(loaded.score(x, t), model.score(x, t))


def test_load_missing_file(tmp_path):
    path = tmp_path / "nothing_here.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing_here.safetensors"):
        DiffusionModel.load(path)


def test_load_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="not a molscore model"):
        DiffusionModel.load(path)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other), metadata={"format": "something/else"})
    with pytest.raises(ValueError, match="something/else"):
        DiffusionModel.load(other)


def test_saved_metadata_is_plain_json(tmp_path):
    from safetensors import safe_open

    model = build_model(MODEL_CASES["moe"])
    path = model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["spec"])["mixture_boundaries"] == [0.1, 0.6]
    assert math.isclose(float(meta["scale"]), model.scale, rel_tol=0, abs_tol=0)


CHAIN = [[0, 1], [1, 2], [2, 3], [3, 4]]


def _mixture_model(network: str, options: dict):
    from molscore.diffusion.sde import VPSDE
    from molscore.models import DiffusionModel, ModelSpec, build_score_model

    spec = ModelSpec(n_particles=5, dim=3, network=network, network_options=options, mixture_boundaries=(0.1, 0.6),
                     bonds=CHAIN)  # fmt: skip
    return DiffusionModel(spec, build_score_model(spec, torch.float64), VPSDE(), scale=0.2, kT=2.5)


@pytest.mark.parametrize("t", [None, 0.3, 0.9])
def test_force_field_at_fixed_time_equals_forces_of_the_serving_expert(t):
    """force_field(t) routes t to its one expert once, and gives forces(pos, t) exactly, without a graph."""
    model = _mixture_model("bondgraph_mlp", {"hidden": [16, 16], "bonds": CHAIN})
    for expert in model.score_model.experts:  # distinct experts, so a wrong route shows
        torch.nn.init.normal_(expert.net.mlp[-1].weight)
    pos = 0.2 * torch.randn(6, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    forces = model.force_field(t)(pos)
    torch.testing.assert_close(forces, model.forces(pos, t), rtol=0, atol=0)
    assert not forces.requires_grad and forces.shape == pos.shape


@pytest.mark.slow
@pytest.mark.parametrize("network, options", [("bondgraph_mlp", {"hidden": [16, 16], "bonds": CHAIN}),
                                              ("gnn", {"hidden_irreps": "8x0e+2x0o+4x1o+2x1e"})])  # fmt: skip
def test_compiled_force_field_equals_eager_forces(tmp_path, network, options):
    """torch.compile of the whole force field (network, priors, gradient) changes speed, not results; saving
    stays plain (~20 s of compilation per network: slow)."""
    from molscore.models import DiffusionModel

    model = _mixture_model(network, options)
    pos = 0.2 * torch.randn(6, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eager = model.forces(pos)
    torch.testing.assert_close(model.force_field(compile=True)(pos), eager, rtol=1e-9, atol=1e-9)
    reloaded = DiffusionModel.load(model.save(tmp_path / "m.safetensors"), dtype=torch.float64)
    torch.testing.assert_close(reloaded.forces(pos), eager, rtol=0, atol=0)
