"""Terms: *what* the equation of motion is, separate from how it is stepped (see :mod:`.integrators`).

A term describes dx = drift(x, t) dt + noise(z, t) sqrt(|dt|), where z is standard normal, so that
``noise(z, t)`` is the diffusion term per square root of time (g(t) z for dx = f dt + g dW). Underdamped
Langevin dynamics lives in phase space and is described by its force, masses, temperature and friction.
All tensors are ``(B, N, d)``; constants are stored in float64 and follow the input's dtype and device.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from molscore.forces import energy_and_forces

DriftFn = Callable[[Tensor, float], Tensor]
ForceFn = Callable[[Tensor], Tensor]
EnergyFn = Callable[[Tensor], Tensor]


class Term:
    """Base class of an equation dx = drift(x, t) dt + noise(z, t) sqrt(|dt|)."""

    deterministic: bool = False

    def drift(self, x: Tensor, t: float) -> Tensor:
        """Drift, Tensor (B, N, d), nm per unit time, at positions ``x : (B, N, d)`` and time ``t``."""
        raise NotImplementedError(f"{type(self).__name__} defines no drift")

    def noise(self, z: Tensor, t: float) -> Tensor:
        """Diffusion term per sqrt(time), Tensor (B, N, d), for standard normal ``z : (B, N, d)``."""
        raise NotImplementedError(f"{type(self).__name__} defines no noise")

    def energy(self, x: Tensor) -> Tensor | None:
        """Potential energy (B,), kJ/mol, for reporters; None when the term has none."""
        return None


class _Constant:
    """A float64 constant converted once per (dtype, device, shape) it is used with."""

    def __init__(self, name: str, value, unit: str):
        self.name, self.unit = name, unit
        self.value = torch.as_tensor(value, dtype=torch.float64)
        self._cache: dict = {}

    def like(self, x: Tensor, target_shape: tuple) -> Tensor:
        key = (x.dtype, x.device, target_shape)
        if key not in self._cache:
            try:
                torch.broadcast_shapes(self.value.shape, target_shape)
            except RuntimeError:
                raise ValueError(
                    f"{self.name} has shape {tuple(self.value.shape)}, which does not broadcast to "
                    f"{target_shape}; give a float or a tensor of shape {target_shape} ({self.unit})"
                ) from None
            self._cache[key] = self.value.to(dtype=x.dtype, device=x.device)
        return self._cache[key]


def _energy_or_none(energy_fn: EnergyFn | None, x: Tensor) -> Tensor | None:
    if energy_fn is None:
        return None
    return energy_fn(x).detach()


class SDE(Term):
    """dx = f(x, t) dt + g(t) dW with a time-dependent scalar or per-coordinate g (e.g. reverse diffusion).

    Parameters
    ----------
    drift_fn : (x (B, N, d), t) -> f, Tensor (B, N, d)
    diffusion_fn : t -> g(t), float or Tensor broadcastable to (B, N, d)
    energy_fn : optional x -> (B,) energy for reporters
    """

    def __init__(self, drift_fn: DriftFn, diffusion_fn: Callable, energy_fn: EnergyFn | None = None):
        self.drift_fn, self.diffusion_fn, self.energy_fn = drift_fn, diffusion_fn, energy_fn

    def drift(self, x, t):
        return self.drift_fn(x, t)

    def noise(self, z, t):
        return self.diffusion_fn(t) * z

    def energy(self, x):
        return _energy_or_none(self.energy_fn, x)


class Overdamped(Term):
    """Overdamped (Brownian) dynamics dx = drift(x, t) dt + sqrt(2 D) dW.

    Parameters
    ----------
    drift_fn : (x (B, N, d), t) -> Tensor (B, N, d), nm/ps
    diffusion : D, float or Tensor broadcastable to (N, d), nm^2/ps, positive
    energy_fn : optional x -> (B,) kJ/mol, for reporters
    """

    def __init__(self, drift_fn: DriftFn, diffusion, energy_fn: EnergyFn | None = None):
        self.drift_fn, self.energy_fn = drift_fn, energy_fn
        self.diffusion = _Constant("diffusion D", diffusion, "nm^2/ps")
        d = self.diffusion.value
        if d.ndim > 2 or not torch.isfinite(d).all() or (d <= 0).any():
            raise ValueError(
                f"diffusion D must be positive and finite, a float or a tensor broadcastable to (N, d) "
                f"(nm^2/ps); got shape {tuple(d.shape)} with min {float(d.min()):.3g}"
            )
        self._sqrt_2d = _Constant("diffusion D", torch.sqrt(2 * d), "nm^2/ps")

    @classmethod
    def from_force(cls, force_fn: ForceFn, kT: float, diffusion, energy_fn: EnergyFn | None = None):
        """Brownian dynamics in a force field: drift = D / kT * F(x).

        Parameters
        ----------
        force_fn : x (B, N, d) -> F (B, N, d), kJ/(mol nm)
        kT : thermal energy, kJ/mol
        diffusion : D, float or Tensor broadcastable to (N, d), nm^2/ps
        """
        if not kT > 0:
            raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
        d = _Constant("diffusion D", diffusion, "nm^2/ps")
        beta = 1.0 / float(kT)

        def drift(x, t):
            return (beta * d.like(x, tuple(x.shape[1:]))) * force_fn(x)

        term = cls(drift, diffusion, energy_fn)
        term.kT = float(kT)
        return term

    def drift(self, x, t):
        return self.drift_fn(x, t)

    def noise(self, z, t):
        return self._sqrt_2d.like(z, tuple(z.shape[1:])) * z

    def energy(self, x):
        return _energy_or_none(self.energy_fn, x)


class ODE(Term):
    """Deterministic dx = drift(x, t) dt, e.g. a probability-flow ODE; step it with Heun.

    Parameters
    ----------
    drift_fn : (x (B, N, d), t) -> Tensor (B, N, d)
    energy_fn : optional x -> (B,) for reporters
    """

    deterministic = True

    def __init__(self, drift_fn: DriftFn, energy_fn: EnergyFn | None = None):
        self.drift_fn, self.energy_fn = drift_fn, energy_fn

    def drift(self, x, t):
        return self.drift_fn(x, t)

    def noise(self, z, t):
        return torch.zeros_like(z)

    def energy(self, x):
        return _energy_or_none(self.energy_fn, x)


class Underdamped(Term):
    """Langevin dynamics: dx = v dt, m dv = F(x) dt - gamma m v dt + sqrt(2 gamma m kT) dW.

    Lives in phase space, so it has no drift(x, t) of positions alone: step it with :class:`BAOAB`.

    Parameters
    ----------
    force_fn : x (B, N, d) -> F (B, N, d), kJ/(mol nm); None to take forces as -grad energy_fn by autograd
        (then each step gets the energy for free)
    masses : Tensor (N,), amu
    kT : thermal energy, kJ/mol
    friction : gamma, 1/ps (>= 0; 0 gives constant-energy velocity Verlet)
    energy_fn : optional x -> (B,) potential energy, kJ/mol
    """

    def __init__(self, force_fn: ForceFn | None, masses, kT: float, friction: float, energy_fn=None):
        if force_fn is None and energy_fn is None:
            raise ValueError("Underdamped needs force_fn or energy_fn (forces are then -grad energy_fn)")
        masses = torch.as_tensor(masses, dtype=torch.float64)
        if masses.ndim != 1 or not torch.isfinite(masses).all() or (masses <= 0).any():
            raise ValueError(f"masses must be a positive 1-D tensor (N,) in amu, got shape {tuple(masses.shape)}")
        if not kT > 0 or not math.isfinite(kT):
            raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
        if not friction >= 0 or not math.isfinite(friction):
            raise ValueError(f"friction must be >= 0 (1/ps), got {friction}")
        self.force_fn, self.energy_fn = force_fn, energy_fn
        self.masses, self.kT, self.friction = masses, float(kT), float(friction)
        self._inv_mass = _Constant("masses", (1.0 / masses)[:, None], "amu")
        self._thermal_speed = _Constant("masses", torch.sqrt(self.kT / masses)[:, None], "amu")

    @classmethod
    def from_potential(cls, potential, masses, kT: float, friction: float) -> "Underdamped":
        """Langevin dynamics in a potential with ``energy(pos) -> (B,)``; forces by autograd."""
        return cls(None, masses, kT, friction, energy_fn=potential.energy)

    def check(self, x: Tensor) -> None:
        """Raise if ``x : (B, N, d)`` does not have one mass per particle."""
        if x.ndim != 3 or x.shape[1] != len(self.masses):
            raise ValueError(
                f"positions have shape {tuple(x.shape)} but the term has {len(self.masses)} masses; "
                f"give positions (B, {len(self.masses)}, d) or masses (N,) with N = {x.shape[1]}"
            )

    def energy_and_force(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Energy (B,) kJ/mol (None if unknown) and force (B, N, d) kJ/(mol nm) at ``x``."""
        if self.force_fn is None:
            return energy_and_forces(self.energy_fn, x)
        return None, self.force_fn(x)

    def energy(self, x):
        return _energy_or_none(self.energy_fn, x)

    def inverse_mass(self, x: Tensor) -> Tensor:
        """1/m as Tensor (N, 1), 1/amu, in the dtype and device of ``x``."""
        return self._inv_mass.like(x, tuple(x.shape[1:]))

    def thermal_speed(self, x: Tensor) -> Tensor:
        """sqrt(kT/m) as Tensor (N, 1), nm/ps: the standard deviation of each Maxwell-Boltzmann component."""
        return self._thermal_speed.like(x, tuple(x.shape[1:]))

    def drift(self, x, t):
        raise TypeError("Underdamped dynamics lives in phase space (pos, vel); step it with BAOAB")

    def noise(self, z, t):
        raise TypeError("Underdamped dynamics lives in phase space (pos, vel); step it with BAOAB")
