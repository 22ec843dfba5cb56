"""Cost of the Fokker-Planck regulariser: training-step time with FP divided by without, same batch.

A step is loss (DSM, or DSM + FP) -> backward -> AdamW update. The reference implementation paid 5-7x;
molscore evaluates the DSM batch and the FP probe points in one forward and one backward pass.

    python workflows/benchmarks/fp_overhead.py
"""

import argparse
import time

import torch

from molscore.diffusion import VPSDE
from molscore.models import ModelSpec, build_score_model
from molscore.train.losses import loss_terms


def step_time(model, optimizer, x0, t, eps, n_dof, centred, fp_count, fp_weight, repeats):
    sde = VPSDE()

    def one_step():
        terms = loss_terms(model, sde, x0, t, eps, n_dof, centred, fp_count, 1e-2, torch.Generator().manual_seed(0))
        loss = terms.dsm.mean() + (fp_weight * terms.fp.mean() if terms.fp is not None else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        one_step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # median


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {
        "Mueller-Brown MLP 92x3 (N=1, d=2)": ModelSpec(1, 2, centred=False, network_options={"hidden": [92] * 3}),
        "MLP 256x3 on 22 atoms (N=22, d=3)": ModelSpec(22, 3, centred=True, network_options={"hidden": [256] * 3}),
    }
    print(f"{'model':40s} {'fp_fraction':>11s} {'no FP (ms)':>11s} {'FP (ms)':>9s} {'ratio':>6s}")
    for name, spec in cases.items():
        model = build_score_model(spec)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        shape = (args.batch_size, spec.n_particles, spec.dim)
        x0, eps = torch.randn(shape), torch.randn(shape)
        t = torch.rand(args.batch_size) * (1 - 1e-5) + 1e-5
        n_dof = spec.dim * (spec.n_particles - int(spec.centred))
        base = step_time(model, optimizer, x0, t, eps, n_dof, spec.centred, 0, 0.0, args.repeats)
        for fraction in (1.0, 0.25):
            count = round(fraction * args.batch_size)
            with_fp = step_time(model, optimizer, x0, t, eps, n_dof, spec.centred, count, 5e-4, args.repeats)
            print(f"{name:40s} {fraction:11.2f} {1e3 * base:11.2f} {1e3 * with_fp:9.2f} {with_fp / base:6.2f}")


if __name__ == "__main__":
    main()
