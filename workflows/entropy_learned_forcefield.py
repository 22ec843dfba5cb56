"""Entropy production as a diagnostic of learned force fields: alanine dipeptide (5 backbone beads), energy model vs
direct score model (SCIENCE.md section 6).

Both models are trained by the alanine-dipeptide pipeline on the shipped reference MD (or taken from existing run
folders with ``--runs``). Each force field F = kT s_theta(x, t_min) / scale drives overdamped Langevin dynamics
dx = D F / kT dt + sqrt(2 D) dW, D_i = kT / (m_i gamma) (gamma = 1/ps, bead masses), time step 0.1 / lambda_max
(lambda_max the stiffest drift eigenvalue, a bond), one molecule per MD start frame (relaxed first by 2 ps of
underdamped Langevin dynamics in the same force field), all simulated together in float64. sigma = 0 exactly for
the energy model (a conservative field) and > 0 for a non-conservative one. Reported per model: the drift identity
and the path estimator of sigma (kB/ps at that D), each plain and with the model's bond prior as control variate
(which removes the bond fluctuations that swamp the plain estimators), and the Jacobian asymmetry
E||J - J^T||_F / E||J||_F. Writes ``<results>/learned_forcefield.md`` / ``.csv`` / ``.json`` and
``<results>/learned_forcefield_path_entropy.png``.

    python workflows/entropy_learned_forcefield.py                     # 3 min training per model; ~13 min on 2 cores
    python workflows/entropy_learned_forcefield.py --quick             # 1 min training, shorter runs; ~5 min
    python workflows/entropy_learned_forcefield.py --runs runs/alanine_dipeptide/backbone/energy \\
        runs/alanine_dipeptide/backbone/score                          # models trained already
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molscore.analysis.report import format_with_error, write_table
from molscore.files import write_text_atomic
from molscore.models import DiffusionModel
from molscore.nonequilibrium.learned_forcefield import forcefield_entropy_production
from molscore.pipeline import load_run_config, stages
from molscore.pipeline.variants import link_data
from molscore.system import load_system

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"energy": "energy model", "score": "direct score"}
MEASURE = {  # steady-state runs per model: full vs --quick
    "full": {"molecules": 128, "windows": 50, "stride": 20, "identity_windows": 20, "equilibrate_steps": 1000},
    "quick": {"molecules": 64, "windows": 30, "stride": 20, "identity_windows": 10, "equilibrate_steps": 500},
}


def _alanine_workflow():
    """workflows/alanine_dipeptide.py as a module (its configs and defaults are reused here)."""
    path = Path(__file__).resolve().parent / "alanine_dipeptide.py"
    spec = importlib.util.spec_from_file_location("alanine_dipeptide_workflow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=None, help="existing run folders (model.safetensors, data/)")
    parser.add_argument("--quick", action="store_true", help="1 min training per model and shorter runs")
    parser.add_argument("--train-minutes", type=float, default=None, help="training budget per model (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (instead of a budget)")
    parser.add_argument("--out", default="runs/entropy_learned_forcefield", help="folder of the trained runs")
    parser.add_argument("--results", default=str(ROOT / "workflows" / "results" / "entropy"), help="output folder")
    parser.add_argument("--molecules", type=int, default=None, help="molecules simulated together (MD start frames)")
    parser.add_argument("--windows", type=int, default=None, help="production windows per molecule")
    parser.add_argument("--stride", type=int, default=None, help="steps per window")
    parser.add_argument("--identity-windows", type=int, default=None, help="windows whose frames feed the identity")
    parser.add_argument(
        "--equilibrate-steps", type=int, default=None, help="underdamped Langevin steps (2 fs) relaxing the start frames"
    )
    parser.add_argument("--accuracy", type=float, default=0.1, help="lambda_max dt of the time step")
    parser.add_argument("--t-eval", type=float, default=None, help="diffusion time of the force field (default t_min)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train_minutes is None and args.steps is None:
        args.train_minutes = 1.0 if args.quick else 3.0
    for key, value in MEASURE["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def train_models(args) -> list[Path]:
    """Train the energy and the direct-score variants of the alanine-dipeptide workflow on one data split."""
    alanine = _alanine_workflow()
    argv = ["--out", args.out] + (["--quick"] if args.quick else [])
    argv += ["--train-minutes", str(args.train_minutes)] if args.train_minutes is not None else []
    argv += ["--steps", str(args.steps)] if args.steps is not None else []
    wf = alanine.parse_args(argv)
    out, shared = Path(args.out), Path(args.out) / "data"
    if not (shared / "test.npy").exists():
        stages.prepare_data(load_run_config(alanine.variant_config("energy", wf) | {"run_dir": str(out)}))
    runs = []
    for name in ("energy", "score"):
        cfg = load_run_config(alanine.variant_config(name, wf))
        link_data(shared, Path(cfg.run_dir))
        began = time.perf_counter()
        stages.train(cfg, progress=False)
        print(f"{name}: trained in {time.perf_counter() - began:.0f} s")
        runs.append(Path(cfg.run_dir))
    return runs


def measure(run_dir: Path, args) -> tuple[dict, object]:
    """Entropy production of one run's force field; returns the table row and the full result."""
    cfg = load_run_config(run_dir / "config_train.yaml")
    cfg.run_dir = str(run_dir)  # the folder as given (the config may hold a path relative to another directory)
    system = load_system(cfg.system)
    model = DiffusionModel.load(run_dir / "model.safetensors", dtype=torch.float64)
    frames = np.load(run_dir / "data" / "train.npy")
    pick = np.random.default_rng(args.seed).choice(len(frames), size=args.molecules, replace=False)
    friction = cfg.simulate.friction or system.md.get("friction") or 1.0
    result = forcefield_entropy_production(
        model, args.t_eval, torch.as_tensor(frames[pick], dtype=torch.float64), args.windows, args.stride,
        accuracy=args.accuracy, masses=stages.bead_masses(cfg, system), friction=friction,
        identity_windows=args.identity_windows, equilibrate_steps=args.equilibrate_steps, seed=args.seed,
    )  # fmt: skip
    summary_file = run_dir / "train" / "summary.yaml"
    summary = yaml.safe_load(summary_file.read_text()) if summary_file.exists() else {}

    def cell(estimate):
        return format_with_error(estimate.value, estimate.error) if estimate is not None else ""

    row = {
        "model": LABELS.get(model.parameterisation, model.parameterisation),
        "train steps": summary.get("steps"),
        "train s": summary.get("train_seconds"),
        "drift identity (kB/ps)": cell(result.drift_identity),
        "drift identity + CV (kB/ps)": cell(result.drift_identity_controlled),
        "path (kB/ps)": cell(result.path),
        "path + CV (kB/ps)": cell(result.path_controlled),
        "Jacobian asymmetry": f"{result.asymmetry:.3g} ± {result.asymmetry_error:.2g}",
        "molecules x steps": f"{result.n_molecules} x {result.n_steps} (+{result.burn_in})",
        "dt (ps)": f"{result.timestep:.3g}",
        "wall s": round(result.seconds, 1),
    }
    return row, result


