"""Molecule-specific evaluation of a run (SCIENCE.md section 4): what the 2-D JS does not show.

For a system with collective variables (phi, psi first) and a bead topology (``run_dir/data/beads.pdb``):

- the phi > 0 population of MD (test replicas), samples and simulation, with errors;
- the MD-vs-MD floor at the model's number of effectively independent frames (iid: the sample count;
  simulation: frames / their autocorrelation time), with its spread over random draws of validation stretches;
- bond-length Wasserstein-1 per bond against MD, and the simulation's bond-length range (stability);
- the phi > 0 population of the simulation against time (all replicas start in one state: convergence);
- free-energy profiles along phi;
- all-atom runs: the OpenMM reference energy of the samples against that of the MD frames (kT units).

Writes ``molecular.png`` (profiles), ``population.png`` (simulation population in time) and returns a dict
stored under ``"molecular"`` in ``metrics.json``.
"""

from pathlib import Path

import mdtraj
import numpy as np
import torch

from molscore.analysis.autocorrelation import tau_with_window
from molscore.analysis.collective_variables import compute_cvs
from molscore.analysis.distributions import training_draw_floor
from molscore.analysis.molecular import (
    basin_population,
    bond_length_w1,
    bond_lengths,
    free_energy_profile,
    md_floor,
    population_time_series,
    topology_bonds,
)
from molscore.analysis.plots import line_plot
from molscore.system import System


def slowest_tau(angles_by_replica: list[np.ndarray]) -> tuple[float, bool]:
    """Largest integrated autocorrelation time (frames) of the phi > 0 indicator and of cos/sin of each angle,
    and whether every estimate converged (replicas longer than ~5 tau; otherwise tau is a lower bound).

    ``angles_by_replica`` : list of (T_r, n_cvs) arrays in rad, one per independent replica. The indicator is
    the slow observable of alanine dipeptide; the trigonometric functions keep the estimate meaningful when
    no replica crosses phi = 0 (a constant indicator has tau = 1).
    """
    observables = [lambda a: (a[:, 0] > 0).astype(float)]
    for k in range(angles_by_replica[0].shape[1]):
        observables += [lambda a, k=k: np.cos(a[:, k]), lambda a, k=k: np.sin(a[:, k])]
    estimates = [tau_with_window([f(a) for a in angles_by_replica]) for f in observables]
    return max(tau for tau, _ in estimates), all(converged for _, converged in estimates)


def reference_energy_comparison(system: System, samples: np.ndarray, md: np.ndarray, n_max: int = 2000) -> dict:
    """OpenMM reference energies (in kT) of up to ``n_max`` samples and MD frames, ``(n, N, 3)`` nm each.

    Returns medians, the 1st-99th percentile range of MD, the fraction of samples inside that range (a
    sample far above it has a clash or a broken bond) and the Wasserstein-1 distance of the two energy
    distributions (kT).
    """
    from scipy.stats import wasserstein_distance

    from molscore.interfaces.reference_energy import ReferenceForceField

    field, rng = ReferenceForceField(system), np.random.default_rng(0)

    def energies(frames):  # NaN for non-finite frames
        frames = frames[rng.permutation(len(frames))[:n_max]].astype(np.float64)
        ok, energy = np.isfinite(frames).all(axis=(1, 2)), np.full(len(frames), np.nan)
        if ok.any():
            energy[ok] = field.energy_and_forces(frames[ok])[0].numpy() / system.kT
        return energy

    e_model, e_md = energies(samples), energies(md)
    e_md = e_md[np.isfinite(e_md)]
    finite = np.isfinite(e_model)
    lo, hi = np.percentile(e_md, [1, 99])
    return {
        "median_kT": float(np.median(e_model[finite])) if finite.any() else float("nan"),
        "md_median_kT": float(np.median(e_md)),
        "md_range_kT": [float(lo), float(hi)],
        "fraction_in_md_range": float(np.mean(finite & (e_model >= lo) & (e_model <= hi))),
        "w1_kT": float(wasserstein_distance(e_model[finite], e_md)) if finite.any() else float("nan"),
        "n": int(len(e_model)),
    }


