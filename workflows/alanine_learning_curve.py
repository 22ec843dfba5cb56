"""Learning curve of one alanine-dipeptide variant: quality against training minutes, one run per budget.

Each budget is a complete run of ``workflows/alanine_dipeptide.py --train-minutes M`` (its own learning-rate
schedule planned to fit M minutes, not a snapshot of a longer run), in ``<out>/<M>min``, resumable. The curve
plots iid JS / floor, sim JS / floor and the force-field diagnostic error (kT) against the minutes of training
actually spent, and writes ``learning_curve.md`` / ``.csv`` / ``.png``: the trend a GPU run can extend.

    python workflows/alanine_learning_curve.py --minutes 2.5 5 10 20 --variant mixture_fp
    python workflows/alanine_learning_curve.py --minutes 1 2 --sim-minutes 0.5 --samples 500 --out /tmp/lc

A budget folder that already holds a finished run (e.g. a symlink to the full run's ``--out``) is reused.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import yaml

from molscore.analysis.plots import line_plot
from molscore.analysis.report import write_table


def _alanine_workflow():
    """workflows/alanine_dipeptide.py as a module (its configs and defaults are reused here)."""
    path = Path(__file__).resolve().parent / "alanine_dipeptide.py"
    spec = importlib.util.spec_from_file_location("alanine_dipeptide_workflow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workflow = _alanine_workflow()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0, 10.0, 20.0], help="training budgets")
    parser.add_argument("--variant", default="mixture_fp", choices=list(workflow.VARIANTS))
    parser.add_argument("--sim-minutes", type=float, default=5.0, help="simulation budget per run (resumable)")
    parser.add_argument("--samples", type=int, default=None, help="diffusion samples per run (default: the full run's)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="cap on training steps (a test: also few sampler steps, 4 short uncompiled simulations)",
    )
    parser.add_argument("--out", default="runs/alanine_dipeptide/learning_curve")
    return parser.parse_args(argv)


def budget_folder(out: Path, minutes: float) -> Path:
    return out / f"{minutes:g}min"


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    rows = []
    for minutes in sorted(args.minutes):
        folder = budget_folder(out, minutes)
        run_args = ["--out", str(folder), "--variants", args.variant, "--train-minutes", f"{minutes:g}",
                    "--sim-minutes", f"{args.sim_minutes:g}"]  # fmt: skip
        run_args += ["--samples", str(args.samples)] if args.samples else []
        test = ["--steps", str(args.steps), "--sample-steps", "20", "--replicas", "4", "--sim-steps", "40", "--no-compile"]
        run_args += test if args.steps else []
        workflow.main(run_args)
        run_dir = folder / args.variant
        metrics = json.loads((run_dir / "metrics.json").read_text())
        summary = yaml.safe_load((run_dir / "train" / "summary.yaml").read_text())
        row = workflow.table_row(args.variant, metrics, summary)
        rows.append({"budget (min)": minutes, "train min": summary["train_seconds"] / 60} | row)
    md_path, _ = write_table(rows, out / "learning_curve")
    minutes = [r["train min"] for r in rows]
    curves = {
        "iid JS / floor": (minutes, [r["iid / floor"] for r in rows]),
        "sim JS / floor": (minutes, [r["sim / floor"] for r in rows]),
        "FF error (kT)": (minutes, [r["FF error (kT)"] for r in rows]),
    }
    line_plot(curves, out / "learning_curve.png", "training minutes (one CPU thread)", "ratio to floor / kT",
              title=f"alanine dipeptide, {workflow.LABELS[args.variant]}: learning curve", logy=True)  # fmt: skip
    print(md_path.read_text())
    return md_path


if __name__ == "__main__":
    main()
