"""Shooting transition-path sampling, many Markov chains in parallel (one batch of replicas per move).

The target ensemble of fixed length T: x_0 from equilibrium (positions and Maxwell-Boltzmann velocities) in A,
unbiased Langevin dynamics for T steps, x_T in B. With flexible length: paths that start with a frame in A and
stop at their first frame in B, no frame between in A or B.

Moves, for every chain at once:

- two-way: a frame k of the current path, its velocity partially refreshed, v' = sqrt(1 - a^2) v + a v_MB
  (this keeps the Maxwell-Boltzmann distribution, so it needs no acceptance factor), is integrated forward and,
  with -v', backward; the new path is the backward half reversed, then the forward half;
- one-way: forward from (x_k, v_k) with new noise, keeping frames 0..k, or backward from (x_k, -v_k), keeping
  k..T (direction chosen at random).

Acceptance: the new path must start in A and end in B (fixed length), or, with flexible length, its halves must
stop in A and in B, and it is accepted with probability min(1, (L_old - 1) / (L_new - 1)) (L: steps), which
corrects for the shooting frame being drawn uniformly from the L - 1 interior frames. Reversing a half assumes
microscopic reversibility, exact for the Langevin equation and O(dt^2) for BAOAB.
"""

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from molscore.dynamics import SeededNoise
from molscore.files import atomic_write, read_torch_file
from molscore.paths.ensemble import PathEnsemble
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin, Segment, propagate
from molscore.paths.states import Region

MOVES = ("two-way", "one-way")


@dataclass
class ShootingSettings:
    """How paths are defined and moved.

    n_steps : path length in steps (fixed length), or the longest allowed path (flexible)
    dt : time step, ps
    flexible : paths stop at their first frame in B (flexible length) instead of running ``n_steps``
    move : "two-way" or "one-way"
    velocity_refresh : a in [0, 1], the share of a fresh Maxwell-Boltzmann velocity at the shooting frame
        (two-way; 1 draws a new velocity)
    save_every : keep every k-th frame of each path in the ensemble (the last one always)
    seed : of all noise (per move and chain batch)
    """

    n_steps: int
    dt: float
    flexible: bool = False
    move: str = "two-way"
    velocity_refresh: float = 0.3
    save_every: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.move not in MOVES:
            raise ValueError(f"move must be one of {MOVES}, got {self.move!r}")
        if not 0 <= self.velocity_refresh <= 1:
            raise ValueError(f"velocity_refresh must lie in [0, 1], got {self.velocity_refresh}")
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be at least 2, got {self.n_steps}")