def _by_replica(values: np.ndarray, replica: np.ndarray) -> list[np.ndarray]:
    return [values[replica == r] for r in np.unique(replica)]


def stereocentres(training: np.ndarray, bonds) -> tuple[np.ndarray, np.ndarray]:
    """The branch centres (:func:`~molscore.topology.branch_centres`) whose signed volume keeps one sign in at
    least 99% of the training frames ``(M, N, 3)``: rows ``(S, 4)`` and that sign ``(S,)``."""
    from molscore.nn.bond_graph import signed_volumes
    from molscore.topology import branch_centres

    centres = branch_centres([[int(i), int(j)] for i, j in bonds], training.shape[1]) if len(bonds) else None
    if centres is None or not len(centres):
        return np.zeros((0, 4), dtype=int), np.zeros(0)
    mean_sign = np.sign(signed_volumes(torch.as_tensor(training).transpose(0, 1), centres).numpy()).mean(axis=1)
    keep = np.abs(mean_sign) >= 0.98
    return centres.numpy()[keep], np.sign(mean_sign[keep])


def mirrored_fraction(frames: np.ndarray, centres: np.ndarray, signs: np.ndarray) -> float | None:
    """Fraction of ``frames (M, N, 3)`` with at least one stereocentre of the opposite handedness (None without
    stereocentres): diffusion samples that chose the mirror image at large t cannot undo it at small t."""
    from molscore.nn.bond_graph import signed_volumes

    if not len(centres):
        return None
    v = signed_volumes(torch.as_tensor(frames).transpose(0, 1), torch.as_tensor(centres)).numpy()  # (S, M)
    return float((np.sign(v) != signs[:, None]).any(axis=0).mean())


