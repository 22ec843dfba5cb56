"""Entropy production as a diagnostic of a learned force field (SCIENCE.md section 6).

Overdamped Langevin dynamics in a learned force field F (kJ/(mol nm)), positions in nm, time in ps,

    dx = D F(x) / kT dt + sqrt(2 D) dW,

has zero entropy production exactly when F = -grad U (an energy model, whatever U) and sigma > 0 when F is not a
gradient (a direct score model). Beside sigma (drift identity and path estimators) the report gives a cheap
direct measure, the antisymmetric part of the force Jacobian, E||J - J^T||_F / E||J||_F (zero for an energy model up
to rounding).

Choices. D_i = kT / (m_i gamma), the overdamped (Smoluchowski) limit of the Langevin dynamics the pipeline
simulates (friction gamma = 1/ps, bead masses), about 0.2 nm^2/ps for a carbon bead at 300 K; sigma scales with
D (kB/ps at the stated D). The time step is ``accuracy / lambda_max``, lambda_max the largest |eigenvalue| of the
drift Jacobian D J / kT at the start frames: the stiffest mode (a bond, lambda ~ 7e4 / ps for alanine dipeptide's
backbone beads) then relaxes over 1 / accuracy steps, and Euler-Maruyama's error in the stationary density is
O(accuracy) in that mode (the plain drift identity is biased by about dt / 2 E[tr A^2] for a conservative drift
A = db/dx, reported as ``em_bias``).

Control variates. The stiff bonds make both estimators noisy: per frame b^T D^-1 b + div b fluctuates by ~lambda_max
while sigma is set by the soft modes. For any phi, E_p[L phi] = 0 at steady state (L phi = b . grad phi + D : Hess
phi, the generator), so sigma = E[b^T D^-1 b + div b - L phi]; with phi = -U_ref / kT for a conservative reference
energy close to the force field (the model's bond prior), the stiff part cancels frame by frame. The path analogue
adds the boundary term phi(x_start) - phi(x_end) of each window (whose mean is zero at steady state). Both remain
unbiased at steady state whatever the reference; an energy model with U_ref = its own energy gives zero identically.

Caveat: steady state. At this D a torsion relaxes in ~0.05 ps, some 10^5 steps of the bond-limited time step, far
more than a CPU budget allows. Molecules therefore start from MD frames relaxed first by underdamped Langevin
dynamics in the learned force field (``equilibrate_steps`` of BAOAB at 2 fs, ~1000 overdamped steps each). Without
that relaxation a 3-minute alanine-dipeptide energy model gave -100 +- 30 kB/ps from both control-variate
estimators (the soft modes relaxing away from the MD distribution: -d<U - U_ref>/dt / kT); with 2 ps of it,
6 +- 28 and 9 +- 30. What is left of any relaxation shows up in every estimator and is not separated from sigma.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from molscore.analysis.autocorrelation import block_average
from molscore.dynamics import BAOAB, SeededNoise, Simulation, State, Underdamped
from molscore.nonequilibrium.divergence import divergence
from molscore.nonequilibrium.driven_system import DrivenSystem
from molscore.nonequilibrium.estimators import Estimate, path_estimate
from molscore.nonequilibrium.steady_state import run_steady_state

ForceField = Callable[[Tensor], Tensor]
"""pos (B, N, 3) nm -> forces (B, N, 3) kJ/(mol nm); differentiable for exact divergences and Jacobians."""
Energy = Callable[[Tensor], Tensor]
"""pos (B, N, 3) nm -> energy (B,) kJ/mol."""

CARBON_MASS = 12.011  # amu: the default bead mass


def einstein_diffusion(kT: float, masses, friction: float = 1.0) -> Tensor:
    """D_i = kT / (m_i gamma), nm^2/ps, for kT in kJ/mol, masses (N,) in amu, friction gamma in 1/ps.

    (1 amu nm^2 / ps^2 = 1 kJ/mol, so the units need no conversion.)
    """
    masses = torch.as_tensor(masses, dtype=torch.float64)
    if (masses <= 0).any() or not friction > 0 or not kT > 0:
        raise ValueError(f"need positive masses, friction and kT, got masses {masses.tolist()}, {friction}, {kT}")
    return kT / (masses * friction)


def force_jacobian(force_fn: ForceField, pos: Tensor) -> Tensor:
    """J[b, i, j] = dF_i / dx_j at each frame, Tensor (B, N d, N d), kJ/(mol nm^2); one backward pass per row."""
    return _forces_and_jacobian(force_fn, pos)[1]


def _forces_and_jacobian(force_fn: ForceField, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Forces (B, N d) and their Jacobian (B, N d, N d) from one forward pass."""
    if pos.ndim != 3:
        raise ValueError(f"positions must have shape (B, N, d), got {tuple(pos.shape)}")
    with torch.enable_grad():
        xg = pos.detach().requires_grad_(True)
        f = force_fn(xg).flatten(1)
        if not f.requires_grad:
            raise ValueError("the force field does not carry gradients; its Jacobian needs autograd")
        rows = [
            torch.autograd.grad(f[:, i].sum(), xg, retain_graph=i < f.shape[1] - 1)[0].flatten(1) for i in range(f.shape[1])
        ]
    return f.detach(), torch.stack(rows, 1).detach()


