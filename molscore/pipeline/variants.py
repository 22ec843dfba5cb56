"""Model variants of one study: configs that differ from a base by a few overrides, sharing one data split."""

import copy
from pathlib import Path


def merged(base: dict, override: dict) -> dict:
    """A deep copy of ``base`` with ``override`` applied recursively (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def link_data(shared: Path, run_dir: Path) -> None:
    """Point ``run_dir/data`` at a shared data folder (a symlink), so every variant sees the same splits."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "data").exists():
        (run_dir / "data").symlink_to(Path(shared).resolve(), target_is_directory=True)
