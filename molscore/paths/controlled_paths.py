"""Controlled BAOAB rollouts and their exact likelihood: a pool of equilibrium starts, the start proposal, batched
rollouts with a control drift in the O step, the path log-likelihood ratio against the unbiased dynamics and the
soft "ends in B" indicator (see :mod:`molscore.paths.learned_sampler`)."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from molscore.dynamics import SeededNoise
from molscore.paths.path_controls import checked_control
from molscore.paths.path_dynamics import ForceFieldLangevin, Segment
from molscore.paths.states import Region

STEP_STREAM, VELOCITY_STREAM = 0, 2  # noise streams of the BAOAB draws and of the start velocities


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
        x = starts_in(starts, state_a)
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


def starts_in(starts: Tensor, state_a: Region) -> Tensor:
    starts = starts[state_a.contains(state_a.cvs(starts))]
    if len(starts) == 0:
        raise ValueError(f"none of the start frames lies in state {state_a.name!r}; give equilibrium frames in it")
    return starts
