"""Throughput of the learned force field: batched Langevin replicas vs one at a time, vs OpenMM, and diffusion
sampling vs MD's decorrelated frames. All numbers measured side by side in one run, on one model.

(a) aggregate simulated ns/day of B batched BAOAB replicas (B = 1, 64, 512) with a 5-bead energy model (the
    GNN, or the model passed), and its ratio to a loop that steps the same B replicas one at a time;
(b) the ratio of (a) to OpenMM running the classical all-atom force field of the data (amber99sb-ildn + OBC,
    1 fs, Reference platform, one process) on this machine;
(c) diffusion-sampler throughput in independent samples per second vs MD's decorrelated frames per second
    (MD frames per second / integrated autocorrelation time of the phi > 0 basin indicator of the reference MD).

    python workflows/benchmarks/langevin_throughput.py [--model runs/.../model.safetensors] [--compile]
    python workflows/benchmarks/langevin_throughput.py --quick      # small sizes, < 1 min

Without ``--model`` an untrained network of the same architecture is timed (the cost does not depend on the
weights); pass a trained model to time exactly what a study uses.
"""

import argparse
import os
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import torch
from openmm import unit

from molscore.analysis.autocorrelation import integrated_autocorrelation_time
from molscore.analysis.collective_variables import compute_cvs
from molscore.data.resolution import select_beads
from molscore.data.trajectories import md_replica_files
from molscore.diffusion import VPSDE
from molscore.dynamics import BAOAB, SeededNoise, Simulation, State, Underdamped
from molscore.interfaces.openmm_md import openmm_system
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.sampling import sample
from molscore.system import load_system

REFERENCE_MD = Path(__file__).resolve().parents[2] / "systems" / "alanine_dipeptide" / "reference_md"
NETWORK = {"hidden_irreps": "16x0e+4x0o+8x1o+4x1e", "n_layers": 2}


def backbone_model(path, dtype) -> tuple[DiffusionModel, np.ndarray, torch.Tensor]:
    """The model (trained from ``path``, or untrained), a backbone start frame (5, 3) nm and bead masses."""
    system = load_system("alanine_dipeptide")
    traj = mdtraj.load(str(system.structure))
    beads = select_beads(traj.topology, "backbone")
    masses = torch.tensor([a.element.mass for a in beads.topology.atoms], dtype=torch.float64)
    start = traj.xyz[0][beads.indices]
    if path:
        return DiffusionModel.load(path, dtype=dtype), start, masses
    spec = ModelSpec(5, 3, network="gnn", network_options={**NETWORK, "bead_types": beads.bead_types})
    return DiffusionModel(spec, build_score_model(spec, dtype), VPSDE(), scale=0.15, kT=system.kT), start, masses


def ns_per_day(force_fn, start, masses, replicas: int, steps: int, dt: float, dtype) -> float:
    """Aggregate simulated ns/day of ``replicas`` batched BAOAB replicas (median of 3 timed runs)."""
    term = Underdamped(force_fn, masses, load_system("alanine_dipeptide").kT, 1.0)
    pos = torch.as_tensor(np.repeat(start[None], replicas, 0), dtype=dtype)
    sim = Simulation(term, BAOAB(), State(pos), dt, SeededNoise(0))
    sim.run(3, progress=False)  # warm-up (and compilation, if any)
    times = []
    for _ in range(3):
        began = time.perf_counter()
        sim.run(steps, progress=False)
        times.append(time.perf_counter() - began)
    return replicas * steps * dt / 1000 / np.median(times) * 86400


def ns_per_day_loop(force_fn, start, masses, replicas: int, steps: int, dt: float, dtype) -> float:
    """The same replicas stepped one at a time (a Python loop over single-replica simulations)."""
    term = Underdamped(force_fn, masses, load_system("alanine_dipeptide").kT, 1.0)
    sims = [Simulation(term, BAOAB(), State(torch.as_tensor(start[None], dtype=dtype)), dt, SeededNoise(r))
            for r in range(replicas)]  # fmt: skip
    for sim in sims:
        sim.run(1, progress=False)
    began = time.perf_counter()
    for _ in range(steps):
        for sim in sims:
            sim.run(1, progress=False)
    return replicas * steps * dt / 1000 / (time.perf_counter() - began) * 86400


