"""Translation handling shared by data, diffusion and dynamics: one centring (the unweighted centroid)."""

from torch import Tensor


def remove_centroid(x: Tensor) -> Tensor:
    """Project ``x : (B, N, d)`` onto the zero-centroid subspace (subtract the unweighted mean over N)."""
    return x - x.mean(dim=-2, keepdim=True)
