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

- :class:`MLPControl` (low-dimensional systems): an MLP of (x, v, t/T), which can represent the h-transform;
  :class:`EquivariantBias` (molecules): a position-only E(3)-equivariant force from the GNN backbone, applied by the
  same O-step drift (to O(dt) the same as adding it to the force). Velocity- and time-aware equivariant controls
  would need a GNN with vector (velocity) inputs, which the backbone does not take yet.
- training: paths tau from the controlled dynamics (on-policy, or from a replay buffer of earlier rollouts, optionally
  rolled out at an annealed higher temperature) minimise, over paths that share their start (x_0, v_0) in groups,
  the variance of R(tau) = log p_theta(tau | x_0, v_0) - log p_0(tau | x_0, v_0) - log 1_B^soft(x_T), with the path
  likelihoods at the target kT and log 1_B^soft(x) = -d_B(x)^2 / (2 sigma_B^2), d_B the CV-space distance from x to
  the ball B (0 inside). The optimal control makes R = -log P(B | x_0, v_0) (soft), constant within a group;
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
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin, Segment
from molscore.paths.states import Region

STEP_STREAM, VELOCITY_STREAM = 0, 2  # noise streams of the BAOAB draws and of the start velocities


# controls --------------------------------------------------------------------------------------------------------
class MLPControl(nn.Module):
    """Control force from an MLP over flattened positions, velocities and the time t/T (low-dimensional systems).

    ``u(x, v, t) = force_scale * MLP((x - offset) / length_scale, v / speed_scale, t)``, reshaped to (B, N, d); the last
    layer starts at zero, so training starts from the unbiased dynamics.

    Parameters
    ----------
    n_particles, dim : N, d
    hidden : width of the hidden layers;  n_layers : number of hidden layers
    force_scale : kJ/(mol nm) per unit network output
    length_scale : nm, positions are divided by it;  offset : Tensor broadcastable to (N, d), nm, subtracted first
    speed_scale : nm/ps, velocities are divided by it (e.g. the thermal speed sqrt(kT/m))
    velocity, time : whether the control sees the velocities and the time (False, False: a position-only bias)
    """

    def __init__(
        self,
        n_particles: int,
        dim: int,
        hidden: int = 64,
        n_layers: int = 2,
        force_scale: float = 100.0,
        length_scale: float = 1.0,
        offset: Tensor | None = None,
        speed_scale: float = 1.0,
        velocity: bool = True,
        time: bool = True,
    ):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        self.force_scale, self.length_scale, self.speed_scale = float(force_scale), float(length_scale), float(speed_scale)
        self.velocity, self.time = velocity, time
        self.register_buffer("offset", torch.zeros(n_particles, dim) if offset is None else torch.as_tensor(offset))
        layers, width = [], n_particles * dim * (2 if velocity else 1) + (1 if time else 0)
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, n_particles * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps; t (B,) in [0, 1] -> control force (B, N, d) kJ/(mol nm)."""
        if pos.ndim != 3 or pos.shape[1:] != (self.n_particles, self.dim):
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, {self.n_particles}, {self.dim})")
        features = [((pos - self.offset.to(pos)) / self.length_scale).flatten(1)]
        if self.velocity:
            features.append((vel / self.speed_scale).flatten(1))
        if self.time:
            features.append(t.to(pos).reshape(-1, 1))
        h = torch.cat(features, 1).to(self.net[-1].weight.dtype)
        return self.force_scale * self.net(h).view(pos.shape).to(pos)


class EquivariantBias(nn.Module):
    """Position-only control from :class:`~molscore.nn.gnn.EquivariantGNN` (``output="score"``): E(3)-equivariant.

    ``u(x) = force_scale * gain * GNN(x / length_scale, t=0)``, with the learnable ``gain`` starting at 0 (the
    dynamics start unbiased; the gradient of ``gain`` is the GNN's output, so training moves it first). Velocities and
    time are ignored (the optimal control depends on both: this is an approximation for molecules).

    Parameters
    ----------
    n_particles : N (positions are (B, N, 3), nm)
    bead_types : N ints (e.g. elements), see the GNN
    hidden_irreps, n_layers, reflection : of the GNN (small by default)
    force_scale : kJ/(mol nm) per unit output;  length_scale : nm per network length unit
    cutoff : nm, interaction range of the GNN
    """

    def __init__(
        self,
        n_particles: int,
        bead_types: list[int] | None = None,
        hidden_irreps: str = "16x0e+8x1o",
        n_layers: int = 2,
        reflection: str = "invariant",
        force_scale: float = 100.0,
        length_scale: float = 0.1,
        cutoff: float = 1.0,
    ):
        super().__init__()
        from molscore.nn.gnn import EquivariantGNN

        self.n_particles, self.force_scale, self.length_scale = n_particles, float(force_scale), float(length_scale)
        self.gnn = EquivariantGNN(
            n_particles,
            dim=3,
            output="score",
            bead_types=bead_types,
            hidden_irreps=hidden_irreps,
            n_layers=n_layers,
            reflection=reflection,
            cutoff=cutoff / length_scale,
        )
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos (B, N, 3) nm -> control force (B, N, 3) kJ/(mol nm); ``vel`` and ``t`` are ignored."""
        dtype = self.gain.dtype
        out = self.gnn(pos.to(dtype) / self.length_scale, torch.zeros((), dtype=dtype, device=pos.device))
        return (self.force_scale * self.gain * out).to(pos)


def checked_control(control, pos: Tensor, vel: Tensor, t: Tensor) -> Tensor:
    """``control(pos, vel, t)``, raising a clear error unless it is a force of the positions' shape (B, N, d)."""
    force = control(pos, vel, t)
    if not isinstance(force, Tensor) or force.shape != pos.shape:
        shape = tuple(force.shape) if isinstance(force, Tensor) else type(force).__name__
        raise ValueError(
            f"the control must return a force of the positions' shape {tuple(pos.shape)} (B, N, d); got {shape}"
        )
    return force


class LogNormaliser(nn.Module):
    """Learned log Z_phi(x_0, v_0): an MLP over the flattened start positions and velocities plus a scalar offset.

    ``log Z(x, v) = offset + MLP((x - offset_x) / length_scale, v / speed_scale)``; the last layer starts at zero, so
    log Z starts constant. Trained by the trajectory-balance loss it estimates the soft log P(B | x_0, v_0) under the
    optimal control; the sampler draws starts in proportion to Z^beta.
    """

    def __init__(
        self,
        n_particles: int,
        dim: int,
        hidden: int = 64,
        n_layers: int = 2,
        length_scale: float = 1.0,
        offset: Tensor | None = None,
        speed_scale: float = 1.0,
        initial: float = 0.0,
    ):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        self.length_scale, self.speed_scale = float(length_scale), float(speed_scale)
        self.register_buffer("offset", torch.zeros(n_particles, dim) if offset is None else torch.as_tensor(offset))
        layers, width = [], 2 * n_particles * dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.log_offset = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps -> log Z (B,)."""
        h = torch.cat([((pos - self.offset.to(pos)) / self.length_scale).flatten(1), (vel / self.speed_scale).flatten(1)], 1)
        out = self.net(h.to(self.net[-1].weight.dtype))[:, 0] + self.log_offset
        return out.to(pos)


@dataclass
class StartPool:
    """A fixed pool of M starts: equilibrium frames in A with Maxwell-Boltzmann velocities drawn once.

    The target ensemble on a pool puts mass 1/M on each start times the unbiased path measure times 1_B(x_T).
    positions, velocities : (M, N, d), nm and nm/ps
    """

    positions: Tensor
    velocities: Tensor

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def draw(
        cls, term: ForceFieldLangevin, starts: Tensor, state_a: Region, size: int | None = None, seed: int = 0
    ) -> "StartPool":
        """``size`` starts (default: one per frame): the frames of ``starts`` in A taken in turn, velocities at
        ``term.kT`` from a seeded stream."""
        x = _starts_in_a(starts, state_a)
        x = x[torch.arange(len(x) if size is None else size, device=x.device) % len(x)]
        z = SeededNoise(seed * 2**64 + 2**60).normal(0, x.shape, x.dtype, x.device, VELOCITY_STREAM)
        return cls(x, term.thermal_speed(x) * z)


def proposal_log_probabilities(log_z: Tensor, beta: float = 1.0, defensive: float = 0.1) -> Tensor:
    """log q_i, (M,), of the start proposal q = (1 - eps) softmax(beta log Z) + eps / M (eps = ``defensive``)."""
    if not 0 <= beta <= 1 or not 0 <= defensive <= 1:
        raise ValueError(f"beta and defensive must lie in [0, 1], got {beta}, {defensive}")
    log_q = torch.log_softmax(beta * log_z.detach(), 0)
    if defensive == 0:
        return log_q
    uniform = torch.full_like(log_q, -math.log(len(log_q)) + math.log(defensive))
    if defensive == 1:
        return uniform - math.log(defensive)
    return torch.logaddexp(log_q + math.log1p(-defensive), uniform)


# controlled BAOAB and path likelihoods ---------------------------------------------------------------------------
@dataclass
class Rollout:
    """Fixed-length paths with what the loss and the weights need (time-major).

    positions : Tensor (T + 1, B, N, d), nm;  v0 : Tensor (B, N, d), nm/ps
    reference_forces : Tensor (T + 1, B, N, d), kJ/(mol nm), the unbiased force at every frame
    velocities, energies : (T + 1, B, N, d) nm/ps and (T + 1, B) kJ/mol, or None (not kept in the replay buffer)
    """

    positions: Tensor
    v0: Tensor
    reference_forces: Tensor
    velocities: Tensor | None = None
    energies: Tensor | None = None

    def __len__(self) -> int:
        return self.positions.shape[1]

    def select(self, index: Tensor) -> "Rollout":
        return Rollout(self.positions[:, index], self.v0[index], self.reference_forces[:, index])

    def segment(self) -> Segment:
        n = len(self)
        lengths = torch.full((n,), len(self.positions) - 1, dtype=torch.long, device=self.v0.device)
        return Segment(self.positions, self.velocities, self.energies, lengths, torch.zeros_like(lengths, dtype=torch.bool))


def _constants(term: ForceFieldLangevin, kT: float, dt: float, like: Tensor) -> tuple[Tensor, float, float, Tensor]:
    inv_m = (1.0 / term.masses).to(like)[:, None]
    c, s = math.exp(-term.friction * dt), math.sqrt(-math.expm1(-2.0 * term.friction * dt))
    return inv_m, c, s, torch.sqrt(kT * inv_m)


def rollout(
    term: ForceFieldLangevin, control, starts: Tensor, v0: Tensor, n_steps: int, dt: float, noise: SeededNoise, kT=None
) -> tuple[Rollout, int]:
    """Run the batch ``starts, v0 : (B, N, d)`` for ``n_steps`` controlled BAOAB steps under ``term``'s force field
    (``term.bias`` is ignored) with the O-step control ``control(x, v, t)`` (None: unbiased) at ``kT`` (default
    ``term.kT``), as one batch; step n draws ``noise.normal(n, ...)``. Returns the paths and the energy evaluations."""
    if not term.friction > 0:
        raise ValueError(f"the controlled BAOAB path likelihood needs friction > 0 (1/ps), got {term.friction}")
    term.check(starts)
    kT = term.kT if kT is None else kT
    inv_m, c, s, sigma = _constants(term, kT, dt, starts)
    half = 0.5 * dt
    x, v = starts, v0
    positions, velocities, forces, energies = [x], [v], [], []

    def force_field(x):
        energy, force = term.force_field(x)
        forces.append(force.detach())
        energies.append(torch.full((len(x),), math.nan).to(x) if energy is None else energy.detach().to(x))
        return force.detach()

    with torch.no_grad():
        force = force_field(x)
        for n in range(n_steps):
            v = v + half * inv_m * force
            x = x + half * v
            kick = 0.0
            if control is not None:  # the control sees the state the O step acts on
                t = torch.full((len(x),), n / n_steps, dtype=x.dtype, device=x.device)
                kick = dt * inv_m * checked_control(control, x, v, t).detach()
            v = c * v + s * sigma * noise.normal(n, x.shape, x.dtype, x.device, STEP_STREAM) + kick
            x = x + half * v
            force = force_field(x)
            v = v + half * inv_m * force
            positions.append(x)
            velocities.append(v)
    paths = Rollout(torch.stack(positions), v0, torch.stack(forces), torch.stack(velocities), torch.stack(energies))
    term.evaluations += len(starts) * (n_steps + 1)
    return paths, len(starts) * (n_steps + 1)


def step_states(paths: Rollout, term: ForceFieldLangevin, dt: float) -> tuple[Tensor, Tensor, Tensor]:
    """The states the O steps of a path acted on and what they produced, all (T, B, N, d), recovered from the
    positions, v_0 and the unbiased forces (they do not depend on the control or kT): positions x_n + dt/2 v'_n and
    velocities v'_n before the O step of step n (v'_n after the opening half kick), velocities after it."""
    pos, forces = paths.positions, paths.reference_forces
    inv_m, half = (1.0 / term.masses).to(pos)[:, None], 0.5 * dt
    x_mid, v_in, v_out = [], [], []
    v = paths.v0 + half * inv_m * forces[0]
    for n in range(len(pos) - 1):
        x_mid.append(pos[n] + half * v)
        v_in.append(v)
        v_out.append((pos[n + 1] - x_mid[-1]) / half)
        v = v_out[-1] + dt * inv_m * forces[n + 1]
    return torch.stack(x_mid), torch.stack(v_in), torch.stack(v_out)


def log_likelihood_ratio(paths: Rollout, control, term: ForceFieldLangevin, dt: float) -> Tensor:
    """log p_theta(tau | x_0, v_0) - log p_0(tau | x_0, v_0), (B,), at ``term``'s kT and friction, for the O-step
    ``control``; the control is evaluated at all T steps in one batched call and carries the gradient."""
    x_mid, v_in, v_out = step_states(paths, term, dt)
    inv_m, c, s, sigma = _constants(term, term.kT, dt, x_mid)
    n_steps, n_paths = x_mid.shape[:2]
    t = (torch.arange(n_steps, dtype=x_mid.dtype, device=x_mid.device) / n_steps).repeat_interleave(n_paths)
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    u = checked_control(control, flat(x_mid), flat(v_in), t).view(x_mid.shape)
    z_0 = (v_out - c * v_in) / (s * sigma)
    delta = dt * inv_m * u / (s * sigma)
    return (z_0 * delta - 0.5 * delta**2).sum((0, 2, 3))


def soft_log_indicator(state_b: Region, pos: Tensor, sigma: float) -> Tensor:
    """log 1_B^soft(x) = -d^2 / (2 sigma^2), (B,), d = max(0, |cv(x) - centre| - radius) (CV units, as sigma)."""
    d = (state_b.distance(state_b.cvs(pos)) - state_b.radius).clamp_min(0)
    return -0.5 * (d / sigma) ** 2


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
    """Per iteration: loss, fraction of rollout paths ending in B, rollout kT (kJ/mol); totals and wall time (s)."""

    loss: list[float] = field(default_factory=list)
    fraction_in_b: list[float] = field(default_factory=list)
    kT: list[float] = field(default_factory=list)
    energy_evaluations: int = 0
    paths: int = 0
    seconds: float = 0.0

    @property
    def evaluations_per_path(self) -> float:
        return self.energy_evaluations / max(self.paths, 1)


def _starts_in_a(starts: Tensor, state_a: Region) -> Tensor:
    starts = starts[state_a.contains(state_a.cvs(starts))]
    if len(starts) == 0:
        raise ValueError(f"none of the start frames lies in state {state_a.name!r}; give equilibrium frames in it")
    return starts


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
        return self.state_b.contains(self.state_b.cvs(pos))

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
            starts = _starts_in_a(starts, self.state_a)
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
            starts = _starts_in_a(starts, self.state_a)
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
