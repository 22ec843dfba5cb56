"""Batched shooting throughput on Mueller-Brown: one chain vs many chains moved together, side by side in one run.

Fixed-length shooting (default one-way, 200-step paths, dt from the system): every chain makes one warm-up move,
then ``--moves`` timed moves. Reported per chain count: trial paths per second, accepted paths per second,
energy evaluations per second (``term.evaluations``), the acceptance, and the ratio of each rate to the first
(smallest) chain count's. Initial paths from :func:`molscore.paths.fixed_length_paths`.

    python workflows/benchmarks/shooting_throughput.py                       # 1 vs 256 chains, CPU, ~1 min
    python workflows/benchmarks/shooting_throughput.py --device cuda --chains 1 256 4096
    python workflows/benchmarks/shooting_throughput.py --out workflows/results/paths/shooting_throughput.txt
"""

import argparse
import os
import time
from pathlib import Path

import torch

from molscore.paths import ForceFieldLangevin, ShootingSettings, ShootingTPS, fixed_length_paths, load_states
from molscore.system import load_system

SYSTEMS = ("mueller_brown",)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "paths" / "shooting_throughput.txt"


def throughput(tps: ShootingTPS, initial, moves: int) -> dict:
    """Time ``moves`` shooting moves on the chains of ``initial`` after one warm-up move."""
    tps.run(initial, 1, progress=False)  # warm-up: allocations, first-call overheads
    term = tps.term
    before = term.evaluations
    began = time.perf_counter()
    ensemble = tps.run(initial, moves, progress=False)
    seconds = time.perf_counter() - began
    trials = initial.n_paths * moves
    accepted = int(sum(a.sum() for a in ensemble.accepted))
    return {
        "chains": initial.n_paths,
        "seconds": seconds,
        "trial/s": trials / seconds,
        "accepted/s": accepted / seconds,
        "evals/s": (term.evaluations - before) / seconds,
        "acceptance": accepted / trials,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", default="mueller_brown", choices=SYSTEMS)
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 256], help="chain counts to compare")
    parser.add_argument("--moves", type=int, default=100, help="timed moves per chain count (after one warm-up)")
    parser.add_argument("--steps", type=int, default=200, help="path length, steps")
    parser.add_argument("--move", default="one-way", choices=("two-way", "one-way"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--out", nargs="?", const=str(DEFAULT_OUT), default=None,
                        help=f"also write the output to this text file (no value: {DEFAULT_OUT})")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    rows = _run(args, getattr(torch, args.dtype), emit)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    return rows


def _run(args, dtype, emit) -> list[dict]:
    system = load_system(args.system)
    _, states = load_states(system)
    a, b = states["A"], states["B"]
    device = torch.device(args.device)
    term = ForceFieldLangevin(system.potential.to(device), system.masses, system.kT, system.settings["friction"])
    dt = system.settings["timestep"]
    emit(f"torch {torch.__version__}, device {device}, {args.dtype}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    starts = system.reference_samples(20000, seed=0).to(device, dtype)
    began = time.perf_counter()
    initial, tried = fixed_length_paths(
        term, starts, a, b, args.steps, dt, max(args.chains), batch_size=4096, seed=0, progress=False
    )
    if initial.n_paths < max(args.chains):
        raise SystemExit(f"only {initial.n_paths} initial paths of {args.steps} steps found in {tried} tries")
    emit(f"{args.system}: {initial.n_paths} initial paths of {args.steps} steps (dt {dt} ps) from {tried} tries "
          f"in {time.perf_counter() - began:.1f} s; {args.move} shooting, {args.moves} timed moves + 1 warm-up")  # fmt: skip
    emit(" chains | trial paths/s | accepted paths/s | energy evals/s | acceptance | seconds")
    rows = []
    for c in args.chains:
        settings = ShootingSettings(n_steps=args.steps, dt=dt, move=args.move, seed=1)
        tps = ShootingTPS(term, a, b, settings)
        row = throughput(tps, initial.select(torch.arange(c, device=initial.lengths.device)), args.moves)
        rows.append(row)
        emit(f"{c:7d} | {row['trial/s']:13.1f} | {row['accepted/s']:16.1f} | {row['evals/s']:14.3g} | "
              f"{row['acceptance']:10.2f} | {row['seconds']:7.2f}")  # fmt: skip
    base = rows[0]
    for row in rows[1:]:
        line = f"ratio {row['chains']} / {base['chains']} chains: trial paths/s x{row['trial/s'] / base['trial/s']:.1f}, "
        line += f"energy evals/s x{row['evals/s'] / base['evals/s']:.1f}"
        if base["accepted/s"] > 0:
            line += f", accepted paths/s x{row['accepted/s'] / base['accepted/s']:.1f}"
        emit(line)
    return rows


if __name__ == "__main__":
    main()
