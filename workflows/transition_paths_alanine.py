"""Transition paths of alanine dipeptide C7eq -> C7ax in vacuum with amber99sb-ildn (the TPS-DPS set-up).

300 K, dt = 1 fs, friction 1/ps, paths of 1 ps (1000 steps), all 22 atoms, OpenMM's Reference platform as the force
field of every path (one batched call per step over the chains). The one target ensemble: x_0 from equilibrium in
C7eq (frames of an unbiased vacuum MD run, with Maxwell-Boltzmann velocities), unbiased Langevin dynamics for 1 ps,
x_T in C7ax (|(dphi, dpsi)| < 0.75 rad around (1.2, -1.2)).

Steps: (1) vacuum MD for equilibrium frames (``--md-ps`` per replica, resumable); (2) minimised C7eq and C7ax
structures (energy reference and RMSD target); (3) the minimum-energy-path barrier from an adiabatic (phi, psi)
scan (context: no path goes below it); (4) starting paths pulled towards C7ax by a CV spring (not in the ensemble;
shooting relaxes them, a burn-in is discarded); (5) two-way and one-way shooting on ``--chains`` chains.

Table (written to ``--out/table.md``): per method THP, RMSD of the last frame to the C7ax minimum (aligned heavy atoms,
Angstrom), ETS = the highest energy along the path (kJ/mol, absolute and relative to the C7eq minimum, mean and std
over the path ensemble), the energy where the path crosses the dividing surface d(C7eq) = d(C7ax) in (phi, psi), the
transition time (last frame in C7eq to first frame in C7ax), acceptance, decorrelated paths, energy evaluations per
path and per decorrelated path, and wall time. Figures: path density on (phi, psi), transition-time histogram.

With ``--sampler ITERATIONS`` also (6) the learned path sampler (:mod:`molscore.paths.learned_sampler`) with a
:class:`~molscore.paths.path_controls.CVForceControl` on (phi, psi), their velocities and t/T, trained on a
:class:`~molscore.paths.controlled_paths.StartPool` of the C7eq equilibrium frames (group log-variance loss,
``--sampler-batch`` paths per rollout, optionally the first at a raised temperature, ``--sampler-anneal``) and sampled
(``--sampler-paths``); its row gives importance-weighted values with the raw (unweighted, all sampled paths; transition
time: those ending in C7ax) ones in brackets, THP = % of sampled paths ending in C7ax, the effective sample size in
place of decorrelated paths and energy evaluations per effective path, training included.
With ``--sampler-fit STEPS`` the sampler is first fitted to the one-way shooting paths (every frame kept; the control
by maximum likelihood, stopped early on the paths of every fifth chain, held out; a start proposal on (phi, psi, their
rates) by classification against equilibrium starts; the shooting cost counts as training cost), then trained by
``--sampler`` rollouts if given.
With ``--learned STEPS`` also (7) two-way shooting with a learned force field: an all-atom energy model with
Fokker-Planck regularisation (small equivariant GNN with bond, angle, repulsion and dihedral priors, ``LEARNED``)
trained by the package's pipeline for STEPS steps on the vacuum MD of step (1) (or loaded from
``--out/learned_model``), starting paths pulled towards C7ax in the learned force field, ``--learned-chains`` x
``--learned-moves`` (burn-in scaled from ``--burn-in``), every frame kept; ETS, the energy at the dividing surface,
RMSD and transition time of its paths are measured with the reference force field (so the row compares with the
others), energy evaluations count the learned model's. If the learned force field gives no C7ax path (none pulled
there, or no trial path accepted), the row and the printout say so.
The path ensembles (after burn-in) as trajectories: ``<move>_paths.dcd`` with ``<move>_paths.dcd.csv`` (path, first
frame, frames, steps, Monte Carlo weight).

    python workflows/transition_paths_alanine.py            # ~25 min on one CPU core
    python workflows/transition_paths_alanine.py --quick    # ~3 min
    python workflows/transition_paths_alanine.py --learned 1000 --no-reference --scan-grid 18   # ~30 min
"""

import argparse
import json
import math
import time
from pathlib import Path

import mdtraj
import numpy as np
import torch
from tqdm.auto import tqdm

