"""Transition paths by brute force: the exact references that path samplers are judged against, and starting
paths for shooting.

- :func:`fixed_length_paths` samples the fixed-length ensemble directly: equilibrium starts in A, unbiased
  dynamics, keep the paths that end in B (exact, affordable when transitions within the path length are not
  too rare; at a raised temperature it gives starting paths for shooting);
- :func:`harvest_transitions` cuts the A -> B transition paths (last frame in A to first frame in B) out of
  long unbiased trajectories: the flexible-length ensemble.
"""

import math

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.dynamics import SeededNoise
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin, Segment, propagate
from molscore.paths.states import Region


class NoTransitionError(RuntimeError):
    """No path reached the target state; ``paths`` holds what was sampled (possibly empty)."""

    def __init__(self, message: str, paths: PathBatch | None = None, tried: int = 0):
        super().__init__(message)
        self.paths, self.tried = paths, tried


def _states(region_a: Region, region_b: Region, pos: Tensor) -> tuple[Tensor, Tensor]:
    values = region_a.cvs(pos)
    return region_a.contains(values), region_b.contains(values)


def fixed_length_paths(
    term: ForceFieldLangevin,
    starts: Tensor,
    state_a: Region,
    state_b: Region,
    n_steps: int,
    dt: float,
    n_paths: int,
    batch_size: int = 256,
    max_tries: int = 100_000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[PathBatch, int]:
    """Up to ``n_paths`` paths of ``n_steps`` steps from A that end in B, and the number of paths tried.

    Each try starts from a frame of ``starts : (M, N, d)`` (equilibrium frames; those outside A are ignored),
    taken in turn, with Maxwell-Boltzmann velocities at ``term.kT``. Stops after ``max_tries`` tries; raises
    :class:`NoTransitionError` if no path reached B (the error carries the count tried).
    """
    in_a, _ = _states(state_a, state_b, starts)
    starts = starts[in_a]
    if len(starts) == 0:
        raise ValueError(f"none of the start frames lies in state {state_a.name!r}; give equilibrium frames in it")
    found: list[PathBatch] = []
    last = None
    n_found, tried, next_id, batch = 0, 0, 0, 0
    bar = tqdm(total=n_paths, desc=f"paths {state_a.name} -> {state_b.name}", disable=not progress, leave=False)
    while n_found < n_paths and tried < max_tries:
        noise = SeededNoise(seed * 2**64 + batch)
        idx = torch.arange(tried, tried + batch_size, device=starts.device) % len(starts)
        x = starts[idx]
        v = term.thermal_speed(x) * noise.normal(0, x.shape, x.dtype, x.device, stream=2)
        seg = propagate(term, x, v, n_steps, dt, noise)
        paths, next_id = PathBatch.from_segment(seg, torch.full((len(x),), -1, device=x.device), next_id)
        hit = state_b.contains(state_a.cvs(paths.last()))
        last = paths
        if hit.any():
            found.append(paths.select(hit))
            n_found += int(hit.sum())
            bar.update(int(hit.sum()))
        tried += len(x)
        batch += 1
    bar.close()
    if not found:
        raise NoTransitionError(
            f"none of {tried} paths of {n_steps} steps from {state_a.name!r} reached {state_b.name!r}; transitions "
            "are too rare at this temperature and length: start from a raised temperature (a term with larger kT) "
            "or longer paths (or steering_bias), and use the result as shooting's initial paths; the error's "
            "`paths` holds the last batch tried",
            paths=last,
            tried=tried,
        )
    paths = PathBatch.concatenate(found)
    return paths.select(torch.arange(min(n_paths, paths.n_paths), device=starts.device)), tried


def harvest_transitions(
    term: ForceFieldLangevin,
    starts: Tensor,
    state_a: Region,
    state_b: Region,
    n_steps: int,
    dt: float,
    chunk: int = 5000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[np.ndarray], dict]:
    """A -> B transition paths from long unbiased runs of ``len(starts)`` replicas, ``n_steps`` steps each.

    A transition path runs from the last frame in A before an entry into B to that first frame in B, with no
    frame between in A or B; its length is the transition-path time. Velocities start Maxwell-Boltzmann.

    Returns
    -------
    paths : list of ndarray (L_i + 1, N, d) float32, nm
    info : {"steps": total steps over replicas, "time": total simulated time (ps), "fraction_a": fraction of
        frames in A, "rate": transitions per unit time}
    """
    noise = SeededNoise(seed * 2**64 + 2**63)
    x = starts
    v = term.thermal_speed(x) * noise.normal(0, x.shape, x.dtype, x.device, stream=2)
    n_rep = len(x)
    pending: list[list[np.ndarray]] = [[] for _ in range(n_rep)]  # frames (k, N, d) since the last one in A
    since_a = np.zeros(n_rep, dtype=bool)  # whether the replica's last visited state is A
    paths, frames_in_a, total = [], 0, 0
    n_chunks = math.ceil(n_steps / chunk)
    for c in tqdm(range(n_chunks), desc="brute-force transitions", disable=not progress, leave=False):
        steps = min(chunk, n_steps - c * chunk)
        seg: Segment = propagate(term, x, v, steps, dt, SeededNoise(seed * 2**64 + c), storage_dtype=torch.float32)
        x, v = seg.positions[-1].to(starts), seg.velocities[-1].to(starts)
        frames = seg.positions[1:]  # frame 0 was the last frame of the previous chunk
        f, r = frames.shape[:2]
        in_a, in_b = _states(state_a, state_b, frames.reshape(f * r, *frames.shape[2:]).to(starts))
        in_a, in_b = in_a.view(f, r).cpu().numpy(), in_b.view(f, r).cpu().numpy()
        frames_in_a += int(in_a.sum())
        total += f * r
        pos = frames.cpu().numpy()
        if c == 0:
            first_a = state_a.contains(state_a.cvs(seg.positions[0].to(starts))).cpu().numpy()
            since_a = first_a.copy()
            for i in np.nonzero(first_a)[0]:
                pending[i] = [seg.positions[0:1, i].cpu().numpy()]
        for i in range(r):
            start = 0
            for j in np.nonzero(in_a[:, i] | in_b[:, i])[0]:
                if in_a[j, i]:
                    since_a[i], pending[i] = True, [pos[j : j + 1, i]]
                elif since_a[i]:  # first entry into B after A
                    paths.append(np.concatenate(pending[i] + [pos[start : j + 1, i]]))
                    since_a[i], pending[i] = False, []
                start = j + 1
            if since_a[i] and start < f:
                pending[i].append(pos[start:, i])
    time = n_steps * n_rep * dt
    info = {"steps": n_steps * n_rep, "time": time, "fraction_a": frames_in_a / max(total, 1), "rate": len(paths) / time}
    return paths, info


def steering_bias(state: Region, spring: float):
    """A bias force pulling the CVs towards ``state``'s centre, for building starting paths only.

    Returns ``pos (B, N, d) -> -grad (spring / 2) d(pos)^2``, kJ/(mol nm), with d the state's CV distance (rad or
    nm) and ``spring`` in kJ/mol per CV unit squared. Paths drawn with it connect A and B but are not in the
    unbiased ensemble: shooting relaxes them (discard a burn-in).
    """

    def bias(pos: Tensor) -> Tensor:
        with torch.enable_grad():
            x = pos.detach().requires_grad_(True)
            energy = 0.5 * spring * state.distance(state.cvs(x)) ** 2
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return -grad

    return bias
