"""Independent conformations from a trained model by integrating the diffusion backwards in time.

Reverse-time SDE  dx = [f - g^2 s] dt + g dW  (Euler-Maruyama), or the probability-flow ODE
dx/dt = f - 1/2 g^2 s (Heun), both from t = 1 to t_min with the Term / Integrator stack of Langevin dynamics
(the time steps are negative). The steps follow a time grid (:func:`time_grid`), uniform in t or uniform in a
logarithmic noise level, so the sampler calls the integrator once per grid interval with that interval's dt.
The reverse SDE can be followed by Langevin corrector steps at each new time (predictor-corrector sampling,
Song et al. 2021).

Noise: batch k draws from ``SeededNoise(seed * 1_000_003 + k)``; the prior from stream PRIOR_STREAM, predictor
step i from (step i, stream 0) as in :class:`~molscore.dynamics.Simulation`, and corrector step j after
predictor step i from (step i + 1, stream CORRECTOR_STREAM + j). The predictor's noise therefore does not
depend on ``corrector_steps``, and a run is a pure function of the seed and the arguments.
"""

import math
import numbers
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.diffusion.sde import VPSDE
from molscore.dynamics import ODE, EulerMaruyama, Heun, SeededNoise, SimulationError, State, Term
from molscore.geometry import remove_centroid
from molscore.models.diffusion_model import DiffusionModel

PRIOR_STREAM = 7
"""Noise stream of the prior draw (the integrator's steps use stream 0)."""
CORRECTOR_STREAM = 8
"""Corrector step j draws from stream CORRECTOR_STREAM + j."""
TIME_GRIDS = ("uniform", "log_sigma", "log_snr", "edm")
MAX_ABS_POSITION = 1e4
"""Diffusion coordinates beyond this count as a blow-up."""
CHECK_INTERVAL = 100
"""Steps between blow-up checks (and after the last step)."""

TimeGrid = Literal["uniform", "log_sigma", "log_snr", "edm"]


class ReverseDiffusion(Term):
    """Reverse-time SDE of a diffusion model, in diffusion coordinates ``x : (B, N, d)``."""

    def __init__(self, model: DiffusionModel):
        self.model, self.sde, self.centred = model, model.sde, model.spec.centred

    def drift(self, x: Tensor, t: float) -> Tensor:
        return self.sde.drift(x, t) - self.sde.beta(t) * self.model.score(x, t)

    def noise(self, z: Tensor, t: float) -> Tensor:
        return self.sde.beta(t) ** 0.5 * (remove_centroid(z) if self.centred else z)


class ProbabilityFlow(ODE):
    """Probability-flow ODE dx/dt = f - 1/2 g^2 s of a diffusion model (deterministic)."""

    def __init__(self, model: DiffusionModel):
        self.model, self.sde = model, model.sde
        super().__init__(self.drift)

    def drift(self, x: Tensor, t: float) -> Tensor:
        return self.sde.drift(x, t) - 0.5 * self.sde.beta(t) * self.model.score(x, t)


def prior_sample(model: DiffusionModel, n: int, noise: SeededNoise, device, dtype) -> Tensor:
    """Samples of the t = 1 marginal N(0, I), projected for centred systems, ``(n, N, d)``."""
    shape = (n, model.spec.n_particles, model.spec.dim)
    z = noise.normal(0, shape, dtype, device, PRIOR_STREAM)
    return remove_centroid(z) if model.spec.centred else z


