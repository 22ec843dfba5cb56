"""ScoreEstimator: exact resume from checkpoints, a sanity check that training learns, and input validation."""

import math
import re

import pytest
import torch

from molscore.diffusion import VPSDE
from molscore.models import ModelSpec
from molscore.models.analytic import GaussianMixtureScore
from molscore.potentials import GaussianMixture
from molscore.system import load_system
from molscore.train.checkpoint import load_checkpoint
from molscore.train.estimator import ScoreEstimator, TrainConfig
from molscore.train.losses import loss_terms

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(Exception):
    pass


def stop_at(step: int):
    def callback(estimator):
        if estimator.step == step:
            raise Interrupt

    return callback


def toy_data(n=512, seed=0, n_particles=1, dim=2):
    g = torch.Generator().manual_seed(seed)
    centre = torch.linspace(-1.0, 1.0, n_particles * dim).reshape(n_particles, dim)
    return centre + 0.3 * torch.randn(n, n_particles, dim, generator=g)


RESUME_CASES = {
    # plain energy model with the FP term, interrupted mid-run
    "energy_fp": dict(spec=dict(n_particles=1, dim=2, centred=False), fp_weight=1e-3, stop=20, fractions=[1.0, 1.0, 4.0]),
    # centred multi-particle energy model with FP on a fraction of the batch
    "energy_fp_centred": dict(
        spec=dict(n_particles=3, dim=2, centred=True), fp_weight=1e-3, stop=20, fractions=[1.0, 1.0, 4.0]
    ),
    # mixture of experts, stages [0, 7), [7, 14), [14, 40): interrupted in the middle expert, resumed across
    # the boundary at 14 (a new optimizer there) into the FP-trained small-t expert
    "moe_fp_cross_stage": dict(
        spec=dict(n_particles=1, dim=2, centred=False, mixture_boundaries=[0.1, 0.6]),
        fp_weight=1e-3,
        stop=10,
        fractions=[1.0, 1.0, 4.0],
    ),
    # mixture, stages [0, 10), [10, 20), [20, 40): the checkpoint at 20 holds the optimizer of stage 10
    "moe_stop_on_boundary": dict(
        spec=dict(n_particles=1, dim=2, centred=False, mixture_boundaries=[0.1, 0.6]),
        fp_weight=1e-3,
        stop=20,
        fractions=[1.0, 1.0, 2.0],
    ),
    # mixture, interrupted at 25: resumes from the checkpoint at 20 and replays steps 20-25
    "moe_replay": dict(
        spec=dict(n_particles=1, dim=2, centred=False, mixture_boundaries=[0.1, 0.6]),
        fp_weight=0.0,
        stop=25,
        fractions=[1.0, 1.0, 4.0],
    ),
}


