"""The stages of a run. Each reads the files of the stage before from the run folder, writes its outputs
and its resolved config (with seed and package version) beside them, and can be re-run alone.

run_dir/
  data/{train,validation,test}.npy      frames (M, N, d), nm
  model.safetensors, train/             trained model (EMA weights); checkpoint.pt, history.csv, loss.png
  samples_<method>.npy                  diffusion samples (n, N, d), nm (molecules: also samples_<method>.dcd)
  simulation/                           Langevin trajectory chunks (+ checkpoint.pt to resume);
                                        molecules: simulation/dcd/replica_XXX.dcd
  metrics.json, density.png             evaluation
  config_<stage>.yaml                   resolved config of each stage
"""

import csv
import json
from pathlib import Path

import mdtraj
import numpy as np
import torch
import yaml

from molscore.analysis.collective_variables import compute_cvs, cv_atom_indices, in_state
from molscore.analysis.distributions import compare_2d
from molscore.analysis.forcefield_diagnostic import forcefield_diagnostic
from molscore.analysis.molecular import topology_bonds
from molscore.analysis.plots import density_panels, line_plot
from molscore.config import dump_config
from molscore.data.splits import write_molecular_splits
from molscore.data.trajectories import md_frame_interval_ps, md_replica_files
from molscore.dynamics import (
    BAOAB,
    SeededNoise,
    Simulation,
    SimulationError,
    State,
    TrajectoryReporter,
    Underdamped,
    load_trajectory,
)
from molscore.dynamics.guards import BondLengthGuard, ExtentGuard
from molscore.files import folder_lock, write_text_atomic
from molscore.interfaces.trajectory_files import write_replicas, write_trajectory
from molscore.models import DiffusionModel, ModelSpec
from molscore.pipeline.config import RunConfig
from molscore.pipeline.molecular_evaluation import molecular_metrics
from molscore.pipeline.run_folder import check_resume
from molscore.sampling import sample as diffusion_sample
from molscore.system import System, load_system
from molscore.train.estimator import ScoreEstimator

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _run_dir(cfg: RunConfig, stage: str) -> Path:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / f"config_{stage}.yaml")
    return run_dir


def _check_md_matches_system(folder: Path, topology_file: Path, system: System, key: str = "data.source") -> None:
    """An MD folder made for another system (its manifest's ``system``, or an atom count that differs from the
    system's structure) or at another temperature (its manifest's ``temperature_K``: a model of it would be
    another Boltzmann distribution than the system's kT) is refused, naming both."""
    manifest_file = folder / "manifest.yaml"
    manifest = yaml.safe_load(manifest_file.read_text()) if manifest_file.is_file() else {}
    made_for = (manifest or {}).get("system")
    if made_for is not None and made_for != system.name:
        raise ValueError(
            f"{key} {folder} holds MD of {made_for!r} (its manifest.yaml), but the run's system is "
            f"{system.name!r}: set system: {made_for} or point {key} at MD of {system.name}"
        )
    md_temperature = (manifest or {}).get("temperature_K")
    if md_temperature is not None and abs(float(md_temperature) - system.temperature) > 1e-6 * system.temperature:
        raise ValueError(
            f"{key} {folder} is MD at {float(md_temperature):g} K (its manifest.yaml), but system {system.name!r} "
            f"is at {system.temperature:g} K: generate MD at the system's temperature or set temperature: "
            f"{float(md_temperature):g} in its system.yaml"
        )
    if system.topology is not None:  # a reduced copy (export) records the atom count of the MD it came from
        exported = "export" in (manifest or {}) and "n_atoms" in manifest
        n_md = manifest["n_atoms"] if exported else mdtraj.load_topology(str(topology_file)).n_atoms
        if n_md != system.topology.n_atoms:
            where = "its manifest's n_atoms" if exported else "topology.pdb"
            raise ValueError(
                f"{key} {folder} has {n_md} atoms ({where}) but system {system.name!r} has "
                f"{system.topology.n_atoms} ({system.structure}): the trajectory does not belong to this system"
            )


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run the '{stage}' stage first (molscore {stage} CONFIG)")
    return path


