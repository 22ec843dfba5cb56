"""A learned transition-path sampler (TPS-DPS, Seong et al. 2025): a control force trained with the log-variance loss,
and importance weights that make its paths exact samples of the unbiased fixed-length ensemble.

The target ensemble (fixed length T): x_0 from equilibrium in A with Maxwell-Boltzmann velocities v_0, unbiased
Langevin (BAOAB) dynamics for T steps, x_T in B. Its optimal sampler is the Doob h-transform of the dynamics: an
extra drift of the velocities proportional to grad_v log P(x_T in B | x_t, v_t), which depends on the positions, the
velocities and the time. The sampler adds a learned control force u_theta(x, v, t) to the O (friction and noise)
step of BAOAB,

    B: v += dt/2 F(x)/m;  A: x += dt/2 v;  O: v = c v + s sigma z + dt u_theta(x, v, t)/m;  A: x += dt/2 v;  B: ...

(c = exp(-gamma dt), s = sqrt(1 - c^2), sigma = sqrt(kT/m), t = n/T at step n), so a step costs one force evaluation
and the draws of a path under the control are z_theta = z_0 - delta, delta = dt u_theta / (m s sigma), with z_0 the
draws under the unbiased dynamics (recovered from the path as in :func:`~molscore.paths.path_dynamics.baoab_noise`):
the path log-likelihood ratio log p_theta - log p_0 = sum_n (z_0 . delta - |delta|^2 / 2) is exact.

- controls (:mod:`molscore.paths.path_controls`): ``MLPControl`` (low-dimensional systems), an MLP of (x, v, t/T),
  which can represent the h-transform; ``CVControl`` (molecules), -grad_x of a learned potential of the CVs, their
  time derivatives and t/T: equivariant by construction and cheap; ``EquivariantBias`` (molecules), a position-only
  E(3)-equivariant force from the GNN backbone. All act through the same O-step drift (to O(dt) the same as adding
  them to the force).
- training: paths tau from the controlled dynamics (on-policy, or from a replay buffer of earlier rollouts, optionally
  rolled out at an annealed higher temperature) minimise, over paths that share their start (x_0, v_0) in groups,
  the variance of R(tau) = log p_theta(tau | x_0, v_0) - log p_0(tau | x_0, v_0) - log 1_B^soft(x_T), with the path
  likelihoods at the target kT and log 1_B^soft(x) = -d_B(x)^2 / (2 sigma_B^2), d_B the CV-space distance from x to
  the ball B (0 inside). The optimal control makes R = -log P(B | x_0, v_0) (soft), constant within a group;
- fitting to target paths (:meth:`LearnedPathSampler.fit_to_paths`, :mod:`molscore.paths.path_fitting`): maximum
  likelihood of exact samples of the ensemble (shooting or brute force) for the control, and a classifier of their
  starts against equilibrium starts for the log-normaliser: forward KL, mass-covering, the weights do not collapse
  the way they do after the log-variance training alone; training cost includes the samples' cost;
- sampling: each path gets log w = log p_0 - log p_theta + log 1_B(x_T) (hard indicator, -inf outside B);
  self-normalised weights give unbiased-ensemble averages, the effective sample size measures their quality.
- importance sampling of the starts: P(B | x_0, v_0) varies hugely between starts, so even the optimal control gives
  an ESS fraction <= (E P)^2 / E P^2 when starts are drawn from equilibrium. With a :class:`StartPool` (M equilibrium
  starts in A with velocities drawn once; the target puts mass 1/M on each) and a :class:`LogNormaliser` log Z(x_0, v_0),
  trained with the control by trajectory balance, mean (log Z(x_0, v_0) + R(tau))^2 (Z -> soft P(B | start) under the
  optimal control; valid for any start distribution), starts are drawn with probability
  q_i = (1 - eps) Z_i^beta / sum Z^beta + eps / M (the defensive part caps the start weights at 1 / eps), in training
  and in sampling, and the weight gains the factor (1/M) / q_i.
"""

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from molscore.dynamics import SeededNoise
from molscore.paths.brute_force import NoTransitionError
from molscore.paths.controlled_paths import (
    VELOCITY_STREAM,
    Rollout,
    StartPool,
    log_likelihood_ratio,
    proposal_log_probabilities,
    rollout,
    soft_log_indicator,
    starts_in,
)
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin
from molscore.paths.path_fitting import FitSettings, fit_control, fit_start_classifier, target_rollout
from molscore.paths.states import Region


