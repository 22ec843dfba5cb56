"""Population of a slow basin from short MD replicas: a reversible Markov state model (deeptime) beside the raw
fraction, with a bootstrap over whole replicas.

A basin that is entered a few times in many short replicas (phi > 0 of alanine dipeptide: relaxation ~ns)
has a raw frame fraction set by where the replicas started and how long they ran; the stationary distribution
of a reversible MSM estimated from the transitions is the equilibrium estimate (Prinz et al. 2011).
"""

import numpy as np


def torsion_grid_states(phi: np.ndarray, psi: np.ndarray, n_bins: int = 6) -> np.ndarray:
    """Discrete states of (phi, psi) (radians, any shape): cells of an ``n_bins`` x ``n_bins`` grid on
    [-pi, pi)^2, ``state = n_bins * i_phi + i_psi`` (int array of the input's shape)."""
    phi, psi = np.asarray(phi, dtype=float), np.asarray(psi, dtype=float)
    if phi.shape != psi.shape:
        raise ValueError(f"phi {phi.shape} and psi {psi.shape} must have the same shape")
    if not (np.isfinite(phi).all() and np.isfinite(psi).all()):
        raise ValueError("phi / psi contain NaN or inf: check the trajectory frames")

    def cell(angle):
        return np.clip(((angle + np.pi) / (2 * np.pi) * n_bins).astype(int), 0, n_bins - 1)

    return n_bins * cell(phi) + cell(psi)


def _stationary(dtrajs: list[np.ndarray], lag: int, n_states: int):
    """Stationary distribution (n_states,) of the reversible MLE MSM on the largest connected set (zero
    elsewhere), and the connected states."""
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    counts = TransitionCountEstimator(lagtime=lag, count_mode="sliding", n_states=n_states).fit_fetch(dtrajs)
    counts = counts.submodel_largest()
    msm = MaximumLikelihoodMSM(reversible=True).fit_fetch(counts)
    pi = np.zeros(n_states)
    pi[counts.state_symbols] = msm.stationary_distribution
    return pi, counts.state_symbols


def basin_population(
    dtrajs: list[np.ndarray],
    in_basin: np.ndarray,
    lag: int,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Equilibrium population of a set of discrete states from several trajectories.

    Parameters
    ----------
    dtrajs : one int array of states per replica (frames at a fixed interval)
    in_basin : bool array (n_states,), the states that make up the basin
    lag : MSM lag time in frames (choose it where the implied timescales level off)
    n_bootstrap : resamples of whole replicas (with replacement) for the error
    seed : of the bootstrap

    Returns
    -------
    dict: ``msm`` (stationary population of the basin), ``msm_sd`` (bootstrap sd), ``raw`` (frame fraction),
    ``raw_sd`` (bootstrap sd of it), ``lag_frames``, ``entries`` and ``exits`` (frames that enter / leave the
    basin, summed over replicas), ``replicas_visiting``, ``connected`` (whether every visited state is in the
    largest connected set). ``msm`` and ``msm_sd`` are NaN when a visited basin state lies outside that set
    (e.g. the basin was entered and never left at the lag): the data cannot give its equilibrium population.
    """
    in_basin = np.asarray(in_basin, dtype=bool)
    dtrajs = [np.asarray(d, dtype=np.int64) for d in dtrajs]
    if not dtrajs:
        raise ValueError("no trajectories given")
    if int(lag) != lag or lag < 1:
        raise ValueError(f"lag = {lag}; it must be a positive number of frames")
    if any(len(d) <= lag for d in dtrajs):
        raise ValueError(f"every trajectory must be longer than the lag ({lag} frames): {[len(d) for d in dtrajs]}")
    if any(d.min() < 0 or d.max() >= len(in_basin) for d in dtrajs):
        raise ValueError(f"states must lie in [0, {len(in_basin)}) (the length of in_basin)")
    n = len(in_basin)
    pi, connected = _stationary(dtrajs, lag, n)
    visited = np.unique(np.concatenate(dtrajs))
    basin_connected = bool(np.isin(visited[in_basin[visited]], connected).all())
    raw = lambda trajs: float(np.mean(in_basin[np.concatenate(trajs)]))  # noqa: E731
    rng = np.random.default_rng(seed)
    boot_msm, boot_raw = [], []
    for _ in range(n_bootstrap):
        pick = [dtrajs[i] for i in rng.integers(len(dtrajs), size=len(dtrajs))]
        boot_msm.append(float(_stationary(pick, lag, n)[0][in_basin].sum()))
        boot_raw.append(raw(pick))
    entries = sum(int(np.sum(~in_basin[d[:-1]] & in_basin[d[1:]])) for d in dtrajs)
    exits = sum(int(np.sum(in_basin[d[:-1]] & ~in_basin[d[1:]])) for d in dtrajs)
    return {  # a basin the largest connected set leaves out (entered but never left, say) has no MSM estimate
        "msm": float(pi[in_basin].sum()) if basin_connected else float("nan"),
        "msm_sd": float(np.std(boot_msm)) if basin_connected else float("nan"),
        "raw": raw(dtrajs),
        "raw_sd": float(np.std(boot_raw)),
        "lag_frames": int(lag),
        "entries": entries,
        "exits": exits,
        "replicas_visiting": int(sum(bool(in_basin[d].any()) for d in dtrajs)),
        "connected": bool(np.isin(visited, connected).all()),
    }
