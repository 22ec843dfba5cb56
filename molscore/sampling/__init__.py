"""Boltzmann sampling with a trained diffusion model: reverse SDE, probability-flow ODE, likelihoods."""

from molscore.sampling.diffusion_sampler import ProbabilityFlow, ReverseDiffusion, sample
from molscore.sampling.likelihood import log_likelihood

__all__ = ["ProbabilityFlow", "ReverseDiffusion", "log_likelihood", "sample"]