def make_estimator(case):
    spec = ModelSpec(network_options={"hidden": [16, 16]}, **case["spec"])
    config = TrainConfig(
        steps=40,
        batch_size=32,
        learning_rate=1e-3,
        checkpoint_every=10,
        validation_every=10,
        fp_weight=case["fp_weight"],
        fp_fraction=0.5,
        expert_step_fractions=case["fractions"],
        seed=7,
    )
    return ScoreEstimator(spec, config)


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_resume_is_bit_identical(name, tmp_path):
    case = RESUME_CASES[name]
    spec = case["spec"]
    data = toy_data(n_particles=spec["n_particles"], dim=spec["dim"])
    val = toy_data(64, seed=1, n_particles=spec["n_particles"], dim=spec["dim"])

    full = make_estimator(case).fit(data, 2.5, validation_data=val, progress=False)
    assert full.step == 40

    ckpt_dir = tmp_path / "run"
    first = make_estimator(case)
    with pytest.raises(Interrupt):
        first.fit(data, 2.5, validation_data=val, checkpoint_dir=ckpt_dir, progress=False, callback=stop_at(case["stop"]))
    saved = load_checkpoint(ckpt_dir / "checkpoint.pt")
    assert saved["step"] == 10 * (case["stop"] // 10)  # the last multiple of checkpoint_every

    resumed = make_estimator(case)
    steps_seen = []
    resumed.fit(
        data,
        2.5,
        validation_data=val,
        checkpoint_dir=ckpt_dir,
        progress=False,
        callback=lambda est: steps_seen.append(est.step),
    )
    assert steps_seen[0] == saved["step"] + 1 and steps_seen[-1] == 40  # it resumed, not restarted

    for key, value in full.score_model.state_dict().items():
        assert torch.equal(resumed.score_model.state_dict()[key], value), key
    assert full.ema.updates == resumed.ema.updates
    for key, value in full.ema.shadow.items():
        assert torch.equal(resumed.ema.shadow[key], value), key
    assert resumed.history == full.history
    if case["fp_weight"] > 0:
        assert any(v != 0 for v in full.history["fp"])
    assert load_checkpoint(ckpt_dir / "checkpoint.pt")["step"] == 40
    # and the fetched models agree
    pos = toy_data(8, seed=2, n_particles=spec["n_particles"], dim=spec["dim"])
    assert torch.equal(full.fetch_model().forces(pos), resumed.fetch_model().forces(pos))


def test_resume_refuses_another_spec(tmp_path):
    case = RESUME_CASES["energy_fp"]
    est = make_estimator(case)
    with pytest.raises(Interrupt):
        est.fit(toy_data(), 1.0, checkpoint_dir=tmp_path, progress=False, callback=stop_at(10))
    other = ScoreEstimator(
        ModelSpec(1, 2, centred=False, network_options={"hidden": [8]}), TrainConfig(steps=40, checkpoint_every=10)
    )
    with pytest.raises(ValueError, match="another model spec"):
        other.fit(toy_data(), 1.0, checkpoint_dir=tmp_path, progress=False)


# does it learn? -----------------------------------------------------------------------------------------
def test_training_lowers_validation_loss_towards_the_optimum():
    """2-D Gaussian data: 300 steps close most of the gap between the untrained and the exact-score DSM loss."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([[1.0, -0.5]]), 0.3
    data = mean + std * torch.randn(4000, 1, 2, generator=g)
    val = mean + std * torch.randn(1000, 1, 2, generator=g)
    spec = ModelSpec(1, 2, centred=False, network_options={"hidden": [32, 32]})

    def config(steps):
        return TrainConfig(
            steps=steps, batch_size=128, learning_rate=3e-3, final_learning_rate=1e-4, validation_every=100, seed=1
        )

    untrained = ScoreEstimator(spec, config(0)).fit(data, 1.0, progress=False)
    x_val = val / untrained.scale
    loss_untrained = untrained.validation_loss(x_val)
    trained = ScoreEstimator(spec, config(300)).fit(data, 1.0, validation_data=val, progress=False)
    assert trained.history["val_step"] == [100, 200, 300]
    assert len(trained.history["loss"]) == 300 and all(math.isfinite(v) for v in trained.history["loss"])
    assert trained.history["fp"] == [0.0] * 300
    loss_trained = trained.history["val"][-1]
    assert math.isclose(loss_trained, trained.validation_loss(x_val), rel_tol=1e-6)

    # the same fixed-grid DSM loss of the exact score: the minimum any model can reach (up to sampling noise)
    sde = VPSDE()
    exact = GaussianMixtureScore(GaussianMixture([1.0], (mean / trained.scale)[None], [std / trained.scale]), sde)
    x64 = x_val.double()
    gen = torch.Generator().manual_seed(12345)
    grid = torch.linspace(sde.t_min, 1.0, 16).tolist()
    loss_exact = 0.0
    for t_value in grid:
        t = torch.full((len(x64),), t_value, dtype=torch.float64)
        eps = sde.noise(x64.shape, False, gen, torch.float64)
        loss_exact += float(loss_terms(exact, sde, x64, t, eps, 2, False).dsm.mean()) / len(grid)

    assert loss_trained < loss_untrained
    # closes at least 3/4 of the gap (measured: ~95% in 300 steps; an untrained or broken fit closes none)
    assert loss_trained - loss_exact < 0.25 * (loss_untrained - loss_exact), (loss_untrained, loss_trained, loss_exact)


def test_fp_history_is_recorded():
    spec = ModelSpec(1, 2, centred=False, network_options={"hidden": [16, 16]})
    est = ScoreEstimator(spec, TrainConfig(steps=30, batch_size=32, fp_weight=1e-3, fp_fraction=0.25))
    est.fit(toy_data(), 1.0, progress=False)
    fp = est.history["fp"]
    assert len(fp) == 30 and all(math.isfinite(v) for v in fp) and any(v != 0 for v in fp)
    # loss = dsm + fp_weight * fp
    for loss, dsm, f in zip(est.history["loss"], est.history["dsm"], fp, strict=True):
        assert math.isclose(loss, dsm + 1e-3 * f, rel_tol=1e-5, abs_tol=1e-7)


def test_scale_is_data_rms_and_forces_are_in_physical_units():
    data = toy_data(256, n_particles=3, dim=2)
    spec = ModelSpec(3, 2, centred=True, network_options={"hidden": [8]})
    est = ScoreEstimator(spec, TrainConfig(steps=2, batch_size=8)).fit(data, 2.0, progress=False)
    centred = data - data.mean(1, keepdim=True)
    assert math.isclose(est.scale, float(centred.pow(2).mean().sqrt()), rel_tol=1e-6)
    model = est.fetch_model()
    assert model.kT == 2.0 and model.scale == est.scale and model.spec == spec


# bad inputs -----------------------------------------------------------------------------------------------
def test_training_data_with_nan():
    data = toy_data(64)
    data[5, 0, 1] = float("nan")
    est = ScoreEstimator(ModelSpec(1, 2, centred=False), TrainConfig(steps=1))
    with pytest.raises(ValueError, match="NaN"):
        est.fit(data, 1.0, progress=False)
    val = toy_data(8)
    val[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        est.fit(toy_data(64), 1.0, validation_data=val, progress=False)


@pytest.mark.parametrize("shape", [(10, 3, 2), (10, 1, 3), (10, 2)])
def test_training_data_with_wrong_shape(shape):
    est = ScoreEstimator(ModelSpec(1, 2, centred=False), TrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"\(" + ", ".join(map(str, shape)) + r"\)"):
        est.fit(torch.zeros(shape), 1.0, progress=False)


def test_fetch_model_before_fit():
    with pytest.raises(RuntimeError, match="fit"):
        ScoreEstimator(ModelSpec(1, 2, centred=False)).fetch_model()


def test_mixture_needs_one_fraction_per_expert():
    spec = ModelSpec(1, 2, centred=False, mixture_boundaries=[0.1, 0.6])
    with pytest.raises(ValueError, match="expert_step_fractions"):
        ScoreEstimator(spec, TrainConfig(expert_step_fractions=[1.0, 1.0]))


@pytest.mark.parametrize("warm_start", [True, False])
def test_each_expert_starts_from_the_trained_expert_above_it(warm_start):
    """With expert_warm_start, the small-t expert's first step starts from the mid expert's EMA weights (and its
    EMA shadow too); without it, from its own untouched initialisation."""
    spec = ModelSpec(1, 2, centred=False, mixture_boundaries=[0.1, 0.6])
    config = TrainConfig(steps=30, batch_size=16, expert_warm_start=warm_start, validation_every=10**9, seed=3)
    estimator = ScoreEstimator(spec, config)
    initial = {k: v.clone() for k, v in estimator.score_model.experts[0].state_dict().items()}
    seen = {}

    def record(est):  # called after each step; stages [0, 5), [5, 10) (mid expert), [10, 30) (small-t expert)
        if est.step == 10:
            n = len("experts.1.")
            seen["mid_ema"] = {k[n:]: v.clone() for k, v in est.ema.shadow.items() if k.startswith("experts.1.")}
        if est.step == 11:
            seen["small_after_first_step"] = {k: v.clone() for k, v in est.score_model.experts[0].state_dict().items()}

    est = estimator.fit(torch.randn(256, 1, 2), 1.0, progress=False, callback=record)
    mid, small = seen["mid_ema"], {k: v for k, v in est.score_model.experts[0].state_dict().items()}
    start = mid if warm_start else initial
    for key, value in seen["small_after_first_step"].items():  # one AdamW step moves a weight by <= ~lr
        assert (value - start[key]).abs().max() < 5 * config.learning_rate, key
    assert any(not torch.equal(small[k], initial[k]) for k in small)
    other = initial if warm_start else mid
    assert any((seen["small_after_first_step"][k] - other[k]).abs().max() > 1e-2 for k in other)


def test_system_check_positions():
    system = load_system("gaussian_mixture")
    ok = system.check_positions(torch.zeros(4, 1, 2))
    assert ok.shape == (4, 1, 2)
    assert system.check_positions(torch.zeros(1, 2)).shape == (1, 1, 2)  # one frame (N, d)
    bad = torch.zeros(6, 1, 2)
    bad[3, 0, 0] = float("nan")
    bad[5, 0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite coordinates in 2 frame\(s\), first \[3, 5\]"):
        system.check_positions(bad)
    # a 2-D array is one frame (N, d): reported as (1, N, d)
    for shape, shown in [
        ((4, 2, 2), "(4, 2, 2)"),
        ((4, 1, 3), "(4, 1, 3)"),
        ((4, 2), "(1, 4, 2)"),
        ((2,), "(2,)"),
        ((2, 4, 1, 2), "(2, 4, 1, 2)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(shown) + ".*needs \\(B, 1, 2\\)"):
            system.check_positions(torch.zeros(shape))


def test_load_unknown_system_lists_known_ones():
    with pytest.raises(FileNotFoundError) as info:
        load_system("no_such_system")
    message = str(info.value)
    assert "no_such_system" in message
    for known in ("double_well", "gaussian_mixture", "harmonic", "mueller_brown"):
        assert known in message


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable molscore checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_wall_clock_budget_stops_checkpoints_and_resumes_bit_identically(tmp_path, monkeypatch):
    case = RESUME_CASES["energy_fp"]
    data, val = toy_data(), toy_data(64, seed=1)
    full = make_estimator(case).fit(data, 2.5, validation_data=val, progress=False)

    clock = {"now": 0.0}  # a fake clock that advances one second per call: 12 s of budget = a few steps
    monkeypatch.setattr(
        "molscore.train.estimator.time.monotonic", lambda: clock.__setitem__("now", clock["now"] + 1) or clock["now"]
    )
    budgeted = make_estimator(case)
    budgeted.config.max_minutes = 0.2
    budgeted.fit(data, 2.5, validation_data=val, checkpoint_dir=tmp_path, progress=False)
    assert budgeted.stopped_early and 0 < budgeted.step < 40
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == budgeted.step  # checkpointed where it stopped
    assert budgeted.train_seconds > 0

    resumed = make_estimator(case)  # no budget: continues to the planned steps
    resumed.fit(data, 2.5, validation_data=val, checkpoint_dir=tmp_path, progress=False)
    assert not resumed.stopped_early and resumed.step == 40
    assert resumed.train_seconds >= budgeted.train_seconds  # summed over both calls
    for key, value in full.score_model.state_dict().items():
        assert torch.equal(resumed.score_model.state_dict()[key], value), key


def test_steps_fitted_to_the_budget_plan_a_schedule_that_ends_in_time(tmp_path, monkeypatch):
    """On a fake clock each timed pass takes 0.5 s, but a real step costs 1 s (two clock reads of 0.5 s each:
    the loop around the network doubles it). The micro-timed plan would overrun; the re-plans from the measured
    loop time fit the schedule to the 2-minute budget: training ends in time, uses most of it, and the mixture's
    three experts keep their shares. The plan survives a resume."""
    case = RESUME_CASES["moe_fp_cross_stage"]
    data = toy_data()
    clock = {"now": 0.0}

    def perf_counter():  # every read advances the fake time
        clock["now"] += 0.5
        return clock["now"]

    monkeypatch.setattr("molscore.train.estimator.time.perf_counter", perf_counter)
    monkeypatch.setattr("molscore.train.estimator.time.monotonic", lambda: clock["now"])
    est = make_estimator(case)
    est.config.steps, est.config.max_minutes, est.config.fit_steps_to_budget = 1000, 2.0, True
    est.config.validation_every = est.config.checkpoint_every = 10**6
    est.fit(data, 2.5, checkpoint_dir=tmp_path, progress=False)
    planner_seconds = 3 * 6 * 1.0  # three stages, six timed passes each
    fits = (0.95 * 120 - planner_seconds) / 1.0
    assert not est.stopped_early and est.step == est.planned_steps and clock["now"] <= 0.95 * 120 + 2
    assert 0.85 * fits <= est.planned_steps <= fits + 1
    assert [s["stop"] for s in est._stages][-1] == est.planned_steps and len(est._stages) == 3
    again = make_estimator(case)
    again.config.steps = 1000
    again.fit(data, 2.5, checkpoint_dir=tmp_path, progress=False)
    assert again.planned_steps == est.planned_steps and again.step == est.step  # restored: nothing left to do


def test_fp_term_is_grouped_in_time_and_weighted_by_sigma_power(monkeypatch):
    """fp_group = 4: the FP samples come in fours sharing t (drawn from fp_time_sampling); fp_sigma_power = 4:
    the FP term is the mean of sigma(t)^4 times each sample's (centred) residual product."""
    from molscore.train.losses import loss_terms

    case = RESUME_CASES["energy_fp"]
    est = make_estimator(case)
    est.config.fp_group, est.config.fp_sigma_power, est.config.fp_time_sampling = 4, 4.0, "log_sigma"
    data = est._prepare(toy_data())
    est.scale = float(data.pow(2).mean().sqrt())
    x = data / est.scale
    stage, module = est._stages[0], est._trained_module(est._stages[0])
    seen = {}

    def spy(*args, **kwargs):
        seen["t"], seen["terms"] = args[3], loss_terms(*args, **kwargs)
        return seen["terms"]

    monkeypatch.setattr("molscore.train.estimator.loss_terms", spy)
    _, _, fp = est._loss(module, stage, x, torch.Generator().manual_seed(0))
    m = len(seen["terms"].fp)
    assert m == 16  # round(0.5 * 32 / 4) groups of 4
    groups = seen["t"][:m].view(-1, 4)
    assert torch.all(groups == groups[:, :1]) and len(groups[:, 0].unique()) == 4
    expected = (seen["terms"].fp * est.sde.sigma(seen["t"][:m]) ** 4).mean()
    assert torch.allclose(fp, expected) and not torch.allclose(fp, seen["terms"].fp.mean())
