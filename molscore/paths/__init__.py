"""Transition-path sampling: states and CVs in torch, batched Langevin path segments, shooting TPS on many
chains, brute-force references, the path ensemble, committors and the transition-state ensemble, and a learned
path sampler with exact importance weights (``molscore.paths.learned_sampler``; see shared/SCIENCE.md section 5)."""

from molscore.paths.brute_force import NoTransitionError, fixed_length_paths, harvest_transitions, steering_bias
from molscore.paths.collective_variables import CollectiveVariables
from molscore.paths.committor import committor, transition_state_ensemble
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
    "committor",
    "fixed_length_paths",
    "harvest_transitions",
    "load_states",
    "propagate",
    "steering_bias",
    "transition_state_ensemble",
]
