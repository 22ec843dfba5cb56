"""Graphs of batched conformations, built inside the network: full graphs and radius graphs.

A batch ``x : (B, N, 3)`` is flattened to ``B * N`` nodes (node ``b * N + i`` is bead i of frame b), and
edges are ``edge_index : (2, E)`` in torch-geometric's convention: row 0 the source j, row 1 the target i,
so messages flow j -> i. Frames never share edges. Index construction is detached from autograd; the edge
vectors are computed from ``x`` by :func:`edge_vectors` so that forces flow through them.
"""

import torch
from torch import Tensor

BRUTE_FORCE_MAX_PAIRS = 2**22
"""Largest B * N^2 for which radius graphs use a dense distance matrix; larger batches use vesin per frame."""


def full_graph(n_frames: int, n_nodes: int, device=None) -> Tensor:
    """All ordered pairs i != j within each frame.

    Parameters
    ----------
    n_frames, n_nodes : B and N
    device : where to build the indices

    Returns
    -------
    Tensor (2, B N (N - 1)), int64: sources then targets, offset by ``b * N`` per frame
    """
    if n_nodes < 2:
        return torch.zeros((2, 0), dtype=torch.long, device=device)
    src, dst = torch.ones(n_nodes, n_nodes, dtype=torch.bool, device=device).fill_diagonal_(False).nonzero().T
    offsets = torch.arange(n_frames, device=device).repeat_interleave(len(src)) * n_nodes
    return torch.stack([src.repeat(n_frames) + offsets, dst.repeat(n_frames) + offsets])


def radius_graph(x: Tensor, cutoff: float) -> Tensor:
    """Ordered pairs i != j of each frame closer than ``cutoff``.

    Dense distances for small batches (exact, vectorised); for larger ones a vesin neighbour list per frame
    (cell lists, linear in N).

    Parameters
    ----------
    x : Tensor (B, N, 3), positions in the network's input units
    cutoff : float, same units as ``x``

    Returns
    -------
    Tensor (2, E), int64, same convention and offsets as :func:`full_graph`; pairs sorted by frame
    """
    n_frames, n_nodes, _ = x.shape
    x = x.detach()
    if n_frames * n_nodes**2 <= BRUTE_FORCE_MAX_PAIRS:
        close = torch.cdist(x, x) < cutoff
        close.diagonal(dim1=1, dim2=2).fill_(False)
        frame, dst, src = close.nonzero().T
        return torch.stack([src + frame * n_nodes, dst + frame * n_nodes])
    return _vesin_radius_graph(x, cutoff)


def _vesin_radius_graph(x: Tensor, cutoff: float) -> Tensor:
    from vesin_torch import NeighborList

    n_frames, n_nodes, _ = x.shape
    neighbours = NeighborList(cutoff=float(cutoff), full_list=True)
    points = x.to("cpu", torch.float64)
    box = torch.zeros(3, 3, dtype=torch.float64)
    edges = []
    for b in range(n_frames):
        i, j = neighbours.compute(points[b], box, False, quantities="ij")
        edges.append(torch.stack([j, i]) + b * n_nodes)
    return torch.cat(edges, dim=1).to(x.device)


def edge_vectors(pos: Tensor, edge_index: Tensor) -> Tensor:
    """Vectors from target to source, ``pos[j] - pos[i]``: ``pos : (B N, 3)`` -> ``(E, 3)``, inside autograd."""
    return pos[edge_index[0]] - pos[edge_index[1]]


class GraphBuilder:
    """Edges of a batch for one graph kind, caching the (position-independent) full graph.

    Parameters
    ----------
    kind : "full" (all pairs; small molecules) or "radius" (pairs closer than ``cutoff``; large ones)
    cutoff : radius of the radius graph, in the network's input units
    """

    def __init__(self, kind: str, cutoff: float, max_cached: int = 8):
        if kind not in ("full", "radius"):
            raise ValueError(f"graph must be 'full' or 'radius', got {kind!r}")
        self.kind, self.cutoff, self.max_cached = kind, float(cutoff), max_cached
        self._cache: dict[tuple, Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        """``x : (B, N, 3)`` -> ``edge_index : (2, E)``."""
        if self.kind == "radius":
            return radius_graph(x, self.cutoff)
        key = (x.shape[0], x.shape[1], x.device)
        if key not in self._cache:
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = full_graph(x.shape[0], x.shape[1], x.device)
        return self._cache[key]
