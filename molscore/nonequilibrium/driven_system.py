"""Driven (non-equilibrium) overdamped systems: dx = b(x) dt + sqrt(2 D) dW with any drift callable b and
per-degree-of-freedom diffusion D.

A :class:`DrivenSystem` is all an estimator needs; the builders below make the solvable ones of SCIENCE.md
section 6, each with its exact entropy production and an *equilibrium control*: the same state space,
diffusion and conservative forces with the driving switched off (sigma = 0 exactly), on which an estimator's
bias shows. Definitions live in ``systems/<name>/driven.yaml`` (:func:`load_driven_system`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from molscore.dynamics.terms import Overdamped
from molscore.nonequilibrium.exact import linear_entropy_production, ring_mean_velocity
from molscore.system import SYSTEMS_DIR

Drift = Callable[[Tensor], Tensor]


@dataclass
class DrivenSystem:
    """Overdamped dynamics dx = drift(x) dt + sqrt(2 D) dW in reduced units (kB = 1).

    Attributes
    ----------
    name : label for tables and plots
    drift : x (B, N, d) -> b (B, N, d), length per unit time
    diffusion : D, Tensor (N, d), length^2 per unit time, positive (per degree of freedom)
    initial : Tensor (N, d), where replicas start (they are equilibrated by a burn-in)
    exact : exact entropy production rate (kB per unit time), None if unknown
    control : the equilibrium control (driving off), None if it has none
    timestep : a time step at which Euler-Maruyama is accurate to well below 1% in sigma
    period : length of a periodic coordinate (a ring), None for open space
    particle_of_row : particle owning each row of x (N,), for per-particle sums (e.g. an active particle's
        position and propulsion rows); defaults to one particle per row
    relaxation_time : slowest relaxation time of the dynamics; runs burn in for several of it
    description : one line saying what the system is, with its parameters
    parameters : the builder's arguments, for reports
    """

    name: str
    drift: Drift
    diffusion: Tensor
    initial: Tensor
    exact: float | None = None
    control: "DrivenSystem | None" = None
    timestep: float = 1e-3
    period: float | None = None
    particle_of_row: list[int] | None = None
    relaxation_time: float = 1.0
    description: str = ""
    parameters: dict = field(default_factory=dict)

    def __post_init__(self):
        self.diffusion = torch.as_tensor(self.diffusion, dtype=torch.float64)
        self.initial = torch.as_tensor(self.initial, dtype=torch.float64)
        if self.initial.ndim != 2:
            raise ValueError(f"{self.name}: initial configuration must have shape (N, d), got {tuple(self.initial.shape)}")
        self.diffusion = torch.broadcast_to(self.diffusion, self.initial.shape).clone()
        if not torch.isfinite(self.diffusion).all() or (self.diffusion <= 0).any():
            raise ValueError(f"{self.name}: diffusion D must be positive and finite in every degree of freedom")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.initial.shape)

    def term(self) -> Overdamped:
        """The system as an :class:`~molscore.dynamics.terms.Overdamped` term for the dynamics stack."""
        return Overdamped(lambda x, t: self.drift(x), self.diffusion)

    def check(self, x: Tensor, what: str = "positions") -> Tensor:
        """Raise a clear error unless ``x`` is (B, N, d) of this system's shape and finite."""
        if x.ndim != 3 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{what} have shape {tuple(x.shape)}; {self.name} needs (B, {self.shape[0]}, {self.shape[1]})")
        if not torch.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return x


def _linear(name, a: np.ndarray, diffusion: np.ndarray, shape, **kwargs) -> DrivenSystem:
    """dx = A x dt + sqrt(2 D) dW on flattened coordinates x (N * d), with its exact sigma."""
    a_t = torch.as_tensor(a, dtype=torch.float64)

    def drift(x):
        return (x.flatten(1) @ a_t.to(x).T).view_as(x)

    exact = linear_entropy_production(a, diffusion.reshape(-1))
    relaxation = 1.0 / np.min(-np.linalg.eigvals(a).real)
    return DrivenSystem(
        name, drift, torch.as_tensor(diffusion).reshape(shape), torch.zeros(shape), exact=exact,
        relaxation_time=float(relaxation), **kwargs,
    )  # fmt: skip


