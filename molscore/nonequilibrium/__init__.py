"""Non-equilibrium steady states: driven overdamped systems given by any drift callable and diffusion, their
steady-state trajectories, and entropy-production estimators (drift identity, score-based, path, TUR),
checked against exact results (SCIENCE.md section 6).
"""

from molscore.nonequilibrium.divergence import divergence
from molscore.nonequilibrium.driven_system import (
    BUILDERS,
    DrivenSystem,
    active_particles,
    bead_chain,
    driven_ring,
    load_driven_system,
    rotational_ou,
)
from molscore.nonequilibrium.estimators import (
    Estimate,
    drift_identity,
    path_estimate,
    probability_velocity,
    score_based,
    tur_bound,
)
from molscore.nonequilibrium.exact import linear_entropy_production, ring_mean_velocity
from molscore.nonequilibrium.steady_state import SteadyStateRun, run_steady_state

__all__ = [
    "BUILDERS",
    "DrivenSystem",
    "Estimate",
    "SteadyStateRun",
    "active_particles",
    "bead_chain",
    "divergence",
    "drift_identity",
    "driven_ring",
    "linear_entropy_production",
    "load_driven_system",
    "path_estimate",
    "probability_velocity",
    "ring_mean_velocity",
    "rotational_ou",
    "run_steady_state",
    "score_based",
    "tur_bound",
]