def openmm_ns_per_day(ps: float) -> float:
    """OpenMM, all atoms, the data's force field, Reference platform, one process, 1 fs."""
    system = load_system("alanine_dipeptide")
    omm, _, positions = openmm_system(system)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.001 * unit.picosecond)
    context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    integrator.step(100)
    steps = int(ps * 1000)
    began = time.perf_counter()
    for _ in range(steps // 1000):  # a frame every ps, as the data were written
        integrator.step(1000)
        context.getState(getPositions=True)
    return steps / 1000 * 0.001 / (time.perf_counter() - began) * 86400


def md_decorrelation_ps(folder: Path) -> float:
    """Integrated autocorrelation time (ps) of the phi > 0 indicator over the replicas of an MD folder."""
    import yaml

    system = load_system("alanine_dipeptide")
    topology = mdtraj.load_topology(str(folder / "topology.pdb"))
    interval = yaml.safe_load((folder / "manifest.yaml").read_text()).get("export", {}).get("frame_interval_ps", 1.0)
    series = []
    for files in md_replica_files(folder):
        traj = mdtraj.load([str(f) for f in files], top=topology)
        series.append((compute_cvs(traj, topology, system.collective_variables, ["phi"])[:, 0] > 0).astype(float))
    return integrated_autocorrelation_time(series) * float(interval)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="trained 5-bead model (default: untrained, same architecture)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--dt", type=float, default=0.002, help="time step of the learned force field, ps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the force field first")
    parser.add_argument("--samples", type=int, default=512, help="diffusion samples in (c)")
    parser.add_argument("--sample-steps", type=int, default=200, help="reverse-SDE steps in (c)")
    parser.add_argument("--md", default=str(REFERENCE_MD), help="MD folder for the decorrelation time in (c)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.steps, args.samples, args.sample_steps = [1, 8], 5, 32, 10
    dtype = torch.float32
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    model, start, masses = backbone_model(args.model, dtype)
    force_fn = model.force_field(compile=args.compile)  # compiled: once per batch size, in the warm-up
    label = f"5-bead {model.spec.network} energy model" + (" (compiled)" if args.compile else "")
    print(f"(a) Langevin (BAOAB, dt {args.dt * 1000:g} fs), {label}")
    print("replicas | batched ns/day | one-at-a-time ns/day | ratio")
    batched = {}
    for b in args.batches:
        batched[b] = ns_per_day(force_fn, start, masses, b, args.steps, args.dt, dtype)
        loop_steps = max(2, args.steps // max(1, b // 8))
        loop = ns_per_day_loop(force_fn, start, masses, b, loop_steps, args.dt, dtype) if b > 1 else batched[b]
        print(f"{b:8d} | {batched[b]:14.2f} | {loop:20.2f} | {batched[b] / loop:5.1f}")
    openmm_rate = openmm_ns_per_day(2.0 if args.quick else 20.0)
    best = max(batched, key=batched.get)
    print(f"(b) OpenMM all-atom amber99sb-ildn + OBC, Reference, 1 fs, one process: {openmm_rate:.0f} ns/day; "
          f"learned force field with {best} replicas / OpenMM = {batched[best] / openmm_rate:.2f}")  # fmt: skip
    began = time.perf_counter()
    sample(model, args.samples, "sde", args.sample_steps, batch_size=args.samples, seed=0, progress=False)
    per_second = args.samples / (time.perf_counter() - began)
    tau_ps = md_decorrelation_ps(Path(args.md))
    md_frames = openmm_rate * 1000 / 86400  # ps of MD per second
    print(f"(c) diffusion sampler ({args.sample_steps} reverse-SDE steps, batch {args.samples}): {per_second:.1f} "
          f"independent samples/s; MD: {md_frames:.1f} ps/s / tau(phi > 0) {tau_ps:.0f} ps = "
          f"{md_frames / tau_ps:.4f} decorrelated frames/s; ratio {per_second / (md_frames / tau_ps):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
