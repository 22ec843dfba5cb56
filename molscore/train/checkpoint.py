"""Atomic training checkpoints, loaded without executing code (``torch.load(weights_only=True)``)."""

from pathlib import Path

import torch

from molscore.files import atomic_write, read_torch_file


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically (tmp + rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:  # a unique temporary name: two writers never share one
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, device="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the run folder or start training afresh")
    return read_torch_file(path, "molscore checkpoint", "delete it to restart training", map_location=device)
