"""Committor by shooting, the transition-state ensemble, and path-density figures.

Exact checks on a symmetric double well (frames in A give 0, in B 1, the barrier top 1/2 by symmetry) and the
overdamped committor formula at strong friction; on Mueller-Brown, p_B rises along transition paths and the
transition-state frames re-estimated with fresh seeds are consistent with 1/2. Z = 4 standard errors.
"""

import math

import numpy as np
import pytest
import torch

from molscore.paths import CollectiveVariables, ForceFieldLangevin, Region, fixed_length_paths
from molscore.paths.committor import committor, transition_segment, transition_state_ensemble
from molscore.paths.plots import path_density, plot_path_density, plot_path_lengths
from molscore.potentials import DoubleWell

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")
Z = 4.0


@pytest.fixture(scope="module")
def double_well():
    """DoubleWell (barrier 1 kT) at strong friction; A: x < -0.7, B: x > 0.7 (slabs by the x coordinate)."""
    cvs = CollectiveVariables({"x": {"coordinate": [0, 0]}})
    a = Region.from_spec("A", {"x": -1.0, "radius": 0.3}, cvs)
    b = Region.from_spec("B", {"x": 1.0, "radius": 0.3}, cvs)
    kT = 5.0
    term = ForceFieldLangevin(DoubleWell(barrier=5.0), torch.ones(1, dtype=torch.float64), kT, friction=50.0)
    return term, a, b, kT


def _frames(xs) -> torch.Tensor:
    xs = torch.as_tensor(xs, dtype=torch.float64)
    return torch.stack([xs, torch.zeros_like(xs)], -1)[:, None, :]


def test_committor_on_a_symmetric_double_well(double_well):
    term, a, b, kT = double_well
    term.evaluations = 0
    est = committor(term, _frames([-1.0, 1.0, 0.0, 0.3, -0.3]), a, b, 0.005, n_shots=160, max_steps=4000, seed=1)
    # in A or B: 0 or 1 by definition, no shots
    assert est.p_b[0] == 0.0 and est.p_b[1] == 1.0 and est.error[:2].tolist() == [0.0, 0.0]
    assert est.n_a[:2].sum() + est.n_b[:2].sum() == 0 and est.evaluations == term.evaluations > 0
    assert (est.n_undecided == 0).all() and (est.n_decided[2:] == 160).all()
    # the barrier top: 1/2 exactly, by the x -> -x symmetry of the potential and of the velocities
    assert abs(est.p_b[2] - 0.5) < Z * math.sqrt(0.25 / 160)
    # +-0.3: the overdamped formula p_B(x) = int_a^x e^{U/kT} / int_a^b e^{U/kT} (inertia shifts it by a few %)
    g = np.linspace(-0.7, 0.7, 20001)
    f = np.cumsum(np.exp(5.0 * (g**2 - 1) ** 2 / kT))
    exact = np.interp([0.3, -0.3], g, f / f[-1])
    assert (np.abs(est.p_b[3:] - exact) < 0.05 + Z * est.error[3:]).all(), (est.p_b[3:], exact)
    # the estimate unpacks as (p_B, error), and a seed reproduces it whatever the frames' container
    again = committor(term, _frames([0.0]).numpy(), a, b, 0.005, n_shots=20, seed=3, batch_size=7)
    p, err = again
    assert p.shape == err.shape == (1,)
    assert np.array_equal(committor(term, _frames([0.0]), a, b, 0.005, n_shots=20, seed=3, batch_size=7).p_b, p)


def test_undecided_shots_are_counted_and_reported(double_well):
    term, a, b, _ = double_well
    with pytest.warns(UserWarning, match="reached neither"):
        est = committor(term, _frames([0.0, 0.6]), a, b, 0.005, n_shots=10, max_steps=3, segment_steps=2)
    assert est.n_undecided[0] == 10 and np.isnan(est.p_b[0]) and np.isnan(est.error[0])
    assert est.n_decided[1] + est.n_undecided[1] == 10  # some shots from next to B do decide within 3 steps
    with pytest.raises(ValueError, match="must be positive"):
        committor(term, _frames([0.0]), a, b, 0.005, n_shots=0)


@pytest.fixture(scope="module")
def mueller_brown_paths(mueller_brown_langevin):
    system, term, a, b = mueller_brown_langevin
    dt = system.settings["timestep"]
    starts = system.reference_samples(20000, seed=3)
    batch, _ = fixed_length_paths(term, starts, a, b, 100, dt, 6, batch_size=2048, progress=False)
    paths = [batch.positions[: int(n) + 1, c].numpy().astype(np.float32) for c, n in enumerate(batch.lengths)]
    return system, term, a, b, dt, paths


