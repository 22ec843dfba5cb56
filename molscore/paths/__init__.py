"""Transition-path sampling: states and CVs in torch, batched Langevin path segments, shooting TPS on many
chains, brute-force references and the path ensemble (see shared/SCIENCE.md section 5)."""

from molscore.paths.brute_force import NoTransitionError, fixed_length_paths, harvest_transitions
from molscore.paths.collective_variables import CollectiveVariables
from molscore.paths.ensemble import PathEnsemble
from molscore.paths.path_batch import PathBatch
from molscore.paths.path_dynamics import ForceFieldLangevin, as_force_field, propagate
from molscore.paths.shooting import ShootingSettings, ShootingTPS
from molscore.paths.states import Region, load_states

__all__ = [
    "CollectiveVariables",
    "ForceFieldLangevin",
    "NoTransitionError",
    "PathBatch",
    "PathEnsemble",
    "Region",
    "ShootingSettings",
    "ShootingTPS",
    "as_force_field",
    "fixed_length_paths",
    "harvest_transitions",
    "load_states",
    "propagate",
]
