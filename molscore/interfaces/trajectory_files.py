"""Standard trajectory files of molscore outputs (samples, simulations) through mdtraj, for any viewer.

molscore keeps its own outputs as arrays (``.npy`` samples, ``.npz`` simulation chunks: exact, resumable);
these writers export them with a topology (the run's ``data/beads.pdb``) as DCD, XTC, HDF5 or PDB, chosen by
the file suffix, so VMD, PyMOL, ChimeraX or mdtraj open them directly.
"""

from pathlib import Path

import mdtraj
import numpy as np

from molscore.files import atomic_write

FORMATS = (".dcd", ".xtc", ".h5", ".pdb")


def write_trajectory(path, xyz, topology, time_ps=None) -> Path:
    """Write frames ``xyz : (F, N, 3)`` nm as one trajectory file, atomically (temporary file, then rename).

    Parameters
    ----------
    path : output file; its suffix picks the format (.dcd, .xtc, .h5, .pdb)
    xyz : array (F, N, 3) or (N, 3), nm
    topology : mdtraj.Topology or a structure file (PDB) with N atoms
    time_ps : optional (F,) frame times, ps (stored by XTC and HDF5)
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: unknown trajectory format {path.suffix!r}; use one of {FORMATS}")
    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.load_topology(str(topology))
    xyz = np.asarray(xyz, dtype=np.float32)
    xyz = xyz[None] if xyz.ndim == 2 else xyz
    if xyz.ndim != 3 or xyz.shape[1:] != (top.n_atoms, 3):
        raise ValueError(
            f"frames of shape {xyz.shape} do not match the topology ({top.n_atoms} atoms): need (F, {top.n_atoms}, 3)"
        )
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: frames contain NaN or infinite coordinates; refusing to write them")
    traj = mdtraj.Trajectory(xyz, top, time=None if time_ps is None else np.asarray(time_ps, dtype=np.float32))
    with atomic_write(path) as tmp:
        traj.save(str(tmp), force_overwrite=True)
    return path


def write_replicas(folder, pos, topology, fmt: str = ".dcd", time_ps=None) -> list[Path]:
    """Write each replica of a batched simulation as its own file ``folder/replica_XXX<fmt>``.

    Parameters
    ----------
    folder : output folder
    pos : array (frames, B, N, 3), nm (as returned by :func:`molscore.dynamics.load_trajectory`)
    topology : mdtraj.Topology or structure file with N atoms
    fmt : file suffix, one of ``FORMATS``
    time_ps : optional (frames,) times, ps
    """
    pos = np.asarray(pos)
    if pos.ndim != 4:
        raise ValueError(f"replica positions must have shape (frames, B, N, 3), got {pos.shape}")
    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.load_topology(str(topology))
    folder = Path(folder)
    return [write_trajectory(folder / f"replica_{b:03d}{fmt}", pos[:, b], top, time_ps) for b in range(pos.shape[1])]
