"""Configuration geometry shared across the package: one centring (the unweighted centroid) and dihedral angles."""

import torch
from torch import Tensor


def remove_centroid(x: Tensor) -> Tensor:
    """Project ``x : (B, N, d)`` onto the zero-centroid subspace (subtract the unweighted mean over N)."""
    return x - x.mean(dim=-2, keepdim=True)


def _dihedral_xy(pos: Tensor, quartets: Tensor) -> tuple[Tensor, Tensor]:
    i, j, k, m = quartets.unbind(-1)
    b1, b2, b3 = pos[:, j] - pos[:, i], pos[:, k] - pos[:, j], pos[:, m] - pos[:, k]  # the IUPAC convention, as mdtraj
    c1, c2 = torch.linalg.cross(b2, b3, dim=-1), torch.linalg.cross(b1, b2, dim=-1)
    return (c1 * c2).sum(-1), (b1 * c1).sum(-1) * b2.norm(dim=-1)


def dihedral(pos: Tensor, quartets: Tensor) -> Tensor:
    """Dihedral angles, rad in [-pi, pi], of atoms ``quartets : (4,)`` or ``(D, 4)`` in ``pos : (B, N, 3)``:
    ``(B,)`` or ``(B, D)``."""
    x, y = _dihedral_xy(pos, quartets)
    return torch.atan2(y, x)


def dihedral_cos_sin(pos: Tensor, quartets: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of the dihedral angles of :func:`dihedral`, each ``(B,)`` or ``(B, D)``; smooth wherever the
    angle is defined and finite where it is not."""
    x, y = _dihedral_xy(pos, quartets)
    norm = (x**2 + y**2 + 1e-30).sqrt()
    return x / norm, y / norm
