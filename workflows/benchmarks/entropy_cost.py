"""Cost of entropy-production estimators: samples and seconds to reach 5% error, score-based vs path, in one run.

One steady-state run of the bead chain (default: five beads, T = 1 ... 10, exact sigma 0.62982) is cut into
growing prefixes. For each prefix the path (Stratonovich) estimator uses all its windows; the score-based
estimator learns the steady-state score (DSM + stationary FP residual, fixed training steps) on the first half
of the prefix's frames and evaluates E[v^T D^-1 v] on the second half. Costs are production steps (replicas x
steps) and seconds (the prefix's share of the simulation, plus training and evaluation for the score). The
line per estimator at which its standard error first drops to 5% of the exact value is printed with the ratio
of the two costs. The score-based value also carries a bias (printed as the deviation from exact), which
more samples do not remove; the path estimator has none beyond the O(dt) of the integrator.

    python workflows/benchmarks/entropy_cost.py                  # ~10 minutes on 2 CPU cores
    python workflows/benchmarks/entropy_cost.py --system bead_chain_2 --windows 2000
"""

import argparse
import time

import torch

from molscore.nonequilibrium import load_driven_system, path_estimate, run_steady_state, score_based
from molscore.nonequilibrium.learned_score import fit_steady_state_score


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="bead_chain_5")
    parser.add_argument("--replicas", type=int, default=256)
    parser.add_argument("--windows", type=int, default=8000, help="windows of --stride steps in the longest prefix")
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--prefixes", type=int, default=6, help="number of prefixes, each twice the previous")
    parser.add_argument("--score-steps", type=int, default=1500)
    parser.add_argument("--target", type=float, default=0.05, help="relative standard error to reach")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    system, _ = load_driven_system(args.system)
    print(f"{system.name}: {system.description}; exact sigma {system.exact:.5g}")
    run = run_steady_state(system, args.replicas, args.windows, args.stride)
    print(f"simulation: {args.replicas} replicas x {args.windows * args.stride} steps in {run.seconds:.1f} s "
          f"({run.n_steps / run.seconds:.3g} replica-steps/s)\n")  # fmt: skip
    sizes = sorted({max(8, args.windows >> k) for k in range(args.prefixes)})
    header = (
        f"{'estimator':>12} {'replica-steps':>14} {'seconds':>9} {'sigma':>9} {'std err':>9} {'rel err':>8} {'deviation':>9}"
    )
    print(header)
    rows = []
    for n in sizes:
        part = run.first(n)
        steps = part.n_steps
        start = time.perf_counter()
        path = path_estimate(part.path_increments, part.window_time)
        rows.append(("path", steps, part.seconds + time.perf_counter() - start, path))
        half = n // 2
        start = time.perf_counter()
        score, _ = fit_steady_state_score(system, part.samples[:half], steps=args.score_steps, progress=False)
        est = score_based(system.drift, system.diffusion, score, part.samples[half:])
        rows.append(("score-based", steps, part.seconds + time.perf_counter() - start, est))
        for name, s, sec, e in rows[-2:]:
            print(f"{name:>12} {s:>14.3g} {sec:>9.1f} {e.value:>9.4f} {e.error:>9.4f} {e.error / system.exact:>8.1%} "
                  f"{(e.value - system.exact) / system.exact:>+9.1%}", flush=True)  # fmt: skip
    print()
    reached = {}
    for name in ("path", "score-based"):
        hit = [r for r in rows if r[0] == name and r[3].error <= args.target * system.exact]
        if hit:
            reached[name] = hit[0]
            _, s, sec, e = hit[0]
            deviation = (e.value - system.exact) / system.exact
            print(f"{name}: {args.target:.0%} standard error after {s:.3g} replica-steps, {sec:.1f} s "
                  f"(estimate {e.value:.4f} ± {e.error:.4f}, deviation from exact {deviation:+.1%})")  # fmt: skip
        else:
            print(f"{name}: {args.target:.0%} standard error NOT reached within {rows[-1][1]:.3g} replica-steps")
    if len(reached) == 2:
        p, q = reached["path"], reached["score-based"]
        print(f"ratio path / score-based: {p[1] / q[1]:.3g}x the samples, {p[2] / q[2]:.3g}x the seconds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
