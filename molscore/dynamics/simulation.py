"""The simulation loop: steps a term with an integrator, calls reporters, guards against blow-ups and
writes checkpoints from which a run resumes bit for bit.
"""

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from molscore.dynamics.integrators import Integrator
from molscore.dynamics.noise import SeededNoise
from molscore.dynamics.state import State
from molscore.dynamics.terms import Term
from molscore.files import atomic_write, read_torch_file

CHECKPOINT_FORMAT = 1


class SimulationError(RuntimeError):
    """The simulation blew up: non-finite coordinates, positions beyond ``max_abs_position`` or a replica
    flagged by a guard. ``step`` and ``t`` say when, ``last_good_step`` the last state that passed."""

    def __init__(self, message: str, step: int = -1, t: float = float("nan"), last_good_step: int | None = None):
        super().__init__(message)
        self.step, self.t, self.last_good_step = step, t, last_good_step


def read_checkpoint(path, map_location=None) -> dict:
    """Load a checkpoint written by :meth:`Simulation.save_checkpoint` (plain tensors and numbers only)."""
    fix = "delete it to restart the simulation from its start frames (the chunks after its step are then rewritten)"
    ckpt = read_torch_file(path, "simulation checkpoint", fix, map_location=map_location)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a molscore simulation checkpoint (format {ckpt.get('format')!r})")
    return ckpt