def log_variance_loss(log_ratio: Tensor, log_target: Tensor, group_size: int = 1) -> Tensor:
    """mean((R - mean R)^2) with R = log_ratio - log_target, both (B,).

    With ``group_size > 1`` the B paths form consecutive groups sharing a start (x_0, v_0), and the mean is taken
    within each group: the start-to-start spread of log P(B | x_0, v_0), which no control removes, drops out.
    """
    r = log_ratio - log_target
    r = r.view(-1, group_size) if group_size > 1 else r.view(1, -1)
    return ((r - r.mean(1, keepdim=True)) ** 2).mean()


# training --------------------------------------------------------------------------------------------------------
@dataclass
class TrainingSettings:
    """How the control is trained.

    n_iterations : rollouts (each followed by ``updates_per_rollout`` gradient steps)
    batch_size : paths per rollout;  train_batch : paths per gradient step (drawn from the replay buffer)
    buffer_size : paths kept (the newest); ``buffer_size = train_batch = batch_size`` trains on-policy
    learning_rate : Adam;  grad_clip : gradient-norm clip (None: none)
    sigma_b : width of the soft indicator, CV units
    group_size : paths per start (x_0, v_0) in a rollout; > 1 takes the variance within groups (see
        :func:`log_variance_loss`); batch_size, train_batch and buffer_size must be multiples of it
    anneal_kT : kT (kJ/mol) of the first rollouts, lowered linearly to the target over ``anneal_iterations``
        (None: rollouts at the target kT); the loss is always at the target kT
    seed : of starts and noise
    loss : with a :class:`StartPool` and a log-normaliser, "tb" (trajectory balance, (log Z(x_0, v_0) + R)^2),
        "variance" (the group variance only; log Z is then trained alone by TB without moving the control) or
        "tb+variance" (their sum); without them, always "variance"
    beta, defensive : the start proposal during training (see :func:`proposal_log_probabilities`)
    normaliser_learning_rate : Adam learning rate of the log-normaliser
    """

    n_iterations: int = 100
    batch_size: int = 512
    train_batch: int = 512
    buffer_size: int = 512
    updates_per_rollout: int = 1
    learning_rate: float = 3e-3
    grad_clip: float | None = 10.0
    sigma_b: float = 0.2
    group_size: int = 16
    anneal_kT: float | None = None
    anneal_iterations: int = 0
    seed: int = 0
    loss: str = "tb"
    beta: float = 1.0
    defensive: float = 0.1
    normaliser_learning_rate: float = 1e-2


@dataclass
class TrainingLog:
    """Per rollout: loss, fraction of rollout paths ending in B, rollout kT (kJ/mol); per step of fits to target paths:
    fit_loss, and (step, mean log p_theta / p_0 of held-out target paths) per check: fit_held_out; totals (energy
    evaluations include the target paths' cost) and wall time (s)."""

    loss: list[float] = field(default_factory=list)
    fit_loss: list[float] = field(default_factory=list)
    fit_held_out: list[tuple[int, float]] = field(default_factory=list)
    fraction_in_b: list[float] = field(default_factory=list)
    kT: list[float] = field(default_factory=list)
    energy_evaluations: int = 0
    paths: int = 0
    seconds: float = 0.0


