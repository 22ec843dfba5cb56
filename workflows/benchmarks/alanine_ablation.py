"""One component at a time: train a 5-bead alanine-dipeptide energy model for a fixed number of steps with one
choice swapped (network, p(t), FP settings, time-feature floor) and print what it learned: iid JS of reverse-SDE
samples against the test replicas (beside the training-draw floor) and the force-field diagnostic's error.

    python workflows/benchmarks/alanine_ablation.py                                  # the workflow's choices
    python workflows/benchmarks/alanine_ablation.py --network mlp                    # flattened coordinates
    python workflows/benchmarks/alanine_ablation.py --time-sampling uniform          # t uniform on [t_min, 1]
    python workflows/benchmarks/alanine_ablation.py --fp 5e-4 --fp-time-sampling uniform --fp-group 1 --fp-power 0

Each run is ~1-2 minutes of training at 2,000 steps on one CPU thread; results are appended to ``--log`` (JSON
lines) so several runs form one table.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

NETWORK_OPTIONS = {
    "bondgraph_mlp": {"hidden": [128, 128, 128], "sigma_floor": 0.3},
    "bondgraph": {"hidden": 32, "n_layers": 2},
    "mlp": {"hidden": [128, 128, 128]},
    "gnn": {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2},
}
BONDS = [[0, 1], [1, 2], [2, 3], [3, 4]]
TORSIONS = {"phi": [0, 1, 2, 3], "psi": [1, 2, 3, 4]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="bondgraph_mlp", choices=list(NETWORK_OPTIONS))
    parser.add_argument("--sigma-floor", type=float, default=None, help="bond-graph networks' time-feature floor")
    parser.add_argument("--mixture", action="store_true", help="experts on [0, 0.1], [0.1, 0.6], [0.6, 1]")
    parser.add_argument("--boundaries", type=float, nargs=2, default=[0.1, 0.6], help="with --mixture: expert bounds")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--time-sampling", default="log_sigma", choices=["uniform", "log_sigma"])
    parser.add_argument("--log-sigma-min", type=float, default=0.1, help="lowest sigma of the log-uniform p(t) part")
    parser.add_argument("--angle-prior", action="store_true", help="add the fitted bond-angle prior")
    parser.add_argument("--fp", type=float, default=0.0, help="alpha_FP (0: no FP term)")
    parser.add_argument("--fp-time-sampling", default="log_sigma", choices=["uniform", "log_sigma"])
    parser.add_argument("--fp-group", type=int, default=4)
    parser.add_argument("--fp-power", type=float, default=4.0, help="FP weight sigma(t)^power")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="MD folder (default: the shipped reference MD)")
    parser.add_argument("--out", type=Path, default=Path("runs/alanine_ablation"))
    parser.add_argument("--log", type=Path, default=None, help="JSON-lines file to append to (default OUT/log.jsonl)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from molscore.analysis.distributions import compare_2d, training_draw_floor
    from molscore.analysis.forcefield_diagnostic import forcefield_diagnostic
    from molscore.geometry import dihedral
    from molscore.models import ModelSpec
    from molscore.pipeline import load_run_config, stages
    from molscore.sampling import sample
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    args = parse_args(argv)
    torch.set_num_threads(1)
    data_dir = args.out / "data"
    if not (data_dir / "test.npy").exists():  # the workflow's split of the shipped MD (whole replicas held out)
        source = args.data or Path(__file__).resolve().parents[2] / "systems" / "alanine_dipeptide" / "reference_md"
        stages.prepare_data(load_run_config({
            "system": "alanine_dipeptide", "run_dir": str(args.out),
            "data": {"source": str(source), "resolution": "backbone", "n_validation_replicas": 4, "n_test_replicas": 8},
        }))  # fmt: skip
    train, test = (torch.as_tensor(np.load(data_dir / f"{name}.npy")) for name in ("train", "test"))
    options = dict(NETWORK_OPTIONS[args.network])
    if args.network.startswith("bondgraph"):
        options["bonds"] = BONDS
        if args.sigma_floor is not None:
            options["sigma_floor"] = args.sigma_floor
    mixture = list(args.boundaries) if args.mixture else []
    spec = ModelSpec(
        5, 3, True, "energy", args.network, options, mixture, bonds=BONDS, noise_prior=True, angle_prior=args.angle_prior
    )
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3, final_learning_rate=1e-4,
        time_sampling=args.time_sampling, log_sigma_min=args.log_sigma_min,
        fp_weight=args.fp, fp_fraction=0.25, fp_group=args.fp_group,
        fp_sigma_power=args.fp_power, fp_time_sampling=args.fp_time_sampling, validation_every=10**9, seed=args.seed,
    )  # fmt: skip
    began = time.perf_counter()
    model = ScoreEstimator(spec, config).fit(train, 2.494, progress=False).fetch_model()
    seconds = time.perf_counter() - began
    forcefield = forcefield_diagnostic(model, test, TORSIONS, BONDS, seed=args.seed)

    def angles(x):
        return np.stack([dihedral(torch.as_tensor(x), torch.tensor(q)).numpy() for q in TORSIONS.values()], 1)

    bounds = ((-np.pi, np.pi), (-np.pi, np.pi))
    iid = angles(sample(model, args.samples, "sde", 50, progress=False, time_grid="log_snr", corrector_steps=1))
    floor = training_draw_floor(angles(train), angles(test), args.samples, 64, bounds)
    result = {
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "log", "data")},
        "train_seconds": round(seconds, 1), "iid_js": compare_2d(iid, angles(test), 64, bounds)["js"],
        "iid_floor": floor["js_mean"], "iid_phi_positive": float((iid[:, 0] > 0).mean()),
        "forcefield_mae_kT": {label: summary["mae"] for label, summary in forcefield.items()},
    }  # fmt: skip
    print(json.dumps(result))
    log = args.log or args.out / "log.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
