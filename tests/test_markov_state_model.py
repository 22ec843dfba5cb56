"""Basin populations from a reversible MSM: exact on a known Markov chain, honest about unvisited basins."""

import numpy as np
import pytest

from molscore.analysis.markov_state_model import basin_population, torsion_grid_states

# a 3-state reversible chain whose rare state 2 is entered only from state 1
P = np.array([[0.90, 0.10, 0.00], [0.05, 0.94, 0.01], [0.00, 0.20, 0.80]])
PI = np.array([0.05 / 0.15, 0.10 / 0.15, 0.005 / 0.15]) / (1 + 0.005 / 0.15)  # detailed balance, normalised


def chain(n_frames, start, rng):
    states = [start]
    for _ in range(n_frames - 1):
        states.append(rng.choice(3, p=P[states[-1]]))
    return np.array(states)


def test_stationary_population_of_a_known_chain_within_its_error():
    assert np.allclose(PI @ P, PI)
    rng = np.random.default_rng(0)
    # every replica starts in state 0: the raw fraction of state 2 is biased low, the MSM is not
    dtrajs = [chain(400, 0, rng) for _ in range(30)]
    result = basin_population(dtrajs, np.array([False, False, True]), lag=1, n_bootstrap=50)
    assert abs(result["msm"] - PI[2]) < 3 * result["msm_sd"] + 1e-3
    assert result["msm_sd"] > 0 and result["raw_sd"] > 0
    assert result["entries"] > 10 and result["connected"]
    assert result["replicas_visiting"] <= 30


def test_a_basin_never_visited_has_zero_population():
    rng = np.random.default_rng(1)
    dtrajs = [rng.integers(2, size=300) for _ in range(5)]  # states 0 and 1 only
    result = basin_population(dtrajs, np.array([False, False, True]), lag=1, n_bootstrap=10)
    assert result["msm"] == 0 and result["raw"] == 0 and result["entries"] == 0 and result["replicas_visiting"] == 0


def test_a_basin_entered_but_never_left_has_no_estimate():
    dtrajs = [np.array([0, 1, 0, 1, 0, 1, 2, 2, 2, 2]), np.array([1, 0, 1, 0, 1, 0, 1, 0])]
    result = basin_population(dtrajs, np.array([False, False, True]), lag=1, n_bootstrap=5)
    assert np.isnan(result["msm"]) and not result["connected"] and result["entries"] == 1 and result["exits"] == 0
    assert result["raw"] == 4 / 18


def test_torsion_grid_states_cover_the_torus():
    angles = np.linspace(-np.pi, np.pi, 13)
    states = torsion_grid_states(angles, -angles, n_bins=6)
    assert states.min() >= 0 and states.max() < 36
    assert torsion_grid_states(np.array([-3.0]), np.array([3.0]), 6)[0] == 5  # phi cell 0, psi cell 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtrajs=[], in_basin=[True], lag=1), "no trajectories"),
        (dict(dtrajs=[np.zeros(5, int)], in_basin=[True], lag=0), "positive"),
        (dict(dtrajs=[np.zeros(5, int)], in_basin=[True], lag=5), "longer than the lag"),
        (dict(dtrajs=[np.array([0, 3, 1])], in_basin=[True, False], lag=1), "states must lie"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        basin_population(**kwargs)


def test_nan_torsions():
    with pytest.raises(ValueError, match="NaN"):
        torsion_grid_states(np.array([np.nan]), np.array([0.0]))
