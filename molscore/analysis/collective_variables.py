"""Collective variables declared in a system's folder, computed with mdtraj at any resolution.

A CV names its atoms by (residue index, atom name), so the same declaration works on the full topology and
on any bead topology that keeps those atoms (e.g. phi/psi on the 5 backbone beads).
"""

import mdtraj
import numpy as np


def _atom_index(topology: mdtraj.Topology, residue: int, name: str) -> int:
    for atom in topology.residue(residue).atoms:
        if atom.name == name:
            return atom.index
    raise ValueError(
        f"atom {name!r} of residue {residue} ({topology.residue(residue).name}) is not in this topology; "
        "the resolution drops it, so this collective variable cannot be computed there"
    )


def cv_atom_indices(topology: mdtraj.Topology, spec: dict) -> np.ndarray:
    """Atom indices (4,) of a dihedral CV ``{"dihedral": [[res, name], x4]}`` in ``topology``."""
    if set(spec) != {"dihedral"} or len(spec["dihedral"]) != 4:
        raise ValueError(f"collective variable {spec} must be {{'dihedral': [[residue, atom name], x 4]}}")
    return np.array([_atom_index(topology, int(r), str(n)) for r, n in spec["dihedral"]])


def compute_cvs(positions, topology: mdtraj.Topology, cvs: dict, names=None) -> np.ndarray:
    """Collective variables of frames, ``(n_frames, n_cvs)`` (dihedrals in rad, in [-pi, pi]).

    Parameters
    ----------
    positions : (n_frames, n_beads, 3) nm, or an mdtraj.Trajectory
    topology : topology of those beads
    cvs : the system's ``collective_variables``
    names : which CVs, in order (default: all, in declaration order)
    """
    traj = positions if isinstance(positions, mdtraj.Trajectory) else mdtraj.Trajectory(np.asarray(positions), topology)
    if traj.n_atoms != topology.n_atoms:
        raise ValueError(f"positions have {traj.n_atoms} beads; the topology has {topology.n_atoms}")
    names = list(cvs) if names is None else list(names)
    if not names:
        raise ValueError("this system declares no collective variables")
    quartets = np.stack([cv_atom_indices(topology, cvs[n]) for n in names])
    return mdtraj.compute_dihedrals(traj, quartets)
