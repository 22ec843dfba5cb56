"""Batched Langevin path segments on any force field, with stopping at states and an exact path likelihood.

Every path sampler (shooting, brute force, the learned sampler) draws its paths with :func:`propagate`: BAOAB
(:mod:`molscore.dynamics`) on a force field, replicas batched, each replica optionally stopping at the first frame
where a condition holds (first entry into a state). :func:`baoab_noise` inverts a BAOAB path: it recovers the
standard normal draws that produced it under any force, which gives the exact log-likelihood ratio of a path
under two force fields (the importance weight of a biased path sampler).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from molscore.dynamics import BAOAB, SeededNoise, State, Underdamped
from molscore.forces import energy_and_forces

EnergyAndForces = Callable[[Tensor], tuple[Tensor | None, Tensor]]


def as_force_field(model) -> EnergyAndForces:
    """A force field as ``pos (B, N, d) nm -> (energy (B,) kJ/mol or None, forces (B, N, d) kJ/(mol nm))``.

    Accepts an object with ``energy_and_forces`` (:class:`~molscore.interfaces.reference_energy.ReferenceForceField`),
    an analytic :class:`~molscore.potentials.Potential` (forces by autograd), a learned
    :class:`~molscore.models.diffusion_model.DiffusionModel` (forces kT s(x, t_min); energy when it has one), or
    such a callable itself.
    """
    if hasattr(model, "energy_and_forces"):
        return model.energy_and_forces
    if hasattr(model, "forces") and hasattr(model, "score_model"):  # learned model
        if hasattr(model.score_model, "energy"):
            return lambda pos: energy_and_forces(model.energy, pos)
        return lambda pos: (None, model.forces(pos))
    if hasattr(model, "energy"):
        return lambda pos: energy_and_forces(model.energy, pos)
    if callable(model):
        return model
    raise TypeError(f"cannot use a {type(model).__name__} as a force field: give energy_and_forces or a Potential")


class ForceFieldLangevin(Underdamped):
    """Langevin dynamics on a force field, optionally with an extra (bias) force, counting force evaluations.

    Parameters
    ----------
    force_field : see :func:`as_force_field`
    masses : Tensor (N,), amu
    kT : kJ/mol
    friction : 1/ps
    bias : optional ``pos -> extra force (B, N, d)`` kJ/(mol nm), added to the force field's (not to the energy)
    """

    def __init__(self, force_field, masses, kT: float, friction: float, bias=None):
        self.force_field = as_force_field(force_field)
        super().__init__(lambda pos: self.force_field(pos)[1], masses, kT, friction)
        self.bias = bias
        self.evaluations = 0

    def energy_and_force(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        self.check(x)
        self.evaluations += len(x)
        energy, force = self.force_field(x)
        if self.bias is not None:
            force = force + self.bias(x)
        return (None if energy is None else energy.detach()), force.detach()


@dataclass
class Segment:
    """Frames of B replicas, time-major; frames after a replica stopped are NaN.

    Attributes
    ----------
    positions : Tensor (T + 1, B, N, d), nm
    velocities : Tensor (T + 1, B, N, d), nm/ps
    energies : Tensor (T + 1, B), kJ/mol (NaN where the force field gives none)
    lengths : Tensor (B,) long, steps taken by each replica (its last frame is ``lengths[b]``)
    stopped : Tensor (B,) bool, whether the replica met the stop condition (else it ran out of steps)
    """

    positions: Tensor
    velocities: Tensor
    energies: Tensor
    lengths: Tensor
    stopped: Tensor

    def last(self) -> Tensor:
        """The last frame of each replica, (B, N, d)."""
        return self.positions[self.lengths, torch.arange(len(self.lengths), device=self.lengths.device)]


def propagate(
    term: ForceFieldLangevin,
    pos: Tensor,
    vel: Tensor,
    n_steps: int,
    dt: float,
    noise: SeededNoise,
    stop: Callable[[Tensor], Tensor] | None = None,
    limits: Tensor | None = None,
    storage_dtype: torch.dtype | None = None,
) -> Segment:
    """Run B replicas for up to ``n_steps`` BAOAB steps from ``pos, vel : (B, N, d)``.

    Replica b runs at most ``limits[b]`` steps (default ``n_steps`` for all; a limit of 0 leaves it at its
    start frame). A replica stops at the first frame ``k >= 1`` where ``stop(pos) -> (B,) bool`` holds. Finished
    replicas leave the batch, so a batch costs the force evaluations of its replicas' own lengths. Frames are stored in
    ``storage_dtype`` (default: the input's). The noise is drawn for the active batch at each step, so a
    segment is replayed by the same call with the same ``noise``.
    """
    if pos.ndim != 3 or vel.shape != pos.shape:
        raise ValueError(f"pos and vel must both be (B, N, d); got {tuple(pos.shape)} and {tuple(vel.shape)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    n_rep, store = len(pos), storage_dtype or pos.dtype
    positions = pos.new_full((n_steps + 1, *pos.shape), math.nan, dtype=store)
    velocities = torch.full_like(positions, math.nan)
    energies = pos.new_full((n_steps + 1, n_rep), math.nan, dtype=store)
    lengths = torch.full((n_rep,), n_steps, dtype=torch.long, device=pos.device)
    if limits is not None:
        lengths = torch.as_tensor(limits, dtype=torch.long, device=pos.device).clamp(0, n_steps).clone()
    stopped = torch.zeros(n_rep, dtype=torch.bool, device=pos.device)
    positions[0], velocities[0] = pos, vel
    active = torch.nonzero(lengths > 0).flatten()
    if len(active) == 0:
        return Segment(positions[:1], velocities[:1], energies[:1], lengths, stopped)
    pos, vel = pos[active], vel[active]
    energy, force = term.energy_and_force(pos)
    state = State(pos, vel, cache={"pos": pos, "force": force, "energy": energy})
    if energy is not None:
        energies[0, active] = energy.to(store)
    integrator = BAOAB()
    last_frame = int(lengths.max())
    for k in range(1, last_frame + 1):
        state = integrator.step(term, state, dt, noise)
        positions[k, active], velocities[k, active] = state.pos.to(store), state.vel.to(store)
        if state.cache.get("energy") is not None:
            energies[k, active] = state.cache["energy"].to(store)
        done = lengths[active] <= k
        if stop is not None:
            hit = stop(state.pos)
            lengths[active[hit]], stopped[active[hit]] = k, True
            done = done | hit
        if done.any():
            keep = ~done
            active = active[keep]
            if len(active) == 0:
                last_frame = k
                break
            cache = {"pos": state.pos[keep], "force": state.cache["force"][keep]}
            cache["energy"] = None if state.cache.get("energy") is None else state.cache["energy"][keep]
            state = State(cache["pos"], state.vel[keep], state.t, state.step, cache=cache)
    return Segment(positions[: last_frame + 1], velocities[: last_frame + 1], energies[: last_frame + 1], lengths, stopped)


def maxwell_boltzmann(masses: Tensor, kT: float, shape, noise: SeededNoise, step: int, stream: int = 1) -> Tensor:
    """Velocities (B, N, d), nm/ps, from the Maxwell-Boltzmann distribution (masses (N,) amu, kT kJ/mol)."""
    z = noise.normal(step, shape, masses.dtype, masses.device, stream)
    return torch.sqrt(kT / masses)[:, None] * z


def baoab_noise(positions: Tensor, v0: Tensor, forces: Tensor, masses: Tensor, kT: float, friction: float, dt: float):
    """The standard normal draws of the BAOAB steps that produced a path, under a given force.

    BAOAB maps (x_n, v_n, z_n) to x_{n+1} one-to-one, with a Jacobian that does not depend on the force, so the
    log-likelihood of a path x_1..x_T given (x_0, v_0) under force F is -|z(F)|^2 / 2 summed over steps plus a
    constant: the difference of two forces' sums is the exact log-likelihood ratio of the path.

    Parameters
    ----------
    positions : Tensor (T + 1, B, N, d), nm
    v0 : Tensor (B, N, d), nm/ps, velocities at frame 0
    forces : Tensor (T + 1, B, N, d), kJ/(mol nm), the force at every frame (differentiable if wanted)
    masses : (N,) amu;  kT : kJ/mol;  friction : 1/ps;  dt : ps (all as in the run)

    Returns
    -------
    Tensor (T, B, N, d): z_n such that BAOAB with noise z_n maps frame n to frame n + 1
    """
    if not friction > 0:
        raise ValueError(f"the BAOAB path likelihood needs friction > 0 (1/ps), got {friction}")
    inv_m = (1.0 / masses).to(positions)[:, None]
    c = math.exp(-friction * dt)
    s = math.sqrt(-math.expm1(-2.0 * friction * dt))
    sigma = torch.sqrt(kT / masses).to(positions)[:, None]
    half = 0.5 * dt
    v_half = v0 + half * inv_m * forces[0]  # after the first B
    out = []
    for n in range(len(positions) - 1):
        x_mid = positions[n] + half * v_half
        v_o = (positions[n + 1] - x_mid) / half  # velocity after O, from the second A
        out.append((v_o - c * v_half) / (s * sigma))
        v_half = v_o + dt * inv_m * forces[n + 1]  # the closing B of step n and the opening B of step n + 1
    return torch.stack(out)


def path_log_likelihood_ratio(noise_a: Tensor, noise_b: Tensor) -> Tensor:
    """log p_a(path) - log p_b(path), (B,), from the BAOAB draws (T, B, N, d) under two forces."""
    return 0.5 * ((noise_b**2).sum((0, 2, 3)) - (noise_a**2).sum((0, 2, 3)))
