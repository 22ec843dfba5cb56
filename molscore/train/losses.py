"""Training losses: denoising score matching and the Fokker-Planck residual (SCIENCE.md sections 1-2).

Both are evaluated from ONE forward and ONE backward pass of the energy network: the DSM batch and the
finite-difference probe points x +- h v are concatenated, and autograd of sum(E) with respect to (x, t)
gives every score and every dE/dt at once. That keeps the Fokker-Planck term cheap.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from molscore.diffusion.sde import VPSDE, _per_sample
from molscore.geometry import remove_centroid


@dataclass
class LossTerms:
    """Per-sample loss terms. dsm : (B,); fp : (M,) products R1 R2 / D^2 on the FP subset (or None)."""

    dsm: Tensor
    fp: Tensor | None = None


def dsm_from_score(score: Tensor, eps: Tensor, sigma: Tensor, n_dof: int) -> Tensor:
    """eps-matching loss per sample, ||sigma s + eps||^2 / D, ``(B,)``."""
    return ((_per_sample(sigma, score) * score + eps) ** 2).flatten(1).sum(1) / n_dof


def fp_residual(sde: VPSDE, x: Tensor, t: Tensor, score: Tensor, dE_dt: Tensor, divergence: Tensor, n_dof: int) -> Tensor:
    """Fokker-Planck residual of an energy model, ``(B,)``.

    R = d/dt log q - 1/2 beta(t) [div s + ||s||^2 + <x, s> + D],  log q = -E  =>  d/dt log q = -dE/dt.
    """
    sq = (score**2).flatten(1).sum(1)
    xs = (x * score).flatten(1).sum(1)
    return -dE_dt - 0.5 * sde.beta(t) * (divergence + sq + xs + n_dof)


def loss_terms(
    model,
    sde: VPSDE,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    n_dof: int,
    centred: bool,
    fp_count: int = 0,
    fp_step: float = 1e-2,
    generator: torch.Generator | None = None,
    fp_group: int = 1,
) -> LossTerms:
    """DSM loss on the batch and, on its first ``fp_count`` samples, two independent FP residuals.

    Parameters
    ----------
    model : score model (an energy model if ``fp_count > 0``)
    x0 : Tensor (B, N, d), clean data in diffusion coordinates
    t : Tensor (B,), diffusion times
    eps : Tensor (B, N, d), standard noise (projected if centred)
    fp_count : number of samples that also get the FP residual (0: no FP term)
    fp_step : finite-difference step of the Hutchinson divergence, relative to sigma(t)
    fp_group : with k > 1, the FP samples come in consecutive groups of k sharing one t, and the residuals are
        centred within each group: the term estimates Var_x R(x, t) instead of E R^2. An unnormalised energy
        (log q = -E - log Z(t)) is Fokker-Planck consistent exactly when R(., t) is constant in x: its offset
        is -d log Z / dt, which E R^2 would force the network to learn (at t -> 0 it is ~1e4 and swamps the rest)
    """
    xt = sde.perturb(x0, t, eps)
    sigma = sde.sigma(t)
    if fp_count == 0:
        score = model.score(xt, t, create_graph=True)
        return LossTerms(dsm_from_score(score, eps, sigma, n_dof))
    if not hasattr(model, "score_and_time_derivative"):
        raise TypeError("the Fokker-Planck term needs an energy model (parameterisation: energy)")
    m = fp_count
    xm, tm = xt[:m], t[:m]
    probes = torch.randn((2, *xm.shape), generator=generator, dtype=xt.dtype, device=xt.device)
    if centred:
        probes = remove_centroid(probes)
    h = fp_step * _per_sample(sigma[:m], xm)
    points = torch.cat([xt, xm + h * probes[0], xm - h * probes[0], xm + h * probes[1], xm - h * probes[1]])
    times = torch.cat([t, tm, tm, tm, tm])
    scores, dE_dt = model.score_and_time_derivative(points, times, create_graph=True)
    score = scores[: len(xt)]
    plus1, minus1, plus2, minus2 = scores[len(xt) :].split(m)
    div1 = (probes[0] * (plus1 - minus1)).flatten(1).sum(1) / (2 * h.flatten())
    div2 = (probes[1] * (plus2 - minus2)).flatten(1).sum(1) / (2 * h.flatten())
    r1 = fp_residual(sde, xm, tm, score[:m], dE_dt[:m], div1, n_dof)
    r2 = fp_residual(sde, xm, tm, score[:m], dE_dt[:m], div2, n_dof)
    if fp_group > 1:
        if m % fp_group or not torch.all(tm.view(-1, fp_group) == tm.view(-1, fp_group)[:, :1]):
            raise ValueError(f"fp_group = {fp_group}: the {m} FP samples must come in groups of {fp_group} sharing one t")
        r1, r2 = (r.view(-1, fp_group) for r in (r1, r2))
        # the product of two centred residuals with independent probes, times k / (k - 1): unbiased for Var_x R
        r1, r2 = r1 - r1.mean(1, keepdim=True), r2 - r2.mean(1, keepdim=True)
        return LossTerms(
            dsm_from_score(score, eps, sigma, n_dof), (r1 * r2).flatten() * fp_group / (fp_group - 1) / n_dof**2
        )
    return LossTerms(dsm_from_score(score, eps, sigma, n_dof), r1 * r2 / n_dof**2)
