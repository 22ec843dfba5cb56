"""Alanine dipeptide end to end: one model that samples and simulates, measured against held-out MD.

MD (the reference copy shipped in ``systems/alanine_dipeptide/reference_md``, or any MD folder) -> one data
split (held-out replicas) -> model variants (energy without / with FP, mixture of experts without / with FP,
direct score, and "Two for One": the unregularised energy model's score at a fixed t > 0 as force field) ->
diffusion samples ("iid") and batched Langevin simulations ("sim"; half the replicas started in C7eq, half from
training frames, which tests stationarity: ``phi>0 sim (data starts)``) -> JS and PMF error on
(phi, psi), phi > 0 population, bond-length W1, each beside the MD-vs-MD floor at the same number of
effectively independent frames. Writes ``<out>/table.md`` / ``.csv``, ``<out>/ramachandran.png`` and
``<out>/phi_profiles.png``; every variant's run folder can be re-run stage by stage with ``molscore``.

    python workflows/alanine_dipeptide.py --quick                      # the README's main job, < 15 min on CPU
    python workflows/alanine_dipeptide.py --train-minutes 30 --sim-minutes 10   # 5 beads, all variants
    python workflows/alanine_dipeptide.py --resolution heavy --variants energy_fp mixture_fp
    python workflows/alanine_dipeptide.py --train-minutes 20 --variants energy mixture_fp --seeds 0 1 2

By default the model trains on ``reference_md`` (40 x 5 ns) and is tested on every replica of
``reference_md_long`` (16 x 20 ns from other seeds): test replicas no training frame seeded, with the slow basin
visited in both (``--test-data none`` holds test replicas out of ``--data`` instead).
"""

import argparse
import json
import time
from pathlib import Path

import mdtraj
import numpy as np
import yaml

from molscore.analysis.collective_variables import compute_cvs
from molscore.analysis.markov_state_model import basin_population, torsion_grid_states
from molscore.analysis.molecular import free_energy_profile
from molscore.analysis.plots import line_plot, ramachandran_rows
from molscore.analysis.report import format_with_error, write_table
from molscore.cpu_runtime import configure_cpu
from molscore.data.trajectories import md_frame_interval_ps
from molscore.dynamics import load_trajectory
from molscore.pipeline import load_run_config, stages
from molscore.pipeline.variants import link_data, merged
from molscore.system import load_system

