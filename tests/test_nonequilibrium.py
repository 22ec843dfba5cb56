"""Entropy production against exact results (SCIENCE.md section 6): exact formulas, estimators on solvable
systems and their equilibrium controls, a system defined only here, learned score and current, bad input."""

import math

import numpy as np
import pytest
import torch

from molscore.analysis.autocorrelation import block_average
from molscore.nonequilibrium import (
    DrivenSystem,
    bead_chain,
    divergence,
    drift_identity,
    driven_ring,
    linear_entropy_production,
    load_driven_system,
    path_estimate,
    rotational_ou,
    run_steady_state,
    score_based,
    tur_bound,
)
from molscore.nonequilibrium.learned_current import learned_tur_estimate
from molscore.nonequilibrium.learned_score import fit_steady_state_score, stationary_fp_residual

pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")


def test_exact_values_from_science_md():
    assert linear_entropy_production([[-1, -2], [2, -1]], [1, 1]) == pytest.approx(8.0, rel=1e-12)
    two = bead_chain([1.0, 10.0])
    assert two.exact == pytest.approx(1 * (1 - 10) ** 2 / (4 * 1 * 1 * 10), rel=1e-12)  # 2.025
    assert bead_chain([1.0, 3.25, 5.5, 7.75, 10.0]).exact == pytest.approx(0.62982, abs=5e-6)
    assert rotational_ou(k=2.0, alpha=3.0).exact == pytest.approx(2 * 9 / 2, rel=1e-12)
    free = driven_ring(force=1.5, barrier=0.0, gamma=2.0, kT=0.5)
    assert free.exact == pytest.approx(1.5**2 / (2.0 * 0.5), rel=1e-6)  # f^2 / (gamma kT)
    assert driven_ring(force=1.0, barrier=2.0).exact < driven_ring(force=1.0, barrier=0.0).exact
    assert bead_chain([2.0, 2.0, 2.0]).exact == pytest.approx(0.0, abs=1e-12)  # one temperature: equilibrium


def test_every_shipped_driven_system_loads_with_a_control():
    for name in ["rotational_ou", "bead_chain_2", "bead_chain_5", "driven_ring", "active_particles"]:
        system, run = load_driven_system(name)
        assert system.control is not None and run["replicas"] > 0
        x = system.initial[None].repeat(3, 1, 1)
        assert system.drift(x).shape == x.shape
    assert load_driven_system("active_particles", n_particles=64)[0].shape == (128, 2)


def test_divergence_methods_agree_on_a_linear_field():
    a = torch.tensor([[-1.0, 0.5, 0.2], [0.3, -2.0, 0.1], [0.0, 0.4, -0.5]])

    def field(x):
        return (x.flatten(1) @ a.T).view_as(x) + x**3

    x = torch.randn(5, 1, 3)
    expected = torch.trace(a) + (3 * x**2).flatten(1).sum(1)
    assert torch.allclose(divergence(field, x, "exact"), expected, atol=1e-10)
    assert torch.allclose(divergence(field, x, "finite_difference", step=1e-5), expected, atol=1e-6)
    assert torch.allclose(divergence(field, x, "exact", per_dof=True).flatten(1).sum(1), expected, atol=1e-10)
    hutch = divergence(field, x.repeat(2000, 1, 1), "hutchinson", n_probes=4).view(2000, 5).mean(0)
    assert torch.allclose(hutch, expected, atol=0.15)
    with pytest.raises(ValueError, match="choose from"):
        divergence(field, x, "magic")


@pytest.fixture(scope="module")
def ou_runs():
    """Rotational OU (exact sigma 8) and its control, 256 replicas x 10,000 steps each."""
    system = rotational_ou()
    return {
        name: (s, run_steady_state(s, 256, 1000, 10, progress=False))
        for name, s in [("driven", system), ("control", system.control)]
    }


