"""Entropy production of the solvable driven systems: every estimator against the exact value.

For each system (``systems/<name>/driven.yaml``) and its equilibrium control this simulates the steady state
(overdamped Euler-Maruyama, replicas batched), then prints and writes, with standard errors:
the score-free drift identity, the Stratonovich path estimator, the score-based estimator with a steady-state
score learned by denoising score matching + stationary Fokker-Planck residual (raw, and with the control's
bias removed) and the TUR lower bound from a learned current. Per system a PNG shows where dissipation happens
(per particle) and, for 2-D and ring systems, the probability current.

    python workflows/entropy_production.py --quick                    # about 3 minutes on 2 CPU cores
    python workflows/entropy_production.py                            # full settings
    python workflows/entropy_production.py --systems active_particles --particles 64
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from molscore.nonequilibrium import load_driven_system
from molscore.nonequilibrium.plots import plot_steady_state
from molscore.nonequilibrium.study import StudySettings, markdown_table, study

SYSTEMS = ["rotational_ou", "bead_chain_2", "bead_chain_5", "driven_ring", "active_particles"]
QUICK = {"replicas": 64, "windows": 400, "score_steps": 300, "tur_steps": 50, "identity_frames": 4000}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, help="names under systems/ with a driven.yaml")
    parser.add_argument("--quick", action="store_true", help="short runs (minutes): a smoke test, wide error bars")
    parser.add_argument("--particles", type=int, help="number of active particles (active_particles only)")
    parser.add_argument("--replicas", type=int, help="override the replicas of every system")
    parser.add_argument("--windows", type=int, help="override the windows (of `stride` steps) of every system")
    parser.add_argument("--score-steps", type=int, help="training steps of the steady-state score")
    parser.add_argument("--fp-weight", type=float, default=10.0, help="weight of the stationary FP residual (0: off)")
    parser.add_argument("--out", default="entropy_runs", help="output folder")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.systems:
        overrides = {"n_particles": args.particles} if args.particles and name == "active_particles" else {}
        system, run = load_driven_system(name, **overrides)
        settings = StudySettings(fp_weight=args.fp_weight)
        known = {f.name for f in dataclasses.fields(StudySettings)}
        settings = dataclasses.replace(settings, **{k: v for k, v in run.items() if k in known})
        if args.quick:
            settings = dataclasses.replace(settings, **QUICK)
        for key in ("replicas", "windows", "score_steps"):
            if getattr(args, key) is not None:
                setattr(settings, key, getattr(args, key))
        print(
            f"{system.name}: {system.description}; {settings.replicas} replicas x {settings.windows * settings.stride} steps"
        )
        start = time.perf_counter()
        result = study(system, settings)
        result.seconds["total"] = time.perf_counter() - start
        results.append(result)
        plot_steady_state(system, result.score, result.run.samples[len(result.run.samples) // 2 :],
                          result.estimates["score"].per_dof, out / f"{system.name}.png")  # fmt: skip
        (out / f"{system.name}.json").write_text(
            json.dumps({**result.as_dict(), "settings": dataclasses.asdict(settings)}, indent=1)
        )
        print(markdown_table([result]) + f"\n({result.seconds['total']:.0f} s)\n", flush=True)
        (out / "table.md").write_text(markdown_table(results) + "\n")
    print(markdown_table(results))
    print(f"\nwritten to {out}/ (table.md, <system>.json, <system>.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