from molscore.interfaces.dihedral_scan import adiabatic_scan, minimise
from molscore.interfaces.openmm_md import generate_md, load_md
from molscore.interfaces.reference_energy import ReferenceForceField
from molscore.models import DiffusionModel
from molscore.paths import ForceFieldLangevin, ShootingSettings, ShootingTPS, fixed_length_paths, load_states
from molscore.paths.brute_force import NoTransitionError, steering_bias
from molscore.paths.collective_variables import kabsch_rmsd
from molscore.paths.controlled_paths import StartPool
from molscore.paths.learned_sampler import LearnedPathSampler, TrainingLog, TrainingSettings
from molscore.paths.mountain_pass import mountain_pass
from molscore.paths.path_controls import CVForceControl, CVLogNormaliser, cv_rates
from molscore.paths.path_fitting import FitSettings
from molscore.paths.plots import plot_path_density, plot_path_lengths
from molscore.paths.start_probe import end_probability
from molscore.pipeline import load_run_config, stages
from molscore.system import load_system

LEARNED = {  # the learned force field: energy model + FP (issue 5's settings), a small all-atom GNN for one CPU core
    "system": "alanine_dipeptide",  # kT and centring as the vacuum variant; the data are the workflow's vacuum MD
    "data": {"resolution": "all", "n_validation_replicas": 1, "n_test_replicas": 1},  # 4 replicas: 2 train
    "model": {"parameterisation": "energy", "network": "gnn",
              "network_options": {"hidden_irreps": "8x0e+2x0o+4x1o+2x1e", "n_layers": 2, "radial_hidden": 16},
              "extra_priors": ["angles", "repulsion", "dihedrals"]},
    "train": {"batch_size": 32, "learning_rate": 1.0e-3, "final_learning_rate": 1.0e-4, "validation_every": 250,
              "fp_weight": 5.0e-4, "fp_fraction": 0.25},
}  # fmt: skip
ROW_KEYS = [
    "method", "THP %", "RMSD to C7ax A", "ETS kJ/mol", "ETS - E(C7eq min)", "E at dividing surface - E(C7eq min)",
    "transition time ps", "acceptance", "decorrelated paths", "energy evals / trial path",
    "energy evals / decorrelated path", "wall s",
]  # fmt: skip


def _cell(angles: np.ndarray, phi: float, psi: float) -> tuple[int, int]:
    near = lambda a: int(np.argmin(np.abs(np.angle(np.exp(1j * (angles - a))))))  # noqa: E731
    return near(phi), near(psi)


def _cv_values(path: np.ndarray, cvs) -> torch.Tensor:
    return cvs(torch.as_tensor(path, dtype=torch.float64))


def _transition_time(values: torch.Tensor, a, b, dt_frame: float) -> float:
    """Time from the last frame in A to the first frame in B of a path's CV values (F, K) saved every dt_frame."""
    in_a, in_b = a.contains(values).numpy(), b.contains(values).numpy()
    first_b = int(np.argmax(in_b))
    last_a = int(np.nonzero(in_a[: first_b + 1])[0].max()) if in_a[: first_b + 1].any() else 0
    return (first_b - last_a) * dt_frame


def _crossing_frame(values: torch.Tensor, a, b) -> int:
    """First frame of a path's CV values (F, K) past the dividing surface d(A) = d(B)."""
    gap = (a.distance(values) - b.distance(values)).numpy()  # < 0 nearer A
    changes = np.nonzero(np.diff(np.sign(gap)) > 0)[0]
    return int(changes[0] + 1) if len(changes) else int(np.argmin(np.abs(gap)))


def _mean_std(values, weights) -> str:
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    ok = np.isfinite(values) & (weights > 0)
    m = np.average(values[ok], weights=weights[ok])
    std = math.sqrt(np.average((values[ok] - m) ** 2, weights=weights[ok]))
    return f"{m:.1f} ± {std:.1f}" if abs(m) < 1e6 else f"{m:.3g} ± {std:.3g}"


def _closest_atoms(pos) -> float:
    """The smallest distance between two atoms over the frames ``pos (F, N, 3)``, nm."""
    pos = np.asarray(pos)
    i, j = np.triu_indices(pos.shape[1], 1)
    return float(np.linalg.norm(pos[:, i] - pos[:, j], axis=-1).min())


