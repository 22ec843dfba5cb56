"""The bond graph of a molecule's beads: its angles, proper dihedrals and non-bonded pairs.

Every function takes bead index pairs ``bonds`` (M, 2) and returns index tensors (int64) in a fixed order, so
priors and networks built from the same bonds see the same lists.
"""

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


SKELETON_ALL_BEADS = 12
"""Molecules up to this many beads use every bead triple in :func:`chirality_triples`."""


def chirality_triples(bonds, n_particles: int, all_beads_up_to: int = SKELETON_ALL_BEADS) -> Tensor:
    """Bead triples ``(T, 3)`` (i < j < k) whose signed volume about the centroid measures the handedness of the
    molecule's overall shape: every triple for up to ``all_beads_up_to`` beads, otherwise the triples of the
    skeleton (beads with two or more bonds, which leaves out hydrogens and carbonyl oxygens). 120 triples for
    heavy-atom alanine dipeptide, 56 for all atoms."""
    neighbours = _bonded_neighbours(_pairs(bonds), n_particles)
    beads = (
        list(range(n_particles))
        if n_particles <= all_beads_up_to
        else [i for i in range(n_particles) if len(neighbours[i]) >= 2]
    )
    rows = [(a, b, c) for ia, a in enumerate(beads) for ib, b in enumerate(beads[ia + 1 :], ia + 1) for c in beads[ib + 1 :]]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
