"""Exact diffused scores of Gaussian mixtures: ground truth for samplers, likelihoods and the FP residual.

A mixture sum_k w_k N(mu_k, s_k^2 I) diffused by the VP SDE stays a mixture,
q_t = sum_k w_k N(alpha(t) mu_k, (alpha(t)^2 s_k^2 + sigma(t)^2) I), so its energy -log q_t and score are
known in closed form at every t. Plugged into :class:`DiffusionModel`, it is an energy model whose
Fokker-Planck residual is exactly zero.
"""

import math

import torch
from torch import Tensor, nn

from molscore.diffusion.sde import VPSDE
from molscore.models.diffusion_model import DiffusionModel
from molscore.models.spec import ModelSpec
from molscore.potentials import GaussianMixture


class GaussianMixtureScore(nn.Module):
    """Exact E_t(x) = -log q_t(x) and s_t(x) = grad log q_t(x) of a diffused Gaussian mixture.

    Parameters
    ----------
    mixture : the t = 0 density, in diffusion coordinates
    sde : the diffusion process

    The density is normalised over all N d coordinates (not centred): use it for systems without
    translation invariance.
    """

    parameterisation = "energy"

    def __init__(self, mixture: GaussianMixture, sde: VPSDE):
        super().__init__()
        self.mixture, self.sde = mixture, sde

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        mu, w = self.mixture.means.to(x), self.mixture.weights.to(x)
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]  # (B, 1)
        var = alpha**2 * self.mixture.stds.to(x) ** 2 + sigma**2  # (B, K)
        n_dof = x[0].numel()
        sq = ((x[:, None] - alpha[..., None, None] * mu) ** 2).flatten(2).sum(-1)  # (B, K)
        log_comp = -0.5 * sq / var - 0.5 * n_dof * torch.log(2 * math.pi * var)
        return -torch.logsumexp(log_comp + torch.log(w), dim=-1)

    def score(self, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(x, t).sum(), x, create_graph=create_graph)
        return -grad

    def score_and_time_derivative(self, x: Tensor, t: Tensor, create_graph: bool = True):
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            t = t.detach().requires_grad_(True)
            gx, gt = torch.autograd.grad(self.energy(x, t).sum(), (x, t), create_graph=create_graph)
        return -gx, gt


def exact_mixture_model(mixture: GaussianMixture, sde: VPSDE | None = None) -> DiffusionModel:
    """A :class:`DiffusionModel` (scale 1, not centred) with the mixture's exact diffused score."""
    sde = sde or VPSDE()
    spec = ModelSpec(mixture.n_particles, mixture.dim, centred=False, network="exact_gaussian_mixture")
    return DiffusionModel(spec, GaussianMixtureScore(mixture, sde), sde, scale=1.0, kT=mixture.kT)