class LearnedPathSampler:
    """Controlled-dynamics path sampler for the fixed-length ensemble A -> B of ``n_steps`` steps.

    Parameters
    ----------
    term : the unbiased dynamics at the target kT, :class:`ForceFieldLangevin` (its own bias is ignored)
    control : nn.Module, ``(pos, vel (B, N, d), t (B,)) -> force (B, N, d)`` kJ/(mol nm), applied in the O step,
        e.g. :class:`MLPControl` or :class:`EquivariantBias`
    state_a, state_b : :class:`Region` of the system's CVs
    n_steps : path length, steps;  dt : ps
    log_normaliser : nn.Module ``(pos, vel) -> (B,)``, e.g. :class:`LogNormaliser`, or None. With a
        :class:`StartPool` it is trained jointly with the control by trajectory balance and the starts are drawn in
        proportion to Z^beta (importance sampling of the starts as well as of the paths).
    """

    def __init__(
        self,
        term: ForceFieldLangevin,
        control: nn.Module,
        state_a: Region,
        state_b: Region,
        n_steps: int,
        dt: float,
        log_normaliser: nn.Module | None = None,
    ):
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        self.term, self.control, self.state_a, self.state_b = term, control, state_a, state_b
        self.n_steps, self.dt = int(n_steps), float(dt)
        self.log_normaliser = log_normaliser
        self.training_log: TrainingLog | None = None

    def in_b(self, pos: Tensor) -> Tensor:
        """Whether frames ``pos (B, N, d)`` lie in B; non-finite frames (a path that blew up) never do."""
        finite = torch.isfinite(pos).flatten(1).all(1)
        return self.state_b.contains(self.state_b.cvs(torch.nan_to_num(pos))) & finite

    def _start(self, starts, index: Tensor, kT: float, noise: SeededNoise, group_size: int = 1) -> tuple[Tensor, Tensor]:
        if isinstance(starts, StartPool):
            return starts.positions[index], math.sqrt(kT / self.term.kT) * starts.velocities[index]
        x = starts[index]
        shape = (len(x) // group_size, *x.shape[1:])
        z = noise.normal(0, shape, x.dtype, x.device, VELOCITY_STREAM).repeat_interleave(group_size, 0)
        return x, math.sqrt(kT / self.term.kT) * self.term.thermal_speed(x) * z

    def start_log_probabilities(self, pool: StartPool, beta: float = 1.0, defensive: float = 0.1) -> Tensor:
        """log q_i (M,) of the start proposal over ``pool`` (uniform without a log-normaliser)."""
        if self.log_normaliser is None:
            return torch.full((len(pool),), -math.log(len(pool)), dtype=pool.positions.dtype)
        with torch.no_grad():
            log_z = self.log_normaliser(pool.positions, pool.velocities)
        return proposal_log_probabilities(log_z, beta, defensive).cpu()

    def train(self, starts, settings: TrainingSettings | None = None, progress: bool = True) -> TrainingLog:
        """Train the control on rollouts from ``starts``: a :class:`StartPool` (starts drawn from the proposal q,
        trajectory balance with the log-normaliser, see :class:`TrainingSettings`), or equilibrium frames
        ``(M, N, d)`` (those outside A are ignored; fresh velocities, group log-variance loss). Appends to and returns
        :attr:`training_log`."""
        s = settings or TrainingSettings()
        k = s.group_size
        if any(n % k for n in (s.batch_size, s.train_batch, s.buffer_size)):
            raise ValueError(f"batch_size, train_batch and buffer_size must be multiples of group_size={k}")
        pooled = isinstance(starts, StartPool) and self.log_normaliser is not None
        if pooled and s.loss not in ("tb", "variance", "tb+variance"):
            raise ValueError(f"loss must be 'tb', 'variance' or 'tb+variance', got {s.loss!r}")
        if not isinstance(starts, StartPool):
            starts = starts_in(starts, self.state_a)
        device = starts.positions.device if isinstance(starts, StartPool) else starts.device
        log = self.training_log = self.training_log or TrainingLog()
        params = [p for p in self.control.parameters() if p.requires_grad]
        groups_params = [{"params": params, "lr": s.learning_rate}]
        if pooled:
            groups_params.append({"params": list(self.log_normaliser.parameters()), "lr": s.normaliser_learning_rate})
        optimiser = torch.optim.Adam(groups_params)
        gen = torch.Generator().manual_seed(s.seed)
        buffer: Rollout | None = None
        clock = time.perf_counter()
        bar = tqdm(range(s.n_iterations), desc="training path control", disable=not progress, leave=False)
        for it in bar:
            kT = self.term.kT
            if s.anneal_kT is not None and it < s.anneal_iterations:
                kT += (s.anneal_kT - self.term.kT) * (1 - it / s.anneal_iterations)
            noise = SeededNoise(s.seed * 2**64 + 2**62 + len(log.loss))
            if pooled:
                q = self.start_log_probabilities(starts, s.beta, s.defensive).exp()
                index = torch.multinomial(q, s.batch_size // k, replacement=True, generator=gen)
            else:
                index = torch.randint(len(starts), (s.batch_size // k,), generator=gen)
            x, v = self._start(starts, index.repeat_interleave(k).to(device), kT, noise, k)
            paths, evaluations = rollout(self.term, self.control, x, v, self.n_steps, self.dt, noise, kT=kT)
            hit = self.in_b(paths.positions[-1])
            paths = paths.select(torch.arange(len(paths), device=x.device))  # drop velocities and energies
            buffer = paths if buffer is None else _append(buffer, paths, s.buffer_size)
            for _ in range(s.updates_per_rollout):
                n = min(s.train_batch, len(buffer)) // k
                groups = torch.randperm(len(buffer) // k, generator=gen)[:n]
                pick = (groups[:, None] * k + torch.arange(k)).flatten()
                batch = buffer.select(pick.to(device))
                log_ratio = log_likelihood_ratio(batch, self.control, self.term, self.dt)
                target = soft_log_indicator(self.state_b, batch.positions[-1], s.sigma_b)
                if pooled:
                    log_z = self.log_normaliser(batch.positions[0], batch.v0)
                    if not log.loss:  # first step ever: start the offset at the batch's mean
                        with torch.no_grad():
                            self.log_normaliser.log_offset += (target - log_ratio - log_z).mean().to(log_z)
                        log_z = self.log_normaliser(batch.positions[0], batch.v0)
                    r = log_ratio - target
                    if s.loss == "variance":  # TB moves log Z only; the control sees the group variance
                        loss = ((log_z + r.detach()) ** 2).mean() + log_variance_loss(log_ratio, target, k)
                    else:
                        loss = ((log_z + r) ** 2).mean()
                        if s.loss == "tb+variance":
                            loss = loss + log_variance_loss(log_ratio, target, k)
                else:
                    loss = log_variance_loss(log_ratio, target, k)
                optimiser.zero_grad()
                loss.backward()
                if s.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                optimiser.step()
            log.loss.append(float(loss.detach()))
            log.fraction_in_b.append(float(hit.double().mean()))
            log.kT.append(kT)
            log.energy_evaluations += evaluations
            log.paths += len(paths)
            bar.set_postfix(loss=f"{log.loss[-1]:.3g}", in_b=f"{log.fraction_in_b[-1]:.2f}", kT=f"{kT:.3g}")
        bar.close()
        log.seconds += time.perf_counter() - clock
        return log

    def _check_target_paths(self, paths: PathBatch, what: str) -> None:
        if not bool((paths.lengths == self.n_steps).all()):
            lengths = paths.lengths.unique().tolist()
            raise ValueError(f"fit {what} of exactly n_steps={self.n_steps} steps (got lengths {lengths})")
        ends_in_b = self.in_b(paths.last())
        starts_in_a = self.state_a.contains(self.state_a.cvs(paths.first()))
        if not (ends_in_b.all() and starts_in_a.all()):
            raise ValueError(
                f"{int((~starts_in_a).sum())} {what} do not start in {self.state_a.name!r} and {int((~ends_in_b).sum())} "
                f"do not end in {self.state_b.name!r}: fit samples of the target ensemble only"
            )

    def fit_to_paths(
        self,
        paths: PathBatch,
        equilibrium: StartPool | None = None,
        cost: int = 0,
        weights: Tensor | None = None,
        settings: FitSettings | None = None,
        progress: bool = True,
        held_out: PathBatch | None = None,
        held_out_weights: Tensor | None = None,
    ) -> TrainingLog:
        """Fit the control to samples of the target ensemble, ``paths``: C paths of ``n_steps`` steps from A ending in
        B (brute force or shooting, ``weights (C,)`` their Monte Carlo or importance weights, None: equal), by maximum
        likelihood (forward KL, :mod:`molscore.paths.path_fitting`), stopping early on the log-likelihood of the
        ``held_out`` target paths if given (e.g. those of other shooting chains); with ``equilibrium`` starts and a
        log-normaliser, fit it too, as the classifier of the paths' starts against them, so that :meth:`sample` draws
        starts from the target's start marginal. ``cost``: energy evaluations spent on all these paths, added to the
        training cost with the fit's own. Appends to and returns :attr:`training_log`."""
        self._check_target_paths(paths, "paths")
        if held_out is not None:
            self._check_target_paths(held_out, "held-out paths")
        log = self.training_log = self.training_log or TrainingLog()
        clock, evaluations = time.perf_counter(), self.term.evaluations
        data = target_rollout(paths, self.term)
        check = None if held_out is None else target_rollout(held_out, self.term)
        history = fit_control(
            self.control, data, self.term, self.dt, weights, settings, progress, check, held_out_weights
        )  # fmt: skip
        log.fit_loss += history.loss
        log.fit_held_out += history.held_out
        if equilibrium is not None and self.log_normaliser is not None:
            x0, v0 = data.positions[0], data.v0
            fit_start_classifier(self.log_normaliser, x0, v0, equilibrium, settings, progress, weights)
        log.energy_evaluations += int(cost) + self.term.evaluations - evaluations
        log.seconds += time.perf_counter() - clock
        return log

    def sample(
        self,
        starts,
        n_paths: int,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = True,
        beta: float = 1.0,
        defensive: float = 0.1,
        start_log_probabilities: Tensor | None = None,
    ):
        """``n_paths`` controlled paths and their importance weights against the unbiased fixed-length ensemble.

        ``starts`` : a :class:`StartPool` (target: mass 1/M per start): start i is drawn with probability q_i
        (``start_log_probabilities`` (M,) if given, else :meth:`start_log_probabilities` with ``beta`` and
        ``defensive``) and the weight carries (1/M) / q_i; or frames ``(M, N, d)`` in A, taken in turn (as
        :func:`fixed_length_paths` does), with fresh Maxwell-Boltzmann velocities at the target kT. Returns a
        :class:`LearnedPathSample`; raises :class:`NoTransitionError` (with the sampled paths attached) if none ends in B.
        """
        pooled = isinstance(starts, StartPool)
        if pooled:
            log_q = self.start_log_probabilities(starts, beta, defensive)
            if start_log_probabilities is not None:
                log_q = torch.as_tensor(start_log_probabilities, dtype=starts.positions.dtype).cpu()
            gen = torch.Generator().manual_seed(seed)
            chosen = torch.multinomial(log_q.exp(), n_paths, replacement=True, generator=gen)
            log_start = -math.log(len(starts)) - log_q[chosen]
        else:
            starts = starts_in(starts, self.state_a)
        device = starts.positions.device if pooled else starts.device
        batches, log_ratios, evaluations = [], [], 0
        bar = tqdm(total=n_paths, desc="sampling controlled paths", disable=not progress, leave=False)
        for k, first in enumerate(range(0, n_paths, batch_size)):
            noise = SeededNoise(seed * 2**64 + 2**61 + k)
            index = torch.arange(first, min(first + batch_size, n_paths), device=device)
            index = chosen[index.cpu()].to(device) if pooled else index % len(starts)
            x, v = self._start(starts, index, self.term.kT, noise)
            paths, n_eval = rollout(self.term, self.control, x, v, self.n_steps, self.dt, noise)
            with torch.no_grad():
                log_ratios.append(-log_likelihood_ratio(paths, self.control, self.term, self.dt))
            batch, _ = PathBatch.from_segment(paths.segment(), torch.full((len(x),), -1, device=x.device), first * 10**6)
            batches.append(batch)
            evaluations += n_eval
            bar.update(len(x))
        bar.close()
        paths = PathBatch.concatenate(batches)
        log_ratio = torch.cat(log_ratios)
        in_b = self.in_b(paths.last())
        if not in_b.any():
            raise NoTransitionError(
                f"none of {n_paths} controlled paths of {self.n_steps} steps from {self.state_a.name!r} ended in "
                f"{self.state_b.name!r}: train the control longer (or at a raised temperature first); the sampled paths "
                "are attached as .paths",
                paths=paths,
                tried=n_paths,
            )
        training = self.training_log.energy_evaluations if self.training_log else 0
        sample = LearnedPathSample(paths, log_ratio, in_b, evaluations / n_paths, training)
        if pooled:
            sample.log_start_ratio, sample.start_index = log_start.to(log_ratio), chosen
        return sample


def _append(buffer: Rollout, new: Rollout, size: int) -> Rollout:
    cat = Rollout(
        torch.cat([buffer.positions, new.positions], 1),
        torch.cat([buffer.v0, new.v0]),
        torch.cat([buffer.reference_forces, new.reference_forces], 1),
    )
    return cat.select(torch.arange(max(0, len(cat) - size), len(cat), device=new.v0.device))


# weights ---------------------------------------------------------------------------------------------------------
@dataclass
class LearnedPathSample:
    """Controlled paths and their importance weights against the unbiased fixed-length ensemble A -> B.

    Attributes
    ----------
    paths : PathBatch of all sampled paths (C paths, T + 1 frames)
    log_ratio : Tensor (C,), log p_0(tau | x_0, v_0) - log p_theta(tau | x_0, v_0)
    in_b : Tensor (C,) bool, whether x_T lies in B
    evaluations_per_path : energy evaluations per sampled path (sampling only)
    training_evaluations : energy evaluations of the training rollouts (all of them, over all ``train`` calls)
    log_start_ratio : Tensor (C,), log (1/M) - log q_i of the start drawn from a :class:`StartPool`, or None
        (starts taken in turn: no start weight)
    start_index : Tensor (C,), the pool index of each path's start, or None
    """

    paths: PathBatch
    log_ratio: Tensor
    in_b: Tensor
    evaluations_per_path: float
    training_evaluations: int = 0
    log_start_ratio: Tensor | None = None
    start_index: Tensor | None = None

    @property
    def log_path_weights(self) -> Tensor:
        """log of the weight without the indicator: log_ratio plus the start weight, (C,)."""
        return self.log_ratio if self.log_start_ratio is None else self.log_ratio + self.log_start_ratio

    @property
    def log_weights(self) -> Tensor:
        """log w = log (1/M) - log q_i + log p_0 - log p_theta + log 1_B(x_T), (C,); -inf outside B."""
        return self.log_path_weights.masked_fill(~self.in_b, -math.inf)

    @property
    def weights(self) -> Tensor:
        """Normalised importance weights (C,), summing to 1 (0 outside B)."""
        return torch.softmax(self.log_weights, 0)

    @property
    def ess(self) -> float:
        """Effective sample size (sum w)^2 / sum w^2."""
        return float(1.0 / (self.weights**2).sum())

    @property
    def ess_fraction(self) -> float:
        """ESS over the number of sampled paths (all of them, in B or not)."""
        return self.ess / len(self.in_b)

    @property
    def thp(self) -> float:
        """Target hit percentage: % of sampled paths ending in B."""
        return 100.0 * float(self.in_b.double().mean())

    @property
    def evaluations_per_effective_path(self) -> float:
        """(training + sampling energy evaluations) / ESS."""
        return (self.training_evaluations + self.evaluations_per_path * len(self.in_b)) / self.ess

    def estimate(self, values: Tensor) -> tuple[float, float]:
        """Weighted mean of a path observable ``values (C,)`` over the target ensemble and its standard error
        (self-normalised importance sampling, delta method)."""
        w = self.weights.to(values)
        mean = (w * values).sum()
        se = torch.sqrt((w**2 * (values - mean) ** 2).sum())
        return float(mean), float(se)

    def transition_probability(self) -> tuple[float, float]:
        """P_0(x_T in B) under the unbiased dynamics from the same starts, mean of w and its standard error."""
        w = torch.exp(self.log_path_weights) * self.in_b
        return float(w.mean()), float(w.std() / math.sqrt(len(w)))

    def summary(self) -> dict:
        return {
            "n_paths": len(self.in_b),
            "thp_percent": self.thp,
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "evaluations_per_path": self.evaluations_per_path,
            "training_evaluations": self.training_evaluations,
            "evaluations_per_effective_path": self.evaluations_per_effective_path,
        }
