"""Proteins end to end: C-alpha Go-model MD -> energy + FP model -> diffusion samples and batched Langevin ->
protein metrics against held-out MD replicas (issue 19).

A Go system (``systems/<name>/system.yaml`` with ``md.go_model``; default ``t4_lysozyme_go``, the T4 lysozyme
N-terminal subdomain) gets its reference MD generated here, resumably, in ``<out>/md`` (or pass ``--md`` for MD
made elsewhere; its temperature must be the system's). The run splits it by whole replicas, trains an energy model
with Fokker-Planck regularisation on the bond-graph MLP (``--network bondgraph_mlp``, the default: every C-alpha
pair distance, bond angle and pseudo-torsion in its own input slot, so the position along the chain is implicit;
~90 ms a training step with FP at batch 128 for 48 beads on one CPU thread) or the bond-graph message-passing
network (``--network bondgraph``: residue types as bead types, exchangeable, cutoff 1.5x the longest native
contact; ~4 s a step at 48 beads, since every pair carries a hidden vector), draws diffusion samples and runs 32
Langevin replicas with the learned forces, and a control simulation with the exact Go forces through the same
integrator. Each ensemble is compared with the test replicas (:mod:`molscore.proteins.evaluation`) beside two
floors: N random training frames ("iid floor") and the validation MD replicas ("MD floor"). Writes
``<out>/table.md``, ``<out>/metrics.json``, ``<out>/tica.png``, ``<out>/contact_maps.png`` and
``<out>/free_energy_q.png``; every stage resumes. An all-atom protein system (OpenMM force field in ``md``) runs the
same way on its C-alpha beads, with Q over its structure's native contacts and without the exact-energy rows.

    python workflows/protein.py                             # 16 x 20 ns of Go MD, 30 min training
    python workflows/protein.py --quick                     # minutes: 8 x 1 ns, 2 min training (not converged)
    python workflows/protein.py --md runs/go_md --train-minutes 30
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molscore.analysis.report import write_table
from molscore.cpu_runtime import configure_cpu
from molscore.dynamics import load_trajectory
from molscore.files import write_text_atomic
from molscore.interfaces.openmm_md import generate_md, go_model
from molscore.pipeline import load_run_config, stages
from molscore.pipeline.variants import link_data, merged
from molscore.proteins import metrics
from molscore.proteins.evaluation import energy_agreement, ensemble_metrics
from molscore.proteins.native_contacts import fraction_native_contacts, free_energy_barrier
from molscore.system import load_system

FP = {"fp_weight": 5.0e-4, "fp_fraction": 0.25, "fp_group": 4, "fp_sigma_power": 4.0, "fp_time_sampling": "log_sigma"}
SETTINGS = {
    "full": {"md": {"replicas": 16, "ns": 20.0}, "train_minutes": 30.0, "samples": 4000, "sim_ns": 5.0},
    "quick": {"md": {"replicas": 8, "ns": 1.0}, "train_minutes": 2.0, "samples": 500, "sim_ns": 0.2},
}
MIN_EVENTS = 20  # folding and unfolding transitions per split for a converged reference


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="t4_lysozyme_go", help="Go or all-atom protein system (folder or path)")
    parser.add_argument("--md", type=Path, default=None, help="MD folder (default: <out>/md, generated here)")
    parser.add_argument("--quick", action="store_true", help="minutes: short MD, training and simulation")
    parser.add_argument("--md-replicas", type=int, default=None, help="MD replicas (default 16; quick 8)")
    parser.add_argument("--md-ns", type=float, default=None, help="ns per MD replica (default 20; quick 1)")
    parser.add_argument("--equilibration-ps", type=float, default=None, help="dropped per MD replica (1000; quick 50)")
    parser.add_argument("--held-out", type=int, nargs=2, default=[2, 4], metavar=("VALIDATION", "TEST"))
    parser.add_argument("--train-minutes", type=float, default=None, help="training budget (default 30; quick 2)")
    parser.add_argument("--tica-lag-ps", type=float, default=50.0, help="TICA lag time, ps (default 50)")
    parser.add_argument("--steps", type=int, default=None, help="training steps instead of the time budget (tests)")
    parser.add_argument("--sample-steps", type=int, default=300, help="reverse-SDE steps per sample (default 300)")
    parser.add_argument("--samples", type=int, default=None, help="diffusion samples (default 4000; quick 500)")
    parser.add_argument("--sim-ns", type=float, default=None, help="ns per simulation replica (default 5; quick 0.2)")
    parser.add_argument("--sim-replicas", type=int, default=32)
    parser.add_argument("--sim-minutes", type=float, default=None, help="wall-clock cap per simulation (resumable)")
    parser.add_argument("--processes", type=int, default=None, help="MD worker processes (default: CPU cores)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/protein/<system>[_quick])")
    parser.add_argument("--network", choices=("bondgraph_mlp", "bondgraph"), default="bondgraph_mlp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see the README)")
    args = parser.parse_args(argv)
    settings = SETTINGS["quick" if args.quick else "full"]
    args.md_replicas = args.md_replicas or settings["md"]["replicas"]
    args.md_ns = args.md_ns or settings["md"]["ns"]
    if args.equilibration_ps is None:
        args.equilibration_ps = 50.0 if args.quick else 1000.0
    for key in ("train_minutes", "samples", "sim_ns"):
        if getattr(args, key) is None:
            setattr(args, key, settings[key])
    name = Path(args.system).name
    args.out = args.out or Path("runs/protein") / (name + ("_quick" if args.quick else ""))
    return args


def run_spec(args, system, run_dir: Path, md: Path, network_options: dict | None = None) -> dict:
    dt, frame_ps = float(system.md["timestep"]), float(system.md["frame_interval"])
    return {
        "system": str(system.folder),
        "run_dir": str(run_dir),
        "device": args.device,
        "data": {
            "source": str(md),
            "resolution": "calpha",
            "n_validation_replicas": args.held_out[0],
            "n_test_replicas": args.held_out[1],
        },
        "model": {"parameterisation": "energy", "network": args.network, "network_options": network_options or {}},
        "train": merged(
            {
                "steps": args.steps or 200_000,
                "batch_size": 128,
                "learning_rate": 1.0e-3,
                "final_learning_rate": 1.0e-4,
                "validation_every": 1000,
                "time_sampling": "log_sigma",
                "log_sigma_min": 0.1,
                "max_minutes": None if args.steps else args.train_minutes,
                "fit_steps_to_budget": not args.steps,
            },
            FP,
        ),
        "sample": {
            "n_samples": args.samples,
            "method": "sde",
            "n_steps": args.sample_steps,
            "corrector_steps": 2,
            "time_grid": "edm",
            "batch_size": 1024,
        },
        "simulate": {
            "replicas": args.sim_replicas,
            "steps": round(args.sim_ns * 1000 / dt),
            "timestep": dt,
            "friction": float(system.md["friction"]),
            "start": "data",
            "report_interval": round(frame_ps / dt),
            "max_minutes": args.sim_minutes,
            "chunk_frames": 100,
        },
    }


def split(run_dir: Path, name: str) -> list[np.ndarray]:
    """The replicas of one data split, each (F_r, N, 3) nm."""
    frames, replica = np.load(run_dir / "data" / f"{name}.npy"), np.load(run_dir / "data" / f"{name}_replica.npy")
    return [frames[replica == r].astype(np.float64) for r in np.unique(replica)]


def simulated(run_dir: Path, burn_in: float = 0.1) -> tuple[list[np.ndarray] | None, str]:
    """The simulation's replicas after the first ``burn_in`` of frames (None when its guard stopped it before
    the first chunk), and a line on how it ended (``simulation/status.yaml``)."""
    status_file = run_dir / "simulation" / "status.yaml"
    status = yaml.safe_load(status_file.read_text()) if status_file.exists() else {}
    ended = (
        f"{status.get('t_ps', float('nan')):.0f} ps per replica"
        + ("" if status.get("stable", True) else ", stopped by its guard (a bond or the extent left the data's range)")
        + ("" if status.get("finished", True) else ", budget ended before the requested length")
    )
    if not (run_dir / "simulation" / "chunk_000000.npz").exists():
        return None, ended
    pos = load_trajectory(run_dir / "simulation")["pos"]
    return [pos[int(burn_in * len(pos)) :, r].astype(np.float64) for r in range(pos.shape[1])], ended


def native_contacts_of(system):
    """For an all-atom protein system: a Go model of its structure's residues that have a C-alpha, used only for
    its native contacts and C-alpha native (Q and RMSD); its energy plays no part."""
    from molscore.proteins.go_model import GoModel

    residues = [r for r in system.topology.chain(0).residues if any(a.name == "CA" for a in r.atoms)]
    protein = [r for r in system.topology.chain(0).residues if r.is_protein]
    first = protein.index(residues[0])
    return GoModel.from_structure(system.structure, 1.0, slice(first, first + len(residues)))


def go_forces(go):
    def forces(pos: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = pos.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(go.energy(x).sum(), x)
        return -grad

    return forces


def evaluate(args, system, go, model_dir: Path, control_dir: Path | None) -> dict:
    train, validation, test = (split(model_dir, s) for s in ("train", "validation", "test"))
    frame_ps = float(system.md["frame_interval"])
    lag = max(1, round(args.tica_lag_ps / frame_ps))
    tica = metrics.fit_tica(train, lagtime=lag)
    r0 = go.native_values()["contacts"]
    q_barrier, bimodal = free_energy_barrier(np.concatenate([fraction_native_contacts(x, go.contacts, r0) for x in train]))
    samples = [np.load(model_dir / "samples_sde.npy").astype(np.float64)]
    rng = np.random.default_rng(0)
    pooled_train = np.concatenate(train)
    training_draw = [
        pooled_train[rng.choice(len(pooled_train), len(samples[0]), replace=len(pooled_train) < len(samples[0]))]
    ]
    rows = {
        "MD floor (validation replicas)": (validation, frame_ps),
        "iid floor (training frames, N = samples)": (training_draw, None),
        "MD training split": (train, frame_ps),
        "diffusion samples (energy + FP)": (samples, None),
    }
    simulations = {"simulation, learned forces": simulated(model_dir)}
    if control_dir is not None:
        simulations["simulation, exact Go forces (control)"] = simulated(control_dir)
    rows |= {name: (reps, frame_ps) for name, (reps, _) in simulations.items() if reps is not None}
    result = {name: ensemble_metrics(reps, test, go, tica, q_barrier, ps) for name, (reps, ps) in rows.items()}
    result["MD test split"] = ensemble_metrics(test, test, go, tica, q_barrier, frame_ps)
    learned_sim = simulations["simulation, learned forces"][0]
    figures(args.out, train, test, samples, learned_sim if learned_sim is not None else samples, tica, go, q_barrier)
    out = {
        "rows": result,
        "simulations": {name: ended for name, (_, ended) in simulations.items()},
        "q_barrier": q_barrier,
        "bimodal": bimodal,
        "tica_lag_ps": lag * frame_ps,
    }
    if control_dir is not None:  # a Go system: the exact energy of the beads to compare the learned one with
        from molscore.models import DiffusionModel

        model = DiffusionModel.load(model_dir / "model.safetensors", dtype=torch.float64)
        pooled_test = np.concatenate(test)
        probe = pooled_test[rng.choice(len(pooled_test), min(512, len(pooled_test)), replace=False)]
        pos = torch.as_tensor(probe)
        with torch.no_grad():
            learned_energy = model.energy(pos).numpy()
        learned_forces = model.forces(pos).detach().numpy()
        out["probe_frames"] = len(probe)
        out["energy"] = energy_agreement(learned_energy, learned_forces, go, probe)
    return out


def table(result: dict, info: dict) -> str:
    rows = []
    md_floor, iid_floor = (
        result["rows"]["MD floor (validation replicas)"],
        result["rows"]["iid floor (training frames, N = samples)"],
    )
    for name, m in result["rows"].items():
        floor = iid_floor if "samples" in name or "iid" in name else md_floor
        rates = m.get("rates", {})
        rows.append(
            {
                "ensemble": name,
                "frames": m["frames"],
                "TICA JS": m["tica_js"],
                "TICA / floor": m["tica_js"] / max(floor["tica_js"], 1e-12),
                "dihedral JS": m["pseudo_dihedral_js"],
                "dihedral / floor": m["pseudo_dihedral_js"] / max(floor["pseudo_dihedral_js"], 1e-12),
                "pair JS": m["pair_distance_js"],
                "pair / floor": m["pair_distance_js"] / max(floor["pair_distance_js"], 1e-12),
                "Q W1": m["q"]["w1"],
                "RMSD W1 (nm)": m["rmsd"]["w1"],
                "RMSD native / mirror (nm)": f"{m['rmsd_native_nm']:.3f} / {m['rmsd_mirror_nm']:.3f}",
                "folded": f"{m['folded']['p']:.3f} ± {m['folded']['err']:.3f}",
                "k_fold (1/ns)": f"{rates['k_fold_per_ns']:.3g} ± {rates['k_fold_err']:.2g}" if rates else "",
                "k_unfold (1/ns)": f"{rates['k_unfold_per_ns']:.3g} ± {rates['k_unfold_err']:.2g}" if rates else "",
                "events (fold / unfold)": f"{rates['folding_events']} / {rates['unfolding_events']}" if rates else "",
            }
        )
    text = write_table(rows, info["out"] / "table")[0].read_text()
    converged = all(
        min(result["rows"][s]["rates"]["folding_events"], result["rows"][s]["rates"]["unfolding_events"]) >= MIN_EVENTS
        for s in ("MD training split", "MD test split")
    )
    e = result.get("energy")
    notes = [
        f"Reference MD {'converged' if converged else 'NOT converged'}: the criterion is >= {MIN_EVENTS} folding and "
        f"{MIN_EVENTS} unfolding events in each of the training and test splits (table: events).",
        f"Folded: Q > {result['q_barrier']:.3f}, "
        + (
            "the barrier of the training MD's bimodal F(Q); "
            if result["bimodal"]
            else "F(Q) of the training MD is NOT bimodal (a shallow minimum, or none: then Q = 0.5); "
        )  # fmt: skip
        + f"TICA lag {result['tica_lag_ps']:g} ps.",
        "Simulations: " + "; ".join(f"{name}: {ended}" for name, ended in result["simulations"].items()) + ".",
        (
            f"Learned energy against E_Go on {result['probe_frames']} test frames: "
            f"RMSE {e['energy_rmse_kJ_per_mol']:.2f} kJ/mol up to a constant "
            f"(E_Go sd {e['energy_sd_go_kJ_per_mol']:.2f}), force correlation {e['force_correlation']:.3f}."
            if e
            else "All-atom MD coarse-grained to C-alpha beads: no exact bead energy, so no energy comparison and no "
            "control row; Q counts the structure's native contacts (heavy atoms within 0.45 nm, |i - j| >= 4)."
        ),
        f"Training {info['train_steps']} steps in {info['train_seconds']:.0f} s; MD {info['md']}.",
    ]
    return text + "\n" + "\n\n".join(notes) + "\n"


def figures(out: Path, train, test, samples, sim, tica, go, q_barrier) -> None:
    project = lambda reps: tica.transform(metrics.tica_features(np.concatenate(reps)))[:, :2]  # noqa: E731
    ref = project(test)
    lo, hi = ref.min(0), ref.max(0)
    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    for ax, (name, reps) in zip(
        fig.subplots(1, 3),
        [("MD (test)", test), ("diffusion samples", samples), ("simulation, learned forces", sim)],
        strict=True,
    ):
        xy = project(reps)
        h, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=60, range=[[lo[0], hi[0]], [lo[1], hi[1]]])
        ax.set(title=name, xlabel="TIC 0", ylabel="TIC 1")
        if h.sum() == 0:
            ax.text(0.5, 0.5, "no frames in the test MD's range", ha="center", transform=ax.transAxes)
            continue
        with np.errstate(divide="ignore"):
            f = -np.log(h.T / h.sum())
        ax.imshow(
            f - np.nanmin(f[np.isfinite(f)]),
            origin="lower",
            extent=[xe[0], xe[-1], ye[0], ye[-1]],
            aspect="auto",
            vmax=8,
            cmap="viridis",
        )
    fig.tight_layout()
    fig.savefig(out / "tica.png", dpi=120)

    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    md_map, model_map = metrics.contact_map(np.concatenate(test)), metrics.contact_map(np.concatenate(sim))
    for ax, (name, m, cmap, vmin) in zip(
        fig.subplots(1, 3),
        [
            ("simulation", model_map, "viridis", 0),
            ("MD (test)", md_map, "viridis", 0),
            ("simulation - MD", model_map - md_map, "RdBu_r", -1),
        ],
        strict=True,
    ):
        image = ax.imshow(m, origin="lower", cmap=cmap, vmin=vmin, vmax=1)
        ax.set(title=f"{name}: P(r < {metrics.CONTACT_DISTANCE} nm)", xlabel="bead", ylabel="bead")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "contact_maps.png", dpi=120)

    fig = Figure(figsize=(5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    r0 = go.native_values()["contacts"]
    for name, reps in [("MD (train)", train), ("MD (test)", test), ("samples", samples), ("simulation", sim)]:
        p, edges = np.histogram(
            fraction_native_contacts(np.concatenate(reps), go.contacts, r0), bins=40, range=(0, 1), density=True
        )
        with np.errstate(divide="ignore"):
            ax.plot(0.5 * (edges[1:] + edges[:-1]), -np.log(p), label=name)
    ax.axvline(q_barrier, color="k", ls=":", lw=0.8)
    ax.set(xlabel="Q", ylabel="F(Q) / kT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "free_energy_q.png", dpi=120)


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_cpu(args.threads)
    system = load_system(args.system)
    exact = "go_model" in system.md  # a Go system: its MD energy is the beads' exact energy
    go = go_model(system) if exact else native_contacts_of(system)
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.md or args.out / "md"
    if args.md is None:  # resumable; a finished run is skipped
        generate_md(
            system,
            md,
            args.md_replicas,
            args.md_ns * 1000,
            equilibration_ps=args.equilibration_ps,
            platform="Reference" if system.n_particles < 100 else "CPU",  # Reference is faster for few beads
            processes=args.processes,
        )
    model_dir, control_dir = args.out / "energy_fp", args.out / "exact_go"
    if not (model_dir / "data" / "test.npy").exists():
        stages.prepare_data(load_run_config(run_spec(args, system, model_dir, md)))
    train = np.load(model_dir / "data" / "train.npy")
    scale = float(np.sqrt(((train - train.mean(1, keepdims=True)) ** 2).mean()))
    if args.network == "bondgraph_mlp":
        options = {"hidden": [256, 256, 256], "sigma_floor": 0.3}
    else:
        cutoff_nm = 1.5 * float(go.native_values()["contacts"].max())
        options = {"hidden": 64, "n_layers": 2, "cutoff": cutoff_nm / scale, "sigma_floor": 0.3}
    spec = run_spec(args, system, model_dir, md, options)
    spec["train"]["scale"] = scale
    cfg = load_run_config(spec)
    began = time.perf_counter()
    stages.train(cfg)
    if not (model_dir / "samples_sde.npy").exists():  # resumed runs keep their samples
        stages.sample(cfg)
    stages.simulate(cfg)
    if exact:
        link_data(model_dir / "data", control_dir)
        control = load_run_config({**spec, "run_dir": str(control_dir)})
        stages.simulate(control, force_fn=go_forces(go))
    summary_file = model_dir / "train" / "summary.yaml"
    summary = yaml.safe_load(summary_file.read_text()) if summary_file.exists() else {}
    result = evaluate(args, system, go, model_dir, control_dir if exact else None)
    info = {
        "out": args.out,
        "train_steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds", float("nan")),
        "md": f"{args.md_replicas} x {args.md_ns:g} ns at {system.temperature:g} K ({md})",
    }
    text = table(result, info)
    write_text_atomic(args.out / "table.md", text)
    write_text_atomic(args.out / "metrics.json", json.dumps(result, indent=1, default=float))
    print(text)
    print(f"{time.perf_counter() - began:.0f} s; figures: {args.out}/tica.png, contact_maps.png, free_energy_q.png")
    return result


if __name__ == "__main__":
    main()
