"""Radial features of edges: a Gaussian basis of the distance and a smooth cutoff envelope.

The envelope multiplies every edge's tensor-product weights, so an edge at or beyond the cutoff contributes
exactly zero, with zero first and second derivatives there. Forces are therefore continuous as pairs enter
or leave a radius graph, and a radius graph and a full graph give the same outputs (up to summation order)
whenever the radius graph holds every pair closer than the cutoff.
"""

import torch
from e3nn.math import soft_one_hot_linspace
from torch import Tensor, nn


def polynomial_envelope(d: Tensor, p: int = 6) -> Tensor:
    """Smooth cutoff u(d) of the reduced distance ``d = r / r_cut`` (Klicpera et al. 2020, DimeNet).

    u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2) for d < 1 and 0 beyond: u(0) = 1, and
    u, u' and u'' vanish at d = 1 (twice continuously differentiable, as double backward through forces needs).

    Parameters
    ----------
    d : Tensor (E,), dimensionless
    p : polynomial order

    Returns
    -------
    Tensor (E,), in [0, 1]
    """
    u = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
    # the polynomial is finite for every d, so the unselected branch contributes zero gradient, never NaN
    return torch.where(d < 1, u, torch.zeros_like(u))


class RadialEmbedding(nn.Module):
    """Distances -> Gaussian basis ``(E, n_basis)`` (unit component variance) and envelope ``(E,)``.

    Parameters
    ----------
    cutoff : float, input units of the network (diffusion coordinates unless told otherwise)
    n_basis : number of Gaussians, centred on an even grid over [0, cutoff], width = grid spacing
    """

    def __init__(self, cutoff: float, n_basis: int):
        super().__init__()
        if cutoff <= 0 or n_basis < 2:
            raise ValueError(f"need cutoff > 0 and n_basis >= 2, got cutoff={cutoff}, n_basis={n_basis}")
        self.cutoff, self.n_basis = float(cutoff), int(n_basis)

    def forward(self, r: Tensor) -> tuple[Tensor, Tensor]:
        basis = soft_one_hot_linspace(r, 0.0, self.cutoff, self.n_basis, basis="gaussian", cutoff=False)
        return basis * self.n_basis**0.5, polynomial_envelope(r / self.cutoff)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, n_basis={self.n_basis}"
