"""One message-passing layer: depthwise tensor products of neighbour features with edge spherical harmonics.

For a target bead i with neighbours j (edge vector r_ij = x_j - x_i, distance r, direction Y(r_ij)):

    m_i = 1/sqrt(n_avg) sum_j  TP_uvu( h_j, Y(r_ij); w(r) u(r / r_cut) )
    h_i' = Gate( Linear(m_i) + Linear_self(h_i) + W_t t_emb ) (+ h_i when the irreps match)

The tensor product is depthwise ('uvu': each channel of h_j is coupled with the harmonics separately), with
per-edge weights from a radial MLP of the distance basis, multiplied by the smooth envelope u. DESIGN.md has
the measured costs: on CPU this form is roughly 10x cheaper than a fully connected product.
"""

from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn
from torch.nn.functional import silu
from torch_geometric.utils import scatter

from molscore.nn.irreps import gate, scalar_indices


def depthwise_tensor_product(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps) -> o3.TensorProduct:
    """'uvu' product of node features and harmonics, keeping the output irreps that occur in ``irreps_target``.

    Weights are external (one set per edge). Output irreps: one block (mul of the input, output irrep) per
    path, sorted.
    """
    wanted = {ir for _, ir in irreps_target}
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in wanted:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    if not instructions:
        raise ValueError(f"no path from {irreps_in} x {irreps_sh} reaches any of {irreps_target}")
    mid, perm, _ = o3.Irreps(mid).sort()
    instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
    return o3.TensorProduct(irreps_in, irreps_sh, mid, instructions, shared_weights=False, internal_weights=False)


class Interaction(nn.Module):
    """One layer, ``h : (B N, irreps_in.dim)`` -> ``(B N, irreps_out.dim)``.

    Parameters
    ----------
    irreps_in : node features entering the layer
    irreps_hidden : node features leaving it (``self.irreps_out`` is the same set, in the gate's order)
    irreps_sh : spherical harmonics of the edge directions
    n_radial : size of the distance basis
    time_dim : width of the time embedding
    avg_neighbours : the sum over neighbours is divided by its square root
    radial_hidden : width of the radial MLP
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_hidden: o3.Irreps,
        irreps_sh: o3.Irreps,
        n_radial: int,
        time_dim: int,
        avg_neighbours: float,
        radial_hidden: int = 64,
    ):
        super().__init__()
        self.gate = gate(irreps_hidden)
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), self.gate.irreps_out
        self.tp = depthwise_tensor_product(self.irreps_in, irreps_sh, irreps_hidden)
        self.radial = FullyConnectedNet([n_radial, radial_hidden, self.tp.weight_numel], silu)
        self.linear = o3.Linear(self.tp.irreps_out, self.gate.irreps_in)
        self.self_interaction = o3.Linear(self.irreps_in, self.gate.irreps_in)
        even_scalars = scalar_indices(self.gate.irreps_scalars, parities=(1,))
        self.register_buffer("even_scalars", even_scalars, persistent=False)
        self.time = nn.Linear(time_dim, len(even_scalars))
        self.norm = avg_neighbours**-0.5
        self.residual = self.irreps_in == self.irreps_out

    def forward(self, h: Tensor, sh: Tensor, basis: Tensor, envelope: Tensor, edge_index: Tensor, t_emb: Tensor) -> Tensor:
        """
        Parameters
        ----------
        h : Tensor (B N, irreps_in.dim), node features
        sh : Tensor (E, irreps_sh.dim), harmonics of the edge directions
        basis : Tensor (E, n_radial), distance basis
        envelope : Tensor (E,), smooth cutoff
        edge_index : Tensor (2, E), sources then targets
        t_emb : Tensor (B, time_dim), time embedding of each frame
        """
        src, dst = edge_index
        weights = self.radial(basis) * envelope[:, None]
        messages = self.tp(h[src], sh, weights)
        summed = scatter(messages, dst, dim=0, dim_size=len(h), reduce="sum")  # twice differentiable
        z = self.linear(summed * self.norm) + self.self_interaction(h)
        n_frames = len(t_emb)
        z = z.reshape(n_frames, -1, z.shape[-1])
        z = z.index_add(2, self.even_scalars, self.time(t_emb)[:, None, :].expand(-1, z.shape[1], -1))
        out = self.gate(z.reshape(len(h), -1))
        return out + h if self.residual else out
