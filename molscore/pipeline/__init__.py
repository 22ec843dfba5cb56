"""The run pipeline: one YAML config describes a run; each stage reads the files of the stage before.

data -> train -> sample -> simulate -> evaluate, all in one run folder (see :mod:`.stages`).
"""

from molscore.pipeline.config import RunConfig, load_run_config
from molscore.pipeline.stages import STAGES, evaluate, prepare_data, run_all, sample, simulate, train

__all__ = [
    "STAGES",
    "RunConfig",
    "evaluate",
    "load_run_config",
    "prepare_data",
    "run_all",
    "sample",
    "simulate",
    "train",
]
