"""Score and energy models: networks, the two parameterisations, mixtures of time experts, saved models."""

from molscore.models.diffusion_model import DiffusionModel
from molscore.models.parameterisation import DirectScore, EnergyScore, MixtureOfExperts
from molscore.models.spec import ModelSpec, build_score_model

__all__ = [
    "DiffusionModel",
    "DirectScore",
    "EnergyScore",
    "MixtureOfExperts",
    "ModelSpec",
    "build_score_model",
]
