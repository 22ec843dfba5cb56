"""Reporters record a running simulation. A reporter is a plain object with

- ``interval`` and ``due(step) -> bool``: whether it wants the state after ``step``;
- ``needs_energy``: whether :class:`Simulation` should fetch the energy for it;
- ``report(state, energy)``, ``flush()``;
- ``state_dict()`` / ``load_state_dict(d)``: what a checkpoint must hold to resume it without losing or
  duplicating frames.

Trajectories are written as numbered chunk files ``chunk_000000.npz, ...`` each holding ``chunk_frames``
frames (the last one possibly fewer). Files are written atomically (temporary file, then ``os.replace``) and
byte-reproducibly (fixed zip timestamps), so a run resumed from a checkpoint writes the same bytes as an
uninterrupted one.
"""

import zipfile
from pathlib import Path

import numpy as np
import torch

from molscore.dynamics.state import State
from molscore.files import CorruptFileError, atomic_write

CHUNK_GLOB = "chunk_*.npz"


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk_{index:06d}.npz"


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed .npz readable by ``np.load``, atomically and reproducibly."""
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


class TrajectoryReporter:
    """Record positions (and energies, velocities) every ``interval`` steps into chunk files.

    Each frame holds ``pos`` (B, N, d) nm, ``t`` (ps or diffusion time), ``step``, and ``energy`` (B,)
    kJ/mol when the term provides one, ``vel`` (B, N, d) nm/ps if ``record_velocities``. The state at
    step 0 counts as a frame. Read the result with :func:`load_trajectory`.

    Parameters
    ----------
    folder : where chunk files go (created on the first write)
    interval : record every ``interval`` steps
    chunk_frames : frames per chunk file
    record_velocities : also record velocities (underdamped dynamics)
    overwrite : delete chunk files of an earlier run in ``folder`` instead of refusing to start
    """

    needs_energy = True

    def __init__(
        self,
        folder,
        interval: int = 1,
        chunk_frames: int = 1000,
        record_velocities: bool = False,
        overwrite: bool = False,
    ):
        if int(interval) < 1 or int(chunk_frames) < 1:
            raise ValueError(f"interval and chunk_frames must be >= 1, got {interval} and {chunk_frames}")
        self.folder = Path(folder)
        self.interval, self.chunk_frames = int(interval), int(chunk_frames)
        self.record_velocities, self.overwrite = record_velocities, overwrite
        self.next_chunk = 0  # index of the chunk the buffer belongs to
        self.last_step = -1  # last step recorded, so no step is recorded twice
        self._frames: list[dict[str, np.ndarray]] = []
        self._dirty = False  # buffer holds frames not yet on disk
        self._started = False  # folder checked for files of another run

    def __repr__(self) -> str:
        return f"TrajectoryReporter({str(self.folder)!r}, interval={self.interval})"

    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step > self.last_step

    def report(self, state: State, energy=None) -> None:
        """Record the frame of ``state`` (energy : Tensor (B,), kJ/mol, or None)."""
        if not self._started:
            self._start_fresh()
        frame = {
            "pos": state.pos.detach().cpu().numpy(),
            "t": np.float64(state.t),
            "step": np.int64(state.step),
        }
        if energy is not None:
            frame["energy"] = energy.detach().cpu().numpy()
        if self.record_velocities:
            if state.vel is None:
                raise ValueError("record_velocities=True but the state has no velocities (overdamped term?)")
            frame["vel"] = state.vel.detach().cpu().numpy()
        if self._frames and set(frame) != set(self._frames[0]):
            raise ValueError(
                f"frame at step {state.step} has fields {sorted(frame)}, "
                f"earlier frames of this chunk {sorted(self._frames[0])}"
            )
        self._frames.append(frame)
        self.last_step = state.step
        self._dirty = True
        if len(self._frames) == self.chunk_frames:
            self._write()
            self._frames, self.next_chunk = [], self.next_chunk + 1

    def flush(self) -> None:
        """Write the partial chunk (it is rewritten, under the same name, as it fills up)."""
        if self._dirty and self._frames:
            self._write()

    def state_dict(self) -> dict:
        """Chunk index, last recorded step and the frames not yet in a full chunk (for checkpoints)."""
        frames = {}
        if self._frames:
            frames = {k: torch.from_numpy(np.stack([f[k] for f in self._frames])) for k in self._frames[0]}
        return {"next_chunk": self.next_chunk, "last_step": self.last_step, "frames": frames}

    def load_state_dict(self, d: dict) -> None:
        """Resume from a checkpoint: restore the buffer, and make the folder hold exactly the frames up to
        the checkpoint (rewrite the partial chunk, delete chunks written after the checkpoint).
        """
        self.next_chunk, self.last_step = int(d["next_chunk"]), int(d["last_step"])
        frames = {k: v.cpu().numpy() for k, v in d["frames"].items()}
        n = len(frames["step"]) if frames else 0
        self._frames = [{k: v[i] for k, v in frames.items()} for i in range(n)]
        for path in self.folder.glob(CHUNK_GLOB):
            if int(path.stem.split("_")[1]) >= self.next_chunk:
                path.unlink()
        self._dirty, self._started = bool(self._frames), True
        self.flush()

    def _start_fresh(self) -> None:
        old = sorted(self.folder.glob(CHUNK_GLOB))
        if old and not self.overwrite:
            raise FileExistsError(
                f"{self.folder} already holds {len(old)} chunk file(s) of another run; choose a new folder, "
                "resume with Simulation.from_checkpoint, or pass overwrite=True to delete them (command line: molscore "
                "simulate CONFIG --overwrite)"
            )
        for path in old:
            path.unlink()
        self._started = True

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.stack([f[k] for f in self._frames]) for k in self._frames[0]}
        write_npz_atomic(_chunk_path(self.folder, self.next_chunk), arrays)
        self._dirty = False


def load_trajectory(folder) -> dict[str, np.ndarray]:
    """Concatenate the chunk files of a :class:`TrajectoryReporter`.

    Returns
    -------
    dict with "pos" (frames, B, N, d) nm, "t" (frames,), "step" (frames,), and where recorded
    "energy" (frames, B) kJ/mol and "vel" (frames, B, N, d) nm/ps.
    """
    paths = sorted(Path(folder).glob(CHUNK_GLOB))
    if not paths:
        raise FileNotFoundError(f"no trajectory chunks ({CHUNK_GLOB}) in {folder}")
    indices = [int(p.stem.split("_")[1]) for p in paths]
    if indices != list(range(len(paths))):
        raise ValueError(f"{folder}: chunk files are not numbered 0..{len(paths) - 1} (found {indices})")
    parts = []
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as data:
                parts.append({k: data[k] for k in data.files})
        except Exception as err:  # truncated or garbage
            raise CorruptFileError(
                f"{p} is not a readable trajectory chunk ({type(err).__name__}: {err}); remove the folder "
                f"{folder} and rerun the simulation to regenerate it"
            ) from err
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
