"""Entropy production of overdamped dynamics in a learned force field (molscore.nonequilibrium.learned_forcefield).

Exact check: one particle in F = -k x + alpha z x x (a rotation about z) is a 3-D rotational OU process with
drift b = D F / kT, so sigma = 2 D alpha^2 / (k kT) exactly (SCIENCE.md section 6, rescaled). Model checks: a small
untrained energy model (s = -grad E) must give sigma = 0 within errors and a Jacobian asymmetry at rounding level,
whatever its random weights; the direct-score model built from the same kind of network must give sigma clearly
> 0, with the drift identity and the path estimator agreeing. Everything in float64.
"""

import math

import pytest
import torch

from molscore.diffusion import VPSDE
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.nonequilibrium import drift_identity, path_estimate, run_steady_state
from molscore.nonequilibrium.learned_forcefield import (
    _frame_terms,
    drift_stiffness,
    einstein_diffusion,
    force_jacobian,
    forcefield_entropy_production,
    jacobian_asymmetry,
    learned_force_system,
    model_forces,
    model_prior_energy,
)

pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")

K, ALPHA, KT, D = 2.0, 3.0, 1.5, 0.5  # rotational field: sigma = 2 D alpha^2 / (k kT) = 3.0


def rotational_force(x):
    """F = -k x + alpha (z x x) for x (B, 1, 3)."""
    rot = torch.stack([-x[..., 1], x[..., 0], torch.zeros_like(x[..., 2])], -1)
    return -K * x + ALPHA * rot


def test_einstein_diffusion_and_default_timestep():
    # kT / (m gamma): 2.494 kJ/mol / (12.011 amu * 1/ps) = 0.2077 nm^2/ps
    assert einstein_diffusion(2.494338785, [12.011], 1.0).item() == pytest.approx(0.20767, rel=1e-4)
    with pytest.raises(ValueError, match="positive masses"):
        einstein_diffusion(1.0, [0.0])
    system = learned_force_system(rotational_force, KT, 1, torch.zeros(1, 3), diffusion=D, accuracy=0.05)
    # drift Jacobian D/kT (-k I + alpha R): |eigenvalues| = D/kT |-k +- i alpha| (and D k / kT along z)
    assert system.parameters["stiffness"] == pytest.approx(D / KT * math.hypot(K, ALPHA), rel=1e-12)
    assert system.timestep == pytest.approx(0.05 / system.parameters["stiffness"], rel=1e-12)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        learned_force_system(rotational_force, KT, 2, torch.zeros(1, 3))


def test_rotational_force_field_gives_the_exact_entropy_production():
    exact = 2 * D * ALPHA**2 / (K * KT)
    system = learned_force_system(rotational_force, KT, 1, torch.zeros(1, 3), diffusion=D, timestep=2e-3)
    run = run_steady_state(system, n_replicas=64, n_windows=200, stride=20, burn_in=2000, progress=False)
    path = path_estimate(run.path_increments, run.window_time)
    identity = drift_identity(system.drift, system.diffusion, run.samples[::4])
    for estimate in (path, identity):  # dt = 2e-3 against relaxation 1/(D k/kT) = 1.5: bias ~ 0.1%
        assert estimate.covers(exact, 4.0), (estimate, exact)
        assert estimate.error < 0.1 * exact
    # the Jacobian's antisymmetric part: ||J - J^T|| / ||J|| = 2 sqrt(2) alpha / sqrt(3 k^2 + 2 alpha^2)
    ratio, _ = jacobian_asymmetry(force_jacobian(rotational_force, run.samples[-1]))
    assert ratio == pytest.approx(2 * math.sqrt(2) * ALPHA / math.sqrt(3 * K**2 + 2 * ALPHA**2), rel=1e-12)


def test_plain_drift_identity_of_a_conservative_field_is_biased_by_half_dt_trace_a_squared():
    """Euler-Maruyama's stationary density is off by O(dt): for a gradient drift the drift identity gives
    dt / 2 E[tr A^2] + O(dt^2) instead of 0 (what ``em_bias`` reports). Anharmonic: F = -(1 + |x|^2) x, D = kT = 1."""

    def quartic(x):
        return -(1 + (x * x).sum(-1, keepdim=True)) * x

    dt = 0.04
    system = learned_force_system(quartic, 1.0, 1, torch.zeros(1, 3), diffusion=1.0, timestep=dt)
    run = run_steady_state(system, n_replicas=500, n_windows=100, stride=5, burn_in=300, progress=False)
    identity = drift_identity(system.drift, system.diffusion, run.samples)
    frames = run.samples.reshape(-1, 1, 3)
    predicted = dt / 2 * _frame_terms(quartic, 1.0, system.diffusion, frames)["trace_a2"].mean().item()
    assert identity.value > 8 * identity.error  # the bias is real at this dt ...
    assert abs(identity.value - predicted) < 0.15 * predicted  # ... and first order in dt (O(dt^2) ~ 10% here)