def jacobian_asymmetry(jacobians: Tensor) -> tuple[float, float]:
    """E||J - J^T||_F / E||J||_F over frames, and its standard error (delta method; frames taken as independent).

    Parameters
    ----------
    jacobians : Tensor (B, M, M), e.g. from :func:`force_jacobian`
    """
    antisymmetric = (jacobians - jacobians.transpose(1, 2)).flatten(1).norm(dim=1)
    return jacobian_asymmetry_from_norms(antisymmetric, jacobians.flatten(1).norm(dim=1))


def jacobian_asymmetry_from_norms(antisymmetric: Tensor, norm: Tensor) -> tuple[float, float]:
    """The ratio of means of ||J - J^T||_F and ||J||_F per frame (B,), and its standard error."""
    a, n = antisymmetric.double(), norm.double()
    ratio = float(a.mean() / n.mean())
    if len(a) < 2:
        return ratio, float("nan")
    return ratio, float((a - ratio * n).std() / n.mean() / math.sqrt(len(a)))


def drift_stiffness(jacobians: Tensor, diffusion, kT: float) -> float:
    """lambda_max = max over frames of the spectral radius of the drift Jacobian A = D J / kT, 1/ps.

    Parameters
    ----------
    jacobians : Tensor (B, N d, N d), kJ/(mol nm^2); diffusion : D broadcastable to (N d,), nm^2/ps
    """
    d = torch.broadcast_to(torch.as_tensor(diffusion).to(jacobians).reshape(-1), jacobians.shape[-1:])
    a = d[:, None] * jacobians / kT
    return float(torch.linalg.eigvals(a).abs().max())


