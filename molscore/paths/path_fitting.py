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

from dataclasses import dataclass

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
    or starts of each class (start classifier); ``learning_rate`` is the peak; ``seed`` of the minibatches."""

    n_steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 0


def target_rollout(paths: PathBatch, term: ForceFieldLangevin) -> Rollout:
    """Fixed-length paths (all of one length, finite) as a :class:`Rollout`: positions, v_0 and the unbiased forces
    at every frame (computed here: (T + 1) C energy evaluations, added to ``term.evaluations``)."""
    if paths.n_paths == 0:
        raise ValueError("no paths to fit")
    if not bool((paths.lengths == paths.lengths[0]).all()):
        raise ValueError("the paths have different lengths; the learned sampler fits fixed-length paths only")
    pos = paths.positions[: int(paths.lengths[0]) + 1]
    v0 = paths.velocities[0]
    if not (torch.isfinite(pos).all() and torch.isfinite(v0).all()):
        raise ValueError("the paths have non-finite positions or start velocities; fit finite paths only")
    _, forces = term.force_field(pos.reshape(-1, *pos.shape[2:]))
    term.evaluations += pos.shape[0] * pos.shape[1]
    return Rollout(pos, v0, forces.detach().reshape(pos.shape))


def _steps(settings: FitSettings, params, desc: str, progress: bool):
    optimiser = torch.optim.Adam(params, lr=settings.learning_rate)
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


def fit_control(
    control: nn.Module,
    paths: Rollout,
    term: ForceFieldLangevin,
    dt: float,
    weights: Tensor | None = None,
    settings: FitSettings | None = None,
    progress: bool = True,
) -> list[float]:
    """Fit ``control`` to the target paths ``paths`` by maximum likelihood (see the module docstring).

    ``weights (C,)``: importance weights of the paths (None: equal, exact samples); minibatches are drawn in proportion
    to them. Returns the loss per step, -mean log p_theta / p_0 (nats per path).
    """
    s = settings or FitSettings()
    probabilities = _probabilities(weights, len(paths))
    params = [p for p in control.parameters() if p.requires_grad]
    losses = []
    for optimiser, gen in _steps(s, params, "fitting path control", progress):
        pick = torch.multinomial(probabilities, s.batch_size, replacement=True, generator=gen)
        loss = -log_likelihood_ratio(paths.select(pick.to(paths.v0.device)), control, term, dt).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


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