class Simulation:
    """Run a term forward with an integrator, like OpenMM's ``Simulation``.

    The noise of step k is ``noise.normal(k, ...)``, so the trajectory is a function of the seed and the
    initial state only; a run resumed from a checkpoint continues it exactly.

    Parameters
    ----------
    term : what to integrate (:mod:`molscore.dynamics.terms`)
    integrator : how to step it; ``integrator.init`` is applied to ``state`` (e.g. draws velocities)
    state : initial State, positions (B, N, d) nm
    dt : time step, ps (negative for reverse-time samplers with Euler-Maruyama or Heun)
    noise : SeededNoise (None for deterministic terms)
    reporters : objects with ``due``, ``report``, ``flush``, ``state_dict``, ``load_state_dict``
    max_abs_position : nm; a replica with a coordinate beyond it counts as exploded
    check_interval : steps between blow-up checks (also checked whenever a reporter records or a
        checkpoint is written, so no bad frame reaches disk)
    guards : callables ``guard(pos) -> (B,) bool`` flagging broken replicas, with ``guard.describe(pos, bad)``
        for the message (e.g. :class:`~molscore.dynamics.guards.BondLengthGuard`), applied at every check
    checkpoint_path, checkpoint_interval : write a checkpoint there every ``checkpoint_interval`` steps (and
        at the end of each :meth:`run`), always from a state that passed the blow-up check
    """

    def __init__(
        self,
        term: Term,
        integrator: Integrator,
        state: State,
        dt: float,
        noise: SeededNoise | None,
        reporters=(),
        max_abs_position: float = 1e3,
        check_interval: int = 100,
        checkpoint_path=None,
        checkpoint_interval: int | None = None,
        guards=(),
    ):
        dt = float(dt)
        if dt == 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be finite and non-zero (ps), got {dt}")
        if int(check_interval) < 1 or not max_abs_position > 0:
            raise ValueError(f"need check_interval >= 1 and max_abs_position > 0, got {check_interval}, {max_abs_position}")
        if checkpoint_interval is not None and (checkpoint_path is None or int(checkpoint_interval) < 1):
            raise ValueError("checkpoint_interval needs a checkpoint_path and must be >= 1")
        self.term, self.integrator, self.dt, self.noise = term, integrator, dt, noise
        self.reporters, self.guards = list(reporters), list(guards)
        self.max_abs_position, self.check_interval = float(max_abs_position), int(check_interval)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_interval = None if checkpoint_interval is None else int(checkpoint_interval)
        self.state = integrator.init(term, state, noise)
        self.last_good_step = None  # step of the last state that passed the blow-up check
        self.last_checkpoint_step = None

    def run(self, n_steps: int, progress: bool = True, max_seconds: float | None = None) -> State:
        """Take ``n_steps`` steps (under ``torch.no_grad``; forces by autograd enable it themselves), or stop
        earlier when ``max_seconds`` of wall-clock time have passed (the state is checkpointed; run again to go on).

        Raises
        ------
        SimulationError : when replicas blow up; reporters are flushed first, so all frames up to the last
            good report stay on disk, and the checkpoint (if any) holds the last good checkpointed state.
        """
        if int(n_steps) < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        began = time.perf_counter()
        with torch.no_grad(), tqdm(total=int(n_steps), disable=not progress, unit="step", leave=False) as bar:
            try:
                self._check()
                self._report([r for r in self.reporters if r.due(self.state.step)])
                for _ in range(int(n_steps)):
                    self.state = self.integrator.step(self.term, self.state, self.dt, self.noise)
                    step = self.state.step
                    due = [r for r in self.reporters if r.due(step)]
                    checkpoint = self.checkpoint_interval is not None and step % self.checkpoint_interval == 0
                    if due or checkpoint or step % self.check_interval == 0:
                        self._check()
                    self._report(due)
                    if checkpoint:
                        self.save_checkpoint(self.checkpoint_path)
                    bar.update(1)
                    if max_seconds is not None and time.perf_counter() - began > max_seconds:
                        break
                self._check()
            finally:
                for r in self.reporters:
                    r.flush()
        if self.checkpoint_path is not None and self.last_checkpoint_step != self.state.step:
            self.save_checkpoint(self.checkpoint_path)
        return self.state

    @property
    def _seed(self) -> int | None:
        return None if self.noise is None else self.noise.seed

    def _report(self, reporters) -> None:
        if not reporters:
            return
        energy = None
        if any(getattr(r, "needs_energy", False) for r in reporters):
            energy = self.state.cached("energy")
            if energy is None:
                energy = self.term.energy(self.state.pos)
        for r in reporters:
            r.report(self.state, energy)

    def _check(self) -> None:
        """Raise SimulationError if a replica is non-finite or beyond max_abs_position."""
        pos, vel = self.state.pos, self.state.vel
        bad = ~torch.isfinite(pos).flatten(1).all(1) | (pos.abs() > self.max_abs_position).flatten(1).any(1)
        if vel is not None:
            bad |= ~torch.isfinite(vel).flatten(1).all(1)
        flagged = [(g, g(pos)) for g in self.guards] if not bool(bad.any()) else []
        for _, by_guard in flagged:
            bad |= by_guard
        if not bool(bad.any()):
            self.last_good_step = self.state.step
            return
        for r in self.reporters:
            r.flush()
        why = [g.describe(pos, b) for g, b in flagged if bool(b.any())]
        first = torch.nonzero(bad).flatten()[:5].tolist()
        kept = (
            f"; the checkpoint {self.checkpoint_path} holds step {self.last_checkpoint_step}"
            if self.checkpoint_path is not None and self.last_checkpoint_step is not None
            else ""
        )
        what = "; ".join(why) if why else f"non-finite coordinates or |x| > max_abs_position = {self.max_abs_position:g} nm"
        raise SimulationError(
            f"simulation blew up at step {self.state.step} (t = {self.state.t:.6g}): {int(bad.sum())} of "
            f"{len(bad)} replicas broken (replicas {first}): {what}; last good check at step "
            f"{self.last_good_step}. Try a smaller timestep (dt = {self.dt:g} now), check the force field "
            f"or drift for singularities and the starting positions for overlaps. "
            f"Frames reported before the blow-up were written to disk{kept}.",
            self.state.step,
            self.state.t,
            self.last_good_step,
        )

    def save_checkpoint(self, path) -> None:
        """Write state (pos, vel, t, step), seed, dt and reporter states atomically to ``path``.

        Reporters are flushed first, so the files on disk and the checkpoint describe the same moment.
        """
        path = Path(path)
        for r in self.reporters:
            r.flush()
        s = self.state
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "pos": s.pos.detach(),
            "vel": None if s.vel is None else s.vel.detach(),
            "t": s.t,
            "step": s.step,
            "seed": self._seed,
            "dt": self.dt,
            "reporters": [r.state_dict() for r in self.reporters],
        }
        with atomic_write(path) as tmp:  # a unique temporary name: two writers never share one
            torch.save(ckpt, tmp)
        self.last_checkpoint_step = s.step

    def load_checkpoint(self, path, map_location=None) -> None:
        """Continue from ``path``: restore the state and the reporters (which drop frames written after it).

        The checkpoint's seed and dt must equal this simulation's, or the continuation would not be the
        same trajectory.
        """
        ckpt = read_checkpoint(path, map_location)
        if ckpt["seed"] != self._seed or ckpt["dt"] != self.dt:
            raise ValueError(
                f"{path} was written with seed {ckpt['seed']} and dt {ckpt['dt']}, this simulation has "
                f"seed {self._seed} and dt {self.dt}; pass SeededNoise({ckpt['seed']}) and "
                f"dt={ckpt['dt']} to continue the same trajectory (or start a new Simulation from the "
                "checkpoint's State)"
            )
        if len(ckpt["reporters"]) != len(self.reporters):
            raise ValueError(
                f"{path} holds the state of {len(ckpt['reporters'])} reporter(s), this simulation has "
                f"{len(self.reporters)}; pass the same reporters, in the same order, as the interrupted run"
            )
        state = State(ckpt["pos"], ckpt["vel"], ckpt["t"], ckpt["step"])
        self.state = self.integrator.init(self.term, state, self.noise)
        for r, d in zip(self.reporters, ckpt["reporters"], strict=True):
            r.load_state_dict(d)
        self.last_checkpoint_step = self.state.step

    @classmethod
    def from_checkpoint(
        cls,
        path,
        term: Term,
        integrator: Integrator,
        reporters=(),
        dt: float | None = None,
        noise: SeededNoise | None = None,
        map_location=None,
        **kwargs,
    ) -> "Simulation":
        """Build a Simulation that continues from ``path``; dt and the seed default to the checkpoint's.

        ``kwargs`` go to the constructor (max_abs_position, check_interval, checkpoint_path, ...).
        """
        ckpt = read_checkpoint(path, map_location)
        dt = ckpt["dt"] if dt is None else dt
        if noise is None and ckpt["seed"] is not None:
            noise = SeededNoise(ckpt["seed"])
        state = State(ckpt["pos"], ckpt["vel"], ckpt["t"], ckpt["step"])
        sim = cls(term, integrator, state, dt, noise, reporters, **kwargs)
        sim.load_checkpoint(path, map_location)
        return sim