def observables(system: System, pos, run_dir: Path | None = None) -> np.ndarray:
    """The 2-D coordinates the metrics are computed on, ``(n, 2)``: a planar particle's (x, y), or the first
    two collective variables of a molecule (computed on the bead topology of the run's data)."""
    pos = np.asarray(pos)
    if system.dim == 2 and system.n_particles == 1:
        return pos[:, 0, :]
    if system.collective_variables and run_dir is not None:
        topology = mdtraj.load_topology(str(_need(Path(run_dir) / "data" / "beads.pdb", "data")))
        return compute_cvs(pos, topology, system.collective_variables, list(system.collective_variables)[:2])
    raise ValueError(f"system {system.name!r} declares no 2-D collective variables (collective_variables:)")


# data ----------------------------------------------------------------------------------------------------
def prepare_data(cfg: RunConfig) -> Path:
    """Write train / validation / test splits to ``run_dir/data``."""
    run_dir, system, dc = _run_dir(cfg, "data"), load_system(cfg.system), cfg.data
    out = run_dir / "data"
    out.mkdir(exist_ok=True)
    sizes = {"train": dc.n_train, "validation": dc.n_validation, "test": dc.n_test}
    if dc.source != "exact" and not Path(dc.source).exists():
        raise FileNotFoundError(
            f"data.source {dc.source!r} does not exist: give an MD folder (python workflows/generate_md.py writes "
            "one), a .npy array of frames (M, N, d) in nm, or 'exact' for an analytic system"
        )
    if dc.test_source and not Path(dc.source).is_dir():
        raise ValueError(f"data.test_source needs an MD folder as data.source, not {dc.source!r}")
    if Path(dc.source).is_dir():  # an MD folder: split by whole replicas
        folder = Path(dc.source)
        files, topology = md_replica_files(folder), folder / "topology.pdb"  # md_replica_files checks the topology
        _check_md_matches_system(folder, topology, system)
        test = {}
        if dc.test_source:  # every replica of a second MD folder is the test split
            test_folder = Path(dc.test_source)
            if not test_folder.is_dir():
                raise FileNotFoundError(f"data.test_source {test_folder} is not an MD folder (python "
                                        "workflows/generate_md.py writes one)")  # fmt: skip
            test = {"test_files": md_replica_files(test_folder), "test_topology_file": test_folder / "topology.pdb"}
            _check_md_matches_system(test_folder, test["test_topology_file"], system, "data.test_source")
            intervals = md_frame_interval_ps(folder), md_frame_interval_ps(test_folder)
            if None not in intervals and intervals[0] != intervals[1]:
                raise ValueError(
                    f"data.source saves a frame every {intervals[0]} ps but data.test_source every {intervals[1]} "
                    "ps: correlation times and floors need one interval; export both at one (generate_md.py "
                    "--export-only --export-stride)"
                )
        write_molecular_splits(
            files, topology, out, dc.resolution, dc.n_validation_replicas, dc.n_test_replicas, dc.stride, dc.seed, **test
        )
        return out
    if dc.source == "exact":
        splits = {
            name: system.reference_samples(n, seed=dc.seed * 3 + k).numpy() for k, (name, n) in enumerate(sizes.items())
        }
    else:
        frames = system.check_positions(np.load(_need(Path(dc.source), "data")), f"frames in {dc.source}").numpy()
        if sum(sizes.values()) > len(frames):
            raise ValueError(f"{dc.source} has {len(frames)} frames; the splits ask for {sum(sizes.values())}")
        order = np.random.default_rng(dc.seed).permutation(len(frames))
        bounds = np.cumsum([0, *sizes.values()])
        splits = {name: frames[order[a:b]] for name, a, b in zip(sizes, bounds[:-1], bounds[1:], strict=True)}
    for name, frames in splits.items():
        np.save(out / f"{name}.npy", frames)
    return out


def _load_split(cfg: RunConfig, name: str) -> np.ndarray:
    return np.load(_need(Path(cfg.run_dir) / "data" / f"{name}.npy", "data"))