def rotational_ou(k: float = 1.0, alpha: float = 2.0, diffusion: float = 1.0, timestep: float = 1e-3) -> DrivenSystem:
    """2-D Ornstein-Uhlenbeck process with a rotational force: b = -k x + alpha R x, R the 90 degree rotation.

    sigma = 2 alpha^2 / k (for D = 1; alpha = 2, k = 1: 8.0). The control has alpha = 0.
    """
    a = np.array([[-k, -alpha], [alpha, -k]])
    control = rotational_ou(k, 0.0, diffusion, timestep) if alpha != 0 else None
    return _linear(
        "rotational_ou", a, np.full((1, 2), diffusion), (1, 2), control=control, timestep=timestep,
        description=f"2-D OU, k = {k}, rotation alpha = {alpha}, D = {diffusion}",
        parameters={"k": k, "alpha": alpha, "diffusion": diffusion},
    )  # fmt: skip


def bead_chain(temperatures, k: float = 1.0, gamma: float = 1.0, timestep: float = 1e-3) -> DrivenSystem:
    """Beads on a line joined by springs k, the end beads also tied to walls by springs k, each bead at its
    own temperature T_i (kB = 1): gamma dx_i = -dU/dx_i dt + sqrt(2 gamma T_i) dW, so b = -grad U / gamma and
    D_i = T_i / gamma. Two beads at T = (1, 10), k = gamma = 1: sigma = k (T1 - T2)^2 / (4 gamma T1 T2) = 2.025.

    The control has every bead at the mean temperature.
    """
    temps = np.asarray(temperatures, dtype=np.float64)
    n = len(temps)
    if n < 1 or (temps <= 0).any():
        raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {temperatures}")
    laplacian = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    control = None
    if not np.allclose(temps, temps[0]):
        control = bead_chain(np.full(n, temps.mean()), k, gamma, timestep)
    profile = ", ".join(f"{t:g}" for t in temps)
    return _linear(
        f"bead_chain_{n}", -k / gamma * laplacian, (temps / gamma)[:, None], (n, 1), control=control,
        timestep=timestep, description=f"{n} beads, k = {k}, gamma = {gamma}, T = ({profile})",
        parameters={"temperatures": temps.tolist(), "k": k, "gamma": gamma},
    )  # fmt: skip


def driven_ring(
    force: float = 1.0,
    barrier: float = 2.0,
    period: float = 2 * math.pi,
    gamma: float = 1.0,
    kT: float = 1.0,
    timestep: float = 1e-3,
) -> DrivenSystem:
    """A particle on a ring of length L pulled by a constant force f through U(x) = barrier/2 (1 - cos 2 pi x / L).

    b = (f - U'(x)) / gamma, D = kT / gamma; sigma = f <dx/dt> / kT (with no potential f^2 / (gamma kT)).
    The coordinate is unwrapped (it runs along the real line); the drift is periodic in it.
    """
    wave = 2 * math.pi / period

    def potential(x):
        return 0.5 * barrier * (1 - np.cos(wave * x))

    def drift(x):
        return (force - 0.5 * barrier * wave * torch.sin(wave * x)) / gamma

    velocity = ring_mean_velocity(potential, force, kT / gamma, kT, period)
    control = driven_ring(0.0, barrier, period, gamma, kT, timestep) if force != 0 else None
    return DrivenSystem(
        "driven_ring", drift, torch.full((1, 1), kT / gamma), torch.zeros(1, 1), exact=force * velocity / kT,
        control=control, timestep=timestep, period=period,
        relaxation_time=period**2 * gamma / (4 * math.pi**2 * kT) * math.exp(barrier / kT),
        description=f"ring L = {period}, force f = {force}, barrier {barrier}, gamma = {gamma}, kT = {kT}",
        parameters={"force": force, "barrier": barrier, "period": period, "gamma": gamma, "kT": kT,
                    "mean_velocity": velocity},
    )  # fmt: skip


