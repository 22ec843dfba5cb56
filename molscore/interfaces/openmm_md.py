"""Reference MD with OpenMM: independent Langevin replicas written as resumable DCD chunks.

Layout of ``out_dir``::

    manifest.yaml                      settings; a restart with other settings raises instead of mixing data
    topology.pdb                       minimised structure: the topology of every chunk and every replica's start
    timing.yaml                        throughput of the latest call (ns/day)
    replica_000/chunk_000000.dcd ...   a frame every ``frame_interval`` ps after equilibration (DCD: Å on disk)
    replica_000/state.xml              OpenMM State (positions, velocities, step count) after the last saved chunk

Chunks and states are written to hidden temporary files and renamed, so no partial file is ever visible. A chunk
is renamed before its state; if a run dies in between, the resumed run discards that chunk and regenerates it.
Chunk ``c`` of replica ``r`` starts from the saved state with Langevin noise seeded by ``(seed, r, c)``, so a killed
and resumed run reproduces an uninterrupted one exactly (Reference platform). Integration is OpenMM's
LangevinMiddleIntegrator (BAOAB-like, SCIENCE.md section 3) with the timestep, friction and temperature of the system.
"""

import multiprocessing
import os
import queue as queue_module
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openmm
import yaml
from openmm import app, unit

from molscore import __version__
from molscore.data.trajectories import dcd_frames
from molscore.files import CorruptFileError, folder_lock

if TYPE_CHECKING:
    import mdtraj

    from molscore.system import System

NONBONDED = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME")
CONSTRAINTS = {None: None, "none": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds, "HAngles": app.HAngles}
# a restart may grow replicas and length and change platform; anything else changes the ensemble or the layout
FIXED_KEYS = (
    "system", "variant", "n_atoms", "seed", "equilibration_ps", "frame_interval_ps", "timestep_ps", "friction_per_ps",
    "temperature_K", "forcefield", "nonbonded", "constraints", "hydrogen_mass", "chunk_frames",
)  # fmt: skip


def openmm_system(system: "System") -> tuple[openmm.System, app.Topology, unit.Quantity]:
    """Build the OpenMM system of a molecule from its definition's ``md`` settings.

    Parameters
    ----------
    system : a molecule loaded with :func:`molscore.system.load_system`; ``system.md`` gives ``forcefield``
        (list of OpenMM force-field files), ``nonbonded`` (OpenMM method name; ``cutoff`` nm when not NoCutoff)
        and ``constraints`` (null, "HBonds", "AllBonds" or "HAngles"); optional ``hydrogen_mass`` (amu:
        hydrogen mass repartitioning, e.g. 4 with HBonds for a 4-fs step; the heavy atoms give up the mass)

    Returns
    -------
    (openmm.System, openmm.app.Topology, positions : Quantity (N, 3), nm) of the structure file.
    """
    if system.structure is None:
        raise ValueError(
            f"system {system.name!r} has no structure file; OpenMM needs a molecule (structure: in system.yaml)"
        )
    md = system.md
    if "go_model" in md:
        return _go_system(system)
    if not md.get("forcefield"):
        raise ValueError(f"system {system.name!r}: md.forcefield is missing; list OpenMM files, e.g. [amber99sbildn.xml]")
    name = md.get("nonbonded", "NoCutoff")
    if name not in NONBONDED:
        raise ValueError(f"system {system.name!r}: md.nonbonded {name!r} unknown; choose from {list(NONBONDED)}")
    constraints = md.get("constraints")
    if constraints not in CONSTRAINTS:
        raise ValueError(f"system {system.name!r}: md.constraints {constraints!r} unknown; choose from {list(CONSTRAINTS)}")
    pdb = app.PDBFile(str(system.structure))
    try:
        forcefield = app.ForceField(*md["forcefield"])
    except (ValueError, OSError) as err:
        raise ValueError(f"system {system.name!r}: cannot load force field {md['forcefield']}: {err}") from err
    options = {"nonbondedMethod": getattr(app, name), "constraints": CONSTRAINTS[constraints]}
    if md.get("hydrogen_mass") is not None:
        mass = float(md["hydrogen_mass"])
        if not 1.0 <= mass <= 5.0:
            raise ValueError(f"system {system.name!r}: md.hydrogen_mass {mass} amu is outside [1, 5]; 4 with "
                             "constraints: HBonds is the usual choice for a 4-fs step")  # fmt: skip
        options["hydrogenMass"] = mass * unit.amu
    if name != "NoCutoff":
        options["nonbondedCutoff"] = float(md.get("cutoff", 1.0)) * unit.nanometer
    return forcefield.createSystem(pdb.topology, **options), pdb.topology, pdb.positions