# train ---------------------------------------------------------------------------------------------------
def _beads(cfg: RunConfig) -> dict | None:
    path = Path(cfg.run_dir) / "data" / "beads.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def model_spec(cfg: RunConfig, system: System, n_particles: int) -> ModelSpec:
    """The model spec of a run; graph networks get the beads' types from the data unless set."""
    m, options = cfg.model, dict(cfg.model.network_options)
    beads = _beads(cfg)
    if m.network in ("gnn", "bondgraph") and beads is not None:
        options.setdefault("bead_types", beads["bead_types"])
    topology_file = Path(cfg.run_dir) / "data" / "beads.pdb"
    if m.network in ("bondgraph", "bondgraph_mlp") and topology_file.exists():  # angles and torsions: from the bonds
        bead_bonds = topology_bonds(mdtraj.load_topology(str(topology_file)))
        options.setdefault("bonds", [[int(i), int(j)] for i, j in bead_bonds])
    priors = m.priors and topology_file.exists()
    if m.extra_priors and not priors:
        raise ValueError(
            f"model.extra_priors {list(m.extra_priors)} needs the bead topology's bonds: set model.priors: true and "
            "use molecular data (an MD folder, which writes data/beads.pdb), or drop extra_priors"
        )
    bonds = topology_bonds(mdtraj.load_topology(str(topology_file))) if priors else []
    if m.extra_priors and len(bonds) == 0:
        raise ValueError(
            f"model.extra_priors {list(m.extra_priors)}: the beads of this run have no bonds (e.g. data.resolution "
            "'calpha'); choose a resolution with bonded beads ('all', 'heavy', 'backbone') or drop extra_priors"
        )
    return ModelSpec(
        n_particles, system.dim, system.centred, m.parameterisation, m.network, options,
        list(m.mixture_boundaries), m.large_t_parameterisation, [[int(i), int(j)] for i, j in bonds], priors,
        "angles" in m.extra_priors, "repulsion" in m.extra_priors, "dihedrals" in m.extra_priors,
    )  # fmt: skip


def bead_masses(cfg: RunConfig, system: System) -> torch.Tensor:
    """Masses of the run's beads, amu: the system's when the beads are all its particles (system.yaml may set
    coarse-grained bead masses), else the element masses of the bead topology (``data/beads.pdb``), so MD folders
    holding a subset of the atoms (e.g. heavy atoms only) work too."""
    path = Path(cfg.run_dir) / "data" / "beads.pdb"
    if not path.exists():
        return system.masses
    topology = mdtraj.load_topology(str(path))
    if topology.n_atoms == system.n_particles:  # every particle: the system's own masses (system.yaml may set them)
        return system.masses
    return torch.tensor([atom.element.mass for atom in topology.atoms], dtype=torch.float64)


def train(cfg: RunConfig, progress: bool = True) -> Path:
    """Fit the model; resumes from ``train/checkpoint.pt`` if present. Writes ``model.safetensors``. Holds the
    lock of ``run_dir/train`` while it runs (a second training of the same run stops at once, naming the PID)."""
    with folder_lock(Path(cfg.run_dir) / "train", "training folder"):
        return _train(cfg, progress)


