"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one, never a partial one;
and reads of saved tensors that name the file, and the fix, when it is damaged anyway (a copy cut short, a full
disk)."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    The temporary file has the same suffix as ``path`` (writers such as mdtraj pick the format from it) and
    is removed if the block raises. Parent folders are created; the result is readable by all (0644).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class CorruptFileError(ValueError):
    """A saved file cannot be read; the message names it and what to do."""


def read_torch_file(path, what: str, fix: str, map_location=None):
    """``torch.load(path, weights_only=True)`` (no code is executed) with damage reported as
    :class:`CorruptFileError`: "``path`` is not a readable ``what`` (reason); ``fix``"."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, garbage or a foreign pickle
        raise CorruptFileError(f"{path} is not a readable {what} ({type(err).__name__}: {err}); {fix}") from err


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextmanager
def folder_lock(folder, what: str = "run folder"):
    """Hold an exclusive lock on ``folder`` (``folder/.molscore.lock``) while the block runs.

    A second process that asks for it fails at once with :class:`FolderInUseError` naming the holder's PID, so two
    trainings, simulations or MD generators never write into one folder together. The lock is an ``fcntl.flock``:
    the operating system releases it when its process ends, even by kill -9, so no stale lock is left behind.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".molscore.lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise FolderInUseError(
                f"{what} {folder} is in use by PID {holder}; wait for it to finish or stop it, then rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock
