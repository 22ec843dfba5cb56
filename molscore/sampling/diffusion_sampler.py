"""Independent conformations from a trained model by integrating the diffusion backwards in time.

Reverse-time SDE  dx = [f - g^2 s] dt + g dW  (Euler-Maruyama), or the probability-flow ODE
dx/dt = f - 1/2 g^2 s (Heun), both from t = 1 to t_min on the same Term / Integrator / Simulation stack as
Langevin dynamics; the time step is negative.
"""

from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.dynamics import ODE, EulerMaruyama, Heun, SeededNoise, Simulation, State, Term
from molscore.geometry import remove_centroid
from molscore.models.diffusion_model import DiffusionModel

PRIOR_STREAM = 7
"""Noise stream of the prior draw (the integrator's steps use stream 0)."""


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


def sample(
    model: DiffusionModel,
    n: int,
    method: Literal["sde", "ode"] = "sde",
    n_steps: int = 1000,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> Tensor:
    """Draw ``n`` conformations from a trained model.

    Parameters
    ----------
    model : trained diffusion model (its device and dtype are used)
    n : number of samples
    method : "sde" (reverse SDE, Euler-Maruyama) or "ode" (probability flow, Heun)
    n_steps : integration steps from t = 1 to t_min
    batch_size : samples integrated together
    seed : batch k uses noise seed (seed, k), so results do not depend on how many run at once elsewhere

    Returns
    -------
    Tensor (n, N, d), nm (centred for centred systems)
    """
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
    if n < 1 or n_steps < 1 or batch_size < 1:
        raise ValueError(f"n, n_steps and batch_size must be positive, got {n}, {n_steps}, {batch_size}")
    device, dtype = model.device, model.dtype
    term = ReverseDiffusion(model) if method == "sde" else ProbabilityFlow(model)
    integrator = EulerMaruyama() if method == "sde" else Heun()
    dt = -(model.sde.t_max - model.sde.t_min) / n_steps
    out = []
    for k, start in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc=f"sampling ({method})")):
        noise = SeededNoise(seed * 1_000_003 + k)
        x1 = prior_sample(model, min(batch_size, n - start), noise, device, dtype)
        sim = Simulation(term, integrator, State(x1, t=model.sde.t_max), dt, noise, max_abs_position=1e4)
        out.append(model.to_physical(sim.run(n_steps, progress=False).pos).detach())
    return torch.cat(out)