def _train(cfg: RunConfig, progress: bool) -> Path:
    check_resume(cfg, "train", Path(cfg.run_dir) / "train" / "checkpoint.pt")
    run_dir, system = _run_dir(cfg, "train"), load_system(cfg.system)
    data = torch.as_tensor(_load_split(cfg, "train"))
    validation = torch.as_tensor(_load_split(cfg, "validation"))
    est = ScoreEstimator(model_spec(cfg, system, data.shape[1]), cfg.train, device=cfg.device, dtype=DTYPES[cfg.dtype])
    est.fit(data, system.kT, validation, checkpoint_dir=run_dir / "train", progress=progress)
    if est.step == 0:
        raise RuntimeError(
            f"training ran no step: train.max_minutes = {cfg.train.max_minutes} was used up before the first step "
            "(timing the stages for fit_steps_to_budget costs a few steps); raise train.max_minutes"
        )
    h = est.history
    with open(run_dir / "train" / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "dsm", "fp"])
        writer.writerows(zip(h["step"], h["loss"], h["dsm"], h["fp"], strict=True))
    window = max(1, len(h["step"]) // 100)
    smooth = np.convolve(h["dsm"], np.ones(window) / window, mode="valid")
    line_plot(
        {
            "train DSM (running mean)": (h["step"][window - 1 :], smooth),
            "validation DSM": (h["val_step"], h["val"]),
        },
        run_dir / "train" / "loss.png",
        "step",
        "loss",
        title=f"{system.name}: training",
        logy=True,
    )
    summary = {
        "steps": est.step, "steps_planned": est.planned_steps, "train_seconds": round(est.train_seconds, 1),
        "stopped_early": est.stopped_early, "final_validation_dsm": h["val"][-1] if h["val"] else None,
    }  # fmt: skip
    (run_dir / "train" / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    if est.stopped_early:
        print(f"training stopped by max_minutes at step {est.step} of {est.planned_steps}; rerun to resume")
    return est.fetch_model().save(run_dir / "model.safetensors")


def _load_model(cfg: RunConfig) -> DiffusionModel:
    path = _need(Path(cfg.run_dir) / "model.safetensors", "train")
    return DiffusionModel.load(path, device=cfg.device, dtype=DTYPES[cfg.dtype])


# sample --------------------------------------------------------------------------------------------------
def sample(cfg: RunConfig, progress: bool = True) -> Path:
    """Draw diffusion samples; writes ``samples_<method>.npy`` (n, N, d) nm."""
    run_dir, sc = _run_dir(cfg, "sample"), cfg.sample
    options = {"time_grid": sc.time_grid, "corrector_steps": sc.corrector_steps, "snr": sc.snr}
    x = diffusion_sample(_load_model(cfg), sc.n_samples, sc.method, sc.n_steps, sc.batch_size, sc.seed, progress, **options)
    path = run_dir / f"samples_{sc.method}.npy"
    np.save(path, x.cpu().numpy())
    beads = run_dir / "data" / "beads.pdb"
    if beads.exists():  # molecules: also a standard trajectory file for viewers
        write_trajectory(path.with_suffix(".dcd"), x.cpu().numpy(), beads)
    return path


# simulate ------------------------------------------------------------------------------------------------
def simulate(cfg: RunConfig, progress: bool = True, force_fn=None) -> Path:
    """Langevin simulation of the run (:func:`_simulate`), holding the lock of ``run_dir/simulation``."""
    with folder_lock(Path(cfg.run_dir) / "simulation", "simulation folder"):
        return _simulate(cfg, progress, force_fn)


def _simulate(cfg: RunConfig, progress: bool, force_fn) -> Path:
    """Langevin simulation of ``replicas`` copies with the learned forces, resumable from its checkpoint.

    ``force_fn`` replaces the learned force field (e.g. the exact potential's forces for a control run).
    Molecules are guarded: a replica whose bond leaves the training data's range (widened by
    ``bond_slack``) stops the run like a non-finite one. A run that blows up keeps its frames up to the last
    good check, and ``simulation/status.yaml`` says what happened (``stable: false`` and the message);
    ``max_minutes`` stops it early with ``finished: false`` (rerun to continue).
    """
    check_resume(cfg, "simulate", Path(cfg.run_dir) / "simulation" / "checkpoint.pt")
    run_dir, system, sc = _run_dir(cfg, "simulate"), load_system(cfg.system), cfg.simulate
    out = run_dir / "simulation"
    # defaults: the system's integrator settings, else its reference MD set-up
    dt, friction = _integrator_setting(sc.timestep, system, "timestep"), _integrator_setting(sc.friction, system, "friction")
    if dt is None or friction is None:
        raise ValueError(f"set simulate.timestep and simulate.friction (system {system.name!r} has no defaults)")
    if force_fn is None:
        force_fn = _load_model(cfg).force_field(sc.t_eval, compile=sc.compile)

    dtype, device = DTYPES[cfg.dtype], torch.device(cfg.device)
    term = Underdamped(force_fn, bead_masses(cfg, system).to(device, dtype), system.kT, friction)
    reporter = TrajectoryReporter(out, sc.report_interval, sc.chunk_frames)
    checkpoint = out / "checkpoint.pt"
    options = {"checkpoint_path": checkpoint, "checkpoint_interval": sc.checkpoint_interval, "guards": _guards(cfg, system)}
    if checkpoint.exists():
        sim = Simulation.from_checkpoint(checkpoint, term, BAOAB(), reporters=[reporter], **options)
    else:
        start = _start_frames(cfg, system)
        state = State(torch.as_tensor(start, dtype=dtype, device=device))
        sim = Simulation(term, BAOAB(), state, dt, SeededNoise(sc.seed), [reporter], **options)
    status = {"stable": True, "steps_requested": sc.steps}
    max_seconds = None if sc.max_minutes is None else 60 * sc.max_minutes
    try:
        sim.run(max(0, sc.steps - sim.state.step), progress=progress, max_seconds=max_seconds)
        status |= {"step": sim.state.step, "t_ps": sim.state.t, "finished": sim.state.step >= sc.steps}
        if not status["finished"]:
            print(f"simulation stopped by max_minutes at step {sim.state.step} of {sc.steps}; rerun to resume")
    except SimulationError as error:
        status |= {"stable": False, "finished": False, "step": error.step, "t_ps": error.t,
                   "last_good_step": error.last_good_step, "message": str(error)}  # fmt: skip
        print(f"{run_dir.name}: simulation stopped by its guard; frames up to the last good check are kept.\n{error}")
    write_text_atomic(out / "status.yaml", yaml.safe_dump(status, sort_keys=False))
    beads = Path(cfg.run_dir) / "data" / "beads.pdb"
    if (out / "chunk_000000.npz").exists():
        traj = load_trajectory(out)  # every chunk read back: a damaged one is named now, not in evaluate
        if beads.exists():  # molecules: one trajectory file per replica
            write_replicas(out / "dcd", traj["pos"], beads, time_ps=traj["t"])
    return out


def _integrator_setting(value, system: System, key: str):
    """``value`` if set (0 included: friction 0 is Verlet), else the system's default, else its MD set-up's."""
    for candidate in (value, system.settings.get(key), system.md.get(key)):
        if candidate is not None:
            return candidate
    return None


def _guards(cfg: RunConfig, system: System) -> list:
    """An extent guard for every run (the training data's range widened by ``simulate.escape_factor``; molecules
    relative to their centroid) and a bond-length guard for molecules (bonds of the bead topology)."""
    train = _load_split(cfg, "train")
    guards = [ExtentGuard.from_frames(train, cfg.simulate.escape_factor, system.centred)]
    beads = Path(cfg.run_dir) / "data" / "beads.pdb"
    if not beads.exists():
        return guards
    topology = mdtraj.load_topology(str(beads))
    bonds = topology_bonds(topology)
    if not len(bonds):
        return guards
    names = [f"{topology.atom(i).name}-{topology.atom(j).name}" for i, j in bonds]
    return guards + [BondLengthGuard.from_frames(bonds, train, cfg.simulate.bond_slack, names)]


def _start_frames(cfg: RunConfig, system: System) -> np.ndarray:
    """Initial positions (replicas, N, d) nm of a simulation, from ``simulate.start`` (its groups in order)."""
    sc, frames = cfg.simulate, _load_split(cfg, "train")
    rng = np.random.default_rng(sc.seed)
    return np.concatenate([_group_start(cfg, system, part, frames, len(group), rng) for part, group in sc.start_groups()])


def _group_start(cfg: RunConfig, system: System, part: str, frames: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` initial positions for one part of ``simulate.start``: 'first', 'data' or 'state:NAME'."""
    if part == "first":
        return np.repeat(frames[:1], n, 0)
    if part.startswith("state:"):
        name = part.split(":", 1)[1]
        if name not in system.states:
            raise ValueError(f"simulate.start {part!r}: system {system.name!r} declares states {list(system.states)}")
        names = list(system.collective_variables)
        topology = mdtraj.load_topology(str(_need(Path(cfg.run_dir) / "data" / "beads.pdb", "data")))
        inside = in_state(compute_cvs(frames, topology, system.collective_variables, names), names, system.states[name])
        if not inside.any():
            raise ValueError(f"no training frame lies in state {name!r}; check its centre and radius in system.yaml")
        frames = frames[inside]
    return frames[rng.integers(len(frames), size=n)]


# evaluate ------------------------------------------------------------------------------------------------
def forcefield_metrics(cfg: RunConfig, system: System) -> dict | None:
    """The force-field diagnostic of an energy model of a molecule whose first two CVs are dihedrals
    (:mod:`molscore.analysis.forcefield_diagnostic`: free-energy differences along each torsion against the test
    MD, at t_min and at larger t against noised MD); writes ``forcefield.png``. None where it does not apply."""
    run_dir, cvs = Path(cfg.run_dir), list(system.collective_variables.items())[:2]
    if not (run_dir / "model.safetensors").exists():  # e.g. a simulation with given forces: no model to diagnose
        return None
    model = _load_model(cfg)
    if model.parameterisation != "energy" or len(cvs) < 2 or any(set(spec) != {"dihedral"} for _, spec in cvs):
        return None
    topology = mdtraj.load_topology(str(_need(run_dir / "data" / "beads.pdb", "data")))
    quartets = {name: [int(i) for i in cv_atom_indices(topology, spec)] for name, spec in cvs}
    frames = torch.as_tensor(_load_split(cfg, "test"), dtype=model.dtype, device=model.device)
    bonds = [[int(i), int(j)] for i, j in topology_bonds(topology)]
    return forcefield_diagnostic(model, frames, quartets, bonds, plot_path=run_dir / "forcefield.png", seed=cfg.data.seed)


def evaluate(cfg: RunConfig) -> dict:
    """iid and sim JS / PMF error against the test split, beside the data-vs-data floor; writes
    ``metrics.json`` and ``density.png``."""
    run_dir, system, ec = _run_dir(cfg, "evaluate"), load_system(cfg.system), cfg.evaluate
    hist_range = system.settings.get("histogram_range")
    ref = observables(system, _load_split(cfg, "test"), run_dir)
    metrics, panels = {}, {"reference": (ref[:, 0], ref[:, 1])}
    samples_path, samples, kept = run_dir / f"samples_{cfg.sample.method}.npy", None, None
    if samples_path.exists():
        samples = np.load(samples_path)
        iid = observables(system, samples, run_dir)
        metrics["iid"] = compare_2d(iid, ref, ec.bins, hist_range) | {"n": len(iid)}
        panels[f"samples ({cfg.sample.method})"] = (iid[:, 0], iid[:, 1])
    if (run_dir / "simulation" / "chunk_000000.npz").exists():
        traj = load_trajectory(run_dir / "simulation")["pos"]  # (frames, B, N, d)
        kept = traj[int(ec.burn_in * len(traj)) :]
        sim = observables(system, kept.reshape(-1, *kept.shape[2:]), run_dir)
        metrics["sim"] = compare_2d(sim, ref, ec.bins, hist_range) | {"n": len(sim), "frames": len(kept)}
        panels["simulation"] = (sim[:, 0], sim[:, 1])
    status_file = run_dir / "simulation" / "status.yaml"
    if status_file.exists():  # stable / finished / where it stopped (see simulate)
        metrics["sim_status"] = yaml.safe_load(status_file.read_text())
    n = metrics.get("iid", metrics.get("sim", {"n": len(ref)}))["n"]
    if cfg.data.source == "exact":  # floor: an independent exact data set of the model's size
        floor = observables(system, system.reference_samples(n, seed=10_000 + cfg.data.seed).numpy())
        metrics["floor"] = compare_2d(floor, ref, ec.bins, hist_range) | {"n": n}
    else:  # floor: n frames of the held-out validation replicas (independent of the test replicas)
        held_out = _load_split(cfg, "validation")
        pick = np.random.default_rng(cfg.data.seed).permutation(len(held_out))[:n]
        floor = observables(system, held_out[pick], run_dir)
        metrics["floor"] = compare_2d(floor, ref, ec.bins, hist_range) | {"n": len(pick), "source": "validation"}
    if system.collective_variables and (run_dir / "data" / "test_replica.npy").exists():
        split = {name: (_load_split(cfg, name), _load_split(cfg, f"{name}_replica")) for name in ("test", "validation")}
        sc = cfg.simulate
        dt = _integrator_setting(sc.timestep, system, "timestep")
        source = Path(cfg.data.source)
        metrics["molecular"] = molecular_metrics(
            system, run_dir, *split["test"], *split["validation"], samples, kept, ec.bins, hist_range,
            training=_load_split(cfg, "train"), sim_frame_ps=sc.report_interval * dt if dt else None,
            md_frame_ps=md_frame_interval_ps(source, cfg.data.stride) if source.is_dir() else None,
            start_groups=sc.start_groups() if kept is not None else None,
        )  # fmt: skip
        forcefield = forcefield_metrics(cfg, system)
        if forcefield is not None:
            metrics["forcefield"] = forcefield
    contours = None
    if system.potential is not None and system.dim == 2 and hist_range is not None:
        xs = [np.linspace(lo, hi, 200) for lo, hi in hist_range]
        grid = np.stack(np.meshgrid(*xs, indexing="ij"), -1)
        with torch.no_grad():
            u = system.potential.energy(torch.as_tensor(grid.reshape(-1, 1, 2))).numpy().reshape(200, 200)
        contours = (grid[..., 0], grid[..., 1], np.minimum(u - u.min(), 8 * system.kT))
    labels = list(system.collective_variables)[:2] if system.collective_variables else ["x", "y"]
    density_panels(panels, run_dir / "density.png", ec.bins, hist_range, contours,
                   title=f"{system.name}: {run_dir.name}", xlabel=labels[0], ylabel=labels[1])  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


STAGES = {"data": prepare_data, "train": train, "sample": sample, "simulate": simulate, "evaluate": evaluate}


def run_all(cfg: RunConfig, progress: bool = True) -> dict:
    """All stages in order (each skipped output is recomputed; training and simulation resume)."""
    if not (Path(cfg.run_dir) / "data" / "test.npy").exists():
        prepare_data(cfg)
    train(cfg, progress)
    sample(cfg, progress)
    simulate(cfg, progress)
    return evaluate(cfg)
