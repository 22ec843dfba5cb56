"""p(t) of the training times (molscore.train.time_sampling) and the inverse noise schedule it uses."""

import math

import pytest
import torch
from scipy.stats import kstest

from molscore.diffusion import VPSDE
from molscore.train.time_sampling import sample_times

SDE = VPSDE()


def test_time_of_sigma_inverts_sigma_from_t_min_to_one():
    t = torch.logspace(-5, 0, 50, dtype=torch.float64)
    assert torch.allclose(SDE.time_of_sigma(SDE.sigma(t)), t, rtol=1e-10, atol=0)


def test_log_sigma_times_are_log_uniform_in_sigma_between_the_bounds():
    gen = torch.Generator().manual_seed(0)
    t = sample_times(SDE, 20000, (SDE.t_min, 0.6), "log_sigma", 0.0, 0.01, gen, torch.float64)
    lo, hi = math.log(0.01), math.log(float(SDE.sigma(torch.tensor(0.6, dtype=torch.float64))))
    u = (SDE.sigma(t).log() - lo) / (hi - lo)
    assert u.min() >= -1e-9 and u.max() <= 1 + 1e-9
    assert kstest(u.numpy(), "uniform").pvalue > 1e-3
    # most samples where the force field lives: sigma < 0.3 (t below ~0.09) holds log(30) / log(sigma(0.6) / 0.01)
    expected = math.log(0.3 / 0.01) / (hi - lo)
    assert abs(float((SDE.sigma(t) < 0.3).double().mean()) - expected) < 0.02


def test_uniform_share_and_range():
    gen = torch.Generator().manual_seed(1)
    t = sample_times(SDE, 40000, (0.1, 0.6), "log_sigma", 0.25, 0.01, gen, torch.float64)
    assert t.min() >= 0.1 and t.max() <= 0.6
    plain = sample_times(SDE, 40000, (0.1, 0.6), "uniform", generator=torch.Generator().manual_seed(2))
    assert abs(float(plain.mean()) - 0.35) < 0.005 and kstest(((plain - 0.1) / 0.5).numpy(), "uniform").pvalue > 1e-3
    # with a quarter uniform, the mean lies between the log-uniform part's and the uniform one's
    only_log = sample_times(SDE, 40000, (0.1, 0.6), "log_sigma", 0.0, 0.01, torch.Generator().manual_seed(3))
    mixed_mean = 0.25 * 0.35 + 0.75 * float(only_log.mean())
    assert abs(float(t.mean()) - mixed_mean) < 0.005


def test_sigma_min_bounds_both_parts_from_below():
    """With log_sigma, no time (uniform share included) has sigma below sigma_min; sigma_min = 0 keeps the
    uniform share down to the stage's lower end."""
    gen = torch.Generator().manual_seed(4)
    t = sample_times(SDE, 40000, (SDE.t_min, 0.1), "log_sigma", 0.25, 0.1, gen, torch.float64)
    assert float(SDE.sigma(t).min()) >= 0.1 * (1 - 1e-9) and float(t.max()) <= 0.1
    free = sample_times(SDE, 40000, (SDE.t_min, 0.1), "log_sigma", 0.25, 0.0, gen, torch.float64)
    assert float((SDE.sigma(free) < 0.05).double().mean()) > 0.1
    above = sample_times(SDE, 1000, (0.1, 0.6), "log_sigma", 0.25, 0.1, gen, torch.float64)  # sigma(0.1) > 0.1
    assert float(above.min()) >= 0.1 and float((above < 0.15).double().mean()) > 0.05


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="time_sampling 'beta' unknown"):
        sample_times(SDE, 4, (0.0, 1.0), "beta")
    with pytest.raises(ValueError, match="uniform_time_fraction"):
        sample_times(SDE, 4, (0.0, 1.0), "log_sigma", 1.5)


def test_the_estimator_rejects_an_unknown_time_sampling_before_training():
    from molscore.models import ModelSpec
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    spec = ModelSpec(1, 2, centred=False)
    for key in ("time_sampling", "fp_time_sampling"):
        with pytest.raises(ValueError, match=f"train.{key} 'beta' unknown"):
            ScoreEstimator(spec, TrainConfig(**{key: "beta"}))
