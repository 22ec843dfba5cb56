"""Atomic training checkpoints, loaded without executing code (``torch.load(weights_only=True)``)."""

from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the run folder or start training afresh")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # corrupted or foreign file
        raise ValueError(f"{path} is not a readable molscore checkpoint ({err}); delete it to restart") from err
