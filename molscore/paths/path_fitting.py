"""Maximum-likelihood fits of the learned path sampler to samples of its target ensemble (forward KL).

The log-variance / trajectory-balance training of :mod:`molscore.paths.learned_sampler` learns from the sampler's
own paths: it minimises a reverse divergence, which is mode-seeking, and once the control pushes paths into B the
weights of the paths it rarely draws blow up (the ESS collapses). Exact samples of the target ensemble are at hand:
shooting (any system) or brute force (:func:`~molscore.paths.brute_force.fixed_length_paths`, small systems). Fitting
to them minimises KL(target || sampler), which covers the target's mass, as importance weights need:

- control: maximise mean_tau w_tau log p_theta(tau | x_0, v_0) over target paths tau (w = 1 for exact samples,
  normalised importance weights for reweighted paths): least squares of the O-step draws z_0 of the unbiased dynamics
  on the control's drift delta_theta (their conditional mean along target paths is the Doob h-transform drift);
- start proposal: target starts are distributed as equilibrium-in-A times P(B | x_0, v_0), so a classifier of target
  starts against equilibrium starts (logistic loss, balanced classes) has the logit log P(B | x_0, v_0) + const:
  with log Z = logit, the proposal q_i ∝ Z_i over a :class:`~molscore.paths.controlled_paths.StartPool` is the
  target's start marginal.
"""

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from molscore.paths.controlled_paths import Rollout, StartPool, log_likelihood_ratio
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin


@dataclass
class FitSettings:
    """Adam with a one-cycle learning-rate schedule over ``n_steps`` minibatches of ``batch_size`` paths (control)
    or starts of each class (start classifier); ``learning_rate`` is the peak; ``weight_decay`` of AdamW (0: Adam);
    with held-out paths, the control is scored on them every ``validate_every`` steps and the best state is kept
    (early stopping); ``seed`` of the minibatches."""

    n_steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    validate_every: int = 50
    seed: int = 0


@dataclass
class FitHistory:
    """Of a control fit: ``loss`` per step (-mean log p_theta / p_0 of the minibatch, nats per path); with held-out
    paths, ``held_out`` (step, their weighted mean log p_theta / p_0) per check and ``best_step``, the step whose
    state the control keeps (0: the initial one)."""

    loss: list[float] = field(default_factory=list)
    held_out: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None


def target_rollout(paths: PathBatch, term: ForceFieldLangevin, chunk_size: int = 4096) -> Rollout:
    """Fixed-length paths (all of one length, finite) as a :class:`Rollout`: positions, v_0 and the unbiased forces
    at every frame (computed here, ``chunk_size`` frames at a time: (T + 1) C energy evaluations, added to
    ``term.evaluations``)."""
    if paths.n_paths == 0:
        raise ValueError("no paths to fit")
    if not bool((paths.lengths == paths.lengths[0]).all()):
        raise ValueError("the paths have different lengths; the learned sampler fits fixed-length paths only")
    pos = paths.positions[: int(paths.lengths[0]) + 1]
    v0 = paths.velocities[0]
    if not (torch.isfinite(pos).all() and torch.isfinite(v0).all()):
        raise ValueError("the paths have non-finite positions or start velocities; fit finite paths only")
    frames = pos.reshape(-1, *pos.shape[2:])
    forces = torch.cat([term.force_field(chunk)[1].detach() for chunk in frames.split(chunk_size)])
    term.evaluations += pos.shape[0] * pos.shape[1]
    return Rollout(pos, v0, forces.reshape(pos.shape))


def _steps(settings: FitSettings, params, desc: str, progress: bool):
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=settings.n_steps)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in tqdm(range(settings.n_steps), desc=desc, disable=not progress, leave=False):
        yield optimiser, gen
        schedule.step()


def _probabilities(weights, n: int) -> Tensor:
    p = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float64).cpu()
    if p.shape != (n,) or not (p >= 0).all() or not p.sum() > 0:
        raise ValueError(f"weights must be {n} non-negative numbers, not all zero")
    return p


