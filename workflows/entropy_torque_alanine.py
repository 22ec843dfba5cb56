"""Entropy production of alanine dipeptide driven by a constant torque on phi (all 22 atoms overdamped, OpenMM forces).

b = D/kT (F + tau grad phi) with D the same for every atom (``systems/alanine_dipeptide_torque/driven.yaml``).
At steady state sigma = tau <dphi/dt> / kT (SCIENCE.md section 6), measured in the same simulation from the
wrapped change of phi per step. Beside it, per torque:

- path estimate: Stratonovich path entropy per unit time (accumulated by the runner);
- drift identity E[b D^-1 b + div b], div b by central finite differences (2 x 66 force calls per frame) on a
  subsample of frames; its per-frame spread is set by the stiff bonds (~ sqrt(2 sum lambda_i^2), lambda_i the
  eigenvalues of D Hess U / kT), and Euler-Maruyama biases it by ~ dt/2 sum lambda_i^2, the same with and without
  torque: the control's value is that bias, so "drift identity - control" is the bias-corrected estimate;
- generator form tau/kT E[b . grad phi]: the drift identity with E[L(-U/kT)] = 0 (stationarity) subtracted as a
  control variate, which leaves only the torque's part (div of tau grad phi is 0); one force call per frame;
- TUR lower bound from the phi current;
- with ``--score``: the score-based estimate E[v D^-1 v], v = b - D s, with s the steady-state score learned by an
  all-atom GNN energy model (the package's pipeline, a few minutes of training on the first half of the run's
  windows, evaluated on the second half); a score error ds biases it up by E[ds D ds], measured by the control's
  value (its sigma is 0), so "score-based - control" is the bias-corrected estimate;

and the equilibrium control (tau = 0), where every estimator should give zero. Default torques 90 and 150 kJ/mol/rad
(36 and 60 kT/rad): at 60 phi stalls for ~1 ps at -0.8 and +1.5 rad (the steepest barrier slopes), too slow for a
10-minute run; above ~200 the torque opens the C-N-CA angle. Writes ``alanine_torque.md`` /
``.csv`` (table with standard errors and the settings) and ``alanine_torque.png`` (phi against time for a few
replicas, phi histograms) to ``--out``. Runs write checkpoints, so an interrupted run resumes where it stopped.

    python workflows/entropy_torque_alanine.py            # ~15 min on one CPU core
    python workflows/entropy_torque_alanine.py --quick    # < 2 min, for tests (writes to runs/)
    python workflows/entropy_torque_alanine.py --score    # + learned-score rows (3 min of training per torque)
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molscore.analysis.autocorrelation import block_average
from molscore.analysis.report import format_with_error, write_table
from molscore.files import atomic_write, write_text_atomic
from molscore.interfaces.trajectory_files import write_trajectory
from molscore.nonequilibrium import Estimate, drift_identity, load_driven_system, path_estimate, run_steady_state, tur_bound
from molscore.nonequilibrium.estimators import score_based
from molscore.nonequilibrium.molecular import dihedral_angle, dihedral_increment, dihedral_velocity
from molscore.pipeline import load_run_config, stages
from molscore.system import load_system

SYSTEM = "alanine_dipeptide_torque"
QUICK = {  # the full defaults are the ``run`` settings of the system's driven.yaml
    "torques": [60.0, 120.0], "replicas": 4, "burn_in_ps": 0.01, "production_ps": 0.04, "control_ps": 0.04,
    "stride": 20, "drift_identity_frames": 16,
}  # fmt: skip
COLUMNS = ["torque (kJ/mol/rad)", "estimator", "sigma (kB/ps)", "z vs measured", "samples", "seconds"]
SCORE_MODEL = {  # all-atom GNN energy model as in workflows/alanine_dipeptide.py; small batches: ~20 ms per frame on CPU
    "model": {"parameterisation": "energy", "network": "gnn",
              "network_options": {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2}},
    "train": {"steps": 20000, "batch_size": 32, "learning_rate": 1.0e-3, "final_learning_rate": 1.0e-4,
              "validation_every": 250, "fit_steps_to_budget": True},
}  # fmt: skip


def estimates(system, run, torque: float, kT: float, di_frames: int, control_di: Estimate | None) -> list[Estimate]:
    """Every estimator on one run: measured tau<dphi/dt>/kT first, then path, drift identity (+ corrected),
    generator form and TUR. ``control_di`` is the control's drift identity (its Euler-Maruyama bias)."""
    wt = run.window_time
    atoms = system.parameters["dihedral_atoms"]
    rate, rate_err = block_average(run.currents["dphi"].numpy() / wt)
    out = [
        Estimate(
            "tau <dphi/dt> / kT (measured)", torque / kT * rate, abs(torque) / kT * rate_err, run.currents["dphi"].numel()
        )
    ]
    out.append(path_estimate(run.path_increments, wt))
    n_windows, n_rep = run.path_increments.shape
    picks = np.unique(np.linspace(0, n_windows - 1, max(2, math.ceil(di_frames / n_rep))).round().astype(int))
    di = drift_identity(
        system.drift, system.diffusion, run.samples[picks], divergence_method="finite_difference", batch_size=256
    )
    di.method = "drift identity (finite-difference div b)"
    out.append(di)
    if control_di is not None:
        out.append(di.minus(control_di, "drift identity - control (Euler-Maruyama bias removed)"))
    if torque != 0:
        start = time.perf_counter()
        frames = run.samples.reshape(-1, *system.shape)
        vel = torch.cat([dihedral_velocity(system.drift, system.diffusion, x, atoms) for x in frames.split(1024)])
        mean, err = block_average(vel.reshape(run.samples.shape[:2]).numpy())
        out.append(
            Estimate("generator form tau/kT E[b . grad phi]", torque / kT * mean, abs(torque) / kT * err, len(vel),
                     time.perf_counter() - start)
        )  # fmt: skip
        out.append(tur_bound(run.currents["dphi"], wt, method="TUR bound (phi current)"))
    return out