def active_particles(
    n_particles: int = 2,
    dim: int = 2,
    trap: float = 1.0,
    mobility: float = 1.0,
    diffusion: float = 0.1,
    persistence: float = 1.0,
    active_diffusion: float = 1.0,
    repulsion: float = 10.0,
    radius: float = 1.0,
    coupling: float = 1.0,
    timestep: float = 1e-3,
) -> DrivenSystem:
    """Active Ornstein-Uhlenbeck particles in a harmonic trap with soft repulsion.

    Rows 0..N-1 of x are positions r_i, rows N..2N-1 the self-propulsion velocities u_i:
    dr_i = [mobility (-trap r_i + sum_j F_ij) + coupling u_i] dt + sqrt(2 diffusion) dW,
    du_i = -u_i / persistence dt + sqrt(2 active_diffusion) / persistence dW,
    with soft pair forces from U = repulsion/2 (1 - r/radius)^2 for r < radius. Without repulsion the
    dynamics is linear and sigma exact; the control has coupling 0 (propulsion does not move the particles).
    """
    n, d = int(n_particles), int(dim)
    if n < 1 or d < 1:
        raise ValueError(f"need n_particles >= 1 and dim >= 1, got {n_particles}, {dim}")

    def drift(x):
        r, u = x[:, :n], x[:, n:]
        force = -trap * r
        if repulsion > 0 and n > 1:
            sep = r[:, :, None, :] - r[:, None, :, :]  # (B, N, N, d)
            dist = torch.sqrt((sep**2).sum(-1) + 1e-12)
            overlap = torch.clamp(1 - dist / radius, min=0)
            overlap = overlap * (1 - torch.eye(n, dtype=x.dtype, device=x.device))
            force = force + ((repulsion / radius) * overlap / dist)[..., None].mul(sep).sum(2)
        return torch.cat([mobility * force + coupling * u, -u / persistence], dim=1)

    diff = torch.cat([torch.full((n, d), diffusion), torch.full((n, d), active_diffusion / persistence**2)])
    exact = None
    if repulsion == 0 or n == 1:
        a = np.array([[-mobility * trap, coupling], [0.0, -1.0 / persistence]])
        exact = n * d * linear_entropy_production(a, [diffusion, active_diffusion / persistence**2])
    initial = torch.zeros(2 * n, d)
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    initial[:n, 0] = 0.5 * radius * n / math.pi * torch.cos(angles) if n > 1 else 0.0
    if d > 1 and n > 1:
        initial[:n, 1] = 0.5 * radius * n / math.pi * torch.sin(angles)
    params = dict(
        n_particles=n, dim=d, trap=trap, mobility=mobility, diffusion=diffusion, persistence=persistence,
        active_diffusion=active_diffusion, repulsion=repulsion, radius=radius, timestep=timestep,
    )  # fmt: skip
    control = active_particles(**{**params, "coupling": 0.0}) if coupling != 0 else None
    return DrivenSystem(
        f"active_particles_{n}", drift, diff, initial, exact=exact, control=control, timestep=timestep,
        particle_of_row=list(range(n)) * 2, relaxation_time=max(1 / (mobility * trap), persistence),
        parameters={**params, "coupling": coupling},
        description=f"{n} AOUPs in {d}-D, trap {trap}, persistence {persistence}, active D {active_diffusion}, "
        f"repulsion {repulsion} within {radius}",
    )  # fmt: skip


BUILDERS = {
    "rotational_ou": rotational_ou,
    "bead_chain": bead_chain,
    "driven_ring": driven_ring,
    "active_particles": active_particles,
    "torque_driven_molecule": lambda **kw: import_module("molscore.nonequilibrium.molecular").torque_driven_molecule(**kw),
}


def load_driven_system(name_or_path: str | Path, **overrides) -> tuple[DrivenSystem, dict]:
    """Build the system of ``systems/<name>/driven.yaml`` (or a path to such a file or folder).

    The file has ``model`` (one of :data:`BUILDERS`), ``parameters`` (keyword arguments of the builder,
    updated by ``overrides``) and optional ``run`` settings (replicas, steps, ...) returned as the second item.
    """
    path = Path(name_or_path)
    if not path.exists():
        path = SYSTEMS_DIR / str(name_or_path)
    if path.is_dir():
        path = path / "driven.yaml"
    if not path.is_file():
        known = sorted(p.name for p in SYSTEMS_DIR.iterdir() if (p / "driven.yaml").is_file())
        raise FileNotFoundError(f"no driven-system definition at {path}; known driven systems: {known}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"name", "model", "parameters", "run", "exact"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: model, parameters, run, exact, name")
    model = spec.get("model")
    if model not in BUILDERS:
        raise ValueError(f"{path}: model {model!r} unknown; choose from {sorted(BUILDERS)}")
    params = {**(spec.get("parameters") or {}), **overrides}
    try:
        system = BUILDERS[model](**params)
    except TypeError as err:
        raise ValueError(f"{path}: bad parameters for {model}: {err}") from None
    system.name = spec.get("name", path.parent.name)
    return system, dict(spec.get("run") or {})
