"""Cost of the equivariant GNN (network "gnn"): training step with and without FP, force throughput, memory, scaling.

Everything is measured in one run, on one device, with one network configuration (printed at the top), so the
ratios in each table compare numbers taken side by side:

(a) training step of alanine dipeptide at 5 (backbone), 10 (heavy) and 22 (all-atom) beads, with the bead types
    of the resolution map and the energy parameterisation on a full graph: loss (DSM, or DSM + FP on
    ``fp_fraction`` of the batch, as ``ScoreEstimator`` does it) -> backward -> gradient clipping -> AdamW update.
    The ratio is the step time with FP divided by the step time without FP, same resolution and batch.
(b) force throughput: frames per second of ``DiffusionModel.forces`` (t = t_min) at batch 1, 64 and 512, and the
    per-frame speed-up of batching (frames/s at the largest batch over frames/s at batch 1).
(c) memory per frame of the training steps of (a): on CPU the increase of the resident set's high-water mark
    (VmHWM, reset through /proc/self/clear_refs after a tiny warm-up step and malloc_trim) during one step,
    divided by the batch size; each configuration runs in a fresh subprocess by default. On CUDA it is
    ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
(d) radius-graph scaling: one energy + force evaluation of a single frame of N = 100, 1,000, 10,000 beads at
    random positions in a cube at unit density (open boundaries), cutoff giving ~24 neighbours per bead in the
    bulk, and the graph construction alone (the network's graph as used, dense below
    ``BRUTE_FORCE_MAX_PAIRS``, and vesin cell lists at every N); the log-log slope of time against N.

Times are medians over repeats after warm-up. Results are printed and written to ``--out`` as CSV and Markdown.
torch's thread count is left at its default unless ``--threads`` is given. On a shared CPU whose load exceeds its
cores, OpenMP's spin-waiting slows this many-small-op network by up to ~30x (measured on 2 cores, load 4); run
such machines with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``); the header prints the load and the setting.

    python workflows/benchmarks/gnn_cost.py                  # full run (8-12 min on 2 busy CPU cores)
    python workflows/benchmarks/gnn_cost.py --quick          # < 60 s smoke run (tests/test_benchmarks_gnn.py)
    python workflows/benchmarks/gnn_cost.py --device cuda --dtype float64
"""

import argparse
import csv
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from molscore.diffusion import VPSDE
from molscore.geometry import remove_centroid
from molscore.models import DiffusionModel, EnergyScore, ModelSpec, build_score_model
from molscore.nn import EquivariantGNN
from molscore.nn.graph import BRUTE_FORCE_MAX_PAIRS, _vesin_radius_graph
from molscore.train.losses import loss_terms

NETWORK = {
    "hidden_irreps": "16x0e+4x0o+8x1o+4x1e",
    "n_layers": 2,
    "lmax": 1,
    "n_radial": 8,
    "radial_hidden": 64,
    "time_embedding_dim": 16,
    "reflection": "odd",
}
"""The network options of every model benchmarked here (a small CPU configuration)."""