REFERENCE_MD = Path(__file__).resolve().parents[1] / "systems" / "alanine_dipeptide" / "reference_md"
REFERENCE_MD_LONG = REFERENCE_MD.with_name("reference_md_long")  # 16 x 20 ns, other seeds: the default test split
FP = {"fp_weight": 5.0e-4, "fp_fraction": 0.25, "fp_group": 4, "fp_sigma_power": 4.0, "fp_time_sampling": "log_sigma"}
MIXTURE = {"mixture_boundaries": [0.1, 0.6]}
VARIANTS = {
    "energy": {},
    "energy_fp": {"train": FP},
    "mixture": {"model": MIXTURE},
    "mixture_fp": {"model": MIXTURE, "train": FP},
    # a direct score needs a vector output: the e3nn GNN (its options replace the bond-graph MLP's)
    "score": {
        "model": {
            "parameterisation": "score",
            "network": "gnn",
            "network_options": {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2},
        }
    },
    "two_for_one": {"simulate": {"t_eval": 0.01}},  # the "energy" model's score at t = 0.01 as force field
}
LABELS = {
    "energy": "energy, no FP", "energy_fp": "energy + FP", "mixture": "mixture of experts",
    "mixture_fp": "mixture + FP", "score": "direct score", "two_for_one": "Two for One (t = 0.01)",
}  # fmt: skip
SETTINGS = {  # full run vs the README's quick run
    "full": {
        "train": {"steps": 200000, "batch_size": 256},
        "sample": {"n_samples": 5000, "n_steps": 300, "corrector_steps": 2},
        # 1 ns at 2 fs (or --sim-minutes); the compiled force field makes a step ~4x cheaper after ~30 s
        "simulate": {"replicas": 32, "steps": 500000, "report_interval": 50, "compile": True},
    },
    "quick": {  # ~11 min on 2 CPU cores: training and simulation have wall-clock caps
        "train": {"steps": 50000, "batch_size": 256, "max_minutes": 2.5, "fit_steps_to_budget": True},
        "sample": {"n_samples": 1500, "n_steps": 300, "corrector_steps": 2},
        "simulate": {"replicas": 32, "steps": 2500, "report_interval": 25, "max_minutes": 1.5},
    },
}
BASE = {
    "system": "alanine_dipeptide",
    "run_dir": "",
    "data": {"resolution": "backbone", "n_validation_replicas": 4, "n_test_replicas": 8},
    "model": {"parameterisation": "energy", "network": "bondgraph_mlp", "network_options": {"hidden": [128, 128, 128],
              "sigma_floor": 0.3}},
    "train": {"learning_rate": 1.0e-3, "final_learning_rate": 1.0e-4, "validation_every": 1000,
              "time_sampling": "log_sigma", "log_sigma_min": 0.1},
    # EDM's time grid with two Langevin correctors per step (900 evaluations): the 20-min mixture + FP model gave iid
    # JS 1.09x floor (phi > 0 3.8%) against 1.30-1.32x (5.2-5.5%) with 100 log-SNR steps and one corrector each
    # (uniform in t did as well on JS but widened bonds 5x: its last step is long); see the README
    "sample": {"method": "sde", "batch_size": 2048, "time_grid": "edm"},
    "simulate": {"timestep": 0.002, "friction": 1.0, "start": "state:C7eq+data"},
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="MD folder (default: systems/alanine_dipeptide/reference_md)")
    parser.add_argument(
        "--test-data", default=None,
        help="MD folder whose replicas are all the test split ('none': hold test replicas out of --data; default: "
        "systems/alanine_dipeptide/reference_md_long with the default --data, else none)",
    )  # fmt: skip
    parser.add_argument("--resolution", default="backbone", choices=["backbone", "heavy", "all"])
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), help="default: all (quick: 2)")
    parser.add_argument("--quick", action="store_true", help="short training and simulation (the README's main job)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--train-minutes", type=float, default=None, help="wall-clock budget per model (resumable)")
    parser.add_argument("--samples", type=int, default=None, help="diffusion samples per model")
    parser.add_argument("--sample-steps", type=int, default=None, help="reverse-diffusion steps per sample")
    parser.add_argument("--sim-steps", type=int, default=None, help="Langevin steps per replica (2 fs each)")
    parser.add_argument("--sim-minutes", type=float, default=None, help="wall-clock budget per simulation (resumable)")
    parser.add_argument("--replicas", type=int, default=None, help="simulation replicas")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the simulation's force field (~30 s, then ~4x faster steps; default: on for the full run)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="training / sampling / simulation seeds, one run each (folders <variant>, <variant>_seed<k>); the table "
        "adds mean +- sd over seeds",
    )  # fmt: skip
    parser.add_argument(
        "--held-out",
        type=int,
        nargs=2,
        default=(4, 8),
        metavar=("VALIDATION", "TEST"),
        help="MD replicas held out for validation and testing (default 4 8; TEST is unused with --test-data)",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/alanine_dipeptide/<resolution>[_quick])")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: these small networks run fastest on one; 2 threads on a busy 2-core "
        "machine made training ~20x slower through OpenMP spin-waiting)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rebuild table and figures from finished run folders")
    args = parser.parse_args(argv)
    if args.test_data is None:
        args.test_data = None if args.data else REFERENCE_MD_LONG
    elif args.test_data.lower() == "none":
        args.test_data = None
    args.test_data = Path(args.test_data) if args.test_data else None
    args.data = Path(args.data) if args.data else REFERENCE_MD
    if args.variants is None:
        args.variants = ["energy_fp", "mixture_fp"] if args.quick else list(VARIANTS)
    if args.out is None:
        args.out = f"runs/alanine_dipeptide/{args.resolution}" + ("_quick" if args.quick else "")
    return args


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_seed{seed}"