def plot_path_entropy(results: dict, path: Path) -> Path:
    """Per-window path entropy rate (per molecule, kB/ps) against time, plain and with the control variate."""
    fig = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for label, r in results.items():
        t = (np.arange(len(r.path_rates)) + 0.5) * r.window_time
        for ax, rates in zip(axes, (r.path_rates, r.path_rates_controlled), strict=True):
            if rates is None:
                continue
            rates = rates.numpy()
            (line,) = ax.plot(t[: len(rates)], rates, lw=0.8, alpha=0.6, label=f"{label}: per window")
            running = np.cumsum(rates) / np.arange(1, len(rates) + 1)
            ax.plot(t[: len(rates)], running, lw=2, color=line.get_color(), label=f"{label}: running mean")
    axes[0].set(ylabel="path entropy rate (kB/ps)", title="plain Stratonovich path entropy, per molecule")
    axes[1].set(
        xlabel="time (ps)", ylabel="path entropy rate (kB/ps)",
        title="with the bond-prior control variate (boundary term phi(start) - phi(end))",
    )  # fmt: skip
    for ax in axes:
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> Path:
    args = parse_args(argv)
    runs = [Path(r) for r in args.runs] if args.runs else train_models(args)
    for run in runs:
        if not (run / "model.safetensors").is_file() or not (run / "config_train.yaml").is_file():
            raise FileNotFoundError(f"{run} holds no trained model (model.safetensors, config_train.yaml)")
    rows, results = [], {}
    for run in runs:
        row, result = measure(run, args)
        print(f"{run}: {row}")
        rows.append(row)
        results[row["model"]] = result
    out = Path(args.results)
    md, _ = write_table(rows, out / "learned_forcefield", float_format="{:.1f}")
    first = next(iter(results.values()))
    d = first.system.parameters["diffusion"]
    notes = [
        "# Entropy production of overdamped Langevin dynamics in learned force fields (alanine dipeptide, 5 beads)",
        "",
        md.read_text().rstrip(),
        "",
        f"Settings: D = kT / (m gamma) = {min(d):.3f}-{max(d):.3f} nm^2/ps (gamma = 1/ps, bead masses), "
        f"dt = {args.accuracy} / lambda_max (lambda_max = {first.stiffness:.3g} /ps, a bond), "
        f"window {args.stride} steps, burn-in {first.burn_in} steps, one molecule per training-set MD frame, "
        f"relaxed first by {args.equilibrate_steps} steps of underdamped Langevin (BAOAB, 2 fs) in the model, float64, "
        f"t_eval = {'t_min' if args.t_eval is None else args.t_eval}. sigma in kB/ps at this D (it scales with D).",
        "Errors: one standard error; drift identity from the spread over molecules (its frames are "
        f"{args.identity_windows} evenly spaced windows), path by blocking over windows.",
        "CV: control variate with the model's bond prior U_ref: drift identity E[b^T D^-1 b + div b - L phi], path "
        "+ phi(start) - phi(end), phi = -U_ref / kT; unbiased at steady state, far less noisy (the bonds cancel).",
        "Euler-Maruyama bias of the plain drift identity (dt/2 E tr A^2, conservative part): "
        + ", ".join(f"{k} {r.em_bias:.3g}" for k, r in results.items())
        + " kB/ps.",
        "Jacobian asymmetry: E||J - J^T||_F / E||J||_F of the force Jacobian at the drift-identity frames.",
        "",
    ]
    write_text_atomic(md, "\n".join(notes))
    (out / "learned_forcefield.json").write_text(
        json.dumps({k: r.as_dict() for k, r in results.items()} | {"runs": [str(r) for r in runs]}, indent=2)
    )
    figure = plot_path_entropy(results, out / "learned_forcefield_path_entropy.png")
    print(md.read_text())
    print(f"figure: {figure}")
    return md


if __name__ == "__main__":
    main()
