"""The bond graph of a molecule's beads: its angles, proper dihedrals and non-bonded pairs.

Every function takes bead index pairs ``bonds`` (M, 2) and returns index tensors (int64) in a fixed order, so
priors and networks built from the same bonds see the same lists.
"""

import itertools

import torch
from torch import Tensor


def _pairs(bonds) -> Tensor:
    return torch.as_tensor(bonds, dtype=torch.long).reshape(-1, 2)


def _bonded_neighbours(bonds: Tensor, n_particles: int) -> list[set[int]]:
    """The beads bonded to each bead, from bead index pairs ``bonds (M, 2)``."""
    neighbours = [set() for _ in range(n_particles)]
    for i, j in bonds.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    return neighbours


def bond_angles(bonds, n_particles: int) -> Tensor:
    """Bead triples ``(A, 3)`` (i, j, k), i < k, of every angle between two bonds i-j and j-k."""
    neighbours = _bonded_neighbours(_pairs(bonds), n_particles)
    triples = [(i, j, k) for j in range(n_particles) for i in sorted(neighbours[j]) for k in sorted(neighbours[j]) if i < k]
    return torch.tensor(triples, dtype=torch.long).reshape(-1, 3)


def nonbonded_pairs(bonds, n_particles: int) -> Tensor:
    """Bead pairs ``(P, 2)``, i < j, more than two bonds apart (neither bonded nor sharing a bonded neighbour)."""
    neighbours = _bonded_neighbours(_pairs(bonds), n_particles)
    close = [neighbours[i] | set().union(*(neighbours[j] for j in neighbours[i])) for i in range(n_particles)]
    pairs = [(i, j) for i in range(n_particles) for j in range(i + 1, n_particles) if j not in close[i]]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def proper_dihedrals(bonds, n_particles: int) -> Tensor:
    """Bead quadruples ``(D, 4)`` (i, j, k, l) of every proper dihedral: bonds i-j, j-k, k-l, i != l, one per
    central bond and end pair."""
    bonds = _pairs(bonds)
    neighbours = _bonded_neighbours(bonds, n_particles)
    quads = [
        (i, j, k, m)
        for j, k in bonds.tolist()
        for i in sorted(neighbours[j] - {k})
        for m in sorted(neighbours[k] - {j})
        if i != m
    ]
    return torch.tensor(quads, dtype=torch.long).reshape(-1, 4)


def branch_centres(bonds, n_particles: int) -> Tensor:
    """``(C, 4)`` rows (c, a, b, d): every bead c with three or more bonded neighbours and the first three of
    them by index. The signed volume of the bonds c-a, c-b, c-d tells a stereocentre (C-alpha with its C-beta) from
    its mirror image and measures how planar an sp2 centre is."""
    neighbours = _bonded_neighbours(_pairs(bonds), n_particles)
    rows = [(c, *sorted(neighbours[c])[:3]) for c in range(n_particles) if len(neighbours[c]) >= 3]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 4)


CHIRALITY_BEADS = 12
"""At most this many beads enter :func:`chirality_triples` (C(12, 3) = 220 triples)."""


def chirality_triples(bonds, n_particles: int, max_beads: int = CHIRALITY_BEADS) -> Tensor:
    """Bead triples ``(T, 3)`` (i < j < k) whose signed volumes about the centroid measure the handedness of the
    molecule's overall shape: every triple of up to ``max_beads`` beads. Molecules with more beads use their
    skeleton (beads with two or more bonds, which leaves out hydrogens and carbonyl oxygens), and a skeleton
    longer than ``max_beads`` (a protein chain) ``max_beads`` of its beads evenly spread along the bead order.
    120 triples for heavy-atom alanine dipeptide (10 beads), 56 for all atoms (8 skeleton beads), 220 for a chain
    of 12 or more."""
    neighbours = _bonded_neighbours(_pairs(bonds), n_particles)
    beads = list(range(n_particles))
    if n_particles > max_beads:
        beads = [i for i in beads if len(neighbours[i]) >= 2]
    if len(beads) > max_beads:
        beads = [beads[round(k)] for k in torch.linspace(0, len(beads) - 1, max_beads).tolist()]
    rows = list(itertools.combinations(beads, 3))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
