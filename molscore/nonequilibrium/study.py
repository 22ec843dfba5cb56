"""One entropy-production study of a driven system: simulate it and its equilibrium control, apply every
estimator, and tabulate estimate against exact value with error bars.
"""

import time
from dataclasses import dataclass, field

from molscore.nonequilibrium.driven_system import DrivenSystem
from molscore.nonequilibrium.estimators import Estimate, drift_identity, path_estimate, score_based
from molscore.nonequilibrium.learned_current import learned_tur_estimate
from molscore.nonequilibrium.learned_score import fit_steady_state_score
from molscore.nonequilibrium.steady_state import SteadyStateRun, run_steady_state


@dataclass
class StudySettings:
    """How long to simulate and how hard to learn.

    replicas, windows, stride : the steady-state run (windows of ``stride`` steps per replica)
    identity_frames : frames (over all replicas) for the drift identity, taken evenly from the run
    score_steps, score_width, fp_weight : steady-state score training (first half of the run: steps, width of the
        three hidden layers, FP-residual weight); evaluated on the second half
    tur_steps : training steps of the learned TUR current
    """

    replicas: int = 256
    windows: int = 2000
    stride: int = 10
    identity_frames: int = 200000
    score_steps: int = 1500
    score_frames: int = 50000
    score_width: int = 128
    fp_weight: float = 10.0
    tur_steps: int = 200
    seed: int = 0


@dataclass
class StudyResult:
    system: DrivenSystem
    estimates: dict = field(default_factory=dict)  # name -> Estimate
    control: dict = field(default_factory=dict)  # name -> Estimate on the equilibrium control
    run: SteadyStateRun | None = None
    score: object = None
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "system": self.system.name,
            "description": self.system.description,
            "exact": self.system.exact,
            "estimates": {k: e.as_dict() for k, e in self.estimates.items()},
            "control": {k: e.as_dict() for k, e in self.control.items()},
            "seconds": self.seconds,
        }


def _thin(samples, n: int):
    """Every k-th window of time-major samples (T, B, N, d), keeping about ``n`` frames over all replicas."""
    t, b = samples.shape[:2]
    return samples[:: max(1, round(t * b / n))]


def _estimate(system: DrivenSystem, settings: StudySettings, progress: bool) -> tuple[dict, SteadyStateRun, object, dict]:
    seconds = {}
    start = time.perf_counter()
    run = run_steady_state(
        system, settings.replicas, settings.windows, settings.stride, seed=settings.seed, progress=progress
    )
    seconds["simulation"] = time.perf_counter() - start
    out: dict[str, Estimate] = {}
    out["drift identity"] = drift_identity(system.drift, system.diffusion, _thin(run.samples, settings.identity_frames))
    out["path"] = path_estimate(run.path_increments, run.window_time)
    half = len(run.samples) // 2
    score, log = fit_steady_state_score(
        system, _thin(run.samples[:half], settings.score_frames), steps=settings.score_steps,
        fp_weight=settings.fp_weight,
        hidden=(settings.score_width,) * 3, seed=settings.seed, progress=progress,
    )  # fmt: skip
    out["score"] = score_based(system.drift, system.diffusion, score, _thin(run.samples[half:], settings.identity_frames))
    out["score"].seconds += log["seconds"]
    out["TUR"], _ = learned_tur_estimate(
        run.samples, run.next_samples, run.dt, system.period, steps=settings.tur_steps, seed=settings.seed, progress=progress
    )
    seconds["estimators"] = time.perf_counter() - start - seconds["simulation"]
    return out, run, score, seconds


def study(system: DrivenSystem, settings: StudySettings | None = None, progress: bool = True) -> StudyResult:
    """Simulate ``system`` and its control and apply every estimator.

    ``estimates`` gets "drift identity", "path", "score" (raw square form), "score - control bias" (when the
    system has a control) and "TUR" (learned-current lower bound); ``control`` the same on the control.
    """
    settings = settings or StudySettings()
    result = StudyResult(system)
    result.estimates, result.run, result.score, result.seconds = _estimate(system, settings, progress)
    if system.control is not None:
        result.control, _, _, seconds = _estimate(system.control, settings, progress)
        result.seconds.update({f"control {k}": v for k, v in seconds.items()})
        result.estimates["score - control bias"] = result.estimates["score"].minus(
            result.control["score"], "score - control bias"
        )
    return result


def _cell(e: Estimate | None, exact: float | None) -> str:
    if e is None:
        return "-"
    text = f"{e.value:.4g} ± {e.error:.2g}"
    if exact:
        text += f" ({100 * (e.value - exact) / exact:+.1f}%)"
    return text


COLUMNS = ["drift identity", "path", "score", "score - control bias", "TUR"]


def markdown_table(results: list[StudyResult]) -> str:
    """Estimate ± standard error (relative deviation from exact) per system and estimator, controls below."""
    head = "| system | exact | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in results:
        exact = r.system.exact
        lines.append(f"| {r.system.name} | {exact:.5g} | " if exact is not None else f"| {r.system.name} | - | ")
        lines[-1] += " | ".join(_cell(r.estimates.get(c), exact) for c in COLUMNS) + " |"
    for r in results:
        if r.control:
            lines.append(
                f"| {r.system.name} control | 0 | " + " | ".join(_cell(r.control.get(c), None) for c in COLUMNS) + " |"
            )
    return "\n".join(lines)
