"""Start probe: continuations of path starts with the noise, the velocities or the off-CV velocities redrawn."""

import math

import numpy as np
import pytest
import torch

from molscore.dynamics import SeededNoise
from molscore.paths import fixed_length_paths, load_states, propagate
from molscore.paths.path_dynamics import maxwell_boltzmann
from molscore.paths.start_probe import end_probability, redraw_off_cv


def test_off_cv_redraw_keeps_the_cv_rates_and_is_thermal_elsewhere():
    torch.manual_seed(0)
    masses, kT, n = torch.tensor([1.0, 12.0, 16.0]), 2.5, 4000
    cvs = lambda x: torch.stack([(x[:, 0] - x[:, 1]).norm(dim=-1), x[:, 2, 0] * x[:, 1, 2]], 1)  # noqa: E731
    x = torch.randn(n, 3, 3, dtype=torch.float64)
    v_kept = torch.randn_like(x) * torch.sqrt(kT / masses)[:, None]
    fresh = maxwell_boltzmann(masses.double(), kT, x.shape, SeededNoise(1), step=0)
    v = redraw_off_cv(x, v_kept, fresh, masses.double(), cvs)

    def rates(vel):
        xr = x.clone().requires_grad_(True)
        return torch.autograd.functional.jvp(cvs, xr, vel)[1]

    assert torch.allclose(rates(v), rates(v_kept), atol=1e-10)
    # with zero kept velocities the result is Maxwell-Boltzmann on the 9 - 2 off-CV degrees of freedom
    v0 = redraw_off_cv(x, torch.zeros_like(x), fresh, masses.double(), cvs)
    kinetic = 0.5 * (masses.double()[None, :, None] * v0**2).sum((1, 2)) / kT
    assert abs(float(kinetic.mean()) - 3.5) < 4 * math.sqrt(3.5 / n), float(kinetic.mean())
    assert rates(v0).abs().max() < 1e-10


def test_end_probability_modes_on_mueller_brown(mueller_brown_langevin):
    system, term, a, b = mueller_brown_langevin
    cvs, _ = load_states(system)
    dt, n_steps = system.settings["timestep"], 100
    starts = system.reference_samples(20000, seed=3)
    paths, _ = fixed_length_paths(term, starts, a, b, n_steps, dt, 8, batch_size=4096, progress=False)
    x0, v0 = paths.positions[0], paths.velocities[0]
    shots = 400
    p = {m: end_probability(term, x0, v0, b, cvs, n_steps, dt, shots, mode=m, seed=5) for m in ("noise", "velocities")}
    # fresh velocities: an independent estimate by plain propagation from Maxwell-Boltzmann velocities
    x = x0.repeat_interleave(shots, 0)
    v = maxwell_boltzmann(term.masses, term.kT, x.shape, SeededNoise(9), step=0)
    ends = propagate(term, x, v, n_steps, dt, SeededNoise(10)).positions[-1]
    direct = b.contains(cvs(ends)).double().reshape(-1, shots).mean(1).numpy()
    se = np.sqrt((p["velocities"] * (1 - p["velocities"]) + direct * (1 - direct)) / shots) + 1e-3
    assert (np.abs(p["velocities"] - direct) < 4 * se).all(), (p["velocities"], direct)
    # the CVs of Mueller-Brown are the coordinates: off-CV redrawing keeps every velocity, as the "noise" mode
    assert np.allclose(end_probability(term, x0, v0, b, cvs, n_steps, dt, shots, mode="off-cv", seed=5), p["noise"])
    # a start deep in B stays there for one step in every mode
    inside = torch.as_tensor(b.centre, dtype=torch.float64).reshape(1, 1, 2)
    for mode in ("noise", "velocities", "off-cv"):
        assert end_probability(term, inside, torch.zeros_like(inside), b, cvs, 1, dt, 4, mode=mode)[0] == 1.0


def test_end_probability_rejects_bad_input(mueller_brown_langevin):
    system, term, a, b = mueller_brown_langevin
    cvs, _ = load_states(system)
    x = torch.zeros(2, 1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode must be"):
        end_probability(term, x, x, b, cvs, 10, 1e-3, mode="positions")
    with pytest.raises(ValueError, match="must both be"):
        end_probability(term, x, x[:, :, :1], b, cvs, 10, 1e-3)
    with pytest.raises(ValueError, match="NaN"):
        end_probability(term, x, torch.full_like(x, math.nan), b, cvs, 10, 1e-3)
