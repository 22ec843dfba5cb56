"""Where training spends its samples in diffusion time: the distribution p(t) of the DSM (and FP) times.

With t uniform on [t_min, 1], about 10% of the samples fall where torsional information survives (t below
~0.1-0.15 for alanine dipeptide, SCIENCE.md section 1), and the learned force field at t -> 0 stays flat.
``"log_sigma"`` draws log sigma(t) uniformly between the stage's ends (as EDM draws log sigma, Karras et al. 2022),
which puts most samples at small t, mixed with a share of uniform times so that large t is not starved:

    p(t) = u U(t; lo, hi) + (1 - u) U(log sigma(t); log max(sigma(lo), sigma_min), log sigma(hi)) |d log sigma / dt|
"""

import math
from typing import Literal

import torch
from torch import Tensor

from molscore.diffusion.sde import VPSDE

TIME_SAMPLINGS = ("uniform", "log_sigma")


def sample_times(
    sde: VPSDE,
    n: int,
    t_range: tuple[float, float],
    method: Literal["uniform", "log_sigma"] = "uniform",
    uniform_fraction: float = 0.25,
    sigma_min: float = 0.0,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device=None,
) -> Tensor:
    """``n`` diffusion times in ``t_range`` drawn from p(t) (module docstring), ``(n,)``.

    Parameters
    ----------
    method : "uniform" (t uniform) or "log_sigma" (log sigma uniform, mixed with ``uniform_fraction`` of uniform t)
    uniform_fraction : share of uniform times with "log_sigma" (each sample chooses independently)
    sigma_min : with "log_sigma", the lowest noise level of the log-uniform part (if above sigma(lo)): below
        sigma ~ 0.01 a score error costs the DSM loss only sigma^2 of itself, so samples there teach little
    """
    if method not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling {method!r} unknown; choose from {list(TIME_SAMPLINGS)}")
    if not 0.0 <= uniform_fraction <= 1.0:
        raise ValueError(f"uniform_time_fraction = {uniform_fraction}; it must lie in [0, 1]")
    lo, hi = (max(float(t_range[0]), sde.t_min), float(t_range[1]))
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    uniform = lo + (hi - lo) * u
    if method == "uniform":
        return uniform.to(dtype)
    bounds = torch.tensor([lo, hi], dtype=torch.float64, device=device)
    log_lo, log_hi = sde.sigma(bounds).log().tolist()
    log_lo = min(max(log_lo, math.log(sigma_min)) if sigma_min > 0 else log_lo, log_hi)
    v = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    by_sigma = sde.time_of_sigma(torch.exp(log_lo + (log_hi - log_lo) * v)).clamp(lo, hi)
    pick = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < uniform_fraction
    return torch.where(pick, uniform, by_sigma).to(dtype)
