"""e3nn building blocks and the equivariant graph network (energy and score heads, chirality-aware)."""

from molscore.nn.bond_graph import BondGraphMLP, BondGraphNet
from molscore.nn.gnn import EquivariantGNN
from molscore.nn.graph import GraphBuilder, full_graph, radius_graph

__all__ = ["BondGraphMLP", "BondGraphNet", "EquivariantGNN", "GraphBuilder", "full_graph", "radius_graph"]
