"""Read-outs of the backbone's node features: an energy (sum of per-bead scalars) and an l = 1 score.

Energy: each bead's scalars (0e and, for chiral models, 0o) plus quadratic invariants of its features (a
node-wise tensor product h x h -> 0e + 0o, e.g. the triple product 1o . 1e -> 0o) feed a SiLU MLP; the
per-bead values are summed. Mixing 0e and 0o in a nonlinear MLP is what makes E(mirror image) != E.

Score: a linear map of each bead's features to one vector (1o) and, for chiral models, one pseudovector (1e),
added as Cartesian 3-vectors (e3nn's l = 1 basis is (x, y, z)). Both rotate with the input, so the sum is
SO(3)-equivariant; the 1e part does not flip under reflection, so the score of a mirror image is not the
mirrored score.
"""

import torch
from e3nn import o3
from torch import Tensor, nn

from molscore.nn.irreps import scalar_indices


def _reduced(irreps: o3.Irreps, max_mul: int) -> o3.Irreps:
    return o3.Irreps([(min(mul, max_mul), ir) for mul, ir in irreps])


class EnergyHead(nn.Module):
    """Node features ``(B N, irreps.dim)`` -> energies ``(B,)`` (dimensionless, units of kT).

    Parameters
    ----------
    irreps : node features
    chiral : whether pseudoscalars (0o) are read out
    n_products : channels per irrep entering the node-wise product, and scalars per parity leaving it
    hidden : width of the per-bead MLP
    """

    def __init__(self, irreps: o3.Irreps, chiral: bool, n_products: int = 8, hidden: int = 64):
        super().__init__()
        parities = (1, -1) if chiral else (1,)
        self.register_buffer("scalars", scalar_indices(irreps, parities), persistent=False)
        reduced = _reduced(irreps, n_products)
        self.reduce = o3.Linear(irreps, reduced)
        products = f"{2 * n_products}x0e" + (f"+{2 * n_products}x0o" if chiral else "")
        self.product = o3.FullyConnectedTensorProduct(reduced, reduced, products)
        width = len(self.scalars) + self.product.irreps_out.dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, n_frames: int) -> Tensor:
        r = self.reduce(h)
        features = self.mlp(torch.cat([h[:, self.scalars], self.product(r, r)], dim=-1))
        return features.reshape(n_frames, -1).sum(1)


class ScoreHead(nn.Module):
    """Node features ``(B N, irreps.dim)`` -> one 3-vector per bead ``(B, N, 3)``.

    Parameters
    ----------
    irreps : node features (must contain 1o, and 1e if ``chiral``)
    chiral : whether a pseudovector (1e) is added to the vector (1o)
    """

    def __init__(self, irreps: o3.Irreps, chiral: bool):
        super().__init__()
        self.chiral = chiral
        self.linear = o3.Linear(irreps, "1x1o+1x1e" if chiral else "1x1o")

    def forward(self, h: Tensor, n_frames: int) -> Tensor:
        out = self.linear(h)
        vector = out[:, :3] + out[:, 3:] if self.chiral else out
        return vector.reshape(n_frames, -1, 3)