def learned_score(system, run, folder: Path, minutes: float, max_frames: int, progress: bool) -> tuple[Estimate, dict]:
    """Score-based estimate with a learned steady-state score: the first half of the run's windows (all replicas)
    becomes an MD folder, an all-atom GNN energy model is trained on it through the pipeline (``minutes`` of
    wall clock; 1 replica held out for validation, 1 for the unused test split; every k-th window, k such that a
    replica keeps ~200: consecutive windows are nearly identical, and the validation loss costs 16 passes over its
    replica's frames), and
    sigma = E[v D^-1 v], v = b - D F_theta / kT, is evaluated on at most ``max_frames`` evenly spaced windows x
    replicas of the second half. An existing ``folder/model.safetensors`` is reused (delete the folder to retrain).
    Returns the estimate and the training summary (steps, train_seconds; stride, windows: the data used)."""
    mol = load_system(system.parameters["system"])
    n_half = run.samples.shape[0] // 2
    stride = max(1, n_half // 200)
    md = folder / "md"
    cfg = load_run_config({
        **SCORE_MODEL, "system": mol.name, "run_dir": str(folder), "dtype": "float32",
        "data": {"source": str(md), "resolution": "all", "n_validation_replicas": 1, "n_test_replicas": 1,
                 "stride": stride},
        "train": {**SCORE_MODEL["train"], "max_minutes": minutes},
    })  # fmt: skip
    if not (folder / "model.safetensors").exists():
        if not (folder / "data" / "test.npy").exists():
            md.mkdir(parents=True, exist_ok=True)
            write_text_atomic(md / "topology.pdb", Path(mol.structure).read_text())
            for r in range(run.samples.shape[1]):
                replica = md / f"replica_{r:03d}"
                replica.mkdir(exist_ok=True)
                write_trajectory(replica / "chunk_000000.dcd", run.samples[:n_half, r].numpy(), mol.structure)
            stages.prepare_data(cfg)
        stages.train(cfg, progress)
    summary = yaml.safe_load((folder / "train" / "summary.yaml").read_text()) | {"stride": stride, "windows": n_half}
    model = stages._load_model(cfg)
    kT = system.parameters["kT"]
    if abs(model.kT - kT) > 1e-6 * kT:
        raise ValueError(f"{folder}: model kT {model.kT} differs from the system's {kT}")

    def score(x):  # s = F_theta / kT (1/nm); the model centres the positions itself
        return model.forces(x.to(model.dtype)).to(x.dtype) / kT

    test = run.samples[n_half:]
    keep = np.unique(np.linspace(0, len(test) - 1, max(2, math.ceil(max_frames / test.shape[1]))).round().astype(int))
    est = score_based(system.drift, system.diffusion, score, test[keep], batch_size=256)
    est.method = (
        f"score-based, learned GNN energy score ({summary['steps']} steps, {summary['train_seconds']:.0f} s training)"
    )
    return est, summary


def simulate(system, settings: dict, production_ps: float, seed: int, checkpoint: Path, progress: bool):
    dt = system.timestep
    stride = settings["stride"]
    n_windows = max(2, round(production_ps / (dt * stride)))
    currents = {"dphi": dihedral_increment(system.parameters["dihedral_atoms"])}
    return run_steady_state(
        system, settings["replicas"], n_windows, stride, burn_in=round(settings["burn_in_ps"] / dt), seed=seed,
        currents=currents, checkpoint=checkpoint, progress=progress,
    )  # fmt: skip


def bond_angles(system, run) -> tuple[float, float]:
    """Largest bond angles (deg) at the dihedral's two central atoms over all samples: a torque far above the
    barrier slope opens them towards 180 degrees, where phi is ill-defined (seen at 240 kJ/mol/rad)."""
    p = run.samples.flatten(0, 1)[:, system.parameters["dihedral_atoms"]]
    b = torch.diff(p, dim=1)
    cos = -(b[:, :-1] * b[:, 1:]).sum(-1) / (b[:, :-1].norm(dim=-1) * b[:, 1:].norm(dim=-1))
    worst = torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).amax(0)
    return float(worst[0]), float(worst[1])


