"""Reading MD trajectories through mdtraj, with checks that name the problem and the fix."""

import os
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import mdtraj
import numpy as np

from molscore.files import CorruptFileError, atomic_write

MD_CHUNK_FORMATS = (".dcd", ".xtc", ".h5")
"""Chunk formats of an MD folder (``generate_md`` writes DCD; exported copies XTC or HDF5)."""


def md_replica_files(folder, skip_empty: bool = False) -> list[list[Path]]:
    """Chunk files of each replica of an MD folder, in time order: ``files[r]`` for replica r.

    An MD folder holds ``topology.pdb`` and ``replica_*/chunk_*`` in one of ``MD_CHUNK_FORMATS``. A replica
    without chunks is an error (an unfinished run), unless ``skip_empty``.
    """
    folder = Path(folder)
    if not (folder / "topology.pdb").is_file():
        raise FileNotFoundError(
            f"{folder} is not an MD folder (no topology.pdb); make one with "
            "python workflows/generate_md.py --system NAME --out FOLDER"
        )
    replicas = sorted(d for d in folder.glob("replica_*") if d.is_dir())
    files = [sorted(f for f in d.glob("chunk_*") if f.suffix in MD_CHUNK_FORMATS) for d in replicas]
    if skip_empty:
        files = [f for f in files if f]
    if not files or not all(files):
        raise FileNotFoundError(
            f"{folder}: some replica_* folders hold no chunk_* files ({'/'.join(MD_CHUNK_FORMATS)}); finish or resume "
            "the MD run (workflows/generate_md.py) or remove them"
        )
    return files


def dcd_frames(path) -> int:
    """Frame count of a DCD file (its header's NSET), checked against the file's size, so a chunk cut short
    (a copy or a disk that failed) is caught instead of read as fewer frames. Raises CorruptFileError."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(100)
        if len(head) < 100 or head[4:8] != b"CORD":
            raise CorruptFileError(f"{path} is not a DCD file (no CORD header); delete it and regenerate it")
        n_frames, has_cell = struct.unpack("=i", head[8:12])[0], struct.unpack("=i", head[48:52])[0] != 0
        title = struct.unpack("=i", head[92:96])[0]
        handle.seek(96 + title + 4)
        atoms = handle.read(12)
    if len(atoms) < 12:
        raise CorruptFileError(f"{path}: DCD header cut short; delete it and regenerate it")
    n_atoms = struct.unpack("=3i", atoms)[1]
    expected = 96 + title + 4 + 12 + n_frames * (56 * has_cell + 3 * (8 + 4 * n_atoms))
    size = path.stat().st_size
    if size != expected:
        raise CorruptFileError(
            f"{path} holds {size} bytes, but its header's {n_frames} frames of {n_atoms} atoms need {expected}: the "
            "chunk is damaged (cut short?); regenerate it (workflows/generate_md.py redoes a damaged replica)"
        )
    return n_frames


def load_frames(files, topology, stride: int = 1, frames: slice | None = None, atom_indices=None) -> mdtraj.Trajectory:
    """Load one or several trajectory files (any mdtraj format) as one trajectory.

    Parameters
    ----------
    files : path or list of paths (DCD, XTC, HDF5, PDB, ...), concatenated in order
    topology : structure file (PDB) or mdtraj.Topology matching every file
    stride : keep every ``stride``-th frame of the concatenated files
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
    for f in files:
        if f.suffix == ".dcd":
            dcd_frames(f)  # a damaged chunk is an error, not fewer frames
    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.load_topology(str(topology))
    parts, seen = [], 0
    for f in files:
        try:
            with silenced_stdout():
                part = mdtraj.load(str(f), top=top, atom_indices=atom_indices)
            # stride over the concatenation, not per file: keep global frames 0, stride, 2 stride, ...
            kept = part[(-seen) % stride :: stride]
            seen += part.n_frames
            if kept.n_frames:
                parts.append(kept)
        except ValueError as err:
            if "atoms" in str(err).lower() or "topology" in str(err).lower():
                raise ValueError(
                    f"{f} does not match the topology ({top.n_atoms} atoms): {err}; pass the structure file "
                    "the trajectory was written with"
                ) from err
            raise
    if not parts:
        raise ValueError(f"no frames left from {len(files)} file(s) after stride {stride}")
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


def save_pdb(traj: mdtraj.Trajectory, path) -> Path:
    """Write the first frame of ``traj`` as a PDB file, atomically, with atoms numbered 1..N.

    mdtraj keeps the original serial numbers of an ``atom_slice`` but writes CONECT records with the new
    numbering, so a sliced topology would read back with wrong bonds; renumbering avoids that.
    """
    path = Path(path)
    first = traj[0]
    for atom in first.topology.atoms:
        atom.serial = atom.index + 1
    with atomic_write(path) as tmp:
        first.save_pdb(str(tmp))
    return path


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


def md_frame_interval_ps(folder, stride: int = 1) -> float | None:
    """Time between the frames of an MD folder as the pipeline reads it (every ``stride``-th frame), ps, from its
    ``manifest.yaml`` (a reduced copy's ``export`` entry counts its own stride); None without a manifest."""
    import yaml

    manifest_file = Path(folder) / "manifest.yaml"
    if not manifest_file.is_file():
        return None
    manifest = yaml.safe_load(manifest_file.read_text()) or {}
    interval = float(manifest.get("frame_interval_ps", 1.0))
    export = manifest.get("export") or {}
    interval = float(export.get("frame_interval_ps", interval * int(export.get("stride", 1))))
    return interval * stride
