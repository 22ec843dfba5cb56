"""Where training spends its samples in diffusion time: the distribution p(t) of the DSM (and FP) times.

With t uniform on [t_min, 1], about 10% of the samples fall where torsional information survives (t below
~0.1-0.15 for alanine dipeptide, SCIENCE.md section 1), and the learned force field at t -> 0 stays flat.
``"log_sigma"`` draws log sigma(t) uniformly between the stage's ends (as EDM draws log sigma, Karras et al. 2022),
which puts most samples at small t, mixed with a share of uniform times so that large t is not starved:

    p(t) = u U(t; lo', hi) + (1 - u) U(log sigma(t); log sigma(lo'), log sigma(hi)) |d log sigma / dt|,
    lo' = max(lo, t(sigma_min))
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
    sigma_min : with "log_sigma", the lowest noise level drawn (if above sigma(lo)), for both parts: below it a
        score error costs the DSM loss only sigma^2 of itself, so samples there teach the torsions little and,
        measured on alanine dipeptide, distort them (the mixture's small-t expert, whose uniform share reaches
        down to t_min: FF error at t_min 1.49 kT against 0.16 kT at t = 0.05); the time features are flat
        below the network's sigma_floor, so E(x, t_min) is the energy learned at sigma_min
    """
    if method not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling {method!r} unknown; choose from {list(TIME_SAMPLINGS)}")
    if not 0.0 <= uniform_fraction <= 1.0:
        raise ValueError(f"uniform_time_fraction = {uniform_fraction}; it must lie in [0, 1]")
    lo, hi = (max(float(t_range[0]), sde.t_min), float(t_range[1]))
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if method == "uniform":
        return (lo + (hi - lo) * u).to(dtype)
    bounds = torch.tensor([lo, hi], dtype=torch.float64, device=device)
    log_lo, log_hi = sde.sigma(bounds).log().tolist()
    if sigma_min > 0 and math.log(sigma_min) > log_lo:  # no sample below sigma_min, the uniform share included
        log_lo = min(math.log(sigma_min), log_hi)
        lo = float(sde.time_of_sigma(torch.tensor(math.exp(log_lo), dtype=torch.float64)).clamp(lo, hi))
    uniform = lo + (hi - lo) * u
    v = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    by_sigma = sde.time_of_sigma(torch.exp(log_lo + (log_hi - log_lo) * v)).clamp(lo, hi)
    pick = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < uniform_fraction
    return torch.where(pick, uniform, by_sigma).to(dtype)