def test_rotational_ou_estimators_match_exact_and_control_is_zero(ou_runs):
    system, run = ou_runs["driven"]
    exact_score = lambda x: -x  # noqa: E731  stationary density N(0, I / k) with k = 1
    estimates = [
        drift_identity(system.drift, system.diffusion, run.samples[::5]),
        path_estimate(run.path_increments, run.window_time),
        score_based(system.drift, system.diffusion, exact_score, run.samples[::5]),
    ]
    for e in estimates:
        assert abs(e.value - 8.0) < 0.05 * 8.0, e
        assert e.covers(8.0, n_sigma=4), e
    control, run0 = ou_runs["control"]
    for e in [
        drift_identity(control.drift, control.diffusion, run0.samples[::5]),
        path_estimate(run0.path_increments, run0.window_time),
    ]:
        assert e.covers(0.0, n_sigma=4), e
    # the score-based decomposition: the rotation dissipates equally in x and y
    per_dof = estimates[2].per_dof
    assert per_dof.shape == (1, 2) and torch.allclose(per_dof[0, 0], per_dof[0, 1], rtol=0.1)


def test_tur_bound_is_below_exact(ou_runs):
    system, run = ou_runs["driven"]
    learned, _ = learned_tur_estimate(run.samples, run.next_samples, run.dt, steps=60, progress=False)
    assert learned.value - 3 * learned.error <= 8.0
    assert learned.value > 0.5 * 8.0  # a learned current gets most of the way in the short-time limit
    # any fixed current gives a bound: the x-displacement has zero mean here, the path entropy a positive one
    window = tur_bound(run.path_increments, run.window_time)
    assert 0 < window.value <= 8.0 + 3 * window.error


def test_a_system_defined_only_here_needs_no_new_estimator_code():
    """Quartic well with a shear flow and anisotropic diffusion: no exact value, but the score-free identity
    and the path estimator (independent methods) agree, and switching the shear off gives zero."""

    def make(shear):
        def drift(x):
            u, v = x[..., 0], x[..., 1]
            return torch.stack([-(u**3) - u + shear * v, -(v**3) - 2 * v], dim=-1)

        return DrivenSystem(
            "sheared_quartic", drift, torch.tensor([[0.5, 2.0]]), torch.zeros(1, 2), timestep=1e-3, relaxation_time=1.0
        )

    for shear, zero in [(2.0, False), (0.0, True)]:
        system = make(shear)
        run = run_steady_state(system, 128, 1000, 10, seed=3, progress=False)
        di = drift_identity(system.drift, system.diffusion, run.samples[::5])
        path = path_estimate(run.path_increments, run.window_time)
        if zero:
            assert di.covers(0.0, 4) and path.covers(0.0, 4), (di, path)
        else:
            assert di.value > 10 * di.error and abs(di.value - path.value) < 4 * math.hypot(di.error, path.error), (di, path)


def test_learned_score_approaches_the_exact_score(ou_runs):
    system, run = ou_runs["driven"]
    score, log = fit_steady_state_score(system, run.samples[:500:5], steps=200, progress=False)
    x = run.samples[500::50].reshape(-1, 1, 2)
    with torch.no_grad():  # exact score: -x
        error = ((score(x) + x) ** 2).sum((1, 2)).mean() / (x**2).sum((1, 2)).mean()
    assert float(error) < 0.05 and math.isfinite(log["fp"]) and log["seconds"] > 0


@pytest.mark.slow
def test_learned_score_with_fp_residual_recovers_the_two_bead_chain():
    system = bead_chain([1.0, 10.0])
    values = {}
    for s in (system, system.control):
        run = run_steady_state(s, 128, 800, 10, progress=False)
        score, log = fit_steady_state_score(s, run.samples[:400:2], steps=400, progress=False)
        values[s is system] = score_based(s.drift, s.diffusion, score, run.samples[400::4])
        assert log["fp"] < 1e-2
    assert abs(values[True].value - 2.025) < 0.1 * 2.025, values[True]
    assert 0 <= values[False].value < 0.05 * 2.025, values[False]  # residual bias on the control, reported


def test_steady_state_run_resumes_exactly_from_its_checkpoint(tmp_path):
    system = driven_ring()
    full = run_steady_state(system, 4, 30, 5, burn_in=20, seed=7, progress=False)
    ckpt = tmp_path / "run.pt"
    run_steady_state(system, 4, 30, 5, burn_in=20, seed=7, checkpoint=ckpt, checkpoint_every=10, progress=False)
    state = torch.load(ckpt, weights_only=True)
    state["window"] = 10  # pretend it stopped after 10 windows: resume from there
    torch.save({**state, "x": full.samples[10], "step": 20 + 10 * 5}, ckpt)
    resumed = run_steady_state(system, 4, 30, 5, burn_in=20, seed=7, checkpoint=ckpt, progress=False)
    assert torch.equal(resumed.samples, full.samples)
    assert torch.allclose(resumed.path_increments, full.path_increments, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="settings"):
        run_steady_state(system, 4, 30, 5, burn_in=20, seed=8, checkpoint=ckpt, progress=False)


