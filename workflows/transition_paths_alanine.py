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
:class:`~molscore.paths.path_controls.CVControl` on (phi, psi), their velocities and t/T, trained on a
:class:`~molscore.paths.controlled_paths.StartPool` of the C7eq equilibrium frames (group log-variance loss,
``--sampler-batch`` paths per rollout, optionally the first at a raised temperature, ``--sampler-anneal``) and sampled
(``--sampler-paths``); its row gives importance-weighted values with the raw (unweighted, all sampled paths; transition
time: those ending in C7ax) ones in brackets, THP = % of sampled paths ending in C7ax, the effective sample size in
place of decorrelated paths and energy evaluations per effective path, training included.
The path ensembles (after burn-in) as trajectories: ``<move>_paths.dcd`` with ``<move>_paths.dcd.csv`` (path, first
frame, frames, steps, Monte Carlo weight).

    python workflows/transition_paths_alanine.py            # ~25 min on one CPU core
    python workflows/transition_paths_alanine.py --quick    # ~3 min
"""

import argparse
import json
import math
import time
from pathlib import Path

import mdtraj
import numpy as np
import torch

from molscore.interfaces.dihedral_scan import adiabatic_scan, minimise
from molscore.interfaces.openmm_md import generate_md, load_md
from molscore.interfaces.reference_energy import ReferenceForceField
from molscore.paths import ForceFieldLangevin, ShootingSettings, ShootingTPS, fixed_length_paths, load_states
from molscore.paths.brute_force import NoTransitionError, steering_bias
from molscore.paths.collective_variables import kabsch_rmsd
from molscore.paths.controlled_paths import StartPool
from molscore.paths.learned_sampler import LearnedPathSampler, TrainingSettings
from molscore.paths.mountain_pass import mountain_pass
from molscore.paths.path_controls import CVControl, cv_rates
from molscore.paths.plots import plot_path_density, plot_path_lengths
from molscore.system import load_system


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
    return f"{m:.1f} ± {math.sqrt(np.average((values[ok] - m) ** 2, weights=weights[ok])):.1f}"


def learned_sampler_row(
    term, cvs, a, b, starts, args, dt, n_steps, save_every, heavy, target_t, e_min
) -> tuple[dict, tuple | None]:
    """Train the learned path sampler with a CV control on (phi, psi) and reweight its paths to the fixed-length
    ensemble; returns the table row (columns of the shooting rows) and the paths with their weights (None if none
    ended in C7ax)."""
    torch.manual_seed(0)
    pool = StartPool.draw(term, starts, a, seed=0)
    x = pool.positions.detach().requires_grad_(True)
    rate_scale = cv_rates(cvs(x), x, pool.velocities).detach().std(0)  # equilibrium spread of dphi/dt, dpsi/dt
    control = CVControl(cvs, hidden=64, force_scale=args.sampler_force, velocity_scale=rate_scale).double()
    sampler = LearnedPathSampler(term, control, a, b, n_steps, dt)
    k = args.sampler_batch // 8
    settings = TrainingSettings(
        n_iterations=args.sampler, batch_size=args.sampler_batch, train_batch=args.sampler_batch,
        buffer_size=args.sampler_batch, group_size=k, learning_rate=args.sampler_lr, sigma_b=0.5, loss="variance",
        anneal_kT=args.sampler_anneal * term.kT if args.sampler_anneal != 1 else None,
        anneal_iterations=args.sampler // 2,
    )  # fmt: skip
    print(
        f"6. learned path sampler (CV control), {len(pool)} starts, {args.sampler} rollouts of {args.sampler_batch} "
        f"paths ({k} per start) ...",
        flush=True,
    )
    log = sampler.train(pool, settings)
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
            "method": "learned sampler (CV control)", "THP %": "0", "RMSD to C7ax A": f"- ({_mean_std(rmsd, np.ones(n))})",
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
        "method": "learned sampler (CV control)",
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
    parser.add_argument("--sampler-batch", type=int, default=64, help="paths per sampler rollout (multiple of 8)")
    parser.add_argument("--sampler-paths", type=int, default=256, help="paths drawn from the trained sampler")
    parser.add_argument("--sampler-lr", type=float, default=1e-2, help="learning rate of the CV control")
    parser.add_argument("--sampler-force", type=float, default=20.0, help="force scale of the CV control, kJ/mol")
    parser.add_argument(
        "--sampler-anneal", type=float, default=1.0, metavar="FACTOR",
        help="the first sampler rollouts run at FACTOR x kT, lowered to kT over half the iterations (1: no annealing)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small run (minutes)")
    parser.add_argument("--out", default="runs/transition_paths_alanine", help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.moves, args.burn_in, args.md_ps, args.scan_grid = 8, 12, 4, 100.0, 18
        args.sampler, args.sampler_batch, args.sampler_paths = min(args.sampler, 3), 32, 64
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
    for move in ("two-way", "one-way"):
        print(f"4. {move} shooting, {args.chains} chains x {args.moves} moves ...", flush=True)
        settings = ShootingSettings(n_steps=n_steps, dt=dt, move=move, velocity_refresh=0.3, save_every=save_every)
        ensemble = ShootingTPS(term, a, b, settings).run(initial, args.moves, out=out / move)
        w = ensemble.weights(args.burn_in)
        ends = torch.as_tensor(np.stack([p[-1] for p in ensemble.paths]), dtype=torch.float64)
        rmsd = 10 * kabsch_rmsd(ends[:, heavy], target_t).numpy()  # Angstrom
        values = [_cv_values(p, cvs) for p in ensemble.paths]
        crossing = np.stack([p[_crossing_frame(v, a, b)] for p, v in zip(ensemble.paths, values, strict=True)])
        e_cross = force_field(torch.as_tensor(crossing, dtype=torch.float64))[0].numpy()
        emax = np.asarray(ensemble.max_energy)
        t_tr = np.array([_transition_time(v, a, b, save_every * dt) for v in values])
        in_target = b.contains(cvs(ends)).numpy()
        decorrelated = int(ensemble.decorrelated.sum())
        trials = args.chains * ensemble.n_moves
        rows.append({
            "method": f"{move} shooting (reference FF)",
            "THP %": f"{100 * np.average(in_target, weights=w):.0f}",
            "RMSD to C7ax A": _mean_std(rmsd, w),
            "ETS kJ/mol": _mean_std(emax, w),
            "ETS - E(C7eq min)": _mean_std(emax - e_min, w),
            "E at dividing surface - E(C7eq min)": _mean_std(e_cross - e_min, w),
            "transition time ps": f"{np.average(t_tr, weights=w):.3f} ± {math.sqrt(np.cov(t_tr, aweights=w)):.3f}",
            "acceptance": f"{ensemble.acceptance(args.burn_in):.3f}",
            "decorrelated paths": decorrelated,
            "energy evals / trial path": f"{ensemble.evaluations / trials:.3g}",
            "energy evals / decorrelated path": f"{ensemble.evaluations / max(decorrelated, 1):.3g}",
            "wall s": round(ensemble.seconds),
        })  # fmt: skip
        densities[f"{move} shooting"] = (ensemble.paths, w)
        ensemble.write_trajectory(out / f"{move}_paths.dcd", system.topology, args.burn_in)
        times[f"{move} shooting"] = (t_tr, w)
    if args.sampler:
        row, ensemble = learned_sampler_row(
            term, cvs, a, b, starts, args, dt, n_steps, save_every, heavy, target_t, e_min
        )  # fmt: skip
        rows.append(row)
        if ensemble is not None:
            densities["learned sampler (reweighted)"] = ensemble
    mep = f"minimum-energy-path barrier (adiabatic scan, {args.scan_grid}^2 grid): {barrier - e_min:.1f} kJ/mol above C7eq"
    header = list(rows[0])
    text = (
        f"## Alanine dipeptide C7eq -> C7ax, vacuum amber99sb-ildn, 300 K, 1 ps paths ({args.chains} chains x "
        f"{args.moves} moves, burn-in {args.burn_in})\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        + "\n".join("| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows)
        + f"\n\n{mep}; E(C7eq minimum) = {e_min:.1f} kJ/mol; starting paths: {initial.n_paths} of {tried} pulled paths.\n"
    )  # fmt: skip
    print("\n" + text)
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"rows": rows, "barrier": barrier - e_min, "e_min": e_min}, indent=1))
    plot_path_density(densities, cvs, cvs.names, out / "path_density.png", bins=48,
                      range=((-math.pi, math.pi), (-math.pi, math.pi)), title="C7eq -> C7ax path density")  # fmt: skip
    plot_path_lengths(times, out / "transition_times.png", title="transition time (last C7eq frame to first C7ax)")
    print(f"written to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
