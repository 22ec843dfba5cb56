"""Boltzmann sampling with a trained diffusion model: reverse SDE, probability-flow ODE, likelihoods."""

from molscore.sampling.diffusion_sampler import (
    ProbabilityFlow,
    ReverseDiffusion,
    denoise,
    langevin_corrector,
    sample,
    score_evaluations,
    time_grid,
)
from molscore.sampling.likelihood import log_likelihood

__all__ = [
    "ProbabilityFlow",
    "ReverseDiffusion",
    "denoise",
    "langevin_corrector",
    "log_likelihood",
    "sample",
    "score_evaluations",
    "time_grid",
]
