"""Cost against protein size on radius graphs: forces, training steps (DSM, DSM + FP) and batched Langevin at 100,
1,000 and 10,000 C-alpha beads, for the fast bond-graph network and the e3nn GNN side by side (issue 19).

The proteins are copies of the T4 lysozyme C-alpha trace (162 beads, ``systems/t4_lysozyme``) 6 nm apart on a
grid, cut to the bead count (each copy a chain of its own); cutoff 1.5x the longest native contact of the Go model
of the whole structure (1.78 nm), in nm (scale 1). Each (network, size) runs in a subprocess of its own, so its
peak memory (``ru_maxrss`` rise over the set-up) is its own. Per row: energy + forces of one frame at t_min, a
full ``ScoreEstimator`` step on one frame (bond and noise priors, AdamW, EMA; with FP: the Hutchinson residual on
that frame too), Langevin (BAOAB, 5 fs) steps of one replica as ns/day, the edges per bead, and the cost per bead
relative to the 1,000-bead row (1.0 is linear; the issue's target: within 1.3x from 1,000 to 10,000 beads). The
e3nn GNN stops at ``--gnn-max-beads`` (default 1,000: ~0.4 GB per 100 beads in a training step with FP, so 10,000
beads would need ~40 GB).

    python workflows/benchmarks/protein_scaling.py                    # ~10 min on 2 CPU cores
    python workflows/benchmarks/protein_scaling.py --quick            # seconds (tests)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from molscore.timing import median_seconds

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = {
    "bondgraph": {"hidden": 64, "n_layers": 2, "n_radial": 16, "graph": "radius"},
    "gnn": {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2, "graph": "radius"},
}
CUTOFF_NM = 1.78


def protein(n_beads: int) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """Positions ``(n_beads, 3)`` nm of copies of the T4 lysozyme C-alpha trace on a 6-nm grid, their bonds
    (consecutive beads of each copy) and bead types (residue types)."""
    from molscore.proteins.go_model import calpha_trace

    trace = calpha_trace(ROOT / "systems" / "t4_lysozyme" / "structure.pdb")
    one = trace.xyz[0].astype(np.float64)
    one -= one.mean(0)
    names = sorted({r.name for r in trace.topology.residues})
    kinds = [names.index(r.name) for r in trace.topology.residues]
    copies = -(-n_beads // len(one))
    side = int(np.ceil(copies ** (1 / 3)))
    grid = [np.array([i, j, k]) * 6.0 for i in range(side) for j in range(side) for k in range(side)][:copies]
    pos, bonds, types = [], [], []
    for shift in grid:
        start = len(pos) and sum(len(p) for p in pos)
        take = min(len(one), n_beads - start)
        pos.append(one[:take] + shift)
        bonds += [[start + i, start + i + 1] for i in range(take - 1)]
        types += kinds[:take]
    return np.concatenate(pos), bonds, types


def measure_one(network: str, n_beads: int, repeats: int) -> dict:
    """Every cost of one network at one size (run in its own process by :func:`main`)."""
    from molscore.dynamics import BAOAB, SeededNoise, Simulation, State, Underdamped
    from molscore.models import ModelSpec
    from molscore.nn.graph import radius_graph
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    torch.manual_seed(0)
    native, bonds, types = protein(n_beads)
    frames = torch.tensor(native + 0.02 * np.random.default_rng(0).standard_normal((8, *native.shape)))
    options = dict(NETWORKS[network], cutoff=CUTOFF_NM, bead_types=types)
    if network == "bondgraph":
        options["bonds"] = bonds
    spec = ModelSpec(n_beads, 3, True, "energy", network, options, bonds=bonds, noise_prior=True)
    rows = {"network": network, "beads": n_beads}
    edges = radius_graph(frames[:1], CUTOFF_NM).shape[1]
    rows["edges_per_bead"] = edges / n_beads
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for fp in (False, True):
        fp_options = {"fp_weight": 5e-4 if fp else 0.0, "fp_fraction": 0.25, "fp_group": 1}
        config = TrainConfig(steps=10**9, batch_size=1, time_sampling="log_sigma", validation_every=10**9,
                             checkpoint_every=10**9, scale=1.0, **fp_options)  # fmt: skip
        est = ScoreEstimator(spec, config, dtype=torch.float32)
        est.config.steps = est.planned_steps = 1
        est._stages = est._plan_stages()
        est.fit(frames.float(), 2.34, progress=False)  # fits the priors, one step
        est.planned_steps = 10**9  # then as many steps as the timing takes, in the same stage
        est._stages = est._plan_stages()
        x = est._prepare(frames.float()) / est.scale
        rows["train_step_fp_s" if fp else "train_step_s"] = median_seconds(lambda e=est, x=x: e._train_step(x), 1, repeats)
    model = est.fetch_model()
    force = model.force_field()
    pos = frames[:1].float()
    rows["forces_s"] = median_seconds(lambda: force(pos), 1, repeats)
    term = Underdamped(force, torch.full((n_beads,), 110.0), 2.34, 1.0)
    sim = Simulation(term, BAOAB(), State(pos.clone()), 0.005, SeededNoise(0))
    rows["langevin_ns_per_day"] = 0.005e-3 * 86400 / median_seconds(lambda: sim.run(1, progress=False), 1, repeats)
    rows["peak_memory_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gnn-max-beads", type=int, default=1000, help="largest size for the e3nn GNN (memory)")
    parser.add_argument("--quick", action="store_true", help="50 and 200 beads, one repeat")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/protein_scaling"))
    parser.add_argument("--one", nargs=2, metavar=("NETWORK", "BEADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [50, 200], 1
    return args


def table(rows: list[dict]) -> str:
    lines = ["| network | beads | edges / bead | forces (s) | train step (s) | train step + FP (s) | Langevin (ns/day) "
             "| peak memory (MB) | per-bead cost forces / train / train + FP / Langevin (vs smallest >= 1,000) |",
             "|---" * 9 + "|"]  # fmt: skip
    for r in rows:
        ratios = r.get("per_bead_cost")
        ratio_text = " / ".join(f"{v:.2f}" for v in ratios) if ratios else ""
        lines.append(f"| {r['network']} | {r['beads']:,} | {r['edges_per_bead']:.1f} | {r['forces_s']:.4f} | "
                     f"{r['train_step_s']:.4f} | {r['train_step_fp_s']:.4f} | {r['langevin_ns_per_day']:.2f} | "
                     f"{r['peak_memory_mb']:.0f} | {ratio_text} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.repeats)))
        return []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"protein scaling: sizes {args.sizes}, one thread, load average {load:.2f}")
    rows = []
    for network in args.networks:
        for n in [n for n in args.sizes if network != "gnn" or n <= args.gnn_max_beads]:
            command = [sys.executable, __file__, "--one", network, str(n), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise RuntimeError(f"{network} at {n} beads failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    keys = ("forces_s", "train_step_s", "train_step_fp_s")
    for network in args.networks:
        mine = [r for r in rows if r["network"] == network]
        base = next((r for r in mine if r["beads"] >= 1000), mine[0])
        for r in mine:
            cost = [r[k] / r["beads"] / (base[k] / base["beads"]) for k in keys]
            cost.append(base["langevin_ns_per_day"] * base["beads"] / (r["langevin_ns_per_day"] * r["beads"]))
            r["per_bead_cost"] = cost
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protein_scaling.md").write_text(text + "\n")
    (args.out / "protein_scaling.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
