"""Transition-path sampling: CVs and states in torch, path segments and joins, and shooting against brute force.

Statistical checks compare two independent estimates with their combined standard error: shooting chains are
independent Markov chains, so the spread of per-chain averages gives shooting's error; brute-force paths are
independent, so theirs is the per-path spread. Z = 4 per comparison (a false alarm rate below 1e-4).
"""

import math

import mdtraj
import numpy as np
import pytest
import torch

from molscore.analysis.collective_variables import compute_cvs, in_state
from molscore.dynamics import SeededNoise
from molscore.paths import (
    CollectiveVariables,
    PathBatch,
    Region,
    ShootingSettings,
    ShootingTPS,
    fixed_length_paths,
    harvest_transitions,
    load_states,
    propagate,
)
from molscore.paths.collective_variables import kabsch_rmsd
from molscore.paths.controlled_paths import step_states
from molscore.paths.ensemble import PathEnsemble
from molscore.paths.path_fitting import target_rollout
from molscore.system import load_system

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")
Z = 4.0


@pytest.fixture(scope="module")
def alanine_frames():
    system = load_system("alanine_dipeptide")
    folder = system.folder / "reference_md"
    traj = mdtraj.load(str(folder / "replica_000" / "chunk_000000.xtc"), top=str(folder / "topology.pdb"))[:200]
    return system, traj


@pytest.fixture(scope="module")
def mueller_brown(mueller_brown_langevin):
    system, term, a, b = mueller_brown_langevin
    return system, term, a, b, system.reference_samples(40000, seed=3)


def test_torch_cvs_and_states_match_mdtraj(alanine_frames):
    system, traj = alanine_frames  # the reference MD keeps the heavy atoms: CVs follow the topology given
    cvs = CollectiveVariables(system.collective_variables, traj.topology)
    states = {name: Region.from_spec(name, spec, cvs) for name, spec in system.states.items()}
    pos = torch.as_tensor(traj.xyz, dtype=torch.float64)
    values = cvs(pos)
    reference = compute_cvs(traj, traj.topology, system.collective_variables, cvs.names)
    assert np.abs(values.numpy() - reference).max() < 1e-5  # xtc frames are float32
    for name, region in states.items():
        expected = in_state(reference, cvs.names, system.states[name])
        assert (region.contains(values).numpy() == expected).all(), name
    assert cvs.periodic.all()


def test_distance_coordinate_and_rmsd_cvs(alanine_frames, tmp_path):
    system, traj = alanine_frames
    traj[0].save_pdb(str(tmp_path / "ref.pdb"))
    spec = {
        "d": {"distance": [[0, "C"], [2, "N"]]},
        "z": {"coordinate": [3, 2]},
        "r": {"rmsd": "ref.pdb", "atoms": "heavy"},
    }
    cvs = CollectiveVariables(spec, traj.topology, tmp_path)
    values = cvs(torch.as_tensor(traj.xyz, dtype=torch.float64)).numpy()
    i = cvs.atoms["d"].tolist()
    assert np.allclose(values[:, 0], np.linalg.norm(traj.xyz[:, i[0]] - traj.xyz[:, i[1]], axis=1), atol=1e-6)
    assert np.allclose(values[:, 1], traj.xyz[:, 3, 2], atol=1e-6)
    assert np.allclose(values[:, 2], mdtraj.rmsd(traj, traj[0]), atol=1e-5)
    assert not cvs.periodic.any()
    # a mirror image is not superposable: the Kabsch RMSD must not allow reflections
    pos = torch.as_tensor(traj.xyz[:1], dtype=torch.float64)
    assert float(kabsch_rmsd(pos * torch.tensor([1.0, 1.0, -1.0]), pos[0])) > 0.05


def test_bad_cv_and_state_declarations(alanine_frames):
    system, _ = alanine_frames
    with pytest.raises(ValueError, match="exactly one of"):
        CollectiveVariables({"phi": {"angle": [1, 2, 3]}}, system.topology)
    with pytest.raises(ValueError, match="no atom 'XX'"):
        CollectiveVariables({"d": {"distance": [[0, "XX"], [1, "N"]]}}, system.topology)
    with pytest.raises(ValueError, match="no collective variables"):
        CollectiveVariables({})
    system.states["bad"] = {"chi": 1.0, "radius": 0.5}
    try:
        with pytest.raises(ValueError, match="not declared"):
            load_states(system)
    finally:
        del system.states["bad"]
    with pytest.raises(ValueError, match="declares no state"):
        load_states(system, ["C7xx"])