class ShootingTPS:
    """Shooting moves on C chains of paths from A to B.

    Parameters
    ----------
    term : the (unbiased) dynamics, :class:`ForceFieldLangevin`
    state_a, state_b : :class:`Region` of the system's CVs
    settings : :class:`ShootingSettings`
    """

    def __init__(self, term: ForceFieldLangevin, state_a: Region, state_b: Region, settings: ShootingSettings):
        self.term, self.state_a, self.state_b, self.settings = term, state_a, state_b, settings
        self.cvs = state_a.cvs

    def in_a(self, pos: torch.Tensor) -> torch.Tensor:
        return self.state_a.contains(self.cvs(pos))

    def in_b(self, pos: torch.Tensor) -> torch.Tensor:
        return self.state_b.contains(self.cvs(pos))

    def _in_either(self, pos):
        values = self.cvs(pos)
        return self.state_a.contains(values) | self.state_b.contains(values)

    def valid(self, paths: PathBatch) -> torch.Tensor:
        """Bool (C,): which paths belong to the ensemble (A -> B; flexible: no interior frame in A or B)."""
        ok = self.in_a(paths.first()) & self.in_b(paths.last())
        if self.settings.flexible:
            ok &= paths.lengths <= self.settings.n_steps
            f, c = paths.positions.shape[:2]
            flat = paths.positions.reshape(f * c, *paths.positions.shape[2:])
            inside = torch.zeros(f * c, dtype=torch.bool, device=flat.device)
            finite = torch.isfinite(flat).flatten(1).all(1)
            inside[finite] = self._in_either(flat[finite])
            j = torch.arange(f, device=flat.device)[:, None]
            interior = (j > 0) & (j < paths.lengths[None])
            ok &= ~(inside.view(f, c) & interior).any(0)
        else:
            ok &= paths.lengths == self.settings.n_steps
        return ok

    # one move ------------------------------------------------------------------------------------------
    def _segments(self, pos, vel, limits, noise) -> Segment:
        s = self.settings
        stop = self._in_either if s.flexible else None
        return propagate(self.term, pos, vel, s.n_steps, s.dt, noise, stop=stop, limits=limits)

    def move(self, paths: PathBatch, move_index: int, next_id: int) -> tuple[PathBatch, torch.Tensor, int]:
        """One shooting move on every chain: returns the trial paths, whether each was accepted, the next id."""
        s = self.settings
        device = paths.lengths.device
        rng = np.random.default_rng([s.seed, move_index])
        # shooting frame: uniform over the interior frames 1 .. L - 1
        k = torch.as_tensor(1 + np.floor(rng.random(paths.n_paths) * (paths.lengths.cpu().numpy() - 1)), device=device)
        k = k.long()
        x, v, ids = paths.frame(k)
        noise = SeededNoise(s.seed * 2**64 + move_index)
        remaining = s.n_steps - k  # fixed length: the forward half's steps
        if s.move == "two-way":
            a = s.velocity_refresh
            fresh = self.term.thermal_speed(x) * noise.normal(0, x.shape, x.dtype, x.device, stream=2)
            v = (1 - a * a) ** 0.5 * v + a * fresh
            limits = None if s.flexible else torch.cat([k, remaining])
            both = self._segments(torch.cat([x, x]), torch.cat([-v, v]), limits, noise)
            batch, next_id = PathBatch.from_segment(both, torch.cat([ids, ids]), next_id)
            c = paths.n_paths
            backward = batch.select(torch.arange(c, device=device))
            forward = batch.select(torch.arange(c, 2 * c, device=device))
            trial = backward.reversed().then(forward)
            stopped = both.stopped[:c] & both.stopped[c:]
        else:
            forwards = torch.as_tensor(rng.random(paths.n_paths) < 0.5, device=device)
            limits = None if s.flexible else torch.where(forwards, remaining, k)
            seg = self._segments(x, torch.where(forwards[:, None, None], v, -v), limits, noise)
            half, next_id = PathBatch.from_segment(seg, ids, next_id)
            fwd_trial = paths.head(k).then(half)
            bwd_trial = half.reversed().then(paths.tail(k))
            trial = bwd_trial.where(forwards, fwd_trial).trimmed()
            stopped = seg.stopped
        accept = self.in_a(trial.first()) & self.in_b(trial.last())
        if s.flexible:
            accept &= stopped & (trial.lengths <= s.n_steps)
            ratio = (paths.lengths - 1).double() / (trial.lengths - 1).clamp_min(1).double()
            accept &= torch.as_tensor(rng.random(paths.n_paths), device=device) < ratio.clamp(max=1.0)
        else:
            accept &= trial.lengths == s.n_steps
        return trial, accept, next_id

    # the chains ---------------------------------------------------------------------------------------
    def run(
        self,
        initial: PathBatch,
        n_moves: int,
        out: str | Path | None = None,
        checkpoint_every: int = 10,
        progress: bool = True,
    ) -> PathEnsemble:
        """Run ``n_moves`` moves on the chains started from ``initial`` (C valid paths).

        With ``out``, new paths are appended to ``out/chunk_#####.npz`` and the chains' state to
        ``out/checkpoint.pt`` every ``checkpoint_every`` moves (atomically); a run with the same ``out`` resumes
        from there and continues with exactly the noise it would have drawn.
        """
        s = self.settings
        out = Path(out) if out is not None else None
        ckpt = out / "checkpoint.pt" if out is not None else None
        if ckpt is not None and ckpt.is_file():
            paths, ensemble, current, done, next_id = self._resume(ckpt)
        else:
            valid = self.valid(initial)
            if not valid.all():
                bad = torch.nonzero(~valid).flatten()[:5].tolist()
                raise ValueError(
                    f"{int((~valid).sum())} initial path(s) (first {bad}) are not in the ensemble: they must start "
                    f"in {self.state_a.name}, end in {self.state_b.name}"
                    + (" with no frame between in either state" if s.flexible else f" and have {s.n_steps} steps")
                    + "; build them with molscore.paths.fixed_length_paths (fixed length, with steering_bias if "
                    "transitions are rare) or harvest_transitions (flexible length)"
                )
            paths = initial
            ensemble = PathEnsemble(paths.n_paths, s.dt, s.save_every)
            current = ensemble.add(paths, np.arange(paths.n_paths), move=-1)
            done, next_id = 0, int(paths.ids.max()) + 1
        reference_ids = [set(paths.ids[: int(n) + 1, c].tolist()) for c, n in enumerate(paths.lengths)]
        initial_ids = [set(initial.ids[: int(n) + 1, c].tolist()) for c, n in enumerate(initial.lengths)]
        evaluations, clock = self.term.evaluations, time.perf_counter()
        for m in tqdm(range(done, n_moves), desc="shooting", disable=not progress, initial=done, total=n_moves):
            trial, accept, next_id = self.move(paths, m, next_id)
            paths = paths.where(accept, trial).trimmed()
            chains = np.nonzero(accept.cpu().numpy())[0]
            if len(chains):
                new = trial.select(accept)
                kept = [
                    bool(initial_ids[c] & set(new.ids[: int(new.lengths[i]) + 1, i].tolist())) for i, c in enumerate(chains)
                ]
                current[chains] = ensemble.add(new, chains, move=m, from_initial=kept)
            for c in chains:
                ids = set(paths.ids[: int(paths.lengths[c]) + 1, c].tolist())
                if not ids & reference_ids[c]:
                    ensemble.decorrelated[c] += 1
                    reference_ids[c] = ids
            ensemble.record(current, accept.cpu().numpy())
            ensemble.evaluations += self.term.evaluations - evaluations
            ensemble.seconds += time.perf_counter() - clock
            evaluations, clock = self.term.evaluations, time.perf_counter()
            if out is not None and ((m + 1) % checkpoint_every == 0 or m + 1 == n_moves):
                self._checkpoint(ckpt, paths, ensemble, current, m + 1, next_id)
        if ensemble.n_moves and not np.any(ensemble.accepted):
            warnings.warn(
                f"no trial path of {ensemble.n_moves} moves x {paths.n_paths} chains was accepted (none connected "
                f"{self.state_a.name} to {self.state_b.name}); the ensemble holds only the initial paths. Try one-way "
                "moves, a smaller velocity_refresh or longer paths",
                stacklevel=2,
            )
        return ensemble

    def _checkpoint(self, path: Path, paths: PathBatch, ensemble: PathEnsemble, current, moves: int, next_id: int):
        ensemble.write_chunk(path.parent)
        state = {
            "positions": paths.positions, "velocities": paths.velocities, "energies": paths.energies,
            "lengths": paths.lengths, "ids": paths.ids, "current": torch.as_tensor(current), "moves": moves,
            "next_id": next_id, "settings": asdict(self.settings), **ensemble.bookkeeping(),
        }  # fmt: skip
        with atomic_write(path) as tmp:
            torch.save(state, tmp)

    def _resume(self, path: Path):
        state = read_torch_file(path, "path-sampling checkpoint", "delete it to start the chains afresh")
        if state["settings"] != asdict(self.settings):
            raise ValueError(
                f"{path} was written with settings {state['settings']}, not {asdict(self.settings)}; "
                "use another output folder or the same settings"
            )
        paths = PathBatch(state["positions"], state["velocities"], state["energies"], state["lengths"], state["ids"])
        ensemble = PathEnsemble.restore(path.parent, state, self.settings.dt, self.settings.save_every, prune=True)
        return paths, ensemble, state["current"].numpy().copy(), int(state["moves"]), int(state["next_id"])