def learned_sampler_row(
    term, cvs, a, b, starts, args, dt, n_steps, save_every, heavy, target_t, e_min, shooting=None
) -> tuple[dict, tuple | None]:
    """Fit (to the one-way ``shooting`` ensemble, if given: control by maximum likelihood with every fifth chain held
    out for early stopping, start proposal by classification) and/or train (``--sampler`` rollouts) the learned path
    sampler with a CV force control on (phi, psi), and reweight its paths to the fixed-length ensemble; returns the
    table row (columns of the shooting rows) and the paths with their weights (None if none ended in C7ax)."""
    torch.manual_seed(0)
    method = "learned sampler (CV control)"
    if shooting is not None and not shooting.weights(args.burn_in, initial=False).any():
        print("   no one-way path free of the pulled starting paths after the burn-in: not fitted (raise --moves)")
        shooting, method = None, "learned sampler (CV control, not fitted: no shooting path)"
    half = len(starts) // 2
    pool = StartPool.draw(term, starts[:half] if shooting else starts, a, seed=0)
    x = pool.positions.detach().requires_grad_(True)
    rate_scale = cv_rates(cvs(x), x, pool.velocities).detach().std(0)  # equilibrium spread of dphi/dt, dpsi/dt
    control = CVForceControl(
        cvs, hidden=32, force_scale=args.sampler_force, velocity_scale=rate_scale, time=not args.sampler_static
    ).double()  # fmt: skip
    log_z = CVLogNormaliser(cvs, hidden=32, velocity_scale=rate_scale).double() if shooting else None
    sampler = LearnedPathSampler(term, control, a, b, n_steps, dt, log_normaliser=log_z)
    if shooting:
        paths, weights, chains = shooting.fixed_length_paths(args.burn_in)
        held = torch.as_tensor(chains % 5 == 4)  # whole chains: paths of one chain share frames
        fit = FitSettings(n_steps=args.sampler_fit, batch_size=16, learning_rate=args.sampler_lr, validate_every=50)
        print(
            f"6. learned path sampler: fit to {int((~held).sum())} one-way shooting paths, {int(held.sum())} of other "
            f"chains held out ({args.sampler_fit} steps) ...",
            flush=True,
        )
        equilibrium = StartPool.draw(term, starts[half:], a, seed=7)
        w = torch.as_tensor(weights)
        sampler.fit_to_paths(
            paths.select(~held), equilibrium, shooting.evaluations, w[~held], fit,
            held_out=paths.select(held) if held.any() else None, held_out_weights=w[held],
        )  # fmt: skip
        curve = ", ".join(f"{step}: {value:.2f}" for step, value in sampler.training_log.fit_held_out)
        print(f"   held-out mean log p_theta/p_0 per fit step {{{curve}}}", flush=True)
    k = args.sampler_batch // 8
    settings = TrainingSettings(
        n_iterations=args.sampler, batch_size=args.sampler_batch, train_batch=args.sampler_batch,
        buffer_size=args.sampler_batch, group_size=k, learning_rate=args.sampler_lr, sigma_b=0.5, loss="variance",
        anneal_kT=args.sampler_anneal * term.kT if args.sampler_anneal != 1 else None,
        anneal_iterations=args.sampler // 2,
    )  # fmt: skip
    if args.sampler:
        print(
            f"6. learned path sampler (CV control), {len(pool)} starts, {args.sampler} rollouts of {args.sampler_batch} "
            f"paths ({k} per start) ...",
            flush=True,
        )
        sampler.train(pool, settings)
    log = sampler.training_log or TrainingLog()  # neither fitted nor trained: no cost
    with torch.no_grad():
        u = control(pool.positions, pool.velocities, torch.zeros(len(pool))).norm(dim=-1).max(1).values
    print(
        f"   fraction in C7ax per rollout: {[round(f, 3) for f in log.fraction_in_b]}; largest control force on an atom "
        f"at the starts: median {float(u.median()):.3g} kJ/(mol nm)",
        flush=True,
    )
    clock = time.perf_counter()
    try:
        sample = sampler.sample(pool, args.sampler_paths, batch_size=args.sampler_batch, seed=1)
    except NoTransitionError as error:
        seconds = log.seconds + time.perf_counter() - clock
        n = error.paths.lengths.numel()
        print(f"   none of {n} sampled paths ended in C7ax", flush=True)
        rmsd = 10 * kabsch_rmsd(error.paths.last()[:, heavy], target_t).numpy()
        return {
            "method": method, "THP %": "0", "RMSD to C7ax A": f"- ({_mean_std(rmsd, np.ones(n))})",
            "ETS kJ/mol": "-", "ETS - E(C7eq min)": "-", "E at dividing surface - E(C7eq min)": "-",
            "transition time ps": "-", "acceptance": "-", "decorrelated paths": "ESS 0",
            "energy evals / trial path": f"{(log.energy_evaluations + n * (n_steps + 1)) / n:.3g}",
            "energy evals / decorrelated path": "inf", "wall s": round(seconds),
        }, None  # fmt: skip
    seconds = log.seconds + time.perf_counter() - clock
    paths, n = sample.paths, sample.in_b.numel()
    w, raw = sample.weights.numpy(), np.ones(n)
    rmsd = 10 * kabsch_rmsd(paths.last()[:, heavy], target_t).numpy()
    energies = paths.energies.numpy()  # (T + 1, C), at every step
    emax = energies.max(0)
    full = [paths.positions[:, i].numpy() for i in range(n)]
    values = [_cv_values(p, cvs) for p in full]
    e_cross = np.array([energies[_crossing_frame(v, a, b), i] for i, v in enumerate(values)])
    saved = [p[::save_every] for p in full]
    in_b = sample.in_b.numpy()
    t_tr = np.array(
        [
            _transition_time(v[::save_every], a, b, save_every * dt) if hit else np.nan
            for v, hit in zip(values, in_b, strict=True)
        ]
    )
    both = lambda v: f"{_mean_std(v, w)} ({_mean_std(v, raw)})"  # noqa: E731
    training = log.energy_evaluations
    row = {
        "method": method,
        "THP %": f"{sample.thp:.0f}",
        "RMSD to C7ax A": both(rmsd),
        "ETS kJ/mol": both(emax),
        "ETS - E(C7eq min)": both(emax - e_min),
        "E at dividing surface - E(C7eq min)": both(e_cross - e_min),
        "transition time ps": _mean_std(t_tr, w) + f" ({_mean_std(t_tr, in_b)})",
        "acceptance": "-",
        "decorrelated paths": f"ESS {sample.ess:.1f} of {n}",
        "energy evals / trial path": f"{sample.evaluations_per_path:.3g} (+{training / n:.3g} training)",
        "energy evals / decorrelated path": f"{sample.evaluations_per_effective_path:.3g}",
        "wall s": round(seconds),
    }
    print(f"   {sample.summary()}", flush=True)
    return row, (saved, w)


