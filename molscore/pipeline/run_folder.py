"""What a run folder records about its stages: the outputs each stage writes (removed by ``--overwrite``) and the
check that a resumed stage runs with the settings it started with (so ``config_<stage>.yaml`` always describes
the run that happened)."""

import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from molscore.pipeline.config import RunConfig
from molscore.train.estimator import RESUMABLE_KEYS

RESUMABLE = {"train": RESUMABLE_KEYS, "simulate": ("steps", "max_minutes", "compile")}
"""Settings a resumed stage may change; any other change of its section stops it (see :func:`check_resume`)."""
OUTPUTS = {
    "data": ["data"],
    "train": ["train", "model.safetensors"],
    "sample": ["samples_sde.npy", "samples_sde.dcd", "samples_ode.npy", "samples_ode.dcd"],
    "simulate": ["simulation"],
    "evaluate": ["metrics.json", "density.png", "molecular.png", "population.png", "forcefield.png"],
}
"""What each stage writes in the run folder (``clear`` removes it for ``--overwrite``)."""


def check_resume(cfg: RunConfig, stage: str, checkpoint: Path) -> None:
    """A stage that resumes from ``checkpoint`` must run with the settings recorded when it started
    (``config_<stage>.yaml``), except :data:`RESUMABLE` ones; otherwise ValueError names every changed key, so
    the config file always describes the run that happened."""
    recorded = Path(cfg.run_dir) / f"config_{stage}.yaml"
    if not (checkpoint.is_file() and recorded.is_file()):
        return
    old = (yaml.safe_load(recorded.read_text()) or {}).get(stage, {})
    new = yaml.safe_load(yaml.safe_dump(asdict(getattr(cfg, stage))))  # the same plain types as the record
    changed = [f"{stage}.{k}: {old[k]!r} before, {v!r} now" for k, v in new.items()
               if k in old and k not in RESUMABLE[stage] and old[k] != v]  # fmt: skip
    if "steps" in old and new["steps"] < old["steps"]:
        changed.append(f"{stage}.steps: {old['steps']} before, {new['steps']} now (fewer cannot be resumed)")
    if changed:
        raise ValueError(
            f"{Path(cfg.run_dir).name}: the {stage} stage would resume from {checkpoint.name} with other settings: "
            + "; ".join(changed)
            + f". Resume with the recorded settings ({recorded.name}; only "
            f"{', '.join(RESUMABLE[stage])} may change), or start afresh: molscore {stage} CONFIG --overwrite, "
            "or another run_dir"
        )


def clear(cfg: RunConfig, stage: str) -> list[Path]:
    """Remove what ``stage`` wrote in the run folder (``--overwrite``); returns the removed paths."""
    removed = []
    for name in [*OUTPUTS[stage], f"config_{stage}.yaml"]:
        path = Path(cfg.run_dir) / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(path)
    return removed
