"""Learning the steady-state score s = grad log p of a driven system from steady-state samples.

Denoising score matching over a range of small noise levels (a noise-conditional network, read off at the
smallest level), regularised by the stationary Fokker-Planck residual

    r(x) = div v + v . s,    v = b - D s,

which vanishes for the true score (div(p v) = 0) and ties the learned score to the known drift. The network
is an MLP over standardised coordinates (periodic coordinates enter as cos and sin), for low-dimensional
particle systems; molecules use the equivariant diffusion models of :mod:`molscore.models` instead.
"""

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.nonequilibrium.coordinate_network import CoordinateNetwork
from molscore.nonequilibrium.divergence import divergence
from molscore.nonequilibrium.driven_system import DrivenSystem


class SteadyStateScore(CoordinateNetwork):
    """Noise-conditional score network ``s(x, noise) -> (B, N, d)`` per unit length.

    Parameters
    ----------
    mean, std : Tensor (N, d), per-coordinate location and scale of the data (standardisation)
    period : length of a periodic coordinate (all coordinates), None for open space
    hidden : widths of the hidden layers
    noise_min : the noise level, in units of ``std``, at which :meth:`forward` without ``noise`` is evaluated
    """

    def __init__(self, mean: Tensor, std: Tensor, period: float | None = None, hidden=(128, 128, 128), noise_min=0.02):
        super().__init__(mean, std, period, hidden, n_extra=1)
        self.noise_min = float(noise_min)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Score at ``x : (B, N, d)`` for noise levels ``noise : (B,)`` (units of std; default ``noise_min``)."""
        if noise is None:
            noise = torch.full((len(x),), self.noise_min, dtype=x.dtype, device=x.device)
        h = torch.cat([self.features(x), torch.log(noise)[:, None]], dim=1)
        return self.net(h).view_as(x) / (self.std * torch.sqrt(1 + noise**2)[:, None, None])


def stationary_fp_residual(score: SteadyStateScore, system: DrivenSystem, x: Tensor, max_exact_dof: int = 16) -> Tensor:
    """Stationary Fokker-Planck residual div v + v . s at ``x : (B, N, d)``, (B,), per unit time, in the graph.

    The D-weighted divergence of the score is exact up to ``max_exact_dof`` degrees of freedom. Above, two
    residuals with independent Rademacher probes are returned as (B, 2): their product is an unbiased
    estimate of the squared residual, their mean square a biased but bounded one (it adds the probes'
    variance, which penalises off-diagonal Jacobian entries); training uses the bounded one, because a
    network can drive the product of two probes negative without bound.
    """
    diff = system.diffusion.to(x)
    with torch.no_grad():
        b = system.drift(x)
    div_b = divergence(system.drift, x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score(xg)
        v_dot_s = ((b - diff * s) * s).flatten(1).sum(1)
        n_dof = s[0].numel()
        if n_dof <= max_exact_dof:
            div_s = torch.zeros(len(x), dtype=x.dtype, device=x.device)
            for i in range(n_dof):
                e = torch.zeros_like(s).flatten(1)
                e[:, i] = 1.0
                (g,) = torch.autograd.grad(s, xg, e.view_as(s), create_graph=True, retain_graph=True)
                div_s = div_s + g.flatten(1)[:, i] * diff.flatten()[i]
            return div_b - div_s + v_dot_s
        out = []
        for _ in range(2):
            q = torch.randint(0, 2, x.shape, device=x.device).to(x) * 2 - 1
            (g,) = torch.autograd.grad(s, xg, diff * q, create_graph=True, retain_graph=True)
            out.append(div_b - (g * q).flatten(1).sum(1) + v_dot_s)
        return torch.stack(out, dim=1)


def fit_steady_state_score(
    system: DrivenSystem,
    samples: Tensor,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 2e-3,
    noise_range: tuple[float, float] = (0.02, 1.0),
    fp_weight: float = 10.0,
    fp_batch_size: int = 128,
    hidden=(128, 128, 128),
    seed: int = 0,
    progress: bool = True,
) -> tuple[SteadyStateScore, dict]:
    """Fit :class:`SteadyStateScore` to steady-state ``samples : (M, N, d)`` (or (T, B, N, d)).

    The loss is E |noise std s(x + noise std eps, noise) + eps|^2 over log-uniform noise levels in
    ``noise_range`` (units of the per-coordinate std), plus ``fp_weight`` times the mean squared stationary FP
    residual at clean samples, scaled by the mean squared (b^T D^-1 b) so that the weight is dimensionless.
    Returns the network (in eval mode) and a log with the final loss terms and the wall time.
    """
    x_all = samples.reshape(-1, *system.shape).to(torch.get_default_dtype())
    if len(x_all) < 2 or not torch.isfinite(x_all).all():
        raise ValueError("need at least 2 finite steady-state samples to fit a score")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = x_all.mean(0), x_all.std(0).clamp_min(1e-8)
    model = SteadyStateScore(mean, std, system.period, hidden, noise_range[0])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    with torch.no_grad():
        b = system.drift(x_all[:4096])
        scale = float(((b * b / system.diffusion.to(b)).flatten(1).sum(1) ** 2).mean()) + 1e-12
    log_lo, log_hi = math.log(noise_range[0]), math.log(noise_range[1])
    start, log = time.perf_counter(), {}
    for _ in tqdm(range(steps), desc=f"{system.name} steady-state score", disable=not progress, leave=False):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        x = x_all[idx]
        noise = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(batch_size, generator=gen, dtype=x.dtype))
        eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        scaled = noise[:, None, None] * std
        dsm = ((scaled * model(x + scaled * eps, noise) + eps) ** 2).flatten(1).sum(1).mean()
        loss = dsm
        if fp_weight > 0:
            r = stationary_fp_residual(model, system, x[:fp_batch_size])
            fp = (r**2).mean() / scale
            loss = loss + fp_weight * fp
            log["fp"] = float(fp.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log["dsm"] = float(dsm.detach())
    log["seconds"] = time.perf_counter() - start
    return model.eval(), log