GO_KEYS = {"native", "residues", "eps"}


def go_model(system: "System"):
    """The :class:`~molscore.proteins.go_model.GoModel` of a system whose ``md`` has a ``go_model`` entry.

    ``md.go_model``: ``native`` (all-atom structure defining the contacts, relative to the system folder),
    ``residues`` ([start, stop): a stretch of its first chain, 0-based) and ``eps`` (contact energy, kJ/mol). The
    system's ``structure`` is the C-alpha trace of that stretch (one bead per residue).
    """
    from molscore.proteins.go_model import GoModel

    spec = dict(system.md["go_model"] or {})
    unknown, missing = set(spec) - GO_KEYS, {"native", "eps"} - set(spec)
    if unknown or missing:
        raise ValueError(f"system {system.name!r}: md.go_model has unknown key(s) {sorted(unknown)} / lacks "
                         f"{sorted(missing)}; it takes {sorted(GO_KEYS)}")  # fmt: skip
    start, stop = spec.get("residues", [None, None])
    model = GoModel.from_structure(Path(system.folder) / spec["native"], float(spec["eps"]), slice(start, stop))
    if model.n_beads != system.n_particles:
        raise ValueError(
            f"system {system.name!r}: md.go_model selects {model.n_beads} residues but the structure "
            f"{system.structure} has {system.n_particles} beads; make them the same stretch"
        )
    return model


def _go_system(system: "System") -> tuple[openmm.System, app.Topology, unit.Quantity]:
    model = go_model(system)
    pdb = app.PDBFile(str(system.structure))
    offset = np.abs(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer) - model.native).max()
    if offset > 2e-3:  # PDB precision is 1e-3 nm
        raise ValueError(
            f"system {system.name!r}: the beads of {system.structure} lie up to {offset:.3f} nm from the C-alphas of "
            "md.go_model's native; write the structure with molscore.proteins.go_model.calpha_trace(native, residues)"
        )
    return model.openmm_system(system.masses.numpy()), pdb.topology, pdb.positions


def _force_field_label(md: dict) -> list:
    return list(md["forcefield"]) if "go_model" not in md else [f"go_model {md['go_model']}"]


def _ratio(value: float, step: float, what: str) -> int:
    n = round(value / step)
    if n < 0 or abs(n * step - value) > 1e-6 * max(step, abs(value)):
        raise ValueError(f"{what} = {value} is not a whole multiple of {step}; choose a multiple")
    return n


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_manifest(path: Path, new: dict) -> None:
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    diff = {k: (old.get(k), new[k]) for k in FIXED_KEYS if old.get(k) != new[k]}
    if diff:
        lines = ", ".join(f"{k}: {a!r} on disk, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(
            f"{path.parent} holds data made with other settings ({lines}); use a new out_dir or the same settings"
        )
    for key in ("replicas", "length_ps"):
        if new[key] < old.get(key, 0):
            raise ValueError(
                f"{path.parent} already holds {key} = {old[key]}; ask for at least that to resume or extend it, "
                "or use a new out_dir"
            )