def variant_config(name: str, args, seed: int = 0) -> dict:
    spec = merged(merged(BASE, SETTINGS["quick" if args.quick else "full"]), VARIANTS[name])
    if "network" in VARIANTS[name].get("model", {}):  # another network: none of the default's options apply
        spec["model"]["network_options"] = dict(VARIANTS[name]["model"].get("network_options", {}))
    spec["run_dir"] = str(Path(args.out) / run_name(name, seed))
    spec["device"] = args.device
    spec["data"]["source"] = str(args.data)
    spec["data"]["test_source"] = str(args.test_data) if args.test_data else ""
    for section in ("train", "sample", "simulate"):
        spec[section]["seed"] = seed
    spec["data"]["resolution"] = args.resolution
    if args.resolution == "all":  # unconstrained X-H bonds: MD's own 1 fs, twice the steps for the same time
        spec["simulate"]["timestep"] = 0.001
        spec["simulate"]["steps"] *= 2
        # without angle priors the 20-min all-atom force field inverted C-alpha in simulation (99% of frames
        # mirrored, phi > 0 92%): bonds alone leave a stereocentre free to pass through planarity
        spec["model"]["extra_priors"] = ["angles", "repulsion", "dihedrals"]
    spec["data"]["n_validation_replicas"], spec["data"]["n_test_replicas"] = args.held_out
    for value, (section, key) in (
        (args.steps, ("train", "steps")),
        (args.train_minutes, ("train", "max_minutes")),
        (args.samples, ("sample", "n_samples")),
        (args.sample_steps, ("sample", "n_steps")),
        (args.sim_steps, ("simulate", "steps")),
        (args.sim_minutes, ("simulate", "max_minutes")),
        (args.replicas, ("simulate", "replicas")),
        (args.compile, ("simulate", "compile")),
    ):
        if value is not None:
            spec[section][key] = value
    if args.train_minutes is not None:  # plan the steps (learning-rate decay, every expert) to fit the budget
        spec["train"]["fit_steps_to_budget"] = True
    return spec


def run_variant(name: str, args, shared: Path, seed: int = 0) -> dict:
    """All stages of one variant at one seed; returns its metrics."""
    cfg = load_run_config(variant_config(name, args, seed))
    run_dir = Path(cfg.run_dir)
    link_data(shared, run_dir)
    source = Path(args.out) / run_name("energy", seed)
    if name == "two_for_one":  # same trained model and samples as "energy"; only the force field differs
        if not (source / "model.safetensors").exists():
            run_variant("energy", args, shared, seed)
        for f in ("model.safetensors", f"samples_{cfg.sample.method}.npy"):
            if not (run_dir / f).exists():
                (run_dir / f).symlink_to((source / f).resolve())
    else:
        began = time.perf_counter()
        stages.train(cfg)
        print(f"{run_dir.name}: trained in {time.perf_counter() - began:.0f} s")
        stages.sample(cfg)
    stages.simulate(cfg)
    return stages.evaluate(cfg)


def seed_summary_row(name: str, rows: list[dict], metrics: list[dict]) -> dict:
    """Mean ± sd over the seeds of one variant: absolute JS and every numeric column."""
    row = {"model": f"{LABELS[name]}: mean ± sd over {len(rows)} seeds"}
    for kind in ("iid", "sim"):
        js = [m[kind]["js"] for m in metrics if kind in m]
        row[f"{kind} JS (floor)"] = format_with_error(np.mean(js), np.std(js, ddof=1)) if len(js) > 1 else ""
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        if key not in row and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            row[key] = format_with_error(np.mean(values), np.std(values, ddof=1))
    return row


def stability(metrics: dict) -> str:
    """'yes', 'no (blew up at t ps: reason)' or 'yes (stopped at t ps)' from the simulation's status."""
    status = metrics.get("sim_status", {})
    if not status:
        return ""
    if not status["stable"]:
        return f"no: stopped by the guard at {status['t_ps']:.1f} ps"
    return "yes" if status["finished"] else f"yes (budget ended at {status['t_ps']:.1f} ps)"


