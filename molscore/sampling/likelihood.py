"""Log-likelihood of conformations under a diffusion model via the probability-flow ODE.

Instantaneous change of variables: d log p(x_t)/dt = -div v(x_t, t), v = f - 1/2 g^2 s. Integrating the
augmented state (x, log-det) from t_min to 1 with Heun gives

    log p_0(x_0) = log N(x_1; 0, I_D) + int_{t_min}^1 div v dt     (diffusion coordinates),

and in physical units log p(pos) = log p_0(x_0) - D log(scale) (density per nm^D on the D-dimensional
space the model lives on: d (N - 1) for centred systems). The divergence is exact (one vector-Jacobian
product per basis vector of that space) for small D, or Hutchinson's estimate with fixed probes.
"""

import math

import torch
from torch import Tensor

from molscore.geometry import remove_centroid
from molscore.models.diffusion_model import DiffusionModel


def subspace_basis(n_particles: int, dim: int, centred: bool, dtype, device) -> Tensor:
    """Orthonormal basis of the configuration space, ``(D, N, d)``."""
    eye = torch.eye(n_particles * dim, dtype=dtype, device=device).reshape(-1, n_particles, dim)
    if not centred:
        return eye
    projected = remove_centroid(eye).reshape(n_particles * dim, -1)
    q, _ = torch.linalg.qr(projected.T)  # columns span the zero-centroid space
    return q[:, : dim * (n_particles - 1)].T.reshape(-1, n_particles, dim)


def _velocity_and_divergence(model: DiffusionModel, x: Tensor, t: float, probes: Tensor):
    """v(x, t) ``(B, N, d)`` and sum_k q_k^T (dv/dx) q_k ``(B,)`` over probes ``(K, B, N, d)``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        times = torch.full((len(x),), t, dtype=x.dtype, device=x.device)
        v = model.sde.drift(x, t) - 0.5 * model.sde.beta(t) * model.score_model.score(x, times, create_graph=True)
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k, q in enumerate(probes):
            (qj,) = torch.autograd.grad(v, x, grad_outputs=q, retain_graph=k < len(probes) - 1)
            div = div + (qj * q).flatten(1).sum(1)
    return v.detach(), div.detach()


def log_likelihood(
    model: DiffusionModel,
    pos: Tensor,
    n_steps: int = 200,
    exact: bool | None = None,
    n_probes: int = 4,
    seed: int = 0,
) -> Tensor:
    """log p(pos) under the model's probability-flow ODE, ``(B,)``, per nm^D.

    Parameters
    ----------
    pos : Tensor (B, N, d), nm
    n_steps : Heun steps from t_min to 1
    exact : exact divergence (default when D <= 32) or Hutchinson with ``n_probes`` Rademacher probes
    """
    spec = model.spec
    x = model.to_diffusion(torch.as_tensor(pos).to(model.device, model.dtype))
    n_dof = spec.dim * (spec.n_particles - 1 if spec.centred else spec.n_particles)
    exact = n_dof <= 32 if exact is None else exact
    if exact:
        probes = subspace_basis(spec.n_particles, spec.dim, spec.centred, x.dtype, x.device)
        probes = probes[:, None].expand(-1, len(x), -1, -1)
    else:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        probes = torch.randint(0, 2, (n_probes, *x.shape), generator=gen, device=x.device).to(x.dtype) * 2 - 1
        probes = (remove_centroid(probes) if spec.centred else probes) / math.sqrt(n_probes)
    sde = model.sde
    dt = (sde.t_max - sde.t_min) / n_steps
    t, delta = sde.t_min, torch.zeros(len(x), dtype=x.dtype, device=x.device)
    v0, div0 = _velocity_and_divergence(model, x, t, probes)
    for _ in range(n_steps):
        x_pred = x + dt * v0
        v1, div1 = _velocity_and_divergence(model, x_pred, t + dt, probes)
        x = x + 0.5 * dt * (v0 + v1)
        delta = delta + 0.5 * dt * (div0 + div1)
        t += dt
        v0, div0 = _velocity_and_divergence(model, x, t, probes)
    log_prior = -0.5 * (x**2).flatten(1).sum(1) - 0.5 * n_dof * math.log(2 * math.pi)
    return log_prior + delta - n_dof * math.log(model.scale)
