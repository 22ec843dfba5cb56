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
import csv
import subprocess
import sys
from pathlib import Path

from molscore.analysis.plots import line_plot
from molscore.analysis.report import write_table

WORKFLOW = Path(__file__).resolve().parent / "alanine_dipeptide.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0, 10.0, 20.0], help="training budgets")
    parser.add_argument("--variant", default="mixture_fp", help="a variant of alanine_dipeptide.py (--variants)")
    parser.add_argument("--sim-minutes", type=float, default=5.0, help="simulation budget per run (resumable)")
    parser.add_argument("--samples", type=int, default=None, help="diffusion samples per run (default: the full run's)")
    parser.add_argument("--steps", type=int, default=None, help="cap on training steps (a test: also few sampler "
                        "steps, 4 short uncompiled simulations)")  # fmt: skip
    parser.add_argument("--out", default="runs/alanine_dipeptide/learning_curve")
    return parser.parse_args(argv)


def run_budget(args, folder: Path, minutes: float) -> dict:
    """Run (or resume) the workflow at one training budget; its table row for the variant."""
    command = [sys.executable, str(WORKFLOW), "--out", str(folder), "--variants", args.variant,
               "--train-minutes", f"{minutes:g}", "--sim-minutes", f"{args.sim_minutes:g}"]  # fmt: skip
    command += ["--samples", str(args.samples)] if args.samples else []
    test = ["--steps", str(args.steps), "--sample-steps", "20", "--replicas", "4", "--sim-steps", "40", "--no-compile"]
    command += test if args.steps else []
    subprocess.run(command, check=True)
    with open(folder / "table.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    return {"budget (min)": minutes, "train min": float(row["train s"]) / 60} | row


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    rows = [run_budget(args, out / f"{m:g}min", m) for m in sorted(args.minutes)]
    md_path, _ = write_table(rows, out / "learning_curve")

    def column(key):
        return [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows]

    minutes = column("train min")
    curves = {key: (minutes, column(key)) for key in ("iid / floor", "sim / floor", "FF error (kT)")}
    line_plot(curves, out / "learning_curve.png", "training minutes (one CPU thread)", "ratio to floor / kT",
              title=f"alanine dipeptide, {rows[0]['model']}: learning curve", logy=True)  # fmt: skip
    print(md_path.read_text())
    return md_path


if __name__ == "__main__":
    main()