def small_model(parameterisation: str, seed: int) -> DiffusionModel:
    """An untrained 4-bead MLP model with a harmonic bond prior (chain 0-1-2-3, r0 = 0.15 nm, s = 0.02 nm)."""
    torch.manual_seed(seed)
    spec = ModelSpec(4, 3, True, parameterisation, "mlp", {"hidden": [32, 32], "activation": "tanh"},
                     bonds=[[0, 1], [1, 2], [2, 3]])  # fmt: skip
    score_model = build_score_model(spec, torch.float64)
    scale = 0.1  # nm: diffusion coordinates are pos / scale
    score_model.prior.priors[0].r0.fill_(0.15 / scale)
    score_model.prior.priors[0].var.fill_((0.02 / scale) ** 2)
    with torch.no_grad():  # a stronger (and for the score model clearly non-conservative) network part
        for p in score_model.net.parameters():
            p.mul_(4.0)
    return DiffusionModel(spec, score_model, VPSDE(), scale=scale, kT=2.5)


def start_frames(n: int) -> torch.Tensor:
    """(n, 4, 3) nm: zig-zag chains with bonds near 0.15 nm, randomly rotated."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0], [0.35, 0.14, 0.02]])
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))
    return (base - base.mean(0)) @ q + 0.005 * torch.randn(n, 4, 3, generator=g)


def test_energy_model_jacobian_is_symmetric_and_score_model_is_not():
    pos = start_frames(16)
    energy, score = (model_forces(small_model(p, 1)) for p in ("energy", "score"))
    ratio_energy, _ = jacobian_asymmetry(force_jacobian(energy, pos))
    ratio_score, err = jacobian_asymmetry(force_jacobian(score, pos))
    assert ratio_energy < 1e-10
    assert ratio_score > 1e-3 and ratio_score > 10 * err
    # forces of the model's own API, and the per-frame drift identity of the library
    model = small_model("score", 1)
    torch.testing.assert_close(model_forces(model)(pos), model.forces(pos), rtol=1e-12, atol=1e-12)
    system = learned_force_system(model_forces(model), model.kT, 4, pos[0])
    terms = _frame_terms(model_forces(model), model.kT, system.diffusion, pos)
    library = drift_identity(system.drift, system.diffusion, pos)
    assert terms["integrand"].mean().item() == pytest.approx(library.value, rel=1e-10)
    assert drift_stiffness(force_jacobian(energy, pos), system.diffusion, model.kT) > 0


def test_control_variate_with_the_models_own_energy_cancels_exactly():
    model = small_model("energy", 2)
    pos = start_frames(8)
    system = learned_force_system(model_forces(model), model.kT, 4, pos[0])

    def phi(x):
        return -model.energy(x) / model.kT

    terms = _frame_terms(model_forces(model), model.kT, system.diffusion, pos, phi)
    # b^T D^-1 b + div b = L phi frame by frame for b = D grad phi
    torch.testing.assert_close(terms["integrand"], terms["control"], rtol=1e-9, atol=1e-9 * terms["integrand"].abs().max())
    assert model_prior_energy(model) is not None


def test_energy_model_has_zero_entropy_production_and_the_score_model_does_not():
    pos = start_frames(32)
    results = {
        p: forcefield_entropy_production(
            small_model(p, 3), None, pos, n_windows=150, stride=20, accuracy=0.1, identity_windows=30, equilibrate_steps=200
        )  # fmt: skip
        for p in ("energy", "score")
    }
    energy, score = results["energy"], results["score"]
    assert energy.asymmetry < 1e-10 and score.asymmetry > 1e-3
    for est in (energy.path, energy.drift_identity_controlled, energy.path_controlled):
        assert abs(est.value) < 4 * est.error, est
    # the plain drift identity carries Euler-Maruyama's bias dt/2 E[tr A^2] (about one standard error here)
    assert abs(energy.drift_identity.value - energy.em_bias) < 4 * energy.drift_identity.error, energy
    for est in (score.drift_identity_controlled, score.path_controlled, score.path):
        assert est.value > 5 * est.error, est
    a, b = score.drift_identity_controlled, score.path_controlled
    assert abs(a.value - b.value) < 4 * math.hypot(a.error, b.error), (a, b)
    assert score.n_molecules == 32 and score.path_rates.shape == (150,)