def start_probe(ensemble, burn_in, n_starts, n_shots, term, cvs, b, n_steps, dt) -> tuple[str, dict]:
    """Where the improbability of the shooting paths sits (``molscore.paths.start_probe``): from the starts of
    ``n_starts`` paths (one per chain, drawn by MC weight, no pulled pieces), the fraction of ``n_shots`` unbiased
    continuations ending in C7ax with fresh noise, fresh velocities, or fresh velocities off (phi, psi)."""
    weights = ensemble.weights(burn_in, initial=False)
    chains = np.asarray(ensemble.chain)
    rng = np.random.default_rng(0)
    picked = []
    for chain in rng.permutation(np.unique(chains[weights > 0]))[:n_starts]:
        index = np.nonzero((chains == chain) & (weights > 0))[0]
        picked.append(rng.choice(index, p=weights[index] / weights[index].sum()))
    if not picked:
        return "start probe: no path free of the pulled starting paths after the burn-in (raise --moves)", {}
    x0 = torch.as_tensor(np.stack([ensemble.paths[i][0] for i in picked]), dtype=torch.float64)
    v0 = torch.as_tensor(np.stack([ensemble.start_velocities[i] for i in picked]), dtype=torch.float64)
    probe = {
        mode: end_probability(term, x0, v0, b, cvs, n_steps, dt, n_shots, mode=mode, seed=11)
        for mode in tqdm(("noise", "velocities", "off-cv"), desc="start probe")
    }
    means = {mode: float(p.mean()) for mode, p in probe.items()}
    note = (
        f"start probe ({len(picked)} starts of shooting paths, {n_shots} unbiased continuations each): "
        f"P(end in C7ax) with the same x0, v0 and fresh noise {means['noise']:.3f}, with fresh velocities "
        f"{means['velocities']:.3f}, with the same dphi/dt, dpsi/dt and the other velocity components redrawn "
        f"{means['off-cv']:.3f}"
    )
    return note, means


