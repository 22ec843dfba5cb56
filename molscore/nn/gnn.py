"""The equivariant graph network behind ``NETWORKS["gnn"]``: an energy or a score of a batch of conformations.

Same interface as :class:`molscore.models.mlp.MLP`: ``net(x : (B, N, 3), t : (B,))`` returns energies ``(B,)``
(``output="energy"``, used as s = -grad E by ``EnergyScore``) or a vector per bead ``(B, N, 3)``
(``output="score"``). Symmetries, exact to rounding:

- translation: only differences of positions enter;
- rotation: features are e3nn irreps, the energy is invariant and the score rotates with the input;
- permutation of beads of equal type: sums over neighbours and over beads;
- reflection: NOT a symmetry by default (``reflection="odd"``): pseudoscalars make E(mirror) != E, as chiral
  molecules need; ``reflection="invariant"`` gives an E(3)-invariant model.

Units: the network sees diffusion coordinates (positions in nm divided by the data scale, see
``DiffusionModel``), so ``cutoff`` is in those units: a cutoff of c nm is ``c / scale``.
"""

import torch
from e3nn import o3
from torch import Tensor, nn

from molscore.nn.embedding import NodeEmbedding, TimeEmbedding
from molscore.nn.graph import GraphBuilder, edge_vectors
from molscore.nn.heads import EnergyHead, ScoreHead
from molscore.nn.interaction import Interaction
from molscore.nn.irreps import hidden_irreps
from molscore.nn.radial import RadialEmbedding


class EquivariantGNN(nn.Module):
    """SE(3)-equivariant message-passing network on full or radius graphs (see module docstring).

    Parameters
    ----------
    n_particles : N, beads per conformation
    dim : must be 3
    output : "energy" -> ``(B,)``; "score" -> ``(B, N, 3)``
    bead_types : N ints, the type of each bead (default: all 0, every bead exchangeable)
    n_types : size of the type vocabulary (default: max(bead_types) + 1)
    hidden_irreps : e3nn irreps of the node features, l <= 2 (default "32x0e+8x0o+16x1o+8x1e", or
        "32x0e+16x1o" for ``reflection="invariant"``)
    n_layers : message-passing layers (at least 2 for ``reflection="odd"``, see below)
    lmax : highest degree of the edge spherical harmonics
    n_radial : Gaussians in the distance basis
    cutoff : interaction range in the input units (diffusion coordinates: nm / scale); pairs farther apart
        do not interact, with a twice-differentiable envelope
    graph : "full" (all pairs; small molecules) or "radius" (pairs within the cutoff; large systems)
    time_embedding_dim : width of the diffusion-time embedding
    reflection : "odd" (chiral: SE(3)-invariant energy, not E(3)) or "invariant" (E(3)). The first layer acts
        on scalars only, so pseudovectors (1e = 1o x 1o) appear from the second layer on and the heads build
        pseudoscalars from them: an "odd" model needs ``n_layers >= 2``
    avg_neighbours : normalisation of the neighbour sum (default min(N - 1, 32))
    radial_hidden : width of the radial MLPs
    """

    def __init__(
        self,
        n_particles: int,
        dim: int = 3,
        output: str = "energy",
        bead_types: list[int] | None = None,
        n_types: int | None = None,
        hidden_irreps: str | None = None,
        n_layers: int = 3,
        lmax: int = 1,
        n_radial: int = 8,
        cutoff: float = 5.0,
        graph: str = "full",
        time_embedding_dim: int = 16,
        reflection: str = "odd",
        avg_neighbours: float | None = None,
        radial_hidden: int = 64,
    ):
        super().__init__()
        if dim != 3:
            raise ValueError(f"the equivariant GNN works in 3-D space, got dim={dim}; use network 'mlp'")
        if output not in ("energy", "score"):
            raise ValueError(f"output must be 'energy' or 'score', got {output!r}")
        if n_layers < 1 or lmax < 1:
            raise ValueError(f"need n_layers >= 1 and lmax >= 1, got n_layers={n_layers}, lmax={lmax}")
        bead_types = [0] * n_particles if bead_types is None else [int(b) for b in bead_types]
        if len(bead_types) != n_particles:
            raise ValueError(f"bead_types has {len(bead_types)} entries; the system has {n_particles} beads")
        n_types = max(bead_types, default=0) + 1 if n_types is None else n_types
        self.n_particles, self.output, self.reflection = n_particles, output, reflection
        hidden = _resolve_hidden(hidden_irreps, reflection)
        if reflection == "odd" and n_layers < 2:
            # layer 1 sees only scalars and couples them with 0e + 1o harmonics: its output has no 1e (nor 0o),
            # and without pseudovectors neither head can tell a conformation from its mirror image
            raise ValueError(
                "reflection='odd' needs n_layers >= 2: pseudovectors (1e) first appear in the second layer, so a "
                "one-layer model would be reflection-invariant; use n_layers >= 2 or reflection='invariant'"
            )
        n_even_scalars = hidden.count("0e")

        self.graph = GraphBuilder(graph, cutoff)
        self.spherical_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(lmax), normalize=True, normalization="component"
        )
        self.radial = RadialEmbedding(cutoff, n_radial)
        self.time_embedding = TimeEmbedding(time_embedding_dim)
        self.embedding = NodeEmbedding(bead_types, n_types, n_even_scalars, time_embedding_dim)
        avg = float(avg_neighbours or max(1, min(n_particles - 1, 32)))
        irreps = o3.Irreps(f"{n_even_scalars}x0e")
        layers = []
        for _ in range(n_layers):
            layer = Interaction(
                irreps, hidden, self.spherical_harmonics.irreps_out, n_radial, time_embedding_dim, avg, radial_hidden
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        chiral = reflection == "odd"
        self.head = EnergyHead(irreps, chiral) if output == "energy" else ScoreHead(irreps, chiral)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """
        Parameters
        ----------
        x : Tensor (B, N, 3), positions in diffusion coordinates
        t : Tensor (B,), diffusion times (a scalar or a 1-element tensor is broadcast to every frame)

        Returns
        -------
        Tensor (B,) energies in units of kT, or (B, N, 3) scores in inverse input units
        """
        if x.ndim != 3 or x.shape[1:] != (self.n_particles, 3):
            raise ValueError(f"input has shape {tuple(x.shape)}; this network expects (B, {self.n_particles}, 3)")
        n_frames = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim > 1 or t.numel() not in (1, n_frames):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected ({n_frames},) (one time per frame) or a scalar")
        t = t.to(x.dtype).reshape(-1).expand(n_frames)
        edge_index = self.graph(x)
        vectors = edge_vectors(x.reshape(-1, 3), edge_index)
        sh = self.spherical_harmonics(vectors)
        basis, envelope = self.radial(vectors.norm(dim=-1))
        t_emb = self.time_embedding(t)
        h = self.embedding(n_frames, t_emb)
        for layer in self.layers:
            h = layer(h, sh, basis, envelope, edge_index, t_emb)
        return self.head(h, n_frames)


def _resolve_hidden(spec: str | None, reflection: str) -> o3.Irreps:
    irreps = hidden_irreps(spec, reflection)
    if irreps.lmax > 2:
        raise ValueError(f"hidden_irreps {irreps} have l > 2; l <= 2 is supported")
    return irreps
