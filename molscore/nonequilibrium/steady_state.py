"""Steady-state trajectories of a driven system, with the path entropy accumulated on the fly.

Euler-Maruyama x' = x + b(x) dt + sqrt(2 D dt) z over B replicas at once, one drift evaluation per step;
the drift at x' is reused for the Stratonovich (trapezoidal) path increment

    Delta S = (x' - x) . D^-1 (b(x) + b(x')) / 2        (kB),

summed over windows of ``stride`` steps. Per window the run keeps the configuration at its start, the
configuration one step later (a transition pair for short-time current estimators), the path entropy and
any user currents. Noise comes from :class:`~molscore.dynamics.noise.SeededNoise`, so a run interrupted and
resumed from its checkpoint continues exactly.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.dynamics.noise import SeededNoise
from molscore.dynamics.simulation import SimulationError
from molscore.files import atomic_write, read_torch_file
from molscore.nonequilibrium.driven_system import DrivenSystem

Increment = Callable[[Tensor, Tensor], Tensor]
"""A current's increment over one step: (x (B, N, d), x' (B, N, d)) -> (B,)."""


@dataclass
class SteadyStateRun:
    """Windows of a steady-state run, time-major: index [w, r] is window w of replica r.

    Attributes
    ----------
    samples : Tensor (W, B, N, d), configuration at the start of each window
    next_samples : Tensor (W, B, N, d), one time step later
    path_increments : Tensor (W, B), Stratonovich path entropy of each window, kB
    currents : name -> Tensor (W, B), each user current integrated over each window
    dt : time step; stride : steps per window; seconds : wall-clock time of the production steps
    """

    samples: Tensor
    next_samples: Tensor
    path_increments: Tensor
    currents: dict = field(default_factory=dict)
    dt: float = 1e-3
    stride: int = 1
    seconds: float = float("nan")

    @property
    def window_time(self) -> float:
        return self.dt * self.stride

    @property
    def n_steps(self) -> int:
        """Production steps over all replicas."""
        return self.samples.shape[0] * self.samples.shape[1] * self.stride

    def first(self, n_windows: int) -> "SteadyStateRun":
        """The run cut to its first ``n_windows`` windows (for cost-versus-accuracy curves)."""
        return SteadyStateRun(
            self.samples[:n_windows], self.next_samples[:n_windows], self.path_increments[:n_windows],
            {k: v[:n_windows] for k, v in self.currents.items()}, self.dt, self.stride,
            self.seconds * n_windows / max(len(self.samples), 1),
        )  # fmt: skip


def _save_atomic(obj, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def run_steady_state(
    system: DrivenSystem,
    n_replicas: int = 64,
    n_windows: int = 1000,
    stride: int = 10,
    burn_in: int | None = None,
    dt: float | None = None,
    seed: int = 0,
    currents: dict[str, Increment] | None = None,
    device="cpu",
    dtype=torch.float64,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
) -> SteadyStateRun:
    """Simulate ``n_replicas`` replicas of ``system`` for ``burn_in`` + ``n_windows * stride`` steps.

    Parameters
    ----------
    dt : time step (default ``system.timestep``)
    burn_in : steps discarded first (default: 10 relaxation times of the system)
    currents : extra currents to integrate, name -> increment(x, x') (B,); e.g. a displacement or dihedral change
    checkpoint : file to write the state and the windows so far every ``checkpoint_every`` windows (atomically);
        if it exists, the run resumes from it (same seed and settings required)
    """
    dt = float(system.timestep if dt is None else dt)
    if not dt > 0 or not math.isfinite(dt):
        raise ValueError(f"time step dt must be positive, got {dt}")
    if burn_in is None:
        burn_in = math.ceil(10 * system.relaxation_time / dt)
    if n_replicas < 1 or n_windows < 1 or stride < 1 or burn_in < 0:
        raise ValueError(
            f"need n_replicas, n_windows, stride >= 1 and burn_in >= 0, got {n_replicas}, {n_windows}, {stride}, {burn_in}"
        )
    currents = dict(currents or {})
    noise = SeededNoise(seed)
    diff = system.diffusion.to(dtype=dtype, device=device)
    inv_d, amp = 1.0 / diff, torch.sqrt(2 * diff * dt)
    shape = (n_replicas, *system.shape)
    settings = {
        "seed": seed,
        "n_replicas": n_replicas,
        "n_windows": n_windows,
        "stride": stride,
        "burn_in": burn_in,
        "dt": dt,
    }

    w0, step = 0, 0
    x = system.initial.to(dtype=dtype, device=device).expand(shape).clone()
    store = {
        "samples": torch.empty((n_windows, *shape), dtype=dtype),
        "next_samples": torch.empty((n_windows, *shape), dtype=dtype),
        "path_increments": torch.empty((n_windows, n_replicas), dtype=dtype),
        **{f"current:{k}": torch.empty((n_windows, n_replicas), dtype=dtype) for k in currents},
    }
    seconds = 0.0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.is_file():
        ckpt = read_torch_file(checkpoint, "steady-state checkpoint", "delete it to start the windows afresh")
        if ckpt["settings"] != settings:
            raise ValueError(
                f"checkpoint {checkpoint} was written with settings {ckpt['settings']}, not {settings}; "
                "delete it or match them"
            )
        w0, step, seconds = int(ckpt["window"]), int(ckpt["step"]), float(ckpt["seconds"])
        x = ckpt["x"].to(dtype=dtype, device=device)
        for key in store:
            store[key][:w0] = ckpt[key][:w0]

    def advance(x, b):
        nonlocal step
        z = noise.normal(step, shape, dtype, device)
        x_new = x + b * dt + amp * z
        b_new = system.drift(x_new)
        step += 1
        if b_new.shape != x_new.shape:
            raise ValueError(f"{system.name}: drift returned shape {tuple(b_new.shape)} for positions {tuple(x_new.shape)}")
        return x_new, b_new

    def check(x):
        if not torch.isfinite(x).all():
            raise SimulationError(
                f"{system.name}: non-finite coordinates at step {step}; lower dt (now {dt})", step, step * dt
            )

    with torch.no_grad():
        b = system.drift(x)
        for _ in range(burn_in - min(step, burn_in)):
            x, b = advance(x, b)
        check(x)
        bar = tqdm(total=n_windows, initial=w0, desc=f"{system.name} steady state", disable=not progress, leave=False)
        start = time.perf_counter()
        for w in range(w0, n_windows):
            store["samples"][w] = x.cpu()
            entropy = torch.zeros(n_replicas, dtype=dtype, device=device)
            totals = {k: torch.zeros(n_replicas, dtype=dtype, device=device) for k in currents}
            for j in range(stride):
                x_new, b_new = advance(x, b)
                entropy += ((x_new - x) * (b + b_new) * inv_d).flatten(1).sum(1) / 2
                for k, fn in currents.items():
                    totals[k] += fn(x, x_new)
                if j == 0:
                    store["next_samples"][w] = x_new.cpu()
                x, b = x_new, b_new
            check(x)
            store["path_increments"][w] = entropy.cpu()
            for k in currents:
                store[f"current:{k}"][w] = totals[k].cpu()
            bar.update()
            if checkpoint is not None and ((w + 1) % checkpoint_every == 0 or w + 1 == n_windows):
                elapsed = seconds + time.perf_counter() - start
                _save_atomic(
                    {"settings": settings, "window": w + 1, "step": step, "seconds": elapsed, "x": x.cpu(), **store},
                    checkpoint,
                )
        bar.close()
        seconds += time.perf_counter() - start
    return SteadyStateRun(
        store["samples"], store["next_samples"], store["path_increments"],
        {k: store[f"current:{k}"] for k in currents}, dt, stride, seconds,
    )  # fmt: skip
