"""A learned current for when the drift is unknown: the short-time TUR estimator.

For one-step transitions (x, x') over Delta t and a weight field d(x), the current J = d((x + x')/2) . (x' - x)
obeys sigma >= 2 <J>^2 / (Delta t Var J), with equality for d proportional to D^-1 v (the thermodynamic force)
as Delta t -> 0. Maximising the ratio over d (an MLP) on one half of the transitions and evaluating it on the
other gives a lower bound that becomes tight as the weight field is learned (Otsubo et al., PRE 2020).
"""

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.nonequilibrium.coordinate_network import CoordinateNetwork
from molscore.nonequilibrium.estimators import Estimate, tur_bound


class CurrentWeights(CoordinateNetwork):
    """Weight field d(x) : (B, N, d) -> (B, N, d), an MLP over standardised (or periodic) coordinates."""

    def __init__(self, mean: Tensor, std: Tensor, period: float | None = None, hidden=(64, 64)):
        super().__init__(mean, std, period, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.features(x)).view_as(x) / self.std

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