def euler_maruyama_bias(system) -> float:
    """dt/2 sum_i lambda_i^2 (kB per unit time), lambda_i the eigenvalues of the drift's Jacobian at the initial
    structure (finite differences, 2 x 66 force calls): the leading Euler-Maruyama bias of the drift identity from
    the harmonic modes. With one D for all atoms the Jacobian -D Hess U / kT is symmetric: sum lambda^2 = |J|_F^2."""
    x, h = system.initial[None], 1e-5
    rows = []
    for i in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=x.dtype)
        step[i] = h
        step = step.view_as(x)
        rows.append((system.drift(x + step) - system.drift(x - step)).flatten() / (2 * h))
    return system.timestep / 2 * float((torch.stack(rows) ** 2).sum())


def phi_series(system, run) -> np.ndarray:
    """Unwrapped phi (W, B) in rad at the start of each window."""
    atoms = system.parameters["dihedral_atoms"]
    phi = torch.stack([dihedral_angle(x, atoms) for x in run.samples]).numpy()
    return np.unwrap(phi, axis=0)


def figure(series: dict[str, tuple[np.ndarray, float]], path: Path, n_show: int = 4) -> Path:
    """phi(t) of ``n_show`` replicas and the phi histogram, per label -> (unwrapped phi (W, B), window time)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours = ["tab:grey", "tab:blue", "tab:red", "tab:green", "tab:purple"]
    for (label, (phi, wt)), colour in zip(series.items(), colours * 2, strict=False):
        t = np.arange(len(phi)) * wt
        for r in range(min(n_show, phi.shape[1])):
            left.plot(t, phi[:, r], color=colour, lw=0.8, alpha=0.8, label=label if r == 0 else None)
        wrapped = np.angle(np.exp(1j * phi)).ravel()
        right.hist(wrapped, bins=72, range=(-math.pi, math.pi), density=True, histtype="step", color=colour, label=label)
    left.set(xlabel="time after burn-in (ps)", ylabel="phi, unwrapped (rad)", title=f"{n_show} replicas per torque")
    right.set(xlabel="phi (rad)", ylabel="density (1/rad)", title="phi histogram (all windows, all replicas)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (< 2 min) for tests")
    parser.add_argument("--torques", type=float, nargs="+", help="kJ/mol/rad (default 90 150; keep below ~200)")
    parser.add_argument("--replicas", type=int, help="replicas per run")
    parser.add_argument("--burn-in-ps", type=float, help="ps discarded before every run")
    parser.add_argument("--production-ps", type=float, help="ps per replica after burn-in, per torque")
    parser.add_argument("--control-ps", type=float, help="ps per replica of the torque-0 control")
    parser.add_argument("--stride", type=int, help="steps per window (one sample and one path increment per window)")
    parser.add_argument("--drift-identity-frames", type=int, help="frames for the finite-difference drift identity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default workflows/results/entropy; quick: runs/...)")
    parser.add_argument("--checkpoints", help="checkpoint folder (default runs/entropy_torque_alanine[_quick]/checkpoints)")
    parser.add_argument("--score", action="store_true", help="add the score-based estimate with a learned score")
    parser.add_argument("--score-minutes", type=float, default=3.0, help="training budget per torque (min; --score)")
    parser.add_argument("--score-frames", type=int, default=4096, help="frames for the score-based estimate (--score)")
    parser.add_argument("--score-dir", help="model run folders (default runs/entropy_torque_alanine[_quick]/score)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    control, defaults = load_driven_system(SYSTEM, torque=0.0)
    settings = dict(QUICK if args.quick else defaults)
    for key in QUICK:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    missing = set(QUICK) - set(settings)
    if missing:
        raise SystemExit(f"systems/{SYSTEM}/driven.yaml: run settings {sorted(missing)} missing")
    if min(settings["replicas"], settings["stride"], settings["drift_identity_frames"]) < 1:
        raise SystemExit("replicas, stride and drift-identity frames must be positive")
    if min(settings["production_ps"], settings["control_ps"]) <= 0 or settings["burn_in_ps"] < 0:
        raise SystemExit("production and control times must be positive, the burn-in non-negative (ps)")
    suffix = "_quick" if args.quick else ""
    out = Path(args.out or (f"runs/entropy_torque_alanine{suffix}" if args.quick else "workflows/results/entropy"))
    ckpt_dir = Path(args.checkpoints or f"runs/entropy_torque_alanine{suffix}/checkpoints")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    score_dir = Path(args.score_dir or f"runs/entropy_torque_alanine{suffix}/score")
    torch.set_num_threads(1)
    progress = not args.no_progress

    start = time.perf_counter()
    systems = {float(tau): load_driven_system(SYSTEM, torque=tau)[0] for tau in settings["torques"] if tau != 0}
    kT = control.parameters["kT"]
    dt = control.timestep

    rows, series, info, control_di, control_score = [], {}, [], None, None
    for tau, system in [(0.0, control), *systems.items()]:
        label = f"tau = {tau:g} kJ/mol/rad"
        ps = settings["control_ps"] if tau == 0 else settings["production_ps"]
        run = simulate(system, settings, ps, args.seed, ckpt_dir / f"torque_{tau:g}.pt", progress)
        per_step = run.seconds / (run.samples.shape[0] * run.stride)
        info.append(
            f"- {label} ({tau / kT:.3g} kT/rad): {run.samples.shape[1]} replicas x {run.samples.shape[0] * run.stride} "
            f"steps ({run.samples.shape[0] * run.window_time:.3g} ps) after {round(settings['burn_in_ps'] / dt)} burn-in "
            f"steps; {per_step * 1e3:.2f} ms per step for all replicas ({per_step / run.samples.shape[1] * 1e6:.0f} us "
            f"per replica-step); production {run.seconds:.0f} s (burn-in not counted)"
        )
        series[label] = (phi_series(system, run), run.window_time)
        angles = bond_angles(system, run)
        info.append(f"  largest bond angles at the phi atoms {angles[0]:.0f} and {angles[1]:.0f} deg")
        results = estimates(system, run, tau, kT, settings["drift_identity_frames"], None if tau == 0 else control_di)
        di = next(e for e in results if e.method.startswith("drift identity ("))
        if tau == 0:
            control_di = di
        if args.score:
            est, summary = learned_score(
                system, run, score_dir / f"torque_{tau:g}", args.score_minutes, args.score_frames, progress
            )
            results.append(est)
            if tau == 0:
                control_score = est
            else:
                results.append(est.minus(control_score, "score-based - control (score-error bias removed)"))
            info.append(
                f"  learned score: GNN energy model trained {summary['steps']} steps in {summary['train_seconds']:.0f} s "
                f"on the first {summary['windows']} windows (stride {summary['stride']}) of {run.samples.shape[1] - 2} "
                f"replicas ({score_dir / f'torque_{tau:g}'}); score-based estimate on {est.n_samples} frames of the "
                f"second half in {est.seconds:.0f} s (the table's seconds)"
            )
        measured = results[0]
        for est in results:
            z = None
            if est is not measured and not est.method.startswith("TUR"):  # the control's measured value is 0
                z = f"{(est.value - measured.value) / math.hypot(est.error, measured.error):+.2f}"
            rows.append({
                "torque (kJ/mol/rad)": f"{tau:g}", "estimator": est.method,
                "sigma (kB/ps)": format_with_error(est.value, est.error), "z vs measured": z,
                "samples": est.n_samples, "seconds": f"{est.seconds:.1f}" if math.isfinite(est.seconds) else None,
            })  # fmt: skip
        rate, rate_err = block_average(run.currents["dphi"].numpy() / run.window_time)
        turns = rate * run.samples.shape[0] * run.window_time / (2 * math.pi)
        info.append(
            f"  <dphi/dt> = {format_with_error(rate, rate_err)} rad/ps ({turns:.1f} turns per replica); "
            f"drift identity per-frame spread ~{di.error * math.sqrt(di.n_samples):.2g} kB/ps"
        )

    bias = euler_maruyama_bias(control)
    wall = time.perf_counter() - start
    md, _ = write_table(rows, out / "alanine_torque", columns=COLUMNS)
    header = [
        "# Entropy production of torque-driven alanine dipeptide",
        "",
        f"alanine dipeptide, all 22 atoms overdamped, torque tau on phi, D = {control.parameters['diffusion']:g} nm^2/ps, "
        f"dt = {dt:g} ps, kT = {kT:.4f} kJ/mol (300 K). sigma in kB/ps with one "
        "standard error (blocking over windows, replicas averaged first; jackknife for the TUR bound). "
        "'z vs measured' = (estimate - measured) / combined standard error (the control: estimate / its error).",
        "",
        *info,
        f"- finite-difference drift identity on {settings['drift_identity_frames']} frames per run (evenly spaced windows); "
        f"its Euler-Maruyama bias expected from the harmonic modes at the structure, dt/2 sum lambda_i^2 = {bias:.0f} kB/ps "
        f"(the control measures {format_with_error(control_di.value, control_di.error)}); wall time of this invocation "
        f"{wall:.0f} s (parts read from checkpoints not counted)",
        "",
    ]
    table = md.read_text()
    write_text_atomic(md, "\n".join(header) + "\n" + table)
    figure(series, out / "alanine_torque.png")
    print("\n".join(header[4:]))
    print(table)
    print(f"wrote {md}, {md.with_suffix('.csv')}, {out / 'alanine_torque.png'}")
    return rows


if __name__ == "__main__":
    main()