def molecular_metrics(
    system: System,
    run_dir: Path,
    test: np.ndarray,
    test_replica: np.ndarray,
    validation: np.ndarray,
    validation_replica: np.ndarray,
    samples: np.ndarray | None = None,
    simulation: np.ndarray | None = None,
    bins: int = 64,
    hist_range=None,
    n_draws: int = 20,
    training: np.ndarray | None = None,
    sim_frame_ps: float | None = None,
    md_frame_ps: float | None = None,
    start_groups: list | None = None,
) -> dict:
    """Metrics and plots of one run (see module docstring).

    Parameters
    ----------
    system : the molecule (collective variables, kT)
    run_dir : run folder holding ``data/beads.pdb``; plots are written there
    test, validation : (M, N, 3) nm, held-out MD frames; ``*_replica`` (M,) their replica ids (time-ordered)
    samples : (n, N, 3) nm diffusion samples, or None
    simulation : (frames, B, N, 3) nm simulation frames after burn-in, or None
    bins, hist_range : histogram settings of the JS / PMF comparison
    n_draws : random draws of the MD floor
    training : (M', N, 3) nm training frames: the iid floor of a model that reproduces them exactly
        (``iid.floor_training``, at the sample count)
    sim_frame_ps, md_frame_ps : time between simulation frames and between MD frames, ps: with both, the
        simulation's floor is MD's at the same total simulated time with MD's own correlation time (a simulation
        that stays stuck, with a long correlation time of its own, must not earn an easier floor); without them,
        the simulation's own correlation time sets it
    start_groups : ``simulate.start_groups()``: with more than one, ``sim.phi_positive_by_start`` holds the
        phi > 0 population of each group of replicas (those started from training frames test stationarity)

    Returns
    -------
    dict with "md", "iid", "sim" entries (only those with data).
    """
    topology = mdtraj.load_topology(str(Path(run_dir) / "data" / "beads.pdb"))
    names = list(system.collective_variables)[:2]

    def cvs(xyz):
        return compute_cvs(xyz, topology, system.collective_variables, names)

    ref, val = cvs(test), cvs(validation)
    tau_md, md_converged = slowest_tau(_by_replica(val, validation_replica))
    bonds = topology_bonds(topology)
    bond_names = [f"{topology.atom(i).name}-{topology.atom(j).name}" for i, j in bonds]
    md_lengths = bond_lengths(test, bonds)
    out = {
        "md": {
            "phi_positive": basin_population(ref[:, 0], test_replica),
            "tau_frames": tau_md,
            "tau_converged": md_converged,
            "n_frames": len(test),
            "n_effective": len(validation) / tau_md,
            "bond_range_nm": [float(md_lengths.min()), float(md_lengths.max())],
        }
    }
    profiles = {"MD (test)": free_energy_profile(ref[:, 0], bins)}  # F in units of kT

    def compare(xyz, phi_positive, n_effective):
        entry = {"phi_positive": phi_positive, "n_effective": float(n_effective)}
        entry["floor"] = md_floor(val, validation_replica, ref, n_effective, tau_md, bins, hist_range, n_draws)
        entry["floor"].pop("js"), entry["floor"].pop("pmf")  # per-draw lists: keep the summary only
        if len(bonds):
            w1 = bond_length_w1(xyz, test, bonds)
            entry["bond_w1_nm"] = dict(zip(bond_names, (float(w) for w in w1), strict=True))
            entry["bond_w1_mean_nm"] = float(np.mean(w1))
        return entry

    centres, signs = stereocentres(training, bonds) if training is not None else (np.zeros((0, 4)), np.zeros(0))
    if len(centres):
        out["md"]["stereocentres"] = [topology.atom(int(c)).name for c in centres[:, 0]]
    if samples is not None:
        iid = cvs(samples)
        out["iid"] = compare(samples, basin_population(iid[:, 0]), len(samples))
        out["iid"]["mirrored_fraction"] = mirrored_fraction(samples, centres, signs)
        if training is not None:
            out["iid"]["floor_training"] = training_draw_floor(cvs(training), ref, len(samples), bins, hist_range, n_draws)
        if topology.n_atoms == system.n_particles:  # all atoms: score the samples with the reference force field
            out["iid"]["reference_energy"] = reference_energy_comparison(system, samples, test)
        profiles["samples"] = free_energy_profile(iid[:, 0], bins)
    if simulation is not None:
        n_frames, n_replicas = simulation.shape[:2]
        flat = simulation.reshape(-1, *simulation.shape[2:])
        sim = cvs(flat).reshape(n_frames, n_replicas, -1)
        tau_sim, sim_converged = slowest_tau([sim[:, b] for b in range(n_replicas)])
        owner = np.tile(np.arange(n_replicas), n_frames)  # frame-major flattening
        n_effective = n_frames * n_replicas / tau_sim  # by the simulation's own correlation time
        if sim_frame_ps and md_frame_ps:  # by MD's: the simulated time over MD's correlation time
            n_effective = n_frames * n_replicas * sim_frame_ps / (tau_md * md_frame_ps)
        entry = compare(flat, basin_population(sim[..., 0].ravel(), owner), n_effective)
        entry["n_effective_own_tau"] = n_frames * n_replicas / tau_sim
        lengths = bond_lengths(flat, bonds) if len(bonds) else np.zeros((1, 1))
        entry |= {"tau_frames": tau_sim, "tau_converged": sim_converged, "finite": bool(np.isfinite(simulation).all())}
        entry["mirrored_fraction"] = mirrored_fraction(flat, centres, signs)
        entry["bond_range_nm"] = [float(lengths.min()), float(lengths.max())]
        out["sim"] = entry
        profiles["simulation"] = free_energy_profile(sim[..., 0].ravel(), bins)
        series = population_time_series(sim[..., 0])
        frames = np.arange(n_frames)
        line_plot({"replica average": (frames, series["p"]), "running mean": (frames, series["running"])},
                  Path(run_dir) / "population.png", "simulation frame (after burn-in)", "fraction with phi > 0",
                  title=f"{system.name}: phi > 0 population in simulation",
                  errors={"replica average": series["err"], "running mean": series["running_err"]})  # fmt: skip
        out["sim"]["population_final"] = float(series["running"][-1])
        if start_groups and len(start_groups) > 1:
            out["sim"]["phi_positive_by_start"] = {
                part: basin_population(sim[:, list(group), 0].ravel(), np.tile(np.arange(len(group)), n_frames))
                for part, group in start_groups
            }
    line_plot({k: v for k, v in profiles.items()}, Path(run_dir) / "molecular.png", "phi (rad)", "F / kT",
              title=f"{system.name}: free energy along phi")  # fmt: skip
    return out
