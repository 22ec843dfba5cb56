"""Integrators: *how* to step a term. Each has ``init(term, state, noise) -> State`` and
``step(term, state, dt, noise) -> State``; a step returns a new State with ``t + dt`` and ``step + 1`` and
draws its noise from ``noise.normal(state.step, ...)``, so the noise of a step depends only on the seed and
the step number. ``dt`` may be negative for reverse-time equations (noise scales with sqrt(|dt|)), except
for Langevin dynamics.
"""

import math

from torch import Tensor

from molscore.dynamics.noise import STEP_STREAM, VELOCITY_STREAM
from molscore.dynamics.state import State
from molscore.dynamics.terms import Term, Underdamped


def _check_dt(dt: float) -> float:
    dt = float(dt)
    if dt == 0 or not math.isfinite(dt):
        raise ValueError(f"time step dt must be finite and non-zero, got {dt}")
    return dt


def _checked_drift(term: Term, x: Tensor, t: float) -> Tensor:
    f = term.drift(x, t)
    if f.shape != x.shape:
        raise ValueError(
            f"{type(term).__name__}.drift returned shape {tuple(f.shape)} for positions {tuple(x.shape)}; "
            "the drift function must return a tensor of the same shape (B, N, d)"
        )
    return f


def _need_noise(noise, name: str):
    if noise is None:
        raise ValueError(f"{name} needs a noise source for a stochastic term; pass noise=SeededNoise(seed)")
    return noise


class Integrator:
    """Base class: ``init`` prepares a state for this integrator, ``step`` advances it by ``dt``."""

    def init(self, term: Term, state: State, noise=None) -> State:
        """Return ``state`` ready to be stepped (the base implementation only checks the term)."""
        self.check_term(term)
        return state

    def check_term(self, term: Term) -> None:
        if isinstance(term, Underdamped):
            raise TypeError(f"{type(self).__name__} cannot step Underdamped (phase-space) terms; use BAOAB")

    def step(self, term: Term, state: State, dt: float, noise=None) -> State:
        raise NotImplementedError


class EulerMaruyama(Integrator):
    """x' = x + drift(x, t) dt + noise(z, t) sqrt(|dt|), z ~ N(0, I); weak order 1, strong order 1 for
    additive noise (0.5 for multiplicative). One drift evaluation per step.
    """

    def step(self, term, state, dt, noise=None):
        self.check_term(term)
        dt = _check_dt(dt)
        x, t = state.pos, state.t
        x_new = x + _checked_drift(term, x, t) * dt
        if not term.deterministic:
            z = _need_noise(noise, "EulerMaruyama").normal(state.step, x.shape, x.dtype, x.device, STEP_STREAM)
            x_new = x_new + term.noise(z, t) * math.sqrt(abs(dt))
        return State(x_new, state.vel, t + dt, state.step + 1)


class Heun(Integrator):
    """Explicit trapezoidal rule (Heun) for deterministic terms, second order, two drift evaluations:

    x* = x + f(x, t) dt,   x' = x + dt / 2 (f(x, t) + f(x*, t + dt)).
    """

    def check_term(self, term):
        super().check_term(term)
        if not term.deterministic:
            raise TypeError(
                f"Heun steps deterministic terms (ODE) only, got {type(term).__name__} with noise; "
                "use EulerMaruyama for stochastic terms"
            )

    def step(self, term, state, dt, noise=None):
        self.check_term(term)
        dt = _check_dt(dt)
        x, t = state.pos, state.t
        f0 = _checked_drift(term, x, t)
        f1 = _checked_drift(term, x + f0 * dt, t + dt)
        return State(x + (0.5 * dt) * (f0 + f1), state.vel, t + dt, state.step + 1)


class BAOAB(Integrator):
    """Leimkuhler-Matthews BAOAB splitting of Langevin dynamics (:class:`Underdamped`).

    B: v += dt/2 F/m;  A: x += dt/2 v;  O: v = c v + sqrt(1 - c^2) sqrt(kT/m) z with c = exp(-gamma dt);
    A: x += dt/2 v;  B: v += dt/2 F(x')/m.

    Configurations are sampled with O(dt^2) bias, exactly for a harmonic potential at any stable dt.
    The force at the new positions is kept in ``State.cache`` and reused by the next step's first B, so a
    step costs one force evaluation (the first step of a fresh or resumed state costs two).
    """

    def check_term(self, term):
        if not isinstance(term, Underdamped):
            raise TypeError(
                f"BAOAB steps Underdamped (Langevin) terms only, got {type(term).__name__}; "
                "use EulerMaruyama or Heun for position-only equations"
            )

    def init(self, term, state, noise=None):
        """Draw Maxwell-Boltzmann velocities (stream VELOCITY_STREAM, step ``state.step``) if vel is None."""
        self.check_term(term)
        term.check(state.pos)
        if state.vel is not None:
            return state
        x = state.pos
        z = _need_noise(noise, "BAOAB.init (to draw velocities)").normal(
            state.step, x.shape, x.dtype, x.device, VELOCITY_STREAM
        )
        return State(x, term.thermal_speed(x) * z, state.t, state.step, cache=state.cache)

    def step(self, term, state, dt, noise=None):
        self.check_term(term)
        dt = float(dt)
        if not dt > 0 or not math.isfinite(dt):
            raise ValueError(f"Langevin dynamics runs forward in time: dt must be positive (ps), got {dt}")
        if state.vel is None:
            raise ValueError("BAOAB needs velocities; call BAOAB().init(term, state, noise) first")
        x, v = state.pos, state.vel
        force = state.cached("force")
        if force is None:
            term.check(x)
            force = term.energy_and_force(x)[1]
        inv_m = term.inverse_mass(x)
        half = 0.5 * dt
        v = v + (half * inv_m) * force
        x = x + half * v
        if term.friction > 0:
            c = math.exp(-term.friction * dt)
            s = math.sqrt(-math.expm1(-2.0 * term.friction * dt))
            z = _need_noise(noise, "BAOAB").normal(state.step, x.shape, x.dtype, x.device, STEP_STREAM)
            v = c * v + (s * term.thermal_speed(x)) * z
        x = x + half * v
        energy, force = term.energy_and_force(x)
        v = v + (half * inv_m) * force
        cache = {"pos": x, "force": force, "energy": energy}
        return State(x, v, state.t + dt, state.step + 1, cache=cache)
