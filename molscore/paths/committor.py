"""Committor estimates by shooting, and the transition-state ensemble (the frames with p_B = 1/2).

The committor p_B(x) of a configuration x is the probability that unbiased Langevin dynamics started at x, with
velocities drawn from the Maxwell-Boltzmann distribution, enters B before A. :func:`committor` estimates it from
``n_shots`` independent trajectories per frame (BAOAB via :func:`~molscore.paths.path_dynamics.propagate`, all shots
of all frames batched, each stopping at its first frame in A or B): the fraction that reach B first, with its
binomial standard error. Shots that reach neither state within ``max_steps`` are counted and reported, not dropped
silently: p_B is the fraction of the decided shots, and a warning names how many were undecided.

:func:`transition_state_ensemble` takes candidate frames along sampled transition paths (per path the frame
closest to the dividing surface d_A = d_B in CV space, plus a few around it), estimates their committors and keeps
those within a window around 1/2: the transition-state ensemble (SCIENCE.md section 5).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.dynamics import SeededNoise
from molscore.paths.ensemble import PathEnsemble
from molscore.paths.path_dynamics import ForceFieldLangevin, propagate
from molscore.paths.states import Region


@dataclass
class CommittorEstimate:
    """Committor estimates of M frames.

    Attributes
    ----------
    p_b : ndarray (M,), fraction of the decided shots that entered B first (NaN where none decided; exactly 0 for
        frames in A and 1 for frames in B, which are not shot from)
    error : ndarray (M,), binomial standard error sqrt(p_B (1 - p_B) / n_decided) (0 for frames in A or B; NaN
        where none decided). For p_B estimated as 0 or 1 it is 0: read it with ``n_decided`` in mind.
    n_a, n_b : ndarray (M,) int, shots that entered A first / B first
    n_undecided : ndarray (M,) int, shots that reached neither state within ``max_steps``
    evaluations : energy evaluations spent (``term.evaluations`` during the call)
    """

    p_b: np.ndarray
    error: np.ndarray
    n_a: np.ndarray
    n_b: np.ndarray
    n_undecided: np.ndarray
    evaluations: int

    def __iter__(self):
        """``p_b, error = committor(...)`` unpacks the estimate and its standard error."""
        return iter((self.p_b, self.error))

    @property
    def n_decided(self) -> np.ndarray:
        return self.n_a + self.n_b


def _as_frames(frames, dtype, device) -> Tensor:
    if isinstance(frames, Tensor):
        return frames.to(dtype=dtype or frames.dtype, device=device or frames.device)
    return torch.as_tensor(np.asarray(frames), dtype=dtype or torch.get_default_dtype(), device=device or "cpu")


def committor(
    term: ForceFieldLangevin,
    frames,
    state_a: Region,
    state_b: Region,
    dt: float,
    n_shots: int = 50,
    max_steps: int = 5000,
    seed: int = 0,
    batch_size: int = 4096,
    segment_steps: int = 500,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> CommittorEstimate:
    """The committor p_B of each of ``frames``, by shooting ``n_shots`` unbiased trajectories from each.

    Each shot starts at the frame with fresh Maxwell-Boltzmann velocities at ``term.kT`` and runs BAOAB (``term``'s
    force field, friction and kT) until its first frame in A or in B, for at most ``max_steps`` steps. Frames
    already in A (B) have p_B = 0 (1) by definition and cost nothing.

    Parameters
    ----------
    term : the unbiased dynamics, :class:`ForceFieldLangevin` (its ``evaluations`` counter is advanced)
    frames : Tensor or ndarray (M, N, d), nm
    state_a, state_b : :class:`Region` of the same CVs
    dt : time step, ps
    n_shots : trajectories per frame
    max_steps : the longest a shot runs; shots that reach neither state by then are counted in ``n_undecided``
    seed : of the velocities and the dynamics' noise; estimates with different seeds are independent
    batch_size : shots integrated together (all shots of all frames are laid out in one list and cut into batches)
    segment_steps : a batch is integrated in segments of this many steps (undecided shots continue from the last
        frame), which bounds the memory of the stored frames to ``segment_steps x batch_size`` frames
    dtype, device : of the integration (default: those of ``frames`` if a Tensor, else the default dtype on CPU)
    progress : show a progress bar over batches

    Returns
    -------
    :class:`CommittorEstimate` (unpacks as ``p_b, error``)
    """
    if n_shots < 1 or max_steps < 1 or batch_size < 1 or segment_steps < 1:
        raise ValueError(
            f"n_shots, max_steps, batch_size and segment_steps must be positive, got {n_shots}, {max_steps}, "
            f"{batch_size}, {segment_steps}"
        )
    if state_a.cvs is not state_b.cvs:
        raise ValueError(f"states {state_a.name!r} and {state_b.name!r} must be defined on the same CollectiveVariables")
    x = _as_frames(frames, dtype, device)
    if x.ndim != 3:
        raise ValueError(f"frames must be (M, N, d); got shape {tuple(x.shape)}")
    cvs = state_a.cvs
    n_frames = len(x)
    values = cvs(x)
    in_a, in_b = state_a.contains(values).cpu().numpy(), state_b.contains(values).cpu().numpy()
    n_a, n_b, n_und = (np.zeros(n_frames, dtype=np.int64) for _ in range(3))
    start_evaluations = term.evaluations

    def decided(pos: Tensor) -> Tensor:
        v = cvs(pos)
        return state_a.contains(v) | state_b.contains(v)

    shoot = np.nonzero(~(in_a | in_b))[0]
    owner = np.repeat(shoot, n_shots)  # the frame of each shot
    batches = range(0, len(owner), batch_size)
    for batch, first in enumerate(tqdm(batches, desc="committor", disable=not progress, leave=False)):
        frame_of = owner[first : first + batch_size]
        pos = x[torch.as_tensor(frame_of, device=x.device)]
        velocity_noise = SeededNoise(seed * 2**64 + 2**63 + batch)
        vel = term.thermal_speed(pos) * velocity_noise.normal(0, pos.shape, pos.dtype, pos.device, stream=2)
        active = np.arange(len(pos))  # shots of this batch still running
        taken = 0
        while len(active) and taken < max_steps:
            steps = min(segment_steps, max_steps - taken)
            noise = SeededNoise((seed * 2**32 + batch) * 2**32 + taken // segment_steps)
            seg = propagate(term, pos, vel, steps, dt, noise, stop=decided)
            taken += steps
            stopped = seg.stopped.cpu().numpy()
            last = seg.last()
            if stopped.any():
                ends = cvs(last[torch.as_tensor(stopped, device=last.device)])
                to_b = state_b.contains(ends).cpu().numpy()
                np.add.at(n_b, frame_of[active[stopped]], to_b)
                np.add.at(n_a, frame_of[active[stopped]], ~to_b)
            keep = torch.as_tensor(~stopped, device=last.device)
            rows = torch.arange(len(seg.lengths), device=last.device)
            pos, vel = last[keep], seg.velocities[seg.lengths, rows][keep]
            active = active[~stopped]
        np.add.at(n_und, frame_of[active], 1)

    decided_shots = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        p_b = np.where(decided_shots > 0, n_b / decided_shots, np.nan)
        error = np.sqrt(p_b * (1 - p_b) / decided_shots)
    p_b[in_a], p_b[in_b], error[in_a | in_b] = 0.0, 1.0, 0.0
    undecided = int(n_und.sum())
    if undecided:
        none = int((decided_shots[shoot] == 0).sum())
        warnings.warn(
            f"committor: {undecided} of {len(owner)} shots reached neither {state_a.name!r} nor {state_b.name!r} "
            f"within max_steps={max_steps} ({none} frame(s) with no decided shot, p_B NaN); p_B counts the decided "
            "shots only (see n_undecided): raise max_steps",
            stacklevel=2,
        )
    return CommittorEstimate(p_b, error, n_a, n_b, n_und, term.evaluations - start_evaluations)


@dataclass
class TransitionStateEnsemble:
    """Frames whose committor is close to 1/2, taken along sampled transition paths.

    Attributes
    ----------
    frames : ndarray (K, N, d) float32, nm
    p_b, error : ndarray (K,), their committor estimates and binomial standard errors
    path_index : ndarray (K,) int, the path (index into the given paths) each frame comes from
    frame_index : ndarray (K,) int, the frame's index within its saved path
    weights : ndarray (K,), the weight of each frame: its path's weight (all paths used) or its path's multiplicity
        in the draw (``max_paths``)
    candidates : :class:`CommittorEstimate` of every frame probed (``candidate_path``, ``candidate_frame``)
    candidate_path, candidate_frame : ndarray (n_candidates,) int
    evaluations : energy evaluations used (``term.evaluations``)
    """

    frames: np.ndarray
    p_b: np.ndarray
    error: np.ndarray
    path_index: np.ndarray
    frame_index: np.ndarray
    weights: np.ndarray
    candidates: CommittorEstimate
    candidate_path: np.ndarray
    candidate_frame: np.ndarray
    evaluations: int

    def __len__(self) -> int:
        return len(self.frames)


def transition_segment(path, state_a: Region, state_b: Region) -> tuple[int, int, int] | None:
    """Where a path crosses from A to B: (last frame in A before its first frame in B, that first frame in B, the
    frame between them closest to the dividing surface d_A = d_B), or None if it has no A -> B crossing.

    d_A, d_B are the CV-space distances to the state centres (:meth:`Region.distance`).

    Parameters
    ----------
    path : ndarray or Tensor (F, N, d), nm
    """
    pos = torch.as_tensor(np.asarray(path), dtype=torch.float64)
    values = state_a.cvs(pos)
    d_a, d_b = state_a.distance(values), state_b.distance(values)
    in_a, in_b = (d_a < state_a.radius).numpy(), (d_b < state_b.radius).numpy()
    entries = np.nonzero(in_b)[0]
    if not len(entries):
        return None
    hi = int(entries[0])
    before = np.nonzero(in_a[:hi])[0]
    if not len(before) or hi - int(before[-1]) < 2:
        return None
    lo = int(before[-1])
    gap = (d_a - d_b).abs().numpy()[lo + 1 : hi]
    return lo, hi, lo + 1 + int(np.argmin(gap))


def transition_state_ensemble(
    ensemble_or_paths,
    weights,
    term: ForceFieldLangevin,
    state_a: Region,
    state_b: Region,
    dt: float,
    n_shots: int = 50,
    window: float = 0.1,
    n_errors: float | None = None,
    max_paths: int | None = None,
    max_steps: int = 5000,
    seed: int = 0,
    batch_size: int = 4096,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> TransitionStateEnsemble:
    """The transition-state ensemble: frames along sampled paths whose committor is within a window of 1/2.

    On each path, the committor crosses 1/2 between the last frame in A (p_B = 0) and the first frame in B
    (p_B = 1) of its A -> B crossing. The crossing frame is found by bisection on the frame index, all paths at
    once: the first probe is the frame closest to the dividing surface d_A = d_B in CV space (on Mueller-Brown
    that frame lies past the main barrier, p_B ~ 0.85, so the geometric guess alone is not enough), then each
    round probes the middle of the bracket whose estimated p_B straddles 1/2, until the bracket is two adjacent
    frames. Every probe is estimated with ``n_shots`` shots (:func:`committor`, one batch per round); the probes
    with |p_B - 1/2| <= ``window`` (or, with ``n_errors``, also those with |p_B - 1/2| <= n_errors x standard
    error) form the ensemble. The committor along a path is only roughly monotonic, so this finds a crossing,
    not all of them.

    Parameters
    ----------
    ensemble_or_paths : :class:`PathEnsemble`, or a list of paths (F_i, N, d) nm (saved frames)
    weights : (n_paths,) path weights (e.g. ``ensemble.weights(burn_in)``); None: ``ensemble.weights()`` for an
        ensemble, equal weights for a list. Paths of weight 0 are not used.
    term, state_a, state_b, dt : the dynamics, states and time step (ps) of the committor shots
    n_shots, max_steps, batch_size : of :func:`committor`
    window : half-width of the accepted p_B window around 1/2
    n_errors : also accept frames whose p_B is within this many standard errors of 1/2
    max_paths : draw this many paths (with replacement, by weight) instead of using all paths of positive weight
    seed : of the path draw and the committor shots
    dtype, device : of the committor shots (default: the default dtype, on CPU)
    """
    if isinstance(ensemble_or_paths, PathEnsemble):
        paths = ensemble_or_paths.paths
        weights = ensemble_or_paths.weights() if weights is None else weights
    else:
        paths = list(ensemble_or_paths)
        weights = np.ones(len(paths)) if weights is None else weights
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) != len(paths):
        raise ValueError(f"got {len(weights)} weights for {len(paths)} paths; give one weight per path")
    if not (weights >= 0).all() or not weights.sum() > 0:
        raise ValueError("path weights must be non-negative with a positive sum")
    if max_paths is None:
        chosen = np.nonzero(weights > 0)[0]
        path_weight = weights[chosen]
    else:
        rng = np.random.default_rng([seed, 2**31])
        draws = rng.choice(len(paths), size=max_paths, p=weights / weights.sum())
        chosen, counts = np.unique(draws, return_counts=True)
        path_weight = counts.astype(np.float64)
    segments = [transition_segment(paths[i], state_a, state_b) for i in chosen]
    use = [j for j, s in enumerate(segments) if s is not None]
    if not use:
        raise ValueError(
            f"no path crosses from {state_a.name!r} to {state_b.name!r} with a frame between the states: give "
            "transition paths from A to B"
        )
    chosen, path_weight = chosen[use], path_weight[use]
    lo = np.array([segments[j][0] for j in use])
    hi = np.array([segments[j][1] for j in use])
    probe = np.array([segments[j][2] for j in use])
    active = np.arange(len(chosen))
    estimates, probed, rounds, start_evaluations = [], [], 0, term.evaluations
    while len(active):
        frames = np.stack([np.asarray(paths[chosen[j]])[probe[j]] for j in active])
        est = committor(
            term, frames, state_a, state_b, dt, n_shots=n_shots, max_steps=max_steps, seed=seed * 2**16 + rounds,
            batch_size=batch_size, dtype=dtype, device=device, progress=progress,
        )  # fmt: skip
        estimates.append(est)
        probed.append((active.copy(), probe[active].copy(), frames.astype(np.float32)))
        above = est.p_b >= 0.5
        hi[active] = np.where(above, probe[active], hi[active])
        lo[active] = np.where(above, lo[active], probe[active])
        keep = (hi[active] - lo[active] > 1) & np.isfinite(est.p_b)
        active = active[keep]
        probe[active] = (lo[active] + hi[active]) // 2
        rounds += 1
    which = np.concatenate([p[0] for p in probed])
    candidates = CommittorEstimate(
        *(np.concatenate([getattr(e, f) for e in estimates]) for f in ("p_b", "error", "n_a", "n_b", "n_undecided")),
        evaluations=term.evaluations - start_evaluations,
    )
    cand_path, cand_frame = chosen[which], np.concatenate([p[1] for p in probed])
    frames = np.concatenate([p[2] for p in probed])
    distance = np.abs(candidates.p_b - 0.5)
    keep = distance <= window
    if n_errors is not None:
        keep |= distance <= n_errors * candidates.error
    keep &= np.isfinite(candidates.p_b)
    return TransitionStateEnsemble(
        frames[keep], candidates.p_b[keep], candidates.error[keep], cand_path[keep], cand_frame[keep],
        path_weight[which][keep], candidates, cand_path, cand_frame, candidates.evaluations,
    )  # fmt: skip