def mean_log_likelihood_ratio(
    control: nn.Module, paths: Rollout, term: ForceFieldLangevin, dt: float, weights=None, batch_size: int = 256
) -> float:
    """Weighted mean log p_theta / p_0 (nats per path) of ``paths`` under ``control`` (no gradients), in batches; the
    held-out score of a fit (higher is better; 0 for no control)."""
    p = _probabilities(weights, len(paths)).to(paths.v0)
    with torch.no_grad():
        ratios = [
            log_likelihood_ratio(paths.select(torch.arange(i, min(i + batch_size, len(paths)))), control, term, dt)
            for i in range(0, len(paths), batch_size)
        ]
    return float((torch.cat(ratios) * p).sum() / p.sum())


def fit_control(
    control: nn.Module,
    paths: Rollout,
    term: ForceFieldLangevin,
    dt: float,
    weights: Tensor | None = None,
    settings: FitSettings | None = None,
    progress: bool = True,
    held_out: Rollout | None = None,
    held_out_weights: Tensor | None = None,
) -> FitHistory:
    """Fit ``control`` to the target paths ``paths`` by maximum likelihood (see the module docstring).

    ``weights (C,)``: importance weights of the paths (None: equal, exact samples); minibatches are drawn in proportion
    to them. ``held_out``: other target paths (e.g. of other shooting chains; ``held_out_weights`` theirs) to stop
    early on: the control ends in the state of the best held-out log-likelihood (few paths of a molecule are
    overfitted within a few hundred steps). Returns the :class:`FitHistory`.
    """
    s = settings or FitSettings()
    probabilities = _probabilities(weights, len(paths))
    params = [p for p in control.parameters() if p.requires_grad]
    history = FitHistory()
    best = None

    def check(step: int) -> None:
        nonlocal best
        score = mean_log_likelihood_ratio(control, held_out, term, dt, held_out_weights, s.batch_size)
        history.held_out.append((step, score))
        if best is None or score > best[0]:
            best = (score, copy.deepcopy(control.state_dict()))
            history.best_step = step

    if held_out is not None:
        check(0)
    for step, (optimiser, gen) in enumerate(_steps(s, params, "fitting path control", progress), 1):
        pick = torch.multinomial(probabilities, s.batch_size, replacement=True, generator=gen)
        loss = -log_likelihood_ratio(paths.select(pick.to(paths.v0.device)), control, term, dt).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.loss.append(float(loss.detach()))
        if held_out is not None and (step % s.validate_every == 0 or step == s.n_steps):
            check(step)
    if best is not None:
        control.load_state_dict(best[1])
    return history


def fit_start_classifier(
    log_normaliser: nn.Module,
    target_positions: Tensor,
    target_velocities: Tensor,
    equilibrium: StartPool,
    settings: FitSettings | None = None,
    progress: bool = True,
    weights: Tensor | None = None,
) -> list[float]:
    """Fit ``log_normaliser`` ``(pos, vel) -> (B,)`` as the logit of "a target start" (the starts (C, N, d) of target
    paths, ``weights (C,)`` theirs, None: equal) against "an equilibrium start" (``equilibrium``, e.g. a pool drawn
    apart from the one sampled from): afterwards log Z = log P(B | x_0, v_0) + const. Returns the logistic loss per
    step."""
    if len(target_positions) == 0 or len(target_positions) != len(target_velocities):
        raise ValueError("give the positions and velocities of at least one target start, as many of each")
    s = settings or FitSettings()
    probabilities = _probabilities(weights, len(target_positions))
    losses = []
    for optimiser, gen in _steps(s, list(log_normaliser.parameters()), "fitting start proposal", progress):
        i = torch.multinomial(probabilities, s.batch_size, replacement=True, generator=gen).to(target_positions.device)
        j = torch.randint(len(equilibrium), (s.batch_size,), generator=gen).to(equilibrium.positions.device)
        target = log_normaliser(target_positions[i], target_velocities[i])
        other = log_normaliser(equilibrium.positions[j], equilibrium.velocities[j])
        loss = softplus(-target).mean() + softplus(other).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses
