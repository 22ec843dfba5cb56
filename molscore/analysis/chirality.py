"""Does a model tell a conformation from its mirror image at every diffusion time?

A chiral molecule's noised density q_t is not mirror symmetric: log q_t(x) - log q_t(mirror x) > 0 on average
over x ~ q_t, shrinking to 0 as t -> 1. A model with energy E_theta should show the same gap
E_theta(mirror x, t) - E_theta(x, t). Where the model's gap falls short of the data's, reverse diffusion reaches
small t with a racemic mix of shapes (the failure of the heavy-atom alanine model before its shape-chirality
features: 40% of its samples ended at phi > 0). The data's gap comes from the empirical noised density, a
Gaussian mixture over training frames, which is exact for the training set and trustworthy once sigma(t) exceeds
the spacing of the frames (t >~ 0.1 for alanine dipeptide in its diffusion units).
"""

import math

import torch
from torch import Tensor

from molscore.geometry import remove_centroid
from molscore.models.diffusion_model import DiffusionModel


def mirror(x: Tensor) -> Tensor:
    """Inversion through the centroid, ``(B, N, 3) -> (B, N, 3)``: the mirror image up to a rotation."""
    return 2 * x.mean(dim=-2, keepdim=True) - x


def noised_log_density(x: Tensor, centres: Tensor, alpha: float, sigma: float, chunk: int = 512) -> Tensor:
    """log q_t(x) up to a constant, ``(B,)``, for the empirical noised density
    q_t = 1/M sum_j N(alpha y_j, sigma^2 I) of ``centres y : (M, N, d)``; ``x : (B, N, d)``, same units."""
    y = alpha * centres.flatten(1)
    out = []
    for start in range(0, len(x), chunk):
        sq = torch.cdist(x[start : start + chunk].flatten(1), y).pow(2)
        out.append(torch.logsumexp(-0.5 * sq / sigma**2, dim=1))
    return torch.cat(out)


def mirror_gaps(model: DiffusionModel, frames: Tensor, reference: Tensor, times, seed: int = 0) -> list[dict[str, float]]:
    """The model's and the data's mirror gap at each diffusion time, in kT.

    ``frames : (B, N, 3)`` nm are noised to each t (held-out frames); ``reference : (M, N, 3)`` nm are the centres
    of the empirical density (training frames). Per t: ``model`` = mean of E_theta(mirror x_t) - E_theta(x_t),
    ``data`` = mean of log q_t(x_t) - log q_t(mirror x_t), each with its standard error (``*_err``).
    """
    if not model.spec.centred or model.spec.dim != 3:
        raise ValueError("mirror gaps need a centred 3-d molecular model")
    if not hasattr(model.score_model, "energy"):
        raise TypeError("mirror gaps need an energy model (a direct score model has no energy to compare)")
    device, dtype = model.device, model.dtype
    x0 = model.to_diffusion(frames.to(device, dtype))
    centres = model.to_diffusion(reference.to(device, dtype))
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for t in times:
        t_batch = torch.full((len(x0),), float(t), dtype=dtype, device=device)
        eps = remove_centroid(torch.randn(x0.shape, generator=generator, dtype=dtype, device=device))
        x = model.sde.perturb(x0, t_batch, eps)
        with torch.no_grad():
            model_gap = model.score_model.energy(mirror(x), t_batch) - model.score_model.energy(x, t_batch)
            alpha, sigma = float(model.sde.alpha(t_batch[:1])), float(model.sde.sigma(t_batch[:1]))
            data_gap = noised_log_density(x, centres, alpha, sigma) - noised_log_density(mirror(x), centres, alpha, sigma)
        row = {"t": float(t), "sigma": sigma}
        for name, gap in (("model", model_gap), ("data", data_gap)):
            row[name] = float(gap.mean())
            row[f"{name}_err"] = float(gap.std() / math.sqrt(len(gap)))
        rows.append(row)
    return rows
