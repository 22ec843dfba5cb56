"""Reading MD trajectories through mdtraj, with checks that name the problem and the fix."""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import mdtraj
import numpy as np


def load_frames(files, topology, stride: int = 1, frames: slice | None = None, atom_indices=None) -> mdtraj.Trajectory:
    """Load one or several trajectory files (any mdtraj format) as one trajectory.

    Parameters
    ----------
    files : path or list of paths (DCD, XTC, HDF5, PDB, ...), concatenated in order
    topology : structure file (PDB) or mdtraj.Topology matching every file
    stride : keep every ``stride``-th frame
    frames : frame range applied after concatenation and stride, e.g. ``slice(1000, None)``
    atom_indices : load only these atoms (array of int)

    Raises clear errors for missing files, a topology whose atom count differs from a file's, empty results
    and NaN coordinates.
    """
    files = [Path(f) for f in ([files] if isinstance(files, str | Path) else files)]
    if not files:
        raise ValueError("no trajectory files given")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"trajectory file {f} does not exist")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.load_topology(str(topology))
    parts = []
    for f in files:
        try:
            with silenced_stdout():
                parts.append(mdtraj.load(str(f), top=top, stride=stride, atom_indices=atom_indices))
        except ValueError as err:
            if "atoms" in str(err).lower() or "topology" in str(err).lower():
                raise ValueError(
                    f"{f} does not match the topology ({top.n_atoms} atoms): {err}; pass the structure file "
                    "the trajectory was written with"
                ) from err
            raise
    traj = mdtraj.join(parts, check_topology=False) if len(parts) > 1 else parts[0]
    if frames is not None:
        traj = traj[frames]
    if traj.n_frames == 0:
        raise ValueError(f"no frames left from {len(files)} file(s) after stride {stride} and range {frames}")
    bad = ~np.isfinite(traj.xyz).reshape(traj.n_frames, -1).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} frame(s) contain NaN or infinite coordinates (first: {np.flatnonzero(bad)[:5].tolist()}); "
            "remove them or regenerate the data"
        )
    return traj


@contextmanager
def silenced_stdout():
    """Silence file descriptor 1 for the duration: mdtraj's DCD reader (VMD's dcdplugin, C code) prints two
    lines per file to it, bypassing ``sys.stdout``. Python-level errors still propagate."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
