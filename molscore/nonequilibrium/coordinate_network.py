"""An MLP over the coordinates of a low-dimensional system: standardised, or as cos and sin of a periodic one.

The common body of the learned steady-state score and the learned TUR weight field.
"""

import math

import torch
from torch import Tensor, nn


class CoordinateNetwork(nn.Module):
    """MLP from ``features(x)`` (plus ``n_extra`` inputs) to one value per coordinate, N * d outputs.

    Parameters
    ----------
    mean, std : Tensor (N, d), per-coordinate location and scale of the data (standardisation)
    period : length of a periodic coordinate (all coordinates), None for open space; then the scale is
        period / 2 pi, because an unwrapped ring coordinate drifts and its spread says nothing
    hidden : widths of the hidden layers (SiLU)
    n_extra : inputs appended to the coordinate features (e.g. a noise level)
    """

    def __init__(self, mean: Tensor, std: Tensor, period: float | None = None, hidden=(128, 128, 128), n_extra: int = 0):
        super().__init__()
        if period:
            mean = torch.zeros_like(torch.as_tensor(mean))
            std = torch.full_like(torch.as_tensor(std), period / (2 * math.pi))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.get_default_dtype()))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.get_default_dtype()))
        self.period = period
        n_in = self.mean.numel() * (2 if period else 1) + n_extra
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, self.mean.numel()))
        self.net = nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """(B, N, d) -> (B, N d) standardised coordinates, or (B, 2 N d) cos and sin for a periodic system."""
        if self.period:
            angle = (2 * math.pi / self.period) * x.flatten(1)
            return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)
        return ((x - self.mean) / self.std).flatten(1)
