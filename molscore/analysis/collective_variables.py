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


def in_state(cv_values, names, state: dict) -> np.ndarray:
    """Which frames lie in a state declared as ``{cv name: centre (rad), ..., "radius": rad}``.

    A frame is in the state when the Euclidean norm of its periodic (dihedral) distances to the centre,
    over the CVs the state names, is below ``radius``.

    Parameters
    ----------
    cv_values : (n_frames, n_cvs) in rad, columns in the order of ``names``
    names : CV names of the columns
    state : the state's declaration from the system's ``states``

    Returns
    -------
    ndarray (n_frames,) bool
    """
    cv_values, names = np.asarray(cv_values), list(names)
    centres = {k: v for k, v in state.items() if k != "radius"}
    if "radius" not in state or not centres:
        raise ValueError(f"state {state} must give a centre for at least one CV and a 'radius' (rad)")
    missing = [k for k in centres if k not in names]
    if missing:
        raise ValueError(f"state uses CVs {missing} that are not among the computed ones {names}")
    sq = np.zeros(len(cv_values))
    for name, centre in centres.items():
        delta = cv_values[:, names.index(name)] - float(centre)
        sq += (np.arctan2(np.sin(delta), np.cos(delta))) ** 2  # periodic difference in [-pi, pi]
    return np.sqrt(sq) < float(state["radius"])