def test_block_average_accounts_for_correlation():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(2**14)
    mean, err = block_average(white)
    assert err == pytest.approx(1 / 2**7, rel=0.25)
    ar = np.zeros(2**14)
    for i in range(1, len(ar)):
        ar[i] = 0.95 * ar[i - 1] + rng.standard_normal()
    naive = ar.std() / np.sqrt(len(ar))
    assert block_average(ar)[1] > 3 * naive  # tau = (1 + 0.95) / (1 - 0.95) = 39: error ~ 6x naive


def test_bad_input_gets_clear_errors(tmp_path):
    system = rotational_ou()
    with pytest.raises(ValueError, match=r"\(T, B, N, d\)"):
        drift_identity(system.drift, system.diffusion, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        drift_identity(system.drift, system.diffusion, torch.full((5, 1, 2), float("nan")))
    with pytest.raises(ValueError, match="positive"):
        DrivenSystem("bad", system.drift, torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="broadcast"):
        score_based(system.drift, torch.ones(3, 3), lambda x: -x, torch.zeros(5, 1, 2))
    (tmp_path / "driven.yaml").write_text("model: rotational_ou\nparameters: {k: 1.0}\nsteps: 10\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_driven_system(tmp_path)
    (tmp_path / "driven.yaml").write_text("model: vortex\n")
    with pytest.raises(ValueError, match="choose from"):
        load_driven_system(tmp_path)
    (tmp_path / "driven.yaml").write_text("model: rotational_ou\nparameters: {spin: 1.0}\n")
    with pytest.raises(ValueError, match="bad parameters"):
        load_driven_system(tmp_path)
    with pytest.raises(FileNotFoundError, match="known driven systems"):
        load_driven_system("no_such_system")


def test_stationary_fp_residual_vanishes_for_the_exact_score_and_probes_are_unbiased():
    def make(n):
        rot = torch.tensor([[-1.0, -2.0], [2.0, -1.0]])
        return DrivenSystem(f"ou_{n}", lambda x: x @ rot.T, torch.ones(n, 2), torch.zeros(n, 2), relaxation_time=1.0)

    x = torch.randn(4000, 9, 2)
    exact = stationary_fp_residual(lambda y: -y, make(9), x)  # 18 DOF: two Rademacher probes
    assert exact.shape == (4000, 2) and torch.allclose(exact, torch.zeros_like(exact), atol=1e-10)
    wrong = stationary_fp_residual(lambda y: -0.5 * y, make(9), x)
    reference = stationary_fp_residual(lambda y: -0.5 * y, make(9), x, max_exact_dof=18)  # exact divergence
    assert reference.shape == (4000,)
    assert float(wrong.prod(1).mean()) == pytest.approx(float((reference**2).mean()), rel=0.05)


def test_study_tabulates_every_estimator_with_its_control(tmp_path, workflow_script):
    from molscore.nonequilibrium.study import StudySettings, markdown_table, study

    settings = StudySettings(replicas=16, windows=64, stride=5, score_steps=5, tur_steps=2, score_width=16)
    result = study(driven_ring(), settings, progress=False)
    assert set(result.estimates) == {"drift identity", "path", "score", "TUR", "score - control bias"}
    assert all(math.isfinite(e.value) and e.error >= 0 for e in [*result.estimates.values(), *result.control.values()])
    table = markdown_table([result])
    assert "driven_ring control" in table and f"{driven_ring().exact:.5g}" in table
    workflow = workflow_script("entropy_production.py")
    assert (
        workflow.main(
            ["--systems", "rotational_ou", "--quick", "--windows", "40", "--score-steps", "5", "--out", str(tmp_path)]
        )
        == 0
    )
    assert (tmp_path / "table.md").is_file() and (tmp_path / "rotational_ou.png").is_file()