def generate_md(
    system: "System",
    out_dir: str | Path,
    replicas: int,
    length_ps: float,
    seed: int = 0,
    platform: str = "Reference",
    equilibration_ps: float = 100.0,
    chunk_frames: int = 1000,
    processes: int | None = None,
    progress: bool = True,
    first_replica: int = 0,
) -> Path:
    """Run ``replicas`` independent Langevin simulations, or resume/extend those already in ``out_dir``.

    Each replica starts from the minimised structure with Maxwell-Boltzmann velocities from its own seed,
    discards ``equilibration_ps`` and saves ``length_ps / frame_interval`` frames. Complete replicas are skipped.

    Parameters
    ----------
    system : molecule with ``md`` settings (timestep ps, friction 1/ps, frame_interval ps) and temperature K
    out_dir : output folder (layout in the module docstring)
    replicas : number of independent replicas; may grow on a restart
    length_ps : production length per replica, ps; may grow on a restart
    seed : base seed (>= 0); replica ``r`` and chunk ``c`` draw from ``(seed, r, c)``
    platform : OpenMM platform, "Reference" (fastest for tiny molecules), "CPU" or "CUDA"
    equilibration_ps : discarded at the start of each replica, ps
    chunk_frames : frames per DCD file (the unit of resumption)
    processes : worker processes running replicas in parallel (default: CPU cores); 1 runs in this process
    progress : show a progress bar over simulated ps and print the throughput
    first_replica : run only replicas ``first_replica .. replicas - 1`` (to add replicas elsewhere, e.g. on a
        second machine, reproducing exactly what one call would have produced for them)

    Returns
    -------
    out_dir as a Path. ``out_dir/timing.yaml`` records this call's ns/day in total and per process.
    """
    out_dir = Path(out_dir)
    if int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas = {replicas}; need a positive integer")
    if length_ps <= 0 or equilibration_ps < 0:
        raise ValueError(
            f"length_ps = {length_ps}, equilibration_ps = {equilibration_ps}; need length > 0, equilibration >= 0"
        )
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed = {seed}; need a non-negative integer")
    if int(chunk_frames) != chunk_frames or chunk_frames < 1:
        raise ValueError(f"chunk_frames = {chunk_frames}; need a positive integer")
    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if platform not in available:
        raise ValueError(f"OpenMM platform {platform!r} is not available here; choose from {available}")
    md = system.md
    for key in ("timestep", "friction", "frame_interval"):
        if key not in md:
            raise ValueError(f"system {system.name!r}: md.{key} is missing from its system.yaml")
    dt, interval = float(md["timestep"]), float(md["frame_interval"])
    steps_per_frame = _ratio(interval, dt, "md.frame_interval (ps) over md.timestep (ps)")
    n_frames = _ratio(length_ps, interval, "length_ps over md.frame_interval (ps)")
    equilibration_steps = _ratio(equilibration_ps, dt, "equilibration_ps over md.timestep (ps)")
    if steps_per_frame < 1 or n_frames < 1:
        raise ValueError(f"frame_interval {interval} ps and length {length_ps} ps give no frames at timestep {dt} ps")
    if "go_model" not in md and md.get("constraints") is None and dt > 0.001 + 1e-12:
        warnings.warn(
            f"system {system.name!r}: timestep {dt} ps without constraints heats X-H bonds (SCIENCE.md section 3); "
            "use md.timestep <= 0.001 ps",
            stacklevel=2,
        )

    omm_system, topology, positions = openmm_system(system)
    manifest = {
        "system": system.name, "variant": system.variant, "n_atoms": topology.getNumAtoms(), "seed": int(seed),
        "replicas": int(replicas), "length_ps": float(length_ps), "equilibration_ps": float(equilibration_ps),
        "frame_interval_ps": interval, "timestep_ps": dt, "friction_per_ps": float(md["friction"]),
        "temperature_K": float(system.temperature), "forcefield": _force_field_label(md),
        "nonbonded": md.get("nonbonded", "NoCutoff"), "constraints": md.get("constraints"),
        "hydrogen_mass": md.get("hydrogen_mass"), "chunk_frames": int(chunk_frames), "platform": platform,
        "molscore_version": __version__,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir, "MD folder"):  # one generator per folder; workers die with their parent
        _check_manifest(out_dir / "manifest.yaml", manifest)
        _write_text(out_dir / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))

        structure = out_dir / "topology.pdb"
        if not structure.is_file():
            context = openmm.Context(omm_system, openmm.VerletIntegrator(dt), openmm.Platform.getPlatformByName(platform))
            context.setPositions(positions)
            openmm.LocalEnergyMinimizer.minimize(context)
            minimised = context.getState(getPositions=True).getPositions()
            tmp = structure.with_name(".topology.tmp.pdb")
            with open(tmp, "w") as handle:
                app.PDBFile.writeFile(topology, minimised, handle)
            os.replace(tmp, structure)
        # every replica starts from the structure as stored, so a resumed call starts new replicas identically
        start = app.PDBFile(str(structure)).getPositions(asNumpy=True).value_in_unit(unit.nanometer)

        common = {
            "system_xml": openmm.XmlSerializer.serialize(omm_system), "positions": np.asarray(start),
            "temperature": float(system.temperature), "friction": float(md["friction"]), "timestep": dt,
            "steps_per_frame": steps_per_frame, "equilibration_steps": equilibration_steps, "n_frames": n_frames,
            "chunk_frames": int(chunk_frames), "seed": int(seed), "platform": platform,
        }  # fmt: skip
        tasks, done_ps = [], 0.0
        if int(first_replica) != first_replica or not 0 <= first_replica < replicas:
            raise ValueError(f"first_replica = {first_replica}; need an integer in [0, replicas)")
        for r in range(first_replica, replicas):
            directory = out_dir / f"replica_{r:03d}"
            damaged = _damaged_chunks(directory) if directory.is_dir() else []
            if damaged:  # only the replica's last state is kept, so it is redone from its seed (identical frames)
                print(f"{directory}: damaged chunk(s) {[p.name for p in damaged]}; regenerating this replica from its start")
                for path in [*directory.glob("chunk_*.dcd"), directory / "state.xml"]:
                    path.unlink(missing_ok=True)
            steps = _saved_steps(directory)
            done_ps += min(steps, equilibration_steps + n_frames * steps_per_frame) * dt
            if steps == 0 or steps < equilibration_steps + n_frames * steps_per_frame:
                tasks.append({**common, "replica": r, "directory": str(directory)})
        total_ps = (replicas - first_replica) * (equilibration_ps + n_frames * interval)
        processes = max(1, min(processes or os.cpu_count() or 1, len(tasks) or 1))
        began = time.perf_counter()
        simulated_ps = _run_tasks(tasks, processes, total_ps, done_ps, progress)
        wall = time.perf_counter() - began
        ns_per_day = simulated_ps / 1000 / max(wall, 1e-9) * 86400
        timing = {
            "simulated_ns": round(simulated_ps / 1000, 6), "wall_s": round(wall, 3), "processes": processes,
            "ns_per_day": round(ns_per_day, 1), "ns_per_day_per_process": round(ns_per_day / processes, 1),
            "platform": platform,
        }  # fmt: skip
        _write_text(out_dir / "timing.yaml", yaml.safe_dump(timing, sort_keys=False))
        if progress and simulated_ps > 0:
            print(
                f"{system.name}: simulated {simulated_ps / 1000:.3f} ns in {wall:.1f} s on {processes} process(es): "
                f"{ns_per_day:.0f} ns/day ({ns_per_day / processes:.0f} per process, {platform})"
            )
        return out_dir


