"""Dynamics: terms (what the equation is), integrators (how to step), seeded noise (where randomness comes
from), Simulation (the loop, guards, checkpoints) and reporters (what gets recorded).

One stack serves Langevin MD (Underdamped + BAOAB), Boltzmann sampling by reverse diffusion (SDE +
EulerMaruyama, or ODE + Heun for the probability flow) and transition-path sampling (seeded, replayable
noise).
"""

from molscore.dynamics.integrators import BAOAB, EulerMaruyama, Heun, Integrator
from molscore.dynamics.noise import SeededNoise
from molscore.dynamics.reporters import TrajectoryReporter, load_trajectory
from molscore.dynamics.simulation import Simulation, SimulationError, read_checkpoint
from molscore.dynamics.state import State
from molscore.dynamics.terms import ODE, SDE, Overdamped, Term, Underdamped

__all__ = [
    "BAOAB",
    "ODE",
    "SDE",
    "EulerMaruyama",
    "Heun",
    "Integrator",
    "Overdamped",
    "SeededNoise",
    "Simulation",
    "SimulationError",
    "State",
    "Term",
    "TrajectoryReporter",
    "Underdamped",
    "load_trajectory",
    "read_checkpoint",
]
