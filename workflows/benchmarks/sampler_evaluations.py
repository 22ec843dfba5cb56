"""iid JS of a trained molecule model against the number of network evaluations per sample: reverse SDE on the
uniform and log-SNR time grids, with and without a Langevin corrector, and the probability-flow ODE.

Every row draws the same number of samples from the same model and compares their (phi, psi) histogram (64 x 64)
with the run's test replicas, beside the floor of that many random training frames (mean over 20 draws).

    python workflows/benchmarks/sampler_evaluations.py --run runs/alanine_dipeptide/backbone_quick/mixture_fp
"""

import argparse
import json
from pathlib import Path

import mdtraj
import numpy as np
import torch

CONFIGS = [  # (method, time grid, steps, corrector steps)
    ("sde", "uniform", 25, 0), ("sde", "uniform", 100, 0), ("sde", "uniform", 400, 0),
    ("sde", "log_snr", 25, 0), ("sde", "log_snr", 100, 0), ("sde", "log_snr", 400, 0),
    ("sde", "log_snr", 25, 1), ("sde", "log_snr", 50, 1), ("sde", "log_snr", 200, 1),
    ("ode", "log_snr", 25, 0), ("ode", "log_snr", 50, 0), ("ode", "log_snr", 200, 0),
    ("sde", "uniform", 100, 1), ("sde", "uniform", 100, 2), ("sde", "uniform", 300, 1), ("sde", "uniform", 300, 2),
    ("sde", "log_snr", 300, 2), ("sde", "edm", 100, 2), ("sde", "edm", 300, 2), ("ode", "edm", 200, 0),
    ("sde", "log_snr", 100, 1),
]  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a molecular run folder with model.safetensors")
    parser.add_argument("--system", default="alanine_dipeptide")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--configs", type=int, nargs="+", default=None, help="indices into CONFIGS (default all)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    from molscore.analysis.distributions import compare_2d, training_draw_floor
    from molscore.analysis.molecular import bond_length_w1, topology_bonds
    from molscore.models import DiffusionModel
    from molscore.pipeline.stages import observables
    from molscore.sampling import sample, score_evaluations
    from molscore.system import load_system

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.run / "model.safetensors").is_file():
        raise FileNotFoundError(f"{args.run} holds no model.safetensors; train one first (molscore train CONFIG)")
    system, model = load_system(args.system), DiffusionModel.load(args.run / "model.safetensors")
    hist_range = system.settings.get("histogram_range")
    test_xyz = np.load(args.run / "data" / "test.npy")
    test = observables(system, test_xyz, args.run)
    bonds = topology_bonds(mdtraj.load_topology(str(args.run / "data" / "beads.pdb")))
    train = observables(system, np.load(args.run / "data" / "train.npy"), args.run)
    floor = training_draw_floor(train, test, args.samples, 64, hist_range)
    rows = []
    for index in args.configs if args.configs is not None else range(len(CONFIGS)):
        method, grid, steps, corrector = CONFIGS[index]
        x = sample(model, args.samples, method, steps, progress=False, time_grid=grid, corrector_steps=corrector)
        xyz = x.cpu().numpy()
        angles = observables(system, xyz, args.run)
        js = compare_2d(angles, test, 64, hist_range)["js"]
        rows.append({"method": method, "time_grid": grid, "steps": steps, "corrector_steps": corrector,
                     "evaluations": score_evaluations(method, steps, corrector), "iid_js": js,
                     "floor": floor["js_mean"], "ratio": js / floor["js_mean"],
                     "phi_positive": float((angles[:, 0] > 0).mean()),
                     "bond_w1_nm": float(bond_length_w1(xyz, test_xyz[::10], bonds).mean())})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"iid JS against network evaluations per sample ({args.samples} samples; floor "
             f"{floor['js_mean']:.4f} +- {floor['js_std']:.4f}: as many random training frames)", "",
             f"test MD: phi > 0 in {(test[:, 0] > 0).mean():.4f}", "",
             "| method | grid | steps | corrector | evaluations | iid JS | / floor | phi > 0 | bond W1 (nm) |",
             "|---" * 9 + "|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['method']} | {r['time_grid']} | {r['steps']} | {r['corrector_steps']} | "
                     f"{r['evaluations']} | {r['iid_js']:.4f} | {r['ratio']:.2f} | {r['phi_positive']:.4f} | "
                     f"{r['bond_w1_nm']:.5f} |")  # fmt: skip
    print("\n".join(lines))
    (args.run / "sampler_evaluations.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