# time grid -------------------------------------------------------------------------------------------------
def _check_grid(n_steps, kind: str) -> int:
    if kind not in TIME_GRIDS:
        raise ValueError(f"time_grid must be one of {list(TIME_GRIDS)}, got {kind!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    return int(n_steps)


def _schedule(sde: VPSDE, n_steps: int, kind: str) -> tuple[list[float], list[float]]:
    """Start times t_0 .. t_{n-1} and steps dt_0 .. dt_{n-1} (negative), Python floats.

    "uniform" is the constant dt = -(t_max - t_min) / n_steps with t accumulated as ``t + dt``, exactly the
    arithmetic of :class:`~molscore.dynamics.Simulation`, so it reproduces the earlier fixed-dt sampler bit for bit.
    """
    n_steps = _check_grid(n_steps, kind)
    if kind == "uniform":
        dt = -(sde.t_max - sde.t_min) / n_steps
        starts, t = [], float(sde.t_max)
        for _ in range(n_steps):
            starts.append(t)
            t = t + dt
        return starts, [dt] * n_steps
    grid = time_grid(sde, n_steps, kind).tolist()
    return grid[:-1], [b - a for a, b in zip(grid[:-1], grid[1:], strict=True)]


def _edm_levels(r_max: float, r_min: float, n_steps: int, rho: float = 7.0) -> Tensor:
    """Noise levels r_i = (r_max^(1/rho) + i / n (r_min^(1/rho) - r_max^(1/rho)))^rho, i = 0..n (Karras et al.)."""
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    return (r_max ** (1 / rho) + u * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho


def time_grid(sde: VPSDE, n_steps: int, kind: TimeGrid = "uniform") -> Tensor:
    """The n_steps + 1 times t_max = t_0 > t_1 > ... > t_n = t_min the sampler steps through, float64 (CPU).

    kind
        "uniform": uniform in t (the times of a fixed dt; the last one is t_min up to rounding).
        "log_sigma": uniform in log sigma(t) between sigma(t_max) and sigma(t_min), mapped back with
            ``sde.time_of_sigma``. sigma(t) saturates at 1 for large t, so for the linear VP schedule the first
            step is long (t = 1 -> 0.31 for 30 steps): the small-t end gets fine steps, the large-t end is coarse,
            and Euler-Maruyama's variance error there is large for data of unit scale (see the tests).
        "log_snr": uniform in log(sigma(t) / alpha(t)) = -1/2 log SNR(t) (the noise level of Karras et al.'s
            EDM), mapped back the same way with sigma = r / sqrt(1 + r^2) for r = sigma / alpha. Fine steps at
            small t like "log_sigma", but no long first step (t = 1 -> 0.96 for 30 steps).
        "edm": Karras et al.'s (2022) grid in the same level r = sigma / alpha, r_i^(1/7) uniform: between
            "uniform" (more steps at large and middle t, where basin populations are set) and "log_snr" (fine
            steps at small t, where bonds are).
    """
    n_steps = _check_grid(n_steps, kind)
    if kind == "uniform":
        starts, steps = _schedule(sde, n_steps, kind)
        return torch.tensor([*starts, starts[-1] + steps[-1]], dtype=torch.float64)
    ends = torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64)
    sigma = sde.sigma(ends)
    level = sigma if kind == "log_sigma" else sigma / sde.alpha(ends)
    if kind == "edm":
        level = _edm_levels(float(level[0]), float(level[1]), n_steps)
    else:
        level = torch.linspace(float(level[0].log()), float(level[1].log()), n_steps + 1, dtype=torch.float64).exp()
    t = sde.time_of_sigma(level if kind == "log_sigma" else level / torch.sqrt(1 + level**2))  # r -> sigma -> t
    t[0], t[-1] = sde.t_max, sde.t_min  # exact end points (the round trip through sigma is not)
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"the {kind} time grid with {n_steps} steps is not strictly decreasing in float64; use fewer steps")
    return t


# predictor-corrector ---------------------------------------------------------------------------------------
def score_evaluations(method: Literal["sde", "ode"], n_steps: int, corrector_steps: int = 0) -> int:
    """Score evaluations per sample of :func:`sample`: Euler-Maruyama 1 per step, Heun 2 per step (it does not
    reuse the end-point drift), each Langevin corrector step 1. The prior and the grid cost none."""
    per_step = {"sde": 1, "ode": 2}.get(method)
    if per_step is None:
        raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
    _check_corrector(method, corrector_steps, 0.16)
    return int(n_steps) * (per_step + int(corrector_steps))