RESOLUTIONS = ("backbone", "heavy", "all")
FP_WEIGHT, FP_STEP, GRAD_CLIP, LEARNING_RATE = 5e-4, 1e-2, 100.0, 1e-4
NEIGHBOURS = 24.0
"""Target neighbours per bead in the radius-graph systems (bulk, unit density): cutoff = (3 n / 4 pi)^(1/3)."""

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# timing and memory ---------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, warmup: int, repeats: int, budget: float | None = None, min_repeats: int = 3):
    """Median wall time of ``fn()`` in seconds and the number of timed calls.

    ``warmup`` untimed calls, then up to ``repeats`` timed ones; once the timed calls exceed ``budget`` seconds
    it stops after at least ``min(min_repeats, repeats)`` calls.
    """
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if budget is not None and sum(times) > budget and len(times) >= min(min_repeats, repeats):
            break
    return statistics.median(times), len(times)


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap pages to the OS and reset VmHWM to VmRSS; False where Linux /proc does not allow it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn, device) -> tuple[float, str]:
    """Peak memory increase (bytes) during ``fn()`` and how it was measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "cuda max_memory_allocated"
    reset = _reset_peak_rss()
    before = _proc_status_kb("VmRSS") if reset else _proc_status_kb("VmHWM")
    if before is None:  # no /proc (not Linux): the high-water mark of getrusage, which never resets
        import resource

        scale = 1 if platform.system() == "Darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        fn()
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before), "ru_maxrss increase"
    fn()
    method = "VmHWM - VmRSS (HWM reset)" if reset else "VmHWM increase (no reset: lower bound)"
    return 1024.0 * (_proc_status_kb("VmHWM") - before), method


# (a) + (c): training steps ---------------------------------------------------------------------------------
def training_worker(cfg: dict) -> dict:
    """One training configuration: memory of one step, then timed steps. ``cfg`` is JSON-serialisable."""
    device, dtype = torch.device(cfg["device"]), DTYPES[cfg["dtype"]]
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    n_beads = len(cfg["bead_types"])
    options = dict(cfg["network"], bead_types=cfg["bead_types"], graph="full")
    spec = ModelSpec(n_beads, 3, centred=True, parameterisation="energy", network="gnn", network_options=options)
    model = build_score_model(spec).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    sde, n_dof = VPSDE(), 3 * (n_beads - 1)
    structure = torch.tensor(cfg["positions"], dtype=dtype, device=device)  # (N, 3) diffusion coordinates

    def batch(size: int):
        gen = torch.Generator(device=device).manual_seed(cfg["seed"])
        x0 = remove_centroid(structure + 0.1 * torch.randn((size, n_beads, 3), generator=gen, dtype=dtype, device=device))
        t = sde.t_min + (1 - sde.t_min) * torch.rand(size, generator=gen, dtype=dtype, device=device)
        return x0, t, sde.noise(x0.shape, True, gen, dtype, device)

    def make_step(size: int):
        x0, t, eps = batch(size)
        fp_count = max(1, round(cfg["fp_fraction"] * size)) if cfg["fp_fraction"] > 0 else 0

        def step():  # as ScoreEstimator._train_step
            gen = torch.Generator(device=device).manual_seed(cfg["seed"])
            terms = loss_terms(model, sde, x0, t, eps, n_dof, True, fp_count, FP_STEP, gen)
            loss = terms.dsm.mean() + (FP_WEIGHT * terms.fp.mean() if terms.fp is not None else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            return float(loss.detach())

        return step

    make_step(2)()  # touches every code path (lazy initialisation, optimizer state) at negligible memory
    step = make_step(cfg["batch_size"])
    start = time.perf_counter()
    memory, method = peak_memory(step, device)  # this step is also the first warm-up of the timing
    slow = cfg["budget"] is not None and time.perf_counter() - start > cfg["budget"] / 6
    warmup = 0 if slow else cfg["warmup"] - 1  # steps of many seconds amortise any first-call cost already
    seconds, timed = median_time(step, device, warmup, cfg["repeats"], cfg["budget"])
    return {"seconds": seconds, "timed": timed, "memory_bytes": memory, "memory_method": method}


def run_training_config(cfg: dict, isolation: str) -> dict:
    if isolation == "inprocess":
        return training_worker(cfg)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# molecule ---------------------------------------------------------------------------------------------------
def alanine_resolutions(names) -> dict:
    """Resolution -> (bead types, structure positions (N, 3) nm centred, type names) of alanine dipeptide."""
    import mdtraj

    from molscore.data.resolution import select_beads
    from molscore.system import load_system

    system = load_system("alanine_dipeptide")
    xyz = mdtraj.load(str(system.structure)).xyz[0].astype(np.float64)
    out = {}
    for name in names:
        beads = select_beads(system.topology, name)
        pos = xyz[beads.indices]
        out[name] = {"bead_types": beads.bead_types, "positions": pos - pos.mean(0), "type_names": beads.type_names}
    return out, system.kT


def data_scale(positions: np.ndarray) -> float:
    """Scale of the diffusion coordinates, nm: RMS of the centred coordinates (as ScoreEstimator's default)."""
    return float(np.sqrt((positions**2).mean()))


# (b): forces ------------------------------------------------------------------------------------------------
def force_throughput(molecule: dict, kT: float, batches, args, device, dtype) -> list[dict]:
    rows = []
    for name, mol in molecule.items():
        n_beads = len(mol["bead_types"])
        torch.manual_seed(args.seed)
        options = dict(NETWORK, bead_types=mol["bead_types"], graph="full")
        spec = ModelSpec(n_beads, 3, centred=True, parameterisation="energy", network="gnn", network_options=options)
        model = DiffusionModel(spec, build_score_model(spec), VPSDE(), data_scale(mol["positions"]), kT).to(device, dtype)
        structure = torch.tensor(mol["positions"], dtype=dtype, device=device)
        base = None
        for size in batches:
            gen = torch.Generator(device=device).manual_seed(args.seed)
            pos = structure + 0.01 * torch.randn((size, n_beads, 3), generator=gen, dtype=dtype, device=device)

            def forces(pos=pos, model=model):
                with torch.no_grad():  # as in simulations: forces switch autograd on themselves
                    return model.forces(pos)

            seconds, timed = median_time(forces, device, args.warmup, args.force_repeats, 3.0)
            fps = size / seconds
            base = fps if base is None else base
            rows.append(
                {
                    "resolution": name,
                    "beads": n_beads,
                    "batch": size,
                    "ms_per_call": 1e3 * seconds,
                    "frames_per_s": fps,
                    "speedup_vs_first_batch": fps / base,
                    "timed": timed,
                }
            )
    return rows


# (d): radius-graph scaling ----------------------------------------------------------------------------------
def radius_scaling(sizes, args, device, dtype) -> tuple[list[dict], dict]:
    density = 1.0
    cutoff = (3 * NEIGHBOURS / (4 * math.pi * density)) ** (1 / 3)
    rows = []
    for n in sizes:
        torch.manual_seed(args.seed)
        net = EquivariantGNN(n, output="energy", graph="radius", cutoff=cutoff, avg_neighbours=NEIGHBOURS, **NETWORK)
        model = EnergyScore(net, centred=False).to(device, dtype)
        box = (n / density) ** (1 / 3)
        gen = torch.Generator(device=device).manual_seed(args.seed)
        x = box * torch.rand((1, n, 3), generator=gen, dtype=dtype, device=device)
        t = torch.full((1,), VPSDE().t_min, dtype=dtype, device=device)

        def energy_forces(x=x, t=t, model=model):
            xg = x.detach().requires_grad_(True)
            energy = model.energy(xg, t)
            (grad,) = torch.autograd.grad(energy.sum(), xg)
            return energy.detach(), -grad

        edges = net.graph(x).shape[1]
        # graph_ms counts the graph as the network builds it; cell_list_ms is vesin's cell list at every N
        graph_s, _ = median_time(lambda x=x, net=net: net.graph(x), device, args.warmup, args.scaling_repeats, 2.0)
        vesin_s, _ = median_time(lambda x=x: _vesin_radius_graph(x, cutoff), device, args.warmup, args.scaling_repeats, 2.0)
        total_s, timed = median_time(energy_forces, device, args.warmup, args.scaling_repeats, 10.0)
        rows.append(
            {
                "beads": n,
                "box": box,
                "cutoff": cutoff,
                "mean_neighbours": edges / n,
                "graph_method": "dense" if n * n <= BRUTE_FORCE_MAX_PAIRS else "vesin",
                "graph_ms": 1e3 * graph_s,
                "cell_list_ms": 1e3 * vesin_s,
                "energy_forces_ms": 1e3 * total_s,
                "us_per_bead": 1e6 * total_s / n,
                "timed": timed,
            }
        )
    log_n = np.log([r["beads"] for r in rows])
    exponents = {
        key: float(np.polyfit(log_n, np.log([r[key] for r in rows]), 1)[0]) if len(rows) > 1 else float("nan")
        for key in ("energy_forces_ms", "graph_ms", "cell_list_ms")
    }
    return rows, exponents


# output -----------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value):
            return f"{value:g}"
        return f"{value:.3g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict], columns: list[str]) -> tuple[str, str]:
    """Plain aligned text and a Markdown table of ``rows``."""
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    text = [" ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    text += [" ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    md = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(text), "\n".join(md)


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# main -------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--quick", action="store_true", help="tiny batches, repeats and sizes (< 60 s)")
    parser.add_argument("--out", default="runs/benchmarks/gnn_cost", help="folder for the CSV and Markdown tables")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=RESOLUTIONS)
    parser.add_argument("--batch-size", type=int, help="training batch (default 256; quick 8)")
    parser.add_argument("--fp-fractions", type=float, nargs="+", default=[0.25, 1.0], help="FP shares to time")
    parser.add_argument("--force-batches", type=int, nargs="+", help="default 1 64 512 (quick 1 8 64)")
    parser.add_argument("--sizes", type=int, nargs="+", help="radius-graph systems (default 100 1000 10000)")
    parser.add_argument("--isolation", choices=("subprocess", "inprocess"), help="where training configs run "
                        "(default subprocess: fresh process per configuration; quick: inprocess)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.batch_size = args.batch_size or (8 if quick else 256)
    args.force_batches = args.force_batches or ([1, 8, 64] if quick else [1, 64, 512])
    args.sizes = args.sizes or ([100, 1000] if quick else [100, 1000, 10_000])
    args.isolation = args.isolation or ("inprocess" if quick else "subprocess")
    args.warmup = 1 if quick else 2
    args.train_repeats, args.train_budget = (2, 1.0) if quick else (7, 30.0)
    args.force_repeats = 2 if quick else 20
    args.scaling_repeats = 2 if quick else 7
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(training_worker(json.loads(args.worker))))
        return {}
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    header = [
        f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"dtype {args.dtype}, torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load} at start, "
        f"environment {env or '{}'}",
        f"network 'gnn', energy parameterisation: {json.dumps(NETWORK)}",
        f"{'quick' if args.quick else 'full'} run; times are medians after {args.warmup} warm-up call(s) (training steps: "
        f"a step at batch 2, then the memory-measuring step, then {args.warmup - 1} more unless that step took > "
        f"{args.train_budget / 6:.3g} s)",
    ]
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1)
    if busy and torch.get_num_threads() > 1 and not passive:
        header.append(
            "WARNING: the machine is busy (load average >= CPUs) and OpenMP threads spin-wait: this GNN's many small "
            "ops can then run ~30x slower than with OMP_WAIT_POLICY=PASSIVE or --threads 1; treat the times with care"
        )
    print("\n".join(header))
    molecule, kT = alanine_resolutions(args.resolutions)
    sections = {}

    # (a) and (c)
    training = []
    for name, mol in molecule.items():
        scale = data_scale(mol["positions"])
        base = None
        for fraction in [0.0, *args.fp_fractions]:
            cfg = {
                "bead_types": mol["bead_types"],
                "positions": (mol["positions"] / scale).tolist(),
                "network": NETWORK,
                "batch_size": args.batch_size,
                "fp_fraction": fraction,
                "warmup": args.warmup,
                "repeats": args.train_repeats,
                "budget": args.train_budget,
                "device": args.device,
                "dtype": args.dtype,
                "seed": args.seed,
                "threads": args.threads,
            }
            result = run_training_config(cfg, args.isolation)
            base = result["seconds"] if base is None else base
            n_beads = len(mol["bead_types"])
            training.append(
                {
                    "resolution": name,
                    "beads": n_beads,
                    "edges_per_frame": n_beads * (n_beads - 1),
                    "batch": args.batch_size,
                    "fp_fraction": fraction,
                    "step_ms": 1e3 * result["seconds"],
                    "ratio_to_no_fp": result["seconds"] / base,
                    "ms_per_frame": 1e3 * result["seconds"] / args.batch_size,
                    "peak_mem_MB": result["memory_bytes"] / 2**20,
                    "mem_per_frame_kB": result["memory_bytes"] / args.batch_size / 2**10,
                    "timed": result["timed"],
                    "memory_method": result["memory_method"],
                }
            )
    methods = sorted({r["memory_method"] for r in training})
    sections["training"] = (
        f"(a) training step at batch {args.batch_size} (DSM [+ {FP_WEIGHT:g} * FP on fp_fraction of the batch] -> "
        "backward -> clip -> AdamW); fp_fraction 0 = no FP; ratio = step time / no-FP step time, same resolution",
        training,
        ["resolution", "beads", "edges_per_frame", "batch", "fp_fraction", "step_ms", "ratio_to_no_fp", "ms_per_frame"]
        + ["timed"],
    )
    sections["memory"] = (
        f"(c) peak memory of one training step, per frame of the batch ({args.batch_size}); measured as {', '.join(methods)}"
        f" in {'a fresh subprocess per configuration' if args.isolation == 'subprocess' else 'this process'}, "
        "after a warm-up step at batch 2 (on CPU: resident set incl. allocator overhead, not just tensors)",
        training,
        ["resolution", "beads", "fp_fraction", "peak_mem_MB", "mem_per_frame_kB"],
    )
    _print_section(*sections["training"])
    _print_section(*sections["memory"])

    # (b)
    forces = force_throughput(molecule, kT, args.force_batches, args, device, dtype)
    sections["forces"] = (
        f"(b) DiffusionModel.forces at t = t_min (energy + autograd), batches {args.force_batches}; "
        f"speed-up = frames/s over frames/s at batch {args.force_batches[0]}",
        forces,
        ["resolution", "beads", "batch", "ms_per_call", "frames_per_s", "speedup_vs_first_batch", "timed"],
    )
    _print_section(*sections["forces"])

    # (d)
    scaling, exponents = radius_scaling(args.sizes, args, device, dtype)
    exps = ", ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in exponents.items())
    sections["scaling"] = (
        f"(d) radius graph, one frame at unit density (open boundaries), cutoff {scaling[0]['cutoff']:.3f} "
        f"(~{NEIGHBOURS:g} neighbours in the bulk): energy + forces (graph included), graph as the network builds it "
        f"(dense below N^2 = {BRUTE_FORCE_MAX_PAIRS}, else vesin), vesin cell list alone; "
        f"log-log slopes of time vs N: {exps}",
        scaling,
        ["beads", "box", "mean_neighbours", "graph_method", "graph_ms", "cell_list_ms", "energy_forces_ms", "us_per_bead"],
    )
    _print_section(*sections["scaling"])

    elapsed = time.perf_counter() - start
    print(f"\ntotal benchmark time {elapsed:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "training.csv", training)
    write_csv(out / "forces.csv", forces)
    write_csv(out / "scaling.csv", scaling)
    markdown = ["# GNN cost (workflows/benchmarks/gnn_cost.py)", "", *(f"- {line}" for line in header)]
    markdown.append(f"- total benchmark time {elapsed:.1f} s")
    for title, rows, columns in sections.values():
        markdown += ["", f"## {title}", "", table(rows, columns)[1]]
    (out / "gnn_cost.md").write_text("\n".join(markdown) + "\n")
    print(f"tables written to {out}/")
    return {"training": training, "forces": forces, "scaling": scaling, "exponents": exponents, "seconds": elapsed}


def _print_section(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}\n{table(rows, columns)[0]}")


if __name__ == "__main__":
    main()