def table_row(name: str, metrics: dict, summary: dict, seed: int = 0) -> dict:
    mol = metrics.get("molecular", {})

    def floor_of(kind):  # iid: N random training frames (the data reproduced exactly); sim: MD at MD's own tau
        return mol.get(kind, {}).get("floor_training" if kind == "iid" else "floor", mol.get(kind, {}).get("floor"))

    def js_with_floor(kind):
        if kind not in metrics or kind not in mol:
            return ""
        floor = floor_of(kind)  # one draw (no spread) when the validation replicas hold fewer frames than asked
        spread = f" +- {floor['js_std']:.4f}" if np.isfinite(floor["js_std"]) else ""
        return f"{metrics[kind]['js']:.4f} ({floor['js_mean']:.4f}{spread})"

    def ratio(kind):
        return metrics[kind]["js"] / floor_of(kind)["js_mean"] if kind in metrics and kind in mol else None

    by_start = mol.get("sim", {}).get("phi_positive_by_start", {})

    def phi(kind):
        return format_with_error(mol[kind]["phi_positive"]["p"], mol[kind]["phi_positive"]["err"]) if kind in mol else ""

    return {
        "model": LABELS[name] + (f" (seed {seed})" if seed else ""),
        "iid JS (floor)": js_with_floor("iid"),
        "iid / floor": ratio("iid"),
        "sim JS (floor)": js_with_floor("sim"),
        "sim / floor": ratio("sim"),
        "FF error (kT)": metrics.get("forcefield", {}).get("t_min", {}).get("mae"),
        "iid PMF": metrics.get("iid", {}).get("pmf"),
        "sim PMF": metrics.get("sim", {}).get("pmf"),
        "phi>0 MD": phi("md"),
        "phi>0 iid": phi("iid"),
        "phi>0 sim": phi("sim"),
        "phi>0 sim (data starts)": format_with_error(by_start["data"]["p"], by_start["data"]["err"]) if by_start else "",
        "mirrored iid": mol.get("iid", {}).get("mirrored_fraction"),
        "bond W1 iid (nm)": mol.get("iid", {}).get("bond_w1_mean_nm"),
        "bond W1 sim (nm)": mol.get("sim", {}).get("bond_w1_mean_nm"),
        "sim ps per replica": metrics.get("sim_status", {}).get("t_ps"),
        "sim stable": stability(metrics),
        "train steps": summary.get("steps"),
        "train s": summary.get("train_seconds"),
    }


def basin_note(train: np.ndarray, test: np.ndarray, msm: dict | None = None) -> str:
    """One line on the slow basin (phi > 0) in the data: its share of the training and test frames, a warning
    when one split never visits it (JS against such a split cannot reward or punish that basin), and the MSM
    estimate of its equilibrium population over all replicas (:func:`md_basin_population`)."""
    p_train, p_test = float((train[:, 0] > 0).mean()), float((test[:, 0] > 0).mean())
    line = f"phi > 0 holds {100 * p_train:.2f}% of the training frames and {100 * p_test:.2f}% of the test frames."
    for name, p in (("training", p_train), ("test", p_test)):
        if p == 0:
            line += f" The {name} replicas never visit phi > 0: the metrics cannot judge that basin."
    if msm is not None:
        estimate = (
            f"{100 * msm['msm']:.2f} ± {100 * msm['msm_sd']:.2f}%" if np.isfinite(msm["msm"])
            else "not estimable (its cells are not connected both ways at this lag)"
        )  # fmt: skip
        line += (
            f" Over all {msm['replicas']} replicas: raw {100 * msm['raw']:.2f} ± {100 * msm['raw_sd']:.2f}%, "
            f"reversible MSM (6 x 6 (phi, psi) cells, lag {msm['lag_ps']:g} ps, bootstrap over replicas) "
            f"{estimate}; {msm['entries']} entries into and {msm['exits']} exits from phi > 0 in "
            f"{msm['replicas_visiting']} replicas."
        )
    return line


def md_basin_population(shared: Path, angles, frame_ps: float | None, lag_ps: float = 10.0) -> dict:
    """phi > 0 population of all MD replicas of the run's data (training, validation and test), raw and from a
    reversible Markov state model (:func:`molscore.analysis.markov_state_model.basin_population`)."""
    dtrajs = []
    for split in ("train", "validation", "test"):
        frames, replica = np.load(shared / f"{split}.npy"), np.load(shared / f"{split}_replica.npy")
        phi_psi = angles(frames)
        states = torsion_grid_states(phi_psi[:, 0], phi_psi[:, 1], 6)
        dtrajs += [states[replica == r] for r in np.unique(replica)]
    lag = max(1, round(lag_ps / (frame_ps or 1.0)))
    in_basin = np.repeat(np.arange(6) >= 3, 6)  # phi cells 3-5: phi in [0, pi)
    result = basin_population([d for d in dtrajs if len(d) > lag], in_basin, lag)
    return result | {"lag_ps": lag * (frame_ps or 1.0), "replicas": len(dtrajs)}


