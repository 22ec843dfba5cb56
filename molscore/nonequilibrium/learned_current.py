"""A learned current for when the drift is unknown: the short-time TUR estimator.

For one-step transitions (x, x') over Delta t and a weight field d(x), the current J = d((x + x')/2) . (x' - x)
obeys sigma >= 2 <J>^2 / (Delta t Var J), with equality for d proportional to D^-1 v (the thermodynamic force)
as Delta t -> 0. Maximising the ratio over d (an MLP) on one half of the transitions and evaluating it on the
other gives a lower bound that becomes tight as the weight field is learned (Otsubo et al., PRE 2020).
"""

import math
import time

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from molscore.nonequilibrium.estimators import Estimate, tur_bound


class CurrentWeights(nn.Module):
    """Weight field d(x) : (B, N, d) -> (B, N, d), an MLP over standardised (or periodic) coordinates."""

    def __init__(self, mean: Tensor, std: Tensor, period: float | None = None, hidden=(64, 64)):
        super().__init__()
        if period:  # an unwrapped ring coordinate drifts: its spread says nothing, the period sets the scale
            mean, std = (
                torch.zeros_like(torch.as_tensor(mean)),
                torch.full_like(torch.as_tensor(std), period / (2 * math.pi)),
            )
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.get_default_dtype()))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.get_default_dtype()))
        self.period = period
        n_in = self.mean.numel() * (2 if period else 1)
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, self.mean.numel()))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.period:
            angle = (2 * math.pi / self.period) * x.flatten(1)
            h = torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)
        else:
            h = ((x - self.mean) / self.std).flatten(1)
        return self.net(h).view_as(x) / self.std

    def current(self, x: Tensor, x_next: Tensor) -> Tensor:
        """J = d(midpoint) . (x' - x) for transitions ``(B, N, d)`` -> (B,)."""
        return (self((x + x_next) / 2) * (x_next - x)).flatten(1).sum(1)


def _ratio(j: Tensor, dt: float) -> Tensor:
    return 2 * j.mean() ** 2 / (dt * j.var())


def learned_tur_estimate(
    samples: Tensor,
    next_samples: Tensor,
    dt: float,
    period: float | None = None,
    steps: int = 200,
    batch_size: int = 16384,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Estimate, CurrentWeights]:
    """TUR lower bound with a learned current from one-step transitions ``(T, B, N, d)`` x 2 (time-major).

    The first half of the windows (in time) trains the weight field; the second half gives the estimate, so
    the bound is not inflated by fitting noise. Returns the Estimate and the weight field.
    """
    if samples.shape != next_samples.shape or samples.ndim != 4 or len(samples) < 8:
        raise ValueError(
            f"need transitions (T >= 8, B, N, d) twice of one shape, got {tuple(samples.shape)}, {tuple(next_samples.shape)}"
        )
    start = time.perf_counter()
    half = len(samples) // 2
    x, x_next = samples[:half].reshape(-1, *samples.shape[2:]), next_samples[:half].reshape(-1, *samples.shape[2:])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CurrentWeights(x.mean(0), x.std(0).clamp_min(1e-8), period)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="TUR current", disable=not progress, leave=False):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        loss = -_ratio(model.current(x[idx], x_next[idx]), dt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test, test_next = samples[half:], next_samples[half:]
        j = model.current(test.reshape(-1, *samples.shape[2:]), test_next.reshape(-1, *samples.shape[2:]))
    estimate = tur_bound(j.reshape(test.shape[:2]), dt, method="TUR (learned current)")
    estimate.seconds = time.perf_counter() - start
    return estimate, model