def learned_force_system(
    force_fn: ForceField,
    kT: float,
    n_atoms: int,
    initial: Tensor,
    diffusion=None,
    timestep: float | None = None,
    name: str = "learned_forcefield",
    masses=None,
    friction: float = 1.0,
    accuracy: float = 0.1,
) -> DrivenSystem:
    """Overdamped Langevin dynamics in a learned force field: drift b = D F(x) / kT, nm/ps.

    The molecule is translation invariant (sum of forces zero), so its centroid diffuses freely and adds nothing to
    sigma; there is no equilibrium control (an energy model is its own). ``exact`` is None. ``relaxation_time`` is
    that of the stiffest mode, 1 / lambda_max (torsions relax orders of magnitude more slowly: start replicas from
    MD frames rather than waiting for them).

    Parameters
    ----------
    force_fn : pos (B, N, 3) nm -> F (B, N, 3) kJ/(mol nm) (see :func:`model_forces`); differentiable unless
        ``timestep`` is given
    kT : thermal energy, kJ/mol
    n_atoms : N (checked against ``initial``)
    initial : Tensor (N, 3), nm: where the replicas start
    diffusion : D, nm^2/ps, broadcastable to (N, 3); default kT / (m_i friction), masses default 12.011 amu
    timestep : ps; default ``accuracy / lambda_max``, lambda_max from :func:`drift_stiffness` at ``initial``
    masses : (N,) amu, for the default diffusion; friction : 1/ps
    accuracy : lambda_max dt of the default time step (Euler-Maruyama is stable below 2; at 0.1 and 0.025 the
        control-variate estimates of alanine dipeptide agreed within their errors)
    """
    initial = torch.as_tensor(initial, dtype=torch.float64)
    if initial.shape != (n_atoms, 3):
        raise ValueError(f"initial configuration must have shape ({n_atoms}, 3), got {tuple(initial.shape)}")
    diffusion = _diffusion(kT, n_atoms, diffusion, masses, friction)
    stiffness = None
    if timestep is None:
        if not 0 < accuracy < 2:
            raise ValueError(f"accuracy (lambda_max dt) must lie in (0, 2) for a stable step, got {accuracy}")
        stiffness = drift_stiffness(force_jacobian(force_fn, initial[None].to(_dtype_of(force_fn))), diffusion, kT)
        timestep = accuracy / stiffness
    if not timestep > 0:
        raise ValueError(f"timestep must be positive, got {timestep}")
    cache: dict = {}

    def drift(x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in cache:
            cache[key] = diffusion.to(x) / kT
        return cache[key] * force_fn(x)

    parameters = {"kT": kT, "diffusion": diffusion[:, 0].tolist(), "timestep": float(timestep),
                  "stiffness": stiffness, "friction": friction}  # fmt: skip
    return DrivenSystem(
        name, drift, diffusion, initial, timestep=float(timestep),
        relaxation_time=float(1 / stiffness if stiffness else 20 * timestep),
        description=f"overdamped Langevin in a learned force field, kT = {kT:.4g} kJ/mol, "
        f"D = {diffusion[:, 0].min():.3g}-{diffusion[:, 0].max():.3g} nm^2/ps, dt = {timestep:.3g} ps",
        parameters=parameters,
    )  # fmt: skip


def _diffusion(kT: float, n_atoms: int, diffusion, masses, friction: float) -> Tensor:
    """D (N, 3), nm^2/ps: as given, or kT / (m_i friction) (masses default to carbon)."""
    if diffusion is None:
        masses = torch.full((n_atoms,), CARBON_MASS) if masses is None else torch.as_tensor(masses)
        if masses.shape != (n_atoms,):
            raise ValueError(f"masses must have one entry per atom ({n_atoms}), got shape {tuple(masses.shape)}")
        diffusion = einstein_diffusion(kT, masses, friction)[:, None]
    return torch.broadcast_to(torch.as_tensor(diffusion, dtype=torch.float64), (n_atoms, 3)).clone()


def _dtype_of(force_fn) -> torch.dtype:
    owner = getattr(force_fn, "model", None)  # set by model_forces
    return owner.dtype if owner is not None else torch.float64


def model_forces(model, t_eval: float | None = None) -> ForceField:
    """The force field kT s_theta(x, t_eval) / scale of a :class:`~molscore.models.DiffusionModel`, differentiable:
    when autograd is on, an energy model's gradient is taken with ``create_graph`` so the forces can be
    differentiated again (divergence, Jacobian); under ``torch.no_grad`` (the simulation) it is not."""

    def forces(pos: Tensor) -> Tensor:
        x = model.to_diffusion(pos.to(model.dtype))
        t = torch.full((len(x),), model.sde.t_min if t_eval is None else float(t_eval), dtype=x.dtype, device=x.device)
        return model.kT * model.score_model.score(x, t, create_graph=torch.is_grad_enabled()) / model.scale

    forces.model = model
    return forces


def model_prior_energy(model, t_eval: float | None = None) -> Energy | None:
    """kT E_prior(x, t_eval), kJ/mol: the fixed (bond, noise) prior energy of a model, or None if it has none.

    A conservative reference close to the learned force field (it carries the stiff bonds), for the control
    variates of :func:`forcefield_entropy_production`.
    """
    score_model, t = model.score_model, model.sde.t_min if t_eval is None else float(t_eval)
    if hasattr(score_model, "experts"):  # a mixture: the expert that serves t_eval
        score_model = score_model.expert_at(t)
    prior = getattr(score_model, "prior", None)
    if prior is None:
        return None

    def energy(pos: Tensor) -> Tensor:
        x = model.to_diffusion(pos.to(model.dtype))
        return model.kT * prior(x, torch.full((len(x),), t, dtype=x.dtype, device=x.device))

    return energy


def _stacked(system: DrivenSystem, starts: Tensor) -> DrivenSystem:
    """R copies of ``system`` as one system of R N rows, copy r starting from ``starts[r]`` (R, N, d)
    (:func:`run_steady_state` starts every replica from one configuration); sigma of the copies adds."""
    n_copies, n, d = starts.shape

    def drift(x):
        return system.drift(x.reshape(-1, n, d)).reshape(x.shape)

    return DrivenSystem(
        f"{system.name} x{n_copies}", drift, system.diffusion.repeat(n_copies, 1), starts.reshape(-1, d),
        timestep=system.timestep, relaxation_time=system.relaxation_time, description=system.description,
        parameters=system.parameters,
    )  # fmt: skip


@dataclass
class ForceFieldEntropy:
    """Entropy production of overdamped dynamics in a learned force field, per molecule (kB/ps at the stated D).

    Attributes
    ----------
    drift_identity, path : the two estimators of sigma, kB/ps
    drift_identity_controlled, path_controlled : the same with the control variate phi = -U_ref / kT (None
        without a reference energy)
    asymmetry, asymmetry_error : E||J - J^T||_F / E||J||_F over the drift-identity frames
    path_rates : Tensor (W,), path entropy of each window per molecule / window time, kB/ps
    path_rates_controlled : Tensor (W - 1,), the same with the boundary terms phi(start) - phi(end), or None
    timestep, window_time : ps; stiffness : lambda_max, 1/ps (sets the default time step)
    em_bias : dt / 2 E[tr A^2], kB/ps: the expected Euler-Maruyama bias of the plain drift identity of a
        conservative drift (to first order in dt)
    n_molecules, n_steps : molecules simulated together, production steps of each (after ``burn_in`` steps)
    simulation_seconds, seconds : wall time of the simulation and of everything
    system : the single-molecule :class:`DrivenSystem`
    """

    drift_identity: Estimate
    path: Estimate
    asymmetry: float
    asymmetry_error: float
    drift_identity_controlled: Estimate | None
    path_controlled: Estimate | None
    path_rates: Tensor
    path_rates_controlled: Tensor | None
    timestep: float
    window_time: float
    stiffness: float
    em_bias: float
    n_molecules: int
    n_steps: int
    burn_in: int
    simulation_seconds: float
    seconds: float
    system: DrivenSystem = field(repr=False)

    def as_dict(self) -> dict:
        estimates = ("drift_identity", "path", "drift_identity_controlled", "path_controlled")
        out = {k: getattr(self, k).as_dict() if getattr(self, k) is not None else None for k in estimates}
        scalars = ("asymmetry", "asymmetry_error", "timestep", "window_time", "stiffness", "em_bias", "n_molecules",
                   "n_steps", "burn_in", "simulation_seconds", "seconds")  # fmt: skip
        return out | {k: getattr(self, k) for k in scalars} | {"diffusion": self.system.parameters["diffusion"]}


def _frame_terms(force_fn, kT: float, diffusion: Tensor, x: Tensor, log_density=None) -> dict[str, Tensor]:
    """Per-frame terms at ``x (B, N, d)``: the drift-identity integrand b^T D^-1 b + div b, the control L phi,
    ||J - J^T||_F, ||J||_F and tr A^2, each (B,)."""
    d = diffusion.to(x).reshape(-1)
    f, jac = _forces_and_jacobian(force_fn, x)
    b = d * f / kT
    a = d[:, None] * jac / kT
    out = {
        "integrand": (b * b / d).sum(1) + torch.diagonal(a, dim1=1, dim2=2).sum(1),
        "antisymmetric": (jac - jac.transpose(1, 2)).flatten(1).norm(dim=1),
        "norm": jac.flatten(1).norm(dim=1),
        "trace_a2": (a * a.transpose(1, 2)).flatten(1).sum(1),
    }
    if log_density is not None:
        dd = d.view(x.shape[1:])

        def flux(y):  # D grad phi, differentiable once more
            with torch.enable_grad():
                yg = y if y.requires_grad else y.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(log_density(yg).sum(), yg, create_graph=True)
            return dd * g

        grad_phi = flux(x).detach().flatten(1) / d
        out["control"] = (b * grad_phi).sum(1) + divergence(flux, x, "exact")
    return out


def forcefield_entropy_production(
    model,
    t_eval: float | None,
    start_frames: Tensor,
    n_windows: int = 200,
    stride: int = 20,
    burn_in: int | None = None,
    timestep: float | None = None,
    accuracy: float = 0.1,
    diffusion=None,
    masses=None,
    friction: float = 1.0,
    reference_energy: Energy | str | None = "prior",
    identity_windows: int = 40,
    equilibrate_steps: int = 0,
    equilibrate_dt: float = 0.002,
    seed: int = 0,
    progress: bool = False,
) -> ForceFieldEntropy:
    """Simulate one molecule per start frame in the learned force field of ``model`` and measure sigma.

    Parameters
    ----------
    model : :class:`~molscore.models.DiffusionModel`; its dtype sets the simulation's (use float64)
    t_eval : diffusion time of the force field (None: t_min)
    start_frames : Tensor (R, N, 3), nm: R molecules, simulated together, each from its own frame (e.g. MD frames)
    n_windows, stride : production windows of ``stride`` steps each
    burn_in : steps discarded first (default 20 / accuracy: 20 relaxation times of the stiffest mode)
    timestep : ps; default ``accuracy / lambda_max`` with lambda_max the largest over the start frames
    diffusion, masses, friction : see :func:`learned_force_system`
    reference_energy : U_ref (pos -> (B,) kJ/mol) for the control variates, "prior" for the model's prior energy
        (:func:`model_prior_energy`), or None for the plain estimators only
    identity_windows : windows (evenly spaced) whose frames feed the drift identity and the Jacobian asymmetry
        (each frame costs one Jacobian: N d backward passes)
    equilibrate_steps, equilibrate_dt : first relax the start frames in the learned force field by underdamped
        Langevin dynamics (BAOAB, ``masses``, ``friction``, dt in ps), whose 2 fs step is ~1000 overdamped steps:
        the soft modes reach the model's Boltzmann density (for an energy model; for a direct score a steady state
        close to the overdamped one) before the overdamped run, which removes most of the transient of the caveat
    """
    began = time.perf_counter()
    start_frames = torch.as_tensor(start_frames, dtype=model.dtype)
    if start_frames.ndim != 3 or start_frames.shape[-1] != 3:
        raise ValueError(f"start_frames must have shape (R, N, 3), got {tuple(start_frames.shape)}")
    n_copies, n_atoms, _ = start_frames.shape
    force_fn = model_forces(model, t_eval)
    if reference_energy == "prior":
        reference_energy = model_prior_energy(model, t_eval)
        if reference_energy is None:
            raise ValueError("the model has no prior energy; pass reference_energy=None or an energy function")
    diffusion = _diffusion(model.kT, n_atoms, diffusion, masses, friction)
    if equilibrate_steps > 0:
        masses = torch.full((n_atoms,), CARBON_MASS) if masses is None else torch.as_tensor(masses)
        term = Underdamped(force_fn, masses.to(model.dtype), model.kT, friction)
        sim = Simulation(term, BAOAB(), State(start_frames.clone()), equilibrate_dt, SeededNoise(seed + 1), [])
        start_frames = sim.run(equilibrate_steps, progress=progress).pos.detach()
    stiffness = drift_stiffness(force_jacobian(force_fn, start_frames), diffusion, model.kT)
    if timestep is None:
        if not 0 < accuracy < 2:
            raise ValueError(f"accuracy (lambda_max dt) must lie in (0, 2) for a stable step, got {accuracy}")
        timestep = accuracy / stiffness
    system = learned_force_system(force_fn, model.kT, n_atoms, start_frames[0], diffusion, timestep)
    system.relaxation_time = 1.0 / stiffness
    system.parameters |= {"stiffness": stiffness, "accuracy": stiffness * timestep, "friction": friction}
    if burn_in is None:
        burn_in = math.ceil(20 / (stiffness * timestep))
    run = run_steady_state(
        _stacked(system, start_frames), 1, n_windows, stride, burn_in, timestep, seed,
        dtype=model.dtype, progress=progress,
    )  # fmt: skip
    samples = run.samples.reshape(n_windows, n_copies, n_atoms, 3)
    increments = run.path_increments[:, 0] / n_copies  # (W,) per molecule
    path = path_estimate(increments[:, None], run.window_time)
    phi = None
    if reference_energy is not None:

        def phi(x):
            return -reference_energy(x) / model.kT

    # drift identity, Jacobian asymmetry (and the control) on the frames of evenly spaced windows
    picked = np.unique(np.linspace(0, n_windows - 1, min(identity_windows, n_windows)).round().astype(int))
    frames = samples[picked]  # (T', R, N, 3)
    start = time.perf_counter()
    terms: dict[str, list] = {}
    for w in range(len(picked)):
        for key, value in _frame_terms(force_fn, model.kT, system.diffusion, frames[w], phi).items():
            terms.setdefault(key, []).append(value)
    terms = {k: torch.stack(v).cpu() for k, v in terms.items()}  # (T', R)
    identity_seconds = time.perf_counter() - start
    # error from the spread over the independent molecules (the soft modes keep a molecule's frames correlated
    # over the whole run, which blocking in time would miss): per-molecule time means, then blocks over molecules
    mean, err = block_average(terms["integrand"].T.numpy())
    identity = Estimate("drift identity", mean, err, frames.shape[0] * n_copies, identity_seconds)
    asym, asym_err = jacobian_asymmetry_from_norms(terms["antisymmetric"].reshape(-1), terms["norm"].reshape(-1))
    identity_cv = path_cv = rates_cv = None
    if phi is not None:
        mean, err = block_average((terms["integrand"] - terms["control"]).T.numpy())
        identity_cv = Estimate("drift identity + control variate", mean, err, identity.n_samples, identity_seconds)
        with torch.no_grad():
            phis = torch.stack([phi(samples[w]) for w in range(n_windows)]).cpu().mean(1)  # (W,) per molecule
        boundary = phis[:-1] - phis[1:]  # ln p(start) - ln p(end) of windows 0 .. W-2
        rates_cv = (increments[:-1] + boundary) / run.window_time
        mean, err = block_average(rates_cv.numpy())
        path_cv = Estimate("path + control variate", mean, err, (n_windows - 1) * n_copies)
    return ForceFieldEntropy(
        identity, path, asym, asym_err, identity_cv, path_cv, increments / run.window_time, rates_cv,
        float(timestep), run.window_time, stiffness, float(timestep / 2 * terms["trace_a2"].mean()), n_copies,
        n_windows * stride, burn_in, run.seconds, time.perf_counter() - began, system,
    )  # fmt: skip