def main(argv=None) -> Path:
    args = parse_args(argv)
    configure_cpu(args.threads)
    if not args.data.is_dir():
        raise FileNotFoundError(
            f"{args.data} is not an MD folder; generate one with python workflows/generate_md.py and pass --data"
        )
    out = Path(args.out)
    shared = out / "data"
    data_spec = variant_config(args.variants[0], args) | {"run_dir": str(out)}
    recorded = out / "config_data.yaml"
    if (shared / "test.npy").exists() and recorded.exists():  # keys missing from an older record count as changed
        before = yaml.safe_load(recorded.read_text())["data"]
        if {k: before.get(k) for k in data_spec["data"]} != data_spec["data"]:
            raise SystemExit(
                f"{out} holds data splits made with other data settings ({recorded}): pass another --out or "
                "remove that folder"
            )
    if not (shared / "test.npy").exists():
        stages.prepare_data(load_run_config(data_spec))
    system = load_system("alanine_dipeptide")
    rows, ramachandran, profiles = [], {}, {}
    topology = mdtraj.load_topology(str(shared / "beads.pdb"))

    def angles(xyz):
        return compute_cvs(xyz, topology, system.collective_variables, ["phi", "psi"])

    md = angles(np.load(shared / "test.npy"))
    profiles["MD (test replicas)"] = free_energy_profile(md[:, 0])
    for name in args.variants:
        seed_rows, seed_metrics = [], []
        for seed in args.seeds:
            run_dir = out / run_name(name, seed)
            if args.report_only:
                if not (run_dir / "metrics.json").exists():  # e.g. a variant run at fewer seeds than others
                    print(f"{run_dir.name}: no metrics.json, left out of the table")
                    continue
                metrics = json.loads((run_dir / "metrics.json").read_text())
            else:
                metrics = run_variant(name, args, shared, seed)
            trained = out / run_name("energy" if name == "two_for_one" else name, seed)
            summary_file = trained / "train" / "summary.yaml"
            summary = yaml.safe_load(summary_file.read_text()) if summary_file.exists() else {}
            seed_rows.append(table_row(name, metrics, summary, seed))
            seed_metrics.append(metrics)
            if seed != args.seeds[0]:
                continue  # figures: the first seed
            if not (run_dir / "samples_sde.npy").exists():  # a folder restored from its metrics.json alone
                print(f"{run_dir.name}: no samples_sde.npy, left out of the figures")
                continue
            iid = angles(np.load(run_dir / "samples_sde.npy"))
            panels = {"MD": (md[:, 0], md[:, 1]), "samples": (iid[:, 0], iid[:, 1])}
            if (run_dir / "simulation" / "chunk_000000.npz").exists():  # absent if the guard stopped it at once
                traj = load_trajectory(run_dir / "simulation")["pos"]
                sim = angles(traj[int(0.2 * len(traj)) :].reshape(-1, *traj.shape[2:]))
                panels["simulation"] = (sim[:, 0], sim[:, 1])
                profiles[f"{LABELS[name]}: sim"] = free_energy_profile(sim[:, 0])
            ramachandran[LABELS[name]] = panels
        rows += seed_rows
        if len(seed_rows) > 1:
            rows.append(seed_summary_row(name, seed_rows, seed_metrics))
    md_path, _ = write_table(rows, out / "table")
    with open(md_path, "a") as table:
        msm = md_basin_population(shared, angles, md_frame_interval_ps(args.data))
        if args.test_data:
            table.write(f"\nTraining and validation replicas: {args.data}; test replicas: all of {args.test_data}.\n")
        table.write("\n" + basin_note(angles(np.load(shared / "train.npy")), md, msm) + "\n")
    print(md_path.read_text())
    if not ramachandran:  # every first-seed folder restored from its metrics.json alone
        print("no run folder holds samples: figures not redrawn")
        return md_path
    ramachandran_rows(ramachandran, out / "ramachandran.png", title=f"alanine dipeptide, {args.resolution}")
    line_plot(profiles, out / "phi_profiles.png", "phi (rad)", "F / kT", title="free energy along phi")
    print(f"figures: {out / 'ramachandran.png'}, {out / 'phi_profiles.png'}")
    return md_path


if __name__ == "__main__":
    main()