def test_propagate_stops_and_limits(mueller_brown):
    system, term, a, b, starts = mueller_brown
    x = starts[:16]
    v = torch.zeros_like(x)
    term.evaluations = 0
    limits = torch.arange(16) % 5
    seg = propagate(term, x, v, 10, 0.005, SeededNoise(0), limits=limits)
    assert (seg.lengths == limits).all() and not seg.stopped.any()
    assert term.evaluations == int((limits > 0).sum() + limits.sum())  # one force per step plus the start
    assert torch.isnan(seg.positions[5:, 0]).all() and torch.isfinite(seg.positions[:5, 4]).all()
    stop = lambda pos: pos[:, 0, 0] > -10.0  # noqa: E731 - true everywhere: every replica stops at frame 1
    seg = propagate(term, x, v, 10, 0.005, SeededNoise(0), stop=stop)
    assert (seg.lengths == 1).all() and seg.stopped.all() and len(seg.positions) == 2
    # replay: the same noise gives the same segment
    again = propagate(term, x, v, 10, 0.005, SeededNoise(0), limits=limits)
    first = propagate(term, x, v, 10, 0.005, SeededNoise(0), limits=limits)
    assert torch.equal(torch.nan_to_num(again.positions), torch.nan_to_num(first.positions))


def test_path_batch_cuts_and_joins(mueller_brown):
    system, term, a, b, starts = mueller_brown
    limits = torch.tensor([12, 7, 3, 12, 9, 5])
    seg = propagate(term, starts[:6], torch.zeros_like(starts[:6]), 12, 0.005, SeededNoise(1), limits=limits)
    paths, _ = PathBatch.from_segment(seg, torch.full((6,), -1), 0)
    back = paths.reversed().reversed()
    assert torch.equal(torch.nan_to_num(back.positions), torch.nan_to_num(paths.positions))
    assert torch.equal(torch.nan_to_num(back.velocities), torch.nan_to_num(paths.velocities))
    k = torch.tensor([3, 2, 1, 12, 0, 5])
    joined = paths.head(k).then(paths.tail(k))
    assert (joined.lengths == paths.lengths).all()
    assert torch.equal(joined.ids, paths.ids)
    assert torch.equal(torch.nan_to_num(joined.positions), torch.nan_to_num(paths.positions))
    rev = paths.reversed()
    c = torch.arange(6)
    assert torch.equal(rev.positions[0], paths.last())
    assert torch.equal(rev.velocities[0], -paths.velocities[paths.lengths, c])


def _per_path_stats(paths: list[np.ndarray], dt: float) -> np.ndarray:
    """(n_paths, 3): length (ps), mean x, mean y of the path's frames."""
    return np.array([[(len(p) - 1) * dt, p[:, 0, 0].mean(), p[:, 0, 1].mean()] for p in paths])


def _chain_means(ensemble, values: np.ndarray, burn_in: int) -> np.ndarray:
    history = np.array(ensemble.history[burn_in:])  # (moves, chains)
    return values[history].mean(0)  # (chains, ...)


def test_flexible_shooting_matches_brute_force_transitions(mueller_brown):
    """Flexible-length one-way and two-way shooting reproduce the transition-path time and path density of
    transition paths harvested from long unbiased runs (SCIENCE.md section 5)."""
    system, term, a, b, starts = mueller_brown
    dt = system.settings["timestep"]
    in_a = starts[a.contains(a.cvs(starts))]
    reference, info = harvest_transitions(term, in_a[:96], a, b, 12000, dt, progress=False)
    assert len(reference) > 300 and 0.2 < info["fraction_a"] < 0.8
    ref = _per_path_stats(reference, dt)
    ref_mean, ref_err = ref.mean(0), ref.std(0) / math.sqrt(len(ref))
    for move, moves in (("one-way", 120), ("two-way", 60)):
        settings = ShootingSettings(n_steps=1000, dt=dt, flexible=True, move=move, velocity_refresh=1.0, seed=5)
        tps = ShootingTPS(term, a, b, settings)
        ensemble = tps.run(PathBatch.from_positions(reference[:32]), moves, progress=False)
        stats = _per_path_stats(ensemble.paths, dt)
        chain = _chain_means(ensemble, stats, burn_in=20)
        mean, err = chain.mean(0), chain.std(0) / math.sqrt(len(chain))
        z = (mean - ref_mean) / np.hypot(err, ref_err)
        assert (np.abs(z) < Z).all(), (move, mean, ref_mean, z)
        assert ensemble.acceptance(20) > 0.05 and ensemble.decorrelated.sum() > 32
        # the shape of the path-length distribution: quartiles within their bootstrap-free bound (DKW, 1e-4)
        w = ensemble.weights(20)
        order = np.argsort(stats[:, 0])
        cdf = np.cumsum(w[order]) / w.sum()
        ref_cdf = np.searchsorted(np.sort(ref[:, 0]), stats[order, 0], side="right") / len(ref)
        n_eff = min(len(ref), ensemble.decorrelated.sum())
        assert np.abs(cdf - ref_cdf).max() < math.sqrt(math.log(2 / 1e-4) / (2 * n_eff)) * 2


