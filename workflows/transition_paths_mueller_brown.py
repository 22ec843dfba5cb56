"""Transition paths A -> B on Mueller-Brown: shooting against brute force, on both path ensembles.

The set-up of SCIENCE.md section 4 (kT = 23, mass 0.5, friction 1/ps, dt = 5e-3 ps; states: discs of radius 0.25
around the two deepest minima, ``systems/mueller_brown/system.yaml``). Two ensembles:

- flexible length (transition paths: last frame in A to first frame in B): brute force harvests them from long
  unbiased runs started at equilibrium in A; shooting (two-way with fresh velocities, and one-way) on many chains;
- fixed length (``--steps``, default 200 = 1 ps; equilibrium start in A, unbiased dynamics, end in B): brute force
  runs paths from equilibrium frames in A and keeps those that end in B (exact; ~0.5% reach B at 200 steps);
  shooting starts from a few of them; the learned path sampler (``--sampler-fit``) is fitted to them (control by
  maximum likelihood, start proposal by classification; optionally refined by ``--sampler`` log-variance
  rollouts), draws ``--sampler-paths`` paths and reweights them to the ensemble (cost: brute force + fit + sampling).

Printed and written to ``--out``: a table per ensemble (paths, acceptance, decorrelated paths, energy
evaluations per decorrelated path, transition-path time or the time of first entry into B, mean path position,
the Jensen-Shannon divergence of the path density from brute force, with standard errors from independent chains),
``path_density_*.png`` and ``path_lengths.png``; each shooting run keeps its chunks and checkpoint under
``--out/<run>/`` and resumes there.

    python workflows/transition_paths_mueller_brown.py            # ~5 min on one CPU core
    python workflows/transition_paths_mueller_brown.py --quick    # < 1 min
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon

from molscore.paths import (
    ForceFieldLangevin,
    NoTransitionError,
    PathBatch,
    ShootingSettings,
    ShootingTPS,
    fixed_length_paths,
    harvest_transitions,
    load_states,
)
from molscore.paths.controlled_paths import StartPool
from molscore.paths.learned_sampler import LearnedPathSampler, TrainingSettings
from molscore.paths.path_controls import LogNormaliser, MLPControl
from molscore.paths.path_fitting import FitSettings
from molscore.paths.plots import path_density, plot_path_density, plot_path_lengths
from molscore.system import load_system

BINS, RANGE = 40, ((-1.6, 1.1), (-0.4, 2.0))


def _observables(paths: list[np.ndarray], dt: float, state_b) -> np.ndarray:
    """(n_paths, 4): path length (ps), time of the first frame in B (ps), mean x, mean y (nm)."""
    out = []
    for p in paths:
        inside = state_b.contains(state_b.cvs(torch.as_tensor(p, dtype=torch.float64))).numpy()
        out.append([(len(p) - 1) * dt, np.argmax(inside) * dt, p[:, 0, 0].mean(), p[:, 0, 1].mean()])
    return np.array(out)


def _row(name, values, errors, js, extra) -> dict:
    keys = ["length ps", "first in B ps", "mean x", "mean y"]
    row = {"method": name, **extra, "JS vs brute force": js}
    row.update({k: f"{v:.4f} ± {e:.4f}" for k, v, e in zip(keys, values, errors, strict=True)})
    return row


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ensemble(label, reference, settings, runs, a, b, chains, moves, burn_in, out, cv_fn, densities):
    """Brute force (``reference``: paths, cost, seconds) against shooting; ``runs``: name -> (move, term).

    Returns the table rows."""
    dt = settings["dt"]
    ref_paths, ref_evaluations, ref_seconds = reference
    ref_obs = _observables(ref_paths, dt, b)
    ref_density = path_density(ref_paths, np.ones(len(ref_paths)), cv_fn, BINS, RANGE)[0]
    densities[f"{label}: brute force"] = (ref_paths, np.ones(len(ref_paths)))
    rows = [
        _row(
            "brute force", ref_obs.mean(0), ref_obs.std(0) / math.sqrt(len(ref_obs)), 0.0,
            {"paths": len(ref_paths), "acceptance": "-", "decorrelated": len(ref_paths),
             "evaluations / decorrelated path": f"{ref_evaluations / len(ref_paths):.3g}", "seconds": ref_seconds},
        )
    ]  # fmt: skip
    for name, (move, term) in runs.items():
        tps = ShootingTPS(term, a, b, ShootingSettings(move=move, velocity_refresh=1.0, seed=1, **settings))
        folder = out / f"{label}_{name.replace(' ', '_').replace(',', '')}"
        ensemble = tps.run(PathBatch.from_positions(ref_paths[:chains]), moves, out=folder, progress=True)
        obs = _observables(ensemble.paths, dt, b)
        w = ensemble.weights(burn_in)
        per_chain = obs[np.array(ensemble.history[burn_in:])].mean(0)  # (chains, 4), independent chains
        density = path_density(ensemble.paths, w, cv_fn, BINS, RANGE)[0]
        densities[f"{label}: {name}"] = (ensemble.paths, w)
        js = float(jensenshannon(density.ravel(), ref_density.ravel()) ** 2)
        decorrelated = int(ensemble.decorrelated.sum())
        rows.append(
            _row(
                name, per_chain.mean(0), per_chain.std(0) / math.sqrt(len(per_chain)), js,
                {"paths": int((w > 0).sum()), "acceptance": f"{ensemble.acceptance(burn_in):.3f}",
                 "decorrelated": decorrelated,
                 "evaluations / decorrelated path": f"{ensemble.evaluations / max(decorrelated, 1):.3g}",
                 "seconds": round(ensemble.seconds, 1)},
            )
        )  # fmt: skip
    # the floor: JS between two halves of the brute-force paths
    half = len(ref_paths) // 2
    d1 = path_density(ref_paths[:half], np.ones(half), cv_fn, BINS, RANGE)[0]
    d2 = path_density(ref_paths[half:], np.ones(len(ref_paths) - half), cv_fn, BINS, RANGE)[0]
    floor = float(jensenshannon(d1.ravel(), d2.ravel()) ** 2)
    rows.append({k: "-" for k in rows[0]} | {"method": "floor: brute force half vs half", "JS vs brute force": floor})
    return rows


def learned_sampler_row(term, a, b, starts, args, dt, reference, cv_fn, densities) -> dict:
    """Fit the learned path sampler to the brute-force paths (``reference``: PathBatch and its cost; the control by
    maximum likelihood, the start proposal as a classifier of their starts against equilibrium starts), optionally
    refine it by the log-variance loss (``--sampler``), and reweight its paths."""
    torch.manual_seed(0)
    speed, offset = math.sqrt(term.kT / float(term.masses[0])), torch.tensor([[-0.5, 0.7]])
    control = MLPControl(1, 2, hidden=128, n_layers=3, force_scale=100.0, speed_scale=speed, offset=offset).double()
    log_z = LogNormaliser(1, 2, speed_scale=speed, offset=offset).double()
    sampler = LearnedPathSampler(term, control, a, b, args.steps, dt, log_normaliser=log_z)
    half = len(starts) // 2
    pool = StartPool.draw(term, starts[:half], a, 4096, seed=0)
    equilibrium = StartPool.draw(term, starts[half:], a, seed=7)
    paths, cost = reference
    print(f"learned path sampler: fit to {paths.n_paths} brute-force paths ({args.sampler_fit} steps) ...", flush=True)
    log = sampler.fit_to_paths(paths, equilibrium, cost, settings=FitSettings(n_steps=args.sampler_fit, batch_size=64))
    if args.sampler:
        print(f"  refined by {args.sampler} log-variance iterations of 512 paths ...", flush=True)
        sampler.train(pool, TrainingSettings(n_iterations=args.sampler, learning_rate=3e-4, loss="variance"))
    try:
        sample = sampler.sample(pool, args.sampler_paths, batch_size=4000, seed=1)
    except NoTransitionError as error:
        print(f"  {error}", flush=True)
        nan = [math.nan] * 4
        return _row("learned sampler, reweighted", nan, nan, math.nan,
                    {"paths": error.tried, "acceptance": "THP 0%", "decorrelated": "ESS 0",
                     "evaluations / decorrelated path": "inf", "seconds": round(log.seconds, 1)})  # fmt: skip
    n = sample.paths.lengths.numel()
    paths = [sample.paths.positions[:, i].numpy() for i in range(n)]
    obs = torch.as_tensor(_observables(paths, dt, b))
    weights = sample.weights.numpy()
    estimates = [sample.estimate(obs[:, k]) for k in range(obs.shape[1])]
    ref_density = path_density(*densities["fixed: brute force"], cv_fn, BINS, RANGE)[0]  # stored by run_ensemble
    density = path_density(paths, weights, cv_fn, BINS, RANGE)[0]
    densities["fixed: learned sampler, reweighted"] = (paths, weights)
    return _row(
        "learned sampler, reweighted", [e[0] for e in estimates], [e[1] for e in estimates],
        float(jensenshannon(density.ravel(), ref_density.ravel()) ** 2),
        {"paths": n, "acceptance": f"THP {sample.thp:.1f}%", "decorrelated": f"ESS {sample.ess:.0f}",
         "evaluations / decorrelated path": f"{sample.evaluations_per_effective_path:.3g} (per effective path)",
         "seconds": round(log.seconds, 1)},
    )  # fmt: skip


def learned_model(run_dir: Path, steps: int):
    """An energy model with FP regularisation (the package's pipeline on exact Boltzmann samples), in float64."""
    from molscore.models.diffusion_model import DiffusionModel
    from molscore.pipeline import load_run_config, stages

    path = run_dir / "model.safetensors"
    if not path.is_file():
        cfg = load_run_config({
            "system": "mueller_brown", "run_dir": str(run_dir),
            "data": {"source": "exact", "n_train": 100_000, "n_validation": 10_000, "n_test": 10_000},
            "model": {"parameterisation": "energy", "network_options": {"hidden": [92, 92, 92]}},
            "train": {"steps": steps, "batch_size": 512, "learning_rate": 1.0e-3, "fp_weight": 5.0e-4, "fp_fraction": 0.25},
        })  # fmt: skip
        stages.prepare_data(cfg)
        stages.train(cfg)
    return DiffusionModel.load(path, dtype=torch.float64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="fixed path length in steps (dt = 5e-3 ps)")
    parser.add_argument("--chains", type=int, default=64, help="shooting chains run in parallel")
    parser.add_argument("--moves", type=int, default=150, help="shooting moves per chain")
    parser.add_argument("--burn-in", type=int, default=30, help="moves discarded per chain")
    parser.add_argument("--reference-paths", type=int, default=600, help="fixed-length brute-force paths")
    parser.add_argument("--quick", action="store_true", help="small run (under a minute)")
    parser.add_argument(
        "--sampler-fit", type=int, default=1500, metavar="STEPS",
        help="fit the learned path sampler to the brute-force paths for STEPS minibatches (fixed length; 0: no sampler)",
    )  # fmt: skip
    parser.add_argument(
        "--sampler", type=int, default=0, metavar="ITERATIONS",
        help="then refine it by ITERATIONS log-variance rollouts of 512 paths",
    )  # fmt: skip
    parser.add_argument("--sampler-paths", type=int, default=16000, help="paths drawn from the trained sampler")
    parser.add_argument(
        "--learned", type=int, default=0, metavar="STEPS",
        help="also shoot with a learned force field: an energy model + FP trained for STEPS steps on exact samples "
        "(reused if already in --out/learned_model)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/transition_paths_mueller_brown", help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.moves, args.burn_in, args.reference_paths, args.steps = 16, 30, 10, 60, 100
        args.sampler_fit, args.sampler, args.sampler_paths = min(args.sampler_fit, 100), min(args.sampler, 5), 2000
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    system = load_system("mueller_brown")
    cvs, states = load_states(system)
    a, b = states["A"], states["B"]
    dt = system.settings["timestep"]
    term = ForceFieldLangevin(system.potential, system.masses, system.kT, system.settings["friction"])
    starts = system.reference_samples(200_000, seed=1)
    in_a = starts[a.contains(cvs(starts))]
    densities: dict = {}
    runs = {"two-way shooting": ("two-way", term), "one-way shooting": ("one-way", term)}
    if args.learned:
        model = learned_model(out / "learned_model", args.learned)
        learned = ForceFieldLangevin(model, system.masses, system.kT, system.settings["friction"])
        runs["one-way shooting, learned FF"] = ("one-way", learned)

    print("brute force: transition paths from long unbiased runs ...", flush=True)
    start, term.evaluations = time.perf_counter(), 0
    replicas, steps = (32, 8000) if args.quick else (128, 20000)
    flexible_ref, info = harvest_transitions(term, in_a[:replicas], a, b, steps, dt)
    flexible_ref = [p for p in flexible_ref if len(p) >= 3]  # shooting needs an interior frame to shoot from
    flexible = (flexible_ref, term.evaluations, round(time.perf_counter() - start, 1))
    print(f"  {len(flexible_ref)} transition paths in {info['time']:.0f} ps, rate {info['rate']:.3g}/ps", flush=True)
    rows_flexible = run_ensemble(
        "flexible", flexible, {"n_steps": 2000, "dt": dt, "flexible": True}, runs, a, b,
        args.chains, args.moves, args.burn_in, out, cvs, densities,
    )  # fmt: skip

    print(f"brute force: fixed-length paths ({args.steps} steps) from equilibrium in A ...", flush=True)
    start, term.evaluations = time.perf_counter(), 0
    fixed_ref, tried = fixed_length_paths(
        term, starts, a, b, args.steps, dt, args.reference_paths, batch_size=4096, max_tries=500 * args.reference_paths
    )
    fixed = ([fixed_ref.positions[: int(n) + 1, i].numpy() for i, n in enumerate(fixed_ref.lengths)],
             term.evaluations, round(time.perf_counter() - start, 1))  # fmt: skip
    print(f"  {fixed_ref.n_paths} of {tried} paths reached B ({100 * fixed_ref.n_paths / tried:.2f}%)", flush=True)
    rows_fixed = run_ensemble(
        "fixed", fixed, {"n_steps": args.steps, "dt": dt}, runs, a, b,
        args.chains, args.moves, args.burn_in, out, cvs, densities,
    )  # fmt: skip

    if args.sampler_fit:
        reference = (fixed_ref, fixed[1])
        rows_fixed.insert(-1, learned_sampler_row(term, a, b, starts, args, dt, reference, cvs, densities))

    def energy(values):  # the CVs are the particle's coordinates
        return system.potential.energy(torch.as_tensor(values)[:, None, :]).detach().numpy()

    for label in ("flexible", "fixed"):
        chosen = {k: v for k, v in densities.items() if k.startswith(label)}
        plot_path_density(chosen, cvs, cvs.names, out / f"path_density_{label}.png", bins=BINS, range=RANGE,
                          background=energy, title=f"Mueller-Brown path density, {label} length")  # fmt: skip
    lengths = {k: (np.array([(len(p) - 1) * dt for p in paths]), w)
               for k, (paths, w) in densities.items() if k.startswith("flexible")}  # fmt: skip
    plot_path_lengths(lengths, out / "path_lengths.png", title="Mueller-Brown transition-path time")

    text = (
        f"## Mueller-Brown, flexible length (transition paths A -> B), {args.chains} chains x {args.moves} moves\n\n"
        + _table(rows_flexible)
        + f"\n\n## Mueller-Brown, fixed length ({args.steps} steps = {args.steps * dt:g} ps)\n\n"
        + _table(rows_fixed)
        + "\n"
    )
    print("\n" + text)
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"flexible": rows_flexible, "fixed": rows_fixed}, indent=1))
    print(f"written to {out}/ (table.md, path_density_*.png, path_lengths.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