def test_committor_rises_along_mueller_brown_transition_paths(mueller_brown_paths):
    system, term, a, b, dt, paths = mueller_brown_paths
    frames, where = [], []
    for path in paths:
        lo, hi, _ = transition_segment(path, a, b)
        index = np.round(np.linspace(lo, hi, 7)[1:-1]).astype(int)  # 5 frames strictly inside the crossing
        frames.append(path[index])
        where.append(index)
    est = committor(term, np.concatenate(frames), a, b, dt, n_shots=40, seed=7)
    p, err = est.p_b.reshape(len(paths), 5), est.error.reshape(len(paths), 5)
    assert (est.n_undecided == 0).all()
    mean, mean_err = p.mean(0), np.sqrt((err**2).sum(0)) / len(paths)
    assert (np.diff(mean) > -Z * np.hypot(mean_err[1:], mean_err[:-1])).all(), mean  # non-decreasing on average
    assert mean[-1] - mean[0] > Z * math.hypot(mean_err[0], mean_err[-1]), mean  # and rising overall


def test_transition_state_ensemble_on_mueller_brown(mueller_brown_paths):
    system, term, a, b, dt, paths = mueller_brown_paths
    before = term.evaluations
    tse = transition_state_ensemble(paths, None, term, a, b, dt, n_shots=30, window=0.1, seed=11)
    assert len(tse) >= 3 and tse.evaluations == term.evaluations - before
    assert (np.abs(tse.p_b - 0.5) <= 0.1).all() and (tse.weights == 1).all()
    assert tse.frames.shape == (len(tse), 1, 2)
    for frame, i, k in zip(tse.frames, tse.path_index, tse.frame_index, strict=True):
        assert np.array_equal(frame, paths[i][k])
    # fresh shots: each frame consistent with 1/2 given the selection window and both estimates' errors,
    # and the frames' mean within the window of 1/2 to 4 pooled errors
    fresh = committor(term, tse.frames, a, b, dt, n_shots=120, seed=12345)
    both = np.hypot(tse.error, fresh.error)
    assert (np.abs(fresh.p_b - 0.5) < 0.1 + Z * both).all(), fresh.p_b
    pooled = math.sqrt((both**2).sum()) / len(tse)
    assert abs(fresh.p_b.mean() - 0.5) < 0.1 + Z * pooled, fresh.p_b.mean()
    with pytest.raises(ValueError, match="one weight per path"):
        transition_state_ensemble(paths, np.ones(2), term, a, b, dt)


# figures ---------------------------------------------------------------------------------------------
def _cv_xy(pos: torch.Tensor) -> torch.Tensor:
    return pos[:, 0, :2]


def _path(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float32)[:, None, :]


def test_path_density_counts_each_bin_once_per_path():
    bins, extent = 4, ((0.0, 4.0), (0.0, 4.0))
    twice = _path([[0.5, 0.5], [1.5, 0.5], [0.5, 0.5], [0.6, 0.4]])  # three frames in bin (0, 0)
    once = _path([[3.5, 3.5], [3.5, 2.5], [9.0, 9.0]])  # the last frame lies outside the range
    density, xe, ye = path_density([twice, once], np.array([1.0, 3.0]), _cv_xy, bins, extent)
    assert density.shape == (4, 4) and xe.shape == ye.shape == (5,)
    assert math.isclose(density.sum(), 1.0)
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[1, 0] = 1.0
    expected[3, 3] = expected[3, 2] = 3.0
    assert np.allclose(density, expected / expected.sum())
    # default weights and range: the frames' extent, the upper edge included
    density, xe, _ = path_density([twice], None, _cv_xy, 2)
    assert xe[0] == pytest.approx(0.5) and xe[-1] == pytest.approx(1.5) and math.isclose(density.sum(), 1.0)


def test_path_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    paths = [_path(np.cumsum(rng.normal(0, 0.1, (30, 2)), 0)) for _ in range(5)]
    potential = DoubleWell()
    background = lambda v: potential.energy(torch.as_tensor(v)[:, None, :]).numpy()  # noqa: E731
    out = plot_path_density(
        {"one": (paths, None), "two": (paths[:3], np.arange(1.0, 4.0))}, _cv_xy, ["x (nm)", "y (nm)"],
        tmp_path / "density.png", bins=20, background=background,
    )  # fmt: skip
    assert out.is_file() and out.stat().st_size > 1000
    lengths = plot_path_lengths({"a": (rng.random(50), None), "b": (rng.random(20), rng.random(20))}, tmp_path / "l.png")
    assert lengths.is_file() and lengths.stat().st_size > 1000