def replica_files(out_dir: str | Path) -> list[list[Path]]:
    """Chunks of each replica that has any, in time order: ``files[r]`` (topology: ``out_dir/topology.pdb``)."""
    from molscore.data.trajectories import md_replica_files

    return md_replica_files(out_dir, skip_empty=True)


def load_md(out_dir: str | Path, stride: int = 1) -> list["mdtraj.Trajectory"]:
    """Load every replica as its own trajectory (frames in nm), keeping every ``stride``-th frame."""
    from molscore.data.trajectories import load_frames

    out_dir = Path(out_dir)
    return [load_frames(chunks, out_dir / "topology.pdb", stride=stride) for chunks in replica_files(out_dir)]


# ---- one replica, run in a worker process (or in this one when processes == 1) ----

_QUEUE = None  # progress queue of a worker process, set by _init_worker


def _seed(*key: int) -> int:
    """A seed in [1, 2**31 - 1] for OpenMM (0 would mean 'pick one at random') from a tuple of integers."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0] % (2**31 - 1)) + 1


def _saved_steps(directory: Path) -> int:
    path = directory / "state.xml"
    if not path.is_file():
        return 0
    try:
        return openmm.XmlSerializer.deserialize(path.read_text()).getStepCount()
    except Exception as err:  # truncated or garbage
        raise CorruptFileError(
            f"{path} is not a readable OpenMM state ({type(err).__name__}: {err}); delete it to regenerate "
            f"replica {directory.name} from its start (its chunks are then rewritten)"
        ) from err


def _damaged_chunks(directory: Path) -> list[Path]:
    """Chunks of a replica whose size does not match their header (cut short, garbage)."""
    damaged = []
    for path in sorted(directory.glob("chunk_*.dcd")):
        try:
            dcd_frames(path)
        except CorruptFileError:
            damaged.append(path)
    return damaged


def _covered_chunks(directory: Path, frames_done: int) -> int:
    """Number of chunks the saved state covers; chunks saved after it (a run killed in between) are removed."""
    chunks, total = sorted(directory.glob("chunk_*.dcd")), 0
    for i, path in enumerate(chunks):
        if total == frames_done:
            for extra in chunks[i:]:
                extra.unlink()
            return i
        total += dcd_frames(path)
    if total != frames_done:
        raise ValueError(
            f"{directory}: state.xml is {frames_done} frames into production but the chunks hold {total}; "
            "delete this replica folder to regenerate it"
        )
    return len(chunks)


def _write_chunk(path: Path, xyz: np.ndarray) -> None:
    from mdtraj.formats import DCDTrajectoryFile

    tmp = path.with_name(f".{path.stem}.tmp.dcd")
    with DCDTrajectoryFile(str(tmp), "w", force_overwrite=True) as handle:
        handle.write(xyz * 10.0)  # DCD stores Angstrom
    os.replace(tmp, path)


def _context(system: openmm.System, task: dict, noise_seed: int) -> openmm.Context:
    integrator = openmm.LangevinMiddleIntegrator(
        task["temperature"] * unit.kelvin, task["friction"] / unit.picosecond, task["timestep"] * unit.picosecond
    )
    integrator.setRandomNumberSeed(noise_seed)
    properties = {"Threads": "1"} if task["platform"] == "CPU" else {}
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(task["platform"]), properties)


def _run_replica(task: dict, report) -> float:
    """Equilibrate (unless a state is saved) and add chunks until ``n_frames``; returns the simulated ps.

    ``report(ps)`` is called after every frame's worth of steps (progress bar).
    """
    directory, r, seed = Path(task["directory"]), task["replica"], task["seed"]
    spf, eq, dt = task["steps_per_frame"], task["equilibration_steps"], task["timestep"]
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp*"):
        stale.unlink()
    system = openmm.XmlSerializer.deserialize(task["system_xml"])
    state_path, simulated = directory / "state.xml", 0.0
    if state_path.is_file():
        state_xml = state_path.read_text()
    else:
        context = _context(system, task, _seed(seed, r, 1))
        context.setPositions(task["positions"])
        context.setVelocitiesToTemperature(task["temperature"] * unit.kelvin, _seed(seed, r, 0))
        for start in range(0, eq, spf):
            context.getIntegrator().step(min(spf, eq - start))
            report(min(spf, eq - start) * dt)
        simulated += eq * dt
        state_xml = openmm.XmlSerializer.serialize(context.getState(getPositions=True, getVelocities=True))
        _write_text(state_path, state_xml)
    steps = openmm.XmlSerializer.deserialize(state_xml).getStepCount()
    frames_done, rest = divmod(steps - eq, spf)
    if steps < eq or rest:
        raise ValueError(
            f"{state_path}: step count {steps} does not fit these settings; delete {directory} to regenerate it"
        )
    chunk = _covered_chunks(directory, frames_done)
    while frames_done < task["n_frames"]:
        n = min(task["chunk_frames"], task["n_frames"] - frames_done)
        context = _context(system, task, _seed(seed, r, 2 + chunk))
        context.setState(openmm.XmlSerializer.deserialize(state_xml))
        xyz = np.empty((n, system.getNumParticles(), 3), dtype=np.float32)
        for k in range(n):
            context.getIntegrator().step(spf)
            xyz[k] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            report(spf * dt)
        if not np.isfinite(xyz).all():
            raise FloatingPointError(
                f"replica {r} produced NaN positions in chunk {chunk}; lower md.timestep or check the structure"
            )
        simulated += n * spf * dt
        state_xml = openmm.XmlSerializer.serialize(context.getState(getPositions=True, getVelocities=True))
        _write_chunk(directory / f"chunk_{chunk:06d}.dcd", xyz)
        _write_text(state_path, state_xml)
        frames_done, chunk = frames_done + n, chunk + 1
    return simulated


def _init_worker(progress_queue) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM when its parent dies (kill -9 included), so no orphan goes on
    writing into the MD folder (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _pool_task(task: dict) -> float:
    return _run_replica(task, _QUEUE.put)


def _run_tasks(tasks: list[dict], processes: int, total_ps: float, done_ps: float, progress: bool) -> float:
    """Run replica tasks over ``processes`` spawned workers with a progress bar; returns the simulated ps."""
    from tqdm.auto import tqdm

    bar = tqdm(total=round(total_ps, 3), initial=round(done_ps, 3), unit="ps", desc="MD", disable=not progress)
    try:
        if processes == 1 or len(tasks) <= 1:
            return sum(_run_replica(task, bar.update) for task in tasks)
        ctx = multiprocessing.get_context("spawn")
        progress_queue = ctx.Queue()
        with ctx.Pool(processes, _init_worker, (progress_queue,)) as pool:  # leaving terminates the workers
            results = [pool.apply_async(_pool_task, (task,)) for task in tasks]
            while not all(result.ready() for result in results):
                try:
                    bar.update(progress_queue.get(timeout=0.2))
                    while True:
                        bar.update(progress_queue.get_nowait())
                except queue_module.Empty:
                    pass
                for result in results:
                    if result.ready() and not result.successful():
                        result.get()  # re-raises the worker's error; leaving the pool terminates the others
            bar.update(bar.total - bar.n)  # reports still in the queue
            return sum(result.get() for result in results)
    finally:
        bar.close()