def _check_corrector(method: str, corrector_steps, snr) -> None:
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, numbers.Integral) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if method == "ode" and corrector_steps > 0:
        raise ValueError(
            f"corrector_steps={corrector_steps} with method='ode': Langevin correctors add noise, which breaks the "
            "deterministic probability-flow map; use method='sde' for predictor-corrector sampling"
        )
    if isinstance(snr, bool) or not isinstance(snr, numbers.Real) or not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a positive finite number, got {snr!r}")


def langevin_corrector(
    model: DiffusionModel, x: Tensor, t: float, snr: float, noise: SeededNoise, step: int, stream: int
) -> Tensor:
    """One Langevin step x + eps s(x, t) + sqrt(2 eps) z at fixed t (Song et al. 2021's corrector).

    eps = 2 (snr <||z||> / <||s||>)^2, norms over all coordinates of a sample and averaged over the batch, as in
    Song et al.'s code (their extra factor alpha_i = 1 - beta_i / N ~ 1 is left out). A per-sample eps (without the
    averages) makes the step depend on the sample's own position, which changes the stationary distribution: with
    the exact score of a 12-dimensional Gaussian, 200 predictor steps with one such corrector each gave a variance
    ~40% too high (measured; 1% without the corrector). With the batch averages one sample's influence on eps is
    O(1 / batch) and for a Gaussian the stationary variance is the ULA value v (1 + snr^2); a sample then depends on
    the others in its batch (still a pure function of seed and batch_size). z is projected onto the zero-centroid
    subspace for centred models, so samples stay in it.
    """
    s = model.score(x, t)
    z = noise.normal(step, x.shape, x.dtype, x.device, stream)
    if model.spec.centred:
        z = remove_centroid(z)
    z_norm = z.flatten(1).norm(dim=1).mean()
    s_norm = s.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
    eps = 2 * (snr * z_norm / s_norm) ** 2
    return x + eps * s + torch.sqrt(2 * eps) * z


def _check_finite(x: Tensor, step: int, t: float) -> None:
    bad = ~torch.isfinite(x).flatten(1).all(1) | (x.abs() > MAX_ABS_POSITION).flatten(1).any(1)
    if bool(bad.any()):
        first = torch.nonzero(bad).flatten()[:5].tolist()
        raise SimulationError(
            f"diffusion sampling blew up at step {step} (t = {t:.4g}): {int(bad.sum())} samples non-finite or beyond "
            f"|x| = {MAX_ABS_POSITION:g} (first: {first}); use more steps or a finer time grid",
            step,
            t,
        )


def _integrate(model, term, integrator, x, starts, steps, noise, corrector_steps, snr) -> Tensor:
    state = integrator.init(term, State(x, t=starts[0]), noise)
    _check_finite(state.pos, 0, starts[0])
    for i, (t, dt) in enumerate(zip(starts, steps, strict=True)):
        # restart each step from the grid time, so rounding in t + dt does not accumulate (uniform: identical)
        state = integrator.step(term, State(state.pos, None, t, i), dt, noise)
        for j in range(corrector_steps):
            pos = langevin_corrector(model, state.pos, state.t, snr, noise, state.step, CORRECTOR_STREAM + j)
            state = State(pos, None, state.t, state.step)
        if state.step % CHECK_INTERVAL == 0 or i == len(starts) - 1:
            _check_finite(state.pos, state.step, state.t)
    return state.pos


