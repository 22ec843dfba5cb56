"""Training steps per second of the molecule networks, side by side in one run: bond-graph MLP, bond-graph network
and the e3nn GNN, at 5, 10 and 22 beads of alanine dipeptide, DSM and DSM + FP on a quarter of the batch.

Every number is a full ``ScoreEstimator`` step as training runs it (batch and time draw, loss, backward, gradient
clipping, AdamW, EMA), with the bond and noise priors, at batch 256 on one thread, median over repeats after a
warm-up. Beside it, the share of the step that is not the network: (step - network) / step, where "network" is the
loss + backward alone on a fixed batch. Ratios are to the e3nn GNN of the README's earlier runs (hidden
16x0e+4x0o+8x1o+4x1e, 2 layers) in the same run.

    python workflows/benchmarks/network_cost.py                # ~5 min on 2 CPU cores
    python workflows/benchmarks/network_cost.py --quick        # seconds (tests/test_benchmarks_network.py)

Run it on an idle machine: another busy process on the same cores changes every number.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from molscore.timing import median_seconds

NETWORKS = {
    "bondgraph_mlp": {"hidden": [128, 128, 128]},
    "bondgraph": {"hidden": 32, "n_layers": 2, "n_radial": 16},
    "gnn": {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2},
}
"""Network options as the alanine workflow uses them (the GNN: as its earlier default)."""
RESOLUTIONS = ("backbone", "heavy", "all")


def alanine(resolution: str):
    """Structure frames ``(M, N, 3)`` nm (the built structure with 0.01 nm noise), bonds and bead types."""
    import mdtraj

    from molscore.analysis.molecular import topology_bonds
    from molscore.data.resolution import select_beads
    from molscore.system import load_system

    system = load_system("alanine_dipeptide")
    beads = select_beads(system.topology, resolution)
    xyz = mdtraj.load(str(system.structure)).xyz[0][beads.indices].astype(np.float64)
    frames = xyz + 0.01 * np.random.default_rng(0).standard_normal((2048, *xyz.shape))
    bonds = [[int(i), int(j)] for i, j in topology_bonds(beads.topology)]
    return torch.tensor(frames, dtype=torch.float32), bonds, beads.bead_types, system.kT


def estimator(network: str, bonds, bead_types, fp: bool, batch: int):
    from molscore.models import ModelSpec
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    options = dict(NETWORKS[network], bead_types=bead_types)
    if network.startswith("bondgraph"):
        options["bonds"] = bonds
    if network == "bondgraph_mlp":
        options.pop("bead_types")
    spec = ModelSpec(len(bead_types), 3, True, "energy", network, options, bonds=bonds, noise_prior=True)
    config = TrainConfig(steps=10**9, batch_size=batch, fp_weight=5e-4 if fp else 0.0, fp_fraction=0.25,
                         time_sampling="log_sigma", validation_every=10**9, checkpoint_every=10**9)  # fmt: skip
    return ScoreEstimator(spec, config)


def measure(network: str, resolution: str, fp: bool, batch: int, warmup: int, repeats: int) -> dict:
    frames, bonds, bead_types, kT = alanine(resolution)
    est = estimator(network, bonds, bead_types, fp, batch)
    est.config.steps = est.planned_steps = 1
    est._stages = est._plan_stages()
    est.fit(frames, kT, progress=False)  # fits the priors and the scale, one step
    est.planned_steps = 10**9  # then as many steps as the timing takes, in the same stage
    est._stages = est._plan_stages()
    x = est._prepare(frames) / est.scale

    def step():
        est._train_step(x)

    stage = est._stage(0)
    module = est._trained_module(stage)
    gen = torch.Generator().manual_seed(0)

    def network_only():
        est._loss(module, stage, x, gen)[0].backward()

    step_s = median_seconds(step, warmup, repeats)
    network_s = median_seconds(network_only, warmup, repeats)
    return {"network": network, "resolution": resolution, "beads": len(bead_types), "fp": fp, "batch": batch,
            "step_ms": 1e3 * step_s, "steps_per_s": 1.0 / step_s,
            "non_network_share": max(0.0, (step_s - network_s) / step_s)}  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=RESOLUTIONS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the README)")
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/network_cost"))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats = 8, 2
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"network cost: batch {args.batch_size}, {args.threads} thread(s), load average {load:.2f}")
    rows = []
    for resolution in args.resolutions:
        for fp in (False, True):
            for network in args.networks:
                rows.append(measure(network, resolution, fp, args.batch_size, 2, args.repeats))
                print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        gnn = next((r for r in rows if r["network"] == "gnn" and r["resolution"] == row["resolution"]
                    and r["fp"] == row["fp"]), None)  # fmt: skip
        row["speedup_vs_gnn"] = gnn["step_ms"] / row["step_ms"] if gnn else float("nan")
    lines = ["| network | beads | loss | step (ms) | steps/s | non-network share | x e3nn GNN |", "|---" * 7 + "|"]
    for r in rows:
        loss = "DSM + FP" if r["fp"] else "DSM"
        lines.append(f"| {r['network']} | {r['beads']} | {loss} | {r['step_ms']:.1f} | {r['steps_per_s']:.1f} | "
                     f"{100 * r['non_network_share']:.0f}% | {r['speedup_vs_gnn']:.1f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "network_cost.md").write_text(table + "\n")
    (args.out / "network_cost.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