def shooting_row(method, ensemble, burn_in, chains, force_field, cvs, a, b, dt_frame, heavy, target_t, e_min, emax=None):
    """The table row of a shooting ensemble (paths saved every ``dt_frame`` ps) and its (paths, weights) and
    (transition times, weights); energies (dividing surface, ``emax`` (n_paths,) if given, else the ensemble's own
    ETS) are the reference ``force_field``'s, kJ/mol. The pulled starting paths are not in the ensemble: chains that
    still hold theirs, or pieces of them (one-way), after the burn-in do not count (unless no chain has left them:
    then the row describes them)."""
    w = ensemble.weights(burn_in, initial=False)
    w = w if w.any() else ensemble.weights(burn_in)
    ends = torch.as_tensor(np.stack([p[-1] for p in ensemble.paths]), dtype=torch.float64)
    rmsd = 10 * kabsch_rmsd(ends[:, heavy], target_t).numpy()  # Angstrom
    values = [_cv_values(p, cvs) for p in ensemble.paths]
    crossing = np.stack([p[_crossing_frame(v, a, b)] for p, v in zip(ensemble.paths, values, strict=True)])
    e_cross = force_field(torch.as_tensor(crossing, dtype=torch.float64))[0].numpy()
    emax = np.asarray(ensemble.max_energy if emax is None else emax)
    t_tr = np.array([_transition_time(v, a, b, dt_frame) for v in values])
    in_target = b.contains(cvs(ends)).numpy()
    decorrelated = int(ensemble.decorrelated.sum())
    trials = chains * ensemble.n_moves
    row = {
        "method": method,
        "THP %": f"{100 * np.average(in_target, weights=w):.0f}",
        "RMSD to C7ax A": _mean_std(rmsd, w),
        "ETS kJ/mol": _mean_std(emax, w),
        "ETS - E(C7eq min)": _mean_std(emax - e_min, w),
        "E at dividing surface - E(C7eq min)": _mean_std(e_cross - e_min, w),
        "transition time ps": f"{np.average(t_tr, weights=w):.3f} ± {math.sqrt(np.cov(t_tr, aweights=w)):.3f}",
        "acceptance": f"{ensemble.acceptance(burn_in):.3f}",
        "decorrelated paths": decorrelated,
        "energy evals / trial path": f"{ensemble.evaluations / trials:.3g}",
        "energy evals / decorrelated path": f"{ensemble.evaluations / max(decorrelated, 1):.3g}",
        "wall s": round(ensemble.seconds),
    }
    return row, (ensemble.paths, w), (t_tr, w)


def learned_model(run_dir: Path, md: Path, steps: int) -> DiffusionModel:
    """The learned force field (``LEARNED``, float64): trained by the pipeline for ``steps`` steps on the MD folder
    ``md`` (data splits, model and training files in ``run_dir``), or loaded from ``run_dir/model.safetensors``."""
    path = run_dir / "model.safetensors"
    if not path.is_file():
        spec = LEARNED | {"run_dir": str(run_dir), "data": LEARNED["data"] | {"source": str(md)}}
        cfg = load_run_config(spec | {"train": LEARNED["train"] | {"steps": steps}})
        stages.prepare_data(cfg)
        began = time.perf_counter()
        stages.train(cfg)
        print(f"   trained {steps} steps in {time.perf_counter() - began:.0f} s", flush=True)
    return DiffusionModel.load(path, dtype=torch.float64)


