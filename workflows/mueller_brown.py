"""Mueller-Brown: does Fokker-Planck regularisation make sampling and simulation consistent?

Exact Boltzmann data of the Mueller-Brown potential at kT = 23 (the reference work's set-up, SCIENCE.md
section 4) -> energy models (single, and mixtures of time experts) trained with and without the FP term
-> diffusion samples ("iid") and Langevin simulations with the learned forces ("sim") -> JS and PMF error
against held-out exact samples, beside the data-vs-data floor and a simulation with the exact forces.
Prints a markdown table and writes ``<out>/mueller_brown.png`` and ``<out>/table.md``.

    python workflows/mueller_brown.py                 # ~4 min on 2 CPU cores
    python workflows/mueller_brown.py --energy-only   # ~2 min: no mixture-of-experts variants
    python workflows/mueller_brown.py --steps 30000   # longer training
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from molscore.analysis.plots import density_panels
from molscore.cpu_runtime import configure_cpu
from molscore.dynamics import load_trajectory
from molscore.pipeline import RunConfig, load_run_config, stages
from molscore.pipeline.variants import link_data, merged
from molscore.system import load_system

BASE = {
    "system": "mueller_brown",
    "run_dir": "",
    "data": {"source": "exact", "n_train": 100_000, "n_validation": 10_000, "n_test": 100_000},
    "model": {"parameterisation": "energy", "network_options": {"hidden": [92, 92, 92]}},
    "train": {"steps": 6000, "batch_size": 512, "learning_rate": 1.0e-3, "fp_weight": 0.0},
    "sample": {"n_samples": 20_000, "method": "sde", "n_steps": 500},
    "simulate": {"replicas": 500, "steps": 2000, "report_interval": 50},
}
VARIANTS = {
    "energy, no FP": {},
    "energy + FP": {"train": {"fp_weight": 5.0e-4, "fp_fraction": 0.25}},
}
MIXTURES = {  # three time experts, trained from large t to small t; FP on the small-t expert only
    "mixture of experts": {"model": {"mixture_boundaries": [0.1, 0.6]}},
    "mixture + FP": {"model": {"mixture_boundaries": [0.1, 0.6]}, "train": {"fp_weight": 5.0e-4, "fp_fraction": 0.25}},
}


def variant_config(name: str, out: Path, args) -> RunConfig:
    spec = merged(BASE, (VARIANTS | MIXTURES)[name])
    spec["run_dir"] = str(out / name.replace(" ", "_").replace(",", "").replace("+", "plus"))
    spec["train"]["steps"] = args.steps
    spec["simulate"]["steps"] = args.sim_steps
    spec["device"] = args.device
    return load_run_config(spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/mueller_brown", help="output folder")
    parser.add_argument("--steps", type=int, default=8000, help="training steps per model")
    parser.add_argument("--sim-steps", type=int, default=10000, help="Langevin steps per replica (dt = 5 fs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--energy-only", action="store_true", help="skip the two mixture-of-experts variants (half the time)"
    )
    parser.add_argument("--variants", nargs="+", default=None, help=f"subset of {[*VARIANTS, *MIXTURES]}")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: the 92x3 MLP runs fastest on one; with 2 threads on a busy 2-core machine "
        "a training step stalled for up to a second in OpenMP spin-waiting, measured)",
    )  # fmt: skip
    args = parser.parse_args()
    configure_cpu(args.threads)
    out = Path(args.out)
    rows, panels, timings = {}, {}, {}
    shared_data = out / "data"
    if not (shared_data / "test.npy").exists():  # one exact data set for every variant
        stages.prepare_data(load_run_config(BASE | {"run_dir": str(out)}))
    names = args.variants or [*VARIANTS, *([] if args.energy_only else MIXTURES)]
    unknown = sorted(set(names) - {*VARIANTS, *MIXTURES})
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {[*VARIANTS, *MIXTURES]}")
    for name in names:
        cfg = variant_config(name, out, args)
        link_data(shared_data, Path(cfg.run_dir))
        start = time.perf_counter()
        stages.train(cfg)
        timings[name] = time.perf_counter() - start
        stages.sample(cfg)
        stages.simulate(cfg)
        rows[name] = stages.evaluate(cfg)
        iid = np.load(Path(cfg.run_dir) / "samples_sde.npy")[:, 0]
        sim = load_trajectory(Path(cfg.run_dir) / "simulation")["pos"][:, :, 0].reshape(-1, 2)
        panels[f"{name}: iid"] = (iid[:, 0], iid[:, 1])
        panels[f"{name}: sim"] = (sim[:, 0], sim[:, 1])
    # control: the same simulation with the exact forces (discretisation + finite-length floor of "sim")
    system = load_system("mueller_brown")
    control = variant_config("energy, no FP", out, args)
    control.run_dir = str(out / "exact_forces")
    link_data(shared_data, Path(control.run_dir))
    potential = system.potential.to(torch.float32)
    stages.simulate(control, force_fn=potential.forces)
    rows["exact forces (control)"] = stages.evaluate(control)
    ref = np.load(shared_data / "test.npy")[:, 0]
    control_sim = load_trajectory(Path(control.run_dir) / "simulation")["pos"][:, :, 0].reshape(-1, 2)
    panels = {
        "reference (exact samples)": (ref[:, 0], ref[:, 1]),
        "exact forces: sim": (control_sim[:, 0], control_sim[:, 1]),
        **panels,
    }
    figure = density_panels(
        panels,
        out / "mueller_brown.png",
        64,
        system.settings["histogram_range"],
        title="Mueller-Brown, kT = 23: diffusion samples (left), Langevin simulations (right)",
        ncols=2,
    )
    floor = rows[names[0]]["floor"]
    lines = [
        "| model | iid JS | sim JS | iid PMF | sim PMF | training (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        iid = m.get("iid", {})
        iid_js, iid_pmf = (f"{iid['js']:.4f}", f"{iid['pmf']:.3f}") if iid else ("", "")
        train_s = f"{timings[name]:.0f}" if name in timings else ""
        lines.append(f"| {name} | {iid_js} | {m['sim']['js']:.4f} | {iid_pmf} | {m['sim']['pmf']:.3f} | {train_s} |")
    lines.append(f"| exact data vs exact data (floor, n = {floor['n']}) | {floor['js']:.4f} | | {floor['pmf']:.3f} | | |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nfigure: {figure}")


if __name__ == "__main__":
    main()