def test_fixed_length_shooting_keeps_the_ensemble_and_resumes(mueller_brown, tmp_path):
    system, term, a, b, starts = mueller_brown
    dt = system.settings["timestep"]
    initial, tried = fixed_length_paths(term, starts, a, b, 100, dt, 8, batch_size=2048, progress=False)
    assert initial.n_paths == 8 and tried >= 8
    settings = ShootingSettings(n_steps=100, dt=dt, move="one-way", seed=2)
    tps = ShootingTPS(term, a, b, settings)
    full = tps.run(initial, 24, progress=False)
    assert tps.valid(PathBatch.from_positions([full.paths[i] for i in full.history[-1]])).all()
    # interrupted after 12 moves, resumed to 24: the same chains, paths and bookkeeping
    tps.run(initial, 12, out=tmp_path, checkpoint_every=4, progress=False)
    resumed = tps.run(initial, 24, out=tmp_path, checkpoint_every=4, progress=False)
    assert np.array_equal(np.array(resumed.history), np.array(full.history))
    assert all(np.array_equal(p, q) for p, q in zip(resumed.paths, full.paths, strict=True))
    assert resumed.evaluations == full.evaluations > 0  # the cost counts the interrupted run's moves too
    assert all(np.array_equal(u, v) for u, v in zip(resumed.start_velocities, full.start_velocities, strict=True))
    # reading the folder of a run still going ignores the chunks its checkpoint does not count yet (and keeps them)
    extra = tmp_path / "chunk_99999.npz"
    extra.write_bytes(b"")
    read = PathEnsemble.restore(tmp_path, torch.load(tmp_path / "checkpoint.pt", weights_only=True), dt, 1)
    assert extra.exists() and len(read.paths) == len(full.paths) and read.n_moves == 24
    extra.unlink()
    # the ensemble as fixed-length paths with their start velocities (to fit a path sampler): the BAOAB draws
    # recovered from positions and v_0 are unit normals (a wrong v_0 would give draws of size ~20)
    # one-way paths that keep pieces of the initial paths are flagged (and survive the resume), then are left out
    flags = np.asarray(full.from_initial)
    assert flags[np.asarray(full.move) < 0].all() and flags[np.asarray(full.move) >= 0].any()
    assert resumed.from_initial == full.from_initial
    batch, weights, chains = full.fixed_length_paths()
    made = (full.weights() > 0) & ~flags
    assert batch.n_paths == len(weights) == int(made.sum()) and weights.sum() == full.weights()[made].sum()
    assert (chains == np.asarray(full.chain)[made]).all()
    x_mid, v_in, v_out = step_states(target_rollout(batch, term), term, dt)
    c = math.exp(-term.friction * dt)
    z = (v_out - c * v_in) / math.sqrt(-math.expm1(-2 * term.friction * dt) * term.kT / float(term.masses[0]))
    assert 0.85 < float((z**2).mean()) < 1.15, float((z**2).mean())
    # the ensemble as one trajectory file with an index
    import mdtraj as md

    top = md.Topology()
    top.add_atom("X", md.element.carbon, top.add_residue("MB", top.add_chain()))
    full.write_trajectory(tmp_path / "paths.dcd", top)
    index = np.loadtxt(tmp_path / "paths.dcd.csv", delimiter=",", skiprows=1, ndmin=2)
    traj = md.load(str(tmp_path / "paths.dcd"), top=top)
    assert traj.n_frames == index[:, 2].sum() and index[:, 4].sum() == full.n_moves * 8
    first = int(index[0, 0])
    assert np.allclose(traj.xyz[: len(full.paths[first]), 0, :2], full.paths[first][:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="settings"):
        ShootingTPS(term, a, b, ShootingSettings(n_steps=100, dt=dt, move="two-way")).run(initial, 9, out=tmp_path)


def test_invalid_initial_paths_and_unreachable_states(mueller_brown):
    system, term, a, b, starts = mueller_brown
    dt = system.settings["timestep"]
    seg = propagate(term, starts[:4], torch.zeros_like(starts[:4]), 20, dt, SeededNoise(0))
    paths, _ = PathBatch.from_segment(seg, torch.full((4,), -1), 0)
    tps = ShootingTPS(term, a, b, ShootingSettings(n_steps=20, dt=dt))
    with pytest.raises(ValueError, match="not in the ensemble"):
        tps.run(paths, 1, progress=False)
    from molscore.paths import NoTransitionError

    with pytest.raises(NoTransitionError, match="reached"):
        fixed_length_paths(term, starts, a, b, 3, dt, 4, batch_size=64, max_tries=128, progress=False)
    with pytest.raises(ValueError, match="move must be"):
        ShootingSettings(n_steps=20, dt=dt, move="three-way")


def test_shooting_that_never_accepts_says_so_and_keeps_its_paths(mueller_brown):
    system, term, a, b, starts = mueller_brown
    dt = system.settings["timestep"]
    initial, _ = fixed_length_paths(term, starts, a, b, 100, dt, 2, batch_size=2048, progress=False)
    tps = ShootingTPS(term, a, b, ShootingSettings(n_steps=100, dt=dt))
    tps.move = lambda paths, m, next_id: (paths, torch.zeros(paths.n_paths, dtype=torch.bool), next_id)
    with pytest.warns(UserWarning, match="no trial path"):
        ensemble = tps.run(initial, 3, progress=False)
    assert len(ensemble.paths) == 2 and ensemble.n_moves == 3