def learned_row(model, force_field, system, cvs, a, b, starts, args, out, dt, n_steps, heavy, target_t, e_min):
    """Two-way shooting with the learned force field; returns the table row, a note for the table and the (paths,
    weights) and (transition times, weights) of the ensemble (None if the learned force field gave no C7ax path)."""
    method, friction = "two-way shooting (learned FF)", float(system.md["friction"])
    chains, moves = args.learned_chains, args.learned_moves
    burn_in = min(moves - 1, round(args.burn_in * moves / args.moves))
    pulled = ForceFieldLangevin(model, system.masses, system.kT, friction, bias=steering_bias(b, args.spring))
    print(f"7. two-way shooting with the learned FF, {chains} chains x {moves} moves (burn-in {burn_in}) ...", flush=True)
    try:
        initial, tried = fixed_length_paths(
            pulled, starts, a, b, n_steps, dt, chains, batch_size=4 * chains, max_tries=8 * chains
        )  # fmt: skip
    except NoTransitionError as error:
        note = f"learned FF: none of {error.tried} paths pulled towards C7ax in the learned force field reached C7ax"
        print(f"   {note}", flush=True)
        empty = {"THP %": "0", "acceptance": "-", "decorrelated paths": 0, "wall s": 0}
        row = {key: empty.get(key, "-") for key in ROW_KEYS} | {"method": method}
        return row, note, None, None
    print(f"   {initial.n_paths} of {tried} pulled paths reached C7ax", flush=True)
    term = ForceFieldLangevin(model, system.masses, system.kT, friction)
    settings = ShootingSettings(n_steps=n_steps, dt=dt, move="two-way", velocity_refresh=0.3, save_every=1)
    ensemble = ShootingTPS(term, a, b, settings).run(initial, moves, out=out / "two-way_learned")
    energies = [force_field(torch.as_tensor(p, dtype=torch.float64))[0].numpy() for p in ensemble.paths]
    emax = [float(e.max()) for e in energies]
    row, density, times = shooting_row(
        method, ensemble, burn_in, chains, force_field, cvs, a, b, dt, heavy, target_t, e_min, emax=emax
    )  # fmt: skip
    note = (
        f"learned FF: {LEARNED['model']['network']} {LEARNED['model']['parameterisation']} model + FP, "
        f"{args.learned} training steps; {chains} chains x {moves} moves, burn-in {burn_in}; starting paths: "
        f"{initial.n_paths} of {tried} pulled paths (learned FF); energies of its paths: reference FF, every frame "
        f"(median over its frames {np.median(np.concatenate(energies)) - e_min:.3g} kJ/mol above E(C7eq min)); "
        f"closest two atoms along its paths {min(_closest_atoms(p) for p in ensemble.paths):.3f} nm"
    )
    if not np.any(ensemble.accepted):
        row["acceptance"] = "0 (no C7ax path: only the pulled starting paths)"
        note += "; NO trial path was accepted: the learned FF gave no unbiased C7eq -> C7ax path, the row describes "
        note += "the pulled starting paths"
        print("   no trial path accepted: the learned FF gave no unbiased C7eq -> C7ax path", flush=True)
        return row, note, None, None
    ensemble.write_trajectory(out / "two-way_learned_paths.dcd", system.topology, burn_in)
    return row, note, density, times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=32, help="shooting chains run in parallel")
    parser.add_argument("--moves", type=int, default=60, help="shooting moves per chain")
    parser.add_argument("--burn-in", type=int, default=20, help="moves discarded per chain")
    parser.add_argument("--md-ps", type=float, default=500.0, help="vacuum MD per replica (4 replicas), ps")
    parser.add_argument("--spring", type=float, default=20.0, help="CV spring of the starting paths, kJ/mol/rad^2")
    parser.add_argument("--scan-grid", type=int, default=36, help="adiabatic scan grid points per dihedral")
    parser.add_argument(
        "--sampler", type=int, default=0, metavar="ITERATIONS",
        help="also train the learned path sampler with a CV control for ITERATIONS rollouts (0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--sampler-fit", type=int, default=0, metavar="STEPS",
        help="fit the learned path sampler to the one-way shooting paths for STEPS minibatches (0: skip)",
    )  # fmt: skip
    parser.add_argument("--sampler-batch", type=int, default=64, help="paths per sampler rollout (multiple of 8)")
    parser.add_argument("--sampler-paths", type=int, default=256, help="paths drawn from the trained sampler")
    parser.add_argument("--sampler-lr", type=float, default=1e-3, help="learning rate of the CV control")
    parser.add_argument("--sampler-force", type=float, default=20.0, help="force scale of the CV control, kJ/mol/rad")
    parser.add_argument(
        "--sampler-static", action="store_true", help="a time-independent control (g of the CVs and their rates only)"
    )  # fmt: skip
    parser.add_argument(
        "--sampler-anneal", type=float, default=1.0, metavar="FACTOR",
        help="the first sampler rollouts run at FACTOR x kT, lowered to kT over half the iterations (1: no annealing)",
    )  # fmt: skip
    parser.add_argument(
        "--learned", type=int, default=0, metavar="STEPS",
        help="also shoot with a learned force field trained for STEPS steps on the MD (reused if already in "
        "--out/learned_model; 0: skip)",
    )  # fmt: skip
    parser.add_argument("--learned-chains", type=int, default=8, help="shooting chains with the learned force field")
    parser.add_argument("--learned-moves", type=int, default=24, help="shooting moves per chain, learned force field")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="skip the reference-FF shooting rows"
    )  # fmt: skip
    parser.add_argument(
        "--start-probe", type=int, default=0,
        help="starts of shooting paths to continue unbiased (fresh noise / velocities): where paths' improbability sits",
    )  # fmt: skip
    parser.add_argument("--probe-shots", type=int, default=16, help="continuations per start in the start probe")
    parser.add_argument("--quick", action="store_true", help="small run (minutes)")
    parser.add_argument("--out", default="runs/transition_paths_alanine", help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.moves, args.burn_in, args.md_ps, args.scan_grid = 8, 12, 4, 100.0, 18
        args.sampler, args.sampler_batch, args.sampler_paths = min(args.sampler, 3), 32, 64
        args.sampler_fit = min(args.sampler_fit, 20)
        args.learned_chains, args.learned_moves = min(args.learned_chains, 4), min(args.learned_moves, 8)
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    system = load_system("alanine_dipeptide", variant="vacuum")
    cvs, states = load_states(system)
    a, b = states["C7eq"], states["C7ax"]
    dt, n_steps, save_every = float(system.md["timestep"]), 1000, 10
    force_field = ReferenceForceField(system)
    term = ForceFieldLangevin(force_field, system.masses, system.kT, float(system.md["friction"]))
    heavy = [atom.index for atom in system.topology.atoms if atom.element.symbol != "H"]

    print("1. vacuum MD for equilibrium frames ...", flush=True)
    md = generate_md(system, out / "md", replicas=4, length_ps=args.md_ps, equilibration_ps=20.0, processes=1)
    frames = torch.as_tensor(np.concatenate([t.xyz for t in load_md(md)]), dtype=torch.float64)
    starts = frames[a.contains(cvs(frames))]
    print(f"   {len(frames)} frames, {len(starts)} in C7eq ({100 * len(starts) / len(frames):.0f}%)", flush=True)

    print("2. starting paths (pulled towards C7ax), minimised end states ...", flush=True)
    pulled = ForceFieldLangevin(force_field, system.masses, system.kT, term.friction, bias=steering_bias(b, args.spring))
    initial, tried = fixed_length_paths(pulled, starts, a, b, n_steps, dt, args.chains, batch_size=4 * args.chains)
    c7eq, e_c7eq = minimise(system, starts[:: max(1, len(starts) // 20)].numpy())
    c7ax, e_c7ax = minimise(system, initial.last().numpy())
    in_b = b.contains(cvs(torch.as_tensor(c7ax)))  # minimisation may leave the state; keep those that stay
    target = c7ax[in_b.numpy()][np.argmin(e_c7ax[in_b.numpy()])] if in_b.any() else c7ax[np.argmin(e_c7ax)]
    e_min = float(e_c7eq.min())
    mdtraj.Trajectory(target[None], system.topology).save_pdb(str(out / "c7ax_minimum.pdb"))
    print(
        f"   {initial.n_paths} of {tried} pulled paths reached C7ax; E_min C7eq {e_min:.1f}, C7ax {e_c7ax.min():.1f} kJ/mol"
    )

    print("3. minimum-energy-path barrier from an adiabatic (phi, psi) scan ...", flush=True)
    quartets = np.stack([cvs.atoms[name].numpy() for name in cvs.names])
    angles, surface = adiabatic_scan(system, quartets, c7eq[np.argmin(e_c7eq)], n_grid=args.scan_grid)
    barrier, _ = mountain_pass(surface, _cell(angles, *a.centre.tolist()), _cell(angles, *b.centre.tolist()))
    print(f"   barrier {barrier:.1f} kJ/mol = {barrier - e_min:.1f} above the C7eq minimum", flush=True)

    rows, densities, times = [], {}, {}
    target_t = torch.as_tensor(target[heavy])
    ensembles = {}
    for move in ("two-way", "one-way") if args.reference or args.sampler_fit else ():
        every = 1 if move == "one-way" and args.sampler_fit else save_every  # the sampler fits every frame
        print(f"4. {move} shooting, {args.chains} chains x {args.moves} moves ...", flush=True)
        settings = ShootingSettings(n_steps=n_steps, dt=dt, move=move, velocity_refresh=0.3, save_every=every)
        ensemble = ensembles[move] = ShootingTPS(term, a, b, settings).run(initial, args.moves, out=out / move)
        row, densities[f"{move} shooting"], times[f"{move} shooting"] = shooting_row(
            f"{move} shooting (reference FF)", ensemble, args.burn_in, args.chains, force_field, cvs, a, b,
            every * dt, heavy, target_t, e_min,
        )  # fmt: skip
        rows.append(row)
        ensemble.write_trajectory(out / f"{move}_paths.dcd", system.topology, args.burn_in)
    if args.sampler or args.sampler_fit:
        shooting = ensembles["one-way"] if args.sampler_fit else None
        row, ensemble = learned_sampler_row(
            term, cvs, a, b, starts, args, dt, n_steps, save_every, heavy, target_t, e_min, shooting
        )  # fmt: skip
        rows.append(row)
        if ensemble is not None:
            densities["learned sampler (reweighted)"] = ensemble
    notes, probe = [], {}
    if args.start_probe and ensembles:
        move = "one-way" if "one-way" in ensembles else "two-way"
        print(f"   start probe on {args.start_probe} {move} path starts ...", flush=True)
        note, probe = start_probe(
            ensembles[move], args.burn_in, args.start_probe, args.probe_shots, term, cvs, b, n_steps, dt
        )  # fmt: skip
        print(f"   {note}", flush=True)
        notes.append(note)
    if args.learned:
        print(f"7. learned force field ({args.learned} training steps, or loaded from {out / 'learned_model'}) ...")
        model = learned_model(out / "learned_model", md, args.learned)
        c7ax_md = float(b.contains(cvs(frames)).double().mean())
        pair = torch.as_tensor(np.stack([c7eq[np.argmin(e_c7eq)], target]))
        e_learned = model.energy(pair).detach().numpy()
        e_md = float(force_field(frames[:: max(1, len(frames) // 200)])[0].median()) - e_min
        note = (
            f"learned FF: {100 * c7ax_md:.1f}% of the MD frames in C7ax (median reference energy {e_md:.1f} kJ/mol "
            f"above E(C7eq min), closest two atoms {_closest_atoms(frames):.3f} nm); E(C7ax min) - E(C7eq min) at the "
            f"reference minima: learned {e_learned[1] - e_learned[0]:.1f}, reference {float(e_c7ax.min()) - e_min:.1f} "
            "kJ/mol"
        )
        print(f"   {note}", flush=True)
        row, learned_note, density, t_tr = learned_row(
            model, force_field, system, cvs, a, b, starts, args, out, dt, n_steps, heavy, target_t, e_min
        )  # fmt: skip
        rows.append(row)
        notes += [note, learned_note]
        if density is not None:
            densities["two-way shooting (learned FF)"], times["two-way shooting (learned FF)"] = density, t_tr
    mep = f"minimum-energy-path barrier (adiabatic scan, {args.scan_grid}^2 grid): {barrier - e_min:.1f} kJ/mol above C7eq"
    header = ROW_KEYS
    text = (
        "## Alanine dipeptide C7eq -> C7ax, vacuum amber99sb-ildn, 300 K, 1 ps paths ("
        + (f"{args.chains} chains x {args.moves} moves, burn-in {args.burn_in})" if args.reference else "no reference rows)")
        + "\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        + "\n".join("| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows)
        + f"\n\n{mep}; E(C7eq minimum) = {e_min:.1f} kJ/mol; starting paths: {initial.n_paths} of {tried} pulled paths.\n"
        + "".join(f"\n{note}.\n" for note in notes)
    )  # fmt: skip
    print("\n" + text)
    (out / "table.md").write_text(text)
    result = {"rows": rows, "barrier": barrier - e_min, "e_min": e_min, "notes": notes, "start_probe": probe}
    (out / "table.json").write_text(json.dumps(result, indent=1))
    if not densities:
        print(f"written to {out}/ (no path ensemble to plot)")
        return 0
    plot_path_density(densities, cvs, cvs.names, out / "path_density.png", bins=48,
                      range=((-math.pi, math.pi), (-math.pi, math.pi)), title="C7eq -> C7ax path density")  # fmt: skip
    plot_path_lengths(times, out / "transition_times.png", title="transition time (last C7eq frame to first C7ax)")
    print(f"written to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