def sample(
    model: DiffusionModel,
    n: int,
    method: Literal["sde", "ode"] = "sde",
    n_steps: int = 1000,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
    *,
    time_grid: TimeGrid = "uniform",
    corrector_steps: int = 0,
    snr: float = 0.16,
) -> Tensor:
    """Draw ``n`` conformations from a trained model.

    Parameters
    ----------
    model : trained diffusion model (its device and dtype are used)
    n : number of samples
    method : "sde" (reverse SDE, Euler-Maruyama) or "ode" (probability flow, Heun)
    n_steps : predictor (integration) steps from t = 1 to t_min
    batch_size : samples integrated together
    seed : batch k uses noise seed (seed, k), so results do not depend on how many run at once elsewhere
    time_grid : "uniform" in t, "log_sigma" (uniform in log sigma(t)) or "log_snr" (uniform in log sigma/alpha);
        see :func:`time_grid`
    corrector_steps : Langevin corrector steps after each predictor step, at the new time (method "sde" only)
    snr : signal-to-noise ratio that sets the corrector's step (:func:`langevin_corrector`)

    :func:`score_evaluations` gives the cost: n_steps (1 + corrector_steps) score evaluations per sample for
    "sde", 2 n_steps for "ode".

    Returns
    -------
    Tensor (n, N, d), nm (centred for centred systems)
    """
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
    if n < 1 or n_steps < 1 or batch_size < 1:
        raise ValueError(f"n, n_steps and batch_size must be positive, got {n}, {n_steps}, {batch_size}")
    _check_corrector(method, corrector_steps, snr)
    starts, steps = _schedule(model.sde, n_steps, time_grid)
    device, dtype = model.device, model.dtype
    term = ReverseDiffusion(model) if method == "sde" else ProbabilityFlow(model)
    integrator = EulerMaruyama() if method == "sde" else Heun()
    out = []
    batches = tqdm(range(0, n, batch_size), disable=not progress, desc=f"sampling ({method})")
    with torch.no_grad():
        for k, start in enumerate(batches):
            noise = SeededNoise(seed * 1_000_003 + k)
            x1 = prior_sample(model, min(batch_size, n - start), noise, device, dtype)
            x0 = _integrate(model, term, integrator, x1, starts, steps, noise, int(corrector_steps), float(snr))
            out.append(model.to_physical(x0).detach())
    return torch.cat(out)


def denoise(
    model: DiffusionModel,
    pos: Tensor,
    t_start: float,
    n_steps: int = 300,
    batch_size: int = 4096,
    seed: int = 0,
    *,
    time_grid: TimeGrid = "edm",
    corrector_steps: int = 0,
    snr: float = 0.16,
) -> Tensor:
    """Noise conformations to ``t_start`` and run the reverse SDE from there to t_min (partial denoising).

    With the exact score the output has the data's distribution whatever ``t_start``; with a learned one, the
    output's departure from the input distribution as ``t_start`` grows says at which diffusion times the model
    is wrong (e.g. the phi > 0 population of alanine dipeptide once samples start from t >= 0.3). The steps are
    those of the full ``n_steps`` grid below ``t_start`` (the noise is applied at the first grid time <=
    ``t_start``); noise as :func:`sample` (batch k: ``SeededNoise(seed * 1_000_003 + k)``, the forward noise from
    stream PRIOR_STREAM).

    ``pos : (B, N, d)`` nm -> ``(B, N, d)`` nm (centred for centred systems).
    """
    if not model.sde.t_min < t_start <= model.sde.t_max:
        raise ValueError(f"t_start must lie in (t_min, t_max] = ({model.sde.t_min}, {model.sde.t_max}], got {t_start}")
    if pos.ndim != 3 or tuple(pos.shape[1:]) != (model.spec.n_particles, model.spec.dim):
        raise ValueError(f"pos must be (B, {model.spec.n_particles}, {model.spec.dim}) nm, got {tuple(pos.shape)}")
    _check_corrector("sde", corrector_steps, snr)
    starts, steps = _schedule(model.sde, n_steps, time_grid)
    first = next(i for i, t in enumerate(starts) if t <= t_start + 1e-12)
    starts, steps = starts[first:], steps[first:]
    term, integrator = ReverseDiffusion(model), EulerMaruyama()
    out = []
    with torch.no_grad():
        for k, start in enumerate(range(0, len(pos), batch_size)):
            noise = SeededNoise(seed * 1_000_003 + k)
            x0 = model.to_diffusion(pos[start : start + batch_size].to(model.device, model.dtype))
            eps = noise.normal(0, x0.shape, model.dtype, model.device, PRIOR_STREAM)
            eps = remove_centroid(eps) if model.spec.centred else eps
            t = torch.full((len(x0),), starts[0], dtype=model.dtype, device=model.device)
            x = model.sde.perturb(x0, t, eps)
            x = _integrate(model, term, integrator, x, starts, steps, noise, int(corrector_steps), float(snr))
            out.append(model.to_physical(x).detach())
    return torch.cat(out)
