"""A small MLP over flattened coordinates and time features: the network for low-dimensional toy systems.

Not equivariant: meant for particles in external potentials (Mueller-Brown, double well, mixtures), where
no symmetry applies. Molecules use the equivariant graph network behind the same interface.
"""

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def time_features(t: Tensor) -> Tensor:
    """Features of diffusion time ``t : (B,)`` -> ``(B, 4)``: t - 1/2, cos 2 pi t, sin 2 pi t, -cos 4 pi t."""
    w = 2 * math.pi * t
    return torch.stack([t - 0.5, torch.cos(w), torch.sin(w), -torch.cos(2 * w)], dim=-1)


class MLP(nn.Module):
    """Maps ``x : (B, N, d)`` and ``t : (B,)`` to a scalar ``(B,)`` (energy) or a vector field ``(B, N, d)``.

    Parameters
    ----------
    n_particles, dim : shape of one configuration
    hidden : widths of the hidden layers
    output : "energy" (one scalar per sample) or "score" (N * d outputs)
    activation : one of ``ACTIVATIONS``
    """

    def __init__(self, n_particles: int, dim: int, hidden=(92, 92, 92), output="energy", activation="silu"):
        super().__init__()
        if output not in ("energy", "score"):
            raise ValueError(f"output must be 'energy' or 'score', got {output!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} unknown; choose from {sorted(ACTIVATIONS)}")
        self.shape, self.output = (n_particles, dim), output
        width_in = n_particles * dim + 4
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
            width_in = width
        layers.append(nn.Linear(width_in, 1 if output == "energy" else n_particles * dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), time_features(t.to(x.dtype))], dim=-1)
        out = self.layers(h)
        return out[:, 0] if self.output == "energy" else out.reshape(-1, *self.shape)
