"""Seeded noise, the Simulation loop, reporters, the blow-up guard, checkpoint/resume and input errors."""

import math

import numpy as np
import pytest
import torch

from molscore.dynamics import (
    BAOAB,
    ODE,
    SDE,
    EulerMaruyama,
    Heun,
    Overdamped,
    SeededNoise,
    Simulation,
    SimulationError,
    State,
    TrajectoryReporter,
    Underdamped,
    load_trajectory,
    read_checkpoint,
)
from molscore.dynamics.guards import BondLengthGuard
from molscore.potentials import Harmonic

KT = 2.494


def harmonic_langevin(n_particles=3, dim=3, energy_fn=None):
    pot = Harmonic(50.0, n_particles=n_particles, dim=dim)
    masses = torch.linspace(1.0, 16.0, n_particles, dtype=torch.float64)
    return pot, Underdamped(None, masses, KT, 2.0, energy_fn=energy_fn or pot.energy)


def start(pot, b=8, dtype=torch.float64, seed=0):
    return State(pot.sample(b, KT, generator=torch.Generator().manual_seed(seed)).to(dtype))


# --- seeded noise -------------------------------------------------------------------------------------


def test_seeded_noise_replays_by_seed_step_and_stream():
    a, b = SeededNoise(7), SeededNoise(7)
    shape, f64 = (4, 3, 2), torch.float64
    z = a.normal(5, shape, f64, "cpu")
    assert z.shape == shape and z.dtype == f64
    assert torch.equal(z, b.normal(5, shape, f64, "cpu"))  # another object, same numbers
    a.normal(6, shape, f64, "cpu")  # drawing other steps in between changes nothing
    assert torch.equal(z, a.normal(5, shape, f64, "cpu"))
    for other in (a.normal(6, shape, f64, "cpu"), a.normal(5, shape, f64, "cpu", stream=1)):
        assert not torch.allclose(other, z)
    assert not torch.allclose(SeededNoise(8).normal(5, shape, f64, "cpu"), z)
    # float32 draws are the float64 draws rounded, so precisions see the same noise
    assert torch.equal(a.normal(5, shape, torch.float32, "cpu"), z.float())
    # it is standard normal: mean and variance of many draws within their standard errors
    many = a.normal(0, (200_000,), f64, "cpu")
    assert abs(many.mean().item()) < 5 / math.sqrt(len(many))
    assert abs(many.var().item() - 1) < 5 * math.sqrt(2 / len(many))
    with pytest.raises(ValueError, match="seed"):
        SeededNoise(-1)
    with pytest.raises(ValueError, match="step"):
        a.normal(-1, shape, f64, "cpu")


# --- reporters and the loop ---------------------------------------------------------------------------


def test_trajectory_reporter_writes_chunks_with_energies_of_the_recorded_positions(tmp_path):
    pot, term = harmonic_langevin()
    reporter = TrajectoryReporter(tmp_path / "traj", interval=2, chunk_frames=5, record_velocities=True)
    sim = Simulation(term, BAOAB(), start(pot), 0.01, SeededNoise(1), [reporter])
    final = sim.run(23, progress=True)
    assert final.step == 23 and final.t == pytest.approx(0.23)
    files = sorted(p.name for p in (tmp_path / "traj").iterdir())
    assert files == ["chunk_000000.npz", "chunk_000001.npz", "chunk_000002.npz"]
    traj = load_trajectory(tmp_path / "traj")
    assert traj["pos"].shape == (12, 8, 3, 3) and traj["vel"].shape == (12, 8, 3, 3)
    assert traj["step"].tolist() == list(range(0, 23, 2))
    np.testing.assert_allclose(traj["t"], 0.01 * traj["step"], rtol=1e-12, atol=1e-15)
    # energies are those of the recorded positions (the integrator's cached energy belongs to its pos)
    expected = pot.energy(torch.from_numpy(traj["pos"]).flatten(0, 1)).reshape(12, 8).numpy()
    np.testing.assert_allclose(traj["energy"], expected, rtol=1e-12)
    with np.load(tmp_path / "traj" / "chunk_000002.npz") as last:
        assert last["step"].tolist() == [20, 22]  # the partial chunk was flushed at the end of run()


def test_baoab_costs_one_force_evaluation_per_step():
    pot = Harmonic(50.0, n_particles=2, dim=3)
    calls = []

    def force(x):
        calls.append(1)
        return pot.forces(x)

    term = Underdamped(force, torch.ones(2), KT, 1.0)
    sim = Simulation(term, BAOAB(), start(pot), 0.01, SeededNoise(0), [])
    sim.run(40, progress=False)
    assert len(calls) == 41  # the first step of a fresh state also evaluates the starting force
    sim.run(10, progress=False)
    assert len(calls) == 51


def test_guard_raises_with_a_clear_message_and_keeps_the_good_frames(tmp_path):
    # dx/dt = x^3 - x: replicas started beyond |x| = 1 run away in finite time (~0.29 ps from 1.5)
    term = Overdamped(lambda x, t: x**3 - x, diffusion=1e-6)
    pos = torch.tensor([0.5, 0.5, -0.5, 1.5, 0.2, -1.5], dtype=torch.float64)[:, None, None].expand(6, 1, 2)
    reporter = TrajectoryReporter(tmp_path / "traj", interval=2, chunk_frames=3)
    sim = Simulation(
        term,
        EulerMaruyama(),
        State(pos.clone()),
        0.01,
        SeededNoise(0),
        [reporter],
        max_abs_position=100.0,
        check_interval=5,
    )
    with pytest.raises(SimulationError) as info:
        sim.run(200, progress=False)
    message = str(info.value)
    bad_step = sim.state.step
    assert f"step {bad_step}" in message and "2 of 6 replicas" in message and "[3, 5]" in message
    assert "smaller timestep" in message and "dt = 0.01" in message and "written to disk" in message
    traj = load_trajectory(tmp_path / "traj")
    last_good = sim.last_good_step
    assert traj["step"].tolist() == list(range(0, last_good + 1, 2))  # every good frame, no bad one
    assert np.isfinite(traj["pos"]).all() and np.abs(traj["pos"]).max() <= 100.0
    assert bad_step > last_good


def test_bond_guard_stops_a_stretching_molecule_and_names_the_bond(tmp_path):
    # two beads at 0.15 nm, reference lengths 0.14-0.16 nm; a constant drift pulls replica 1's bead 1 away
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.15, 0.0, 0.0]]] * 3, dtype=torch.float64)
    guard = BondLengthGuard.from_frames([[0, 1]], pos[:1] * torch.tensor([[[1.0], [0.14 / 0.15]]]), 0.5, ["C-N"])
    guard_hi = BondLengthGuard.from_frames([[0, 1]], pos[:1] * torch.tensor([[[1.0], [0.16 / 0.15]]]), 0.5)
    guard = BondLengthGuard(guard.bonds, guard.lower, guard_hi.upper, ["C-N"])
    np.testing.assert_allclose([guard.lower.item(), guard.upper.item()], [0.07, 0.24])
    assert guard(pos).tolist() == [False, False, False]

    def drift(x, t):
        v = torch.zeros_like(x)
        v[1, 1, 0] = 0.7  # nm/ps: replica 1 passes 0.24 nm at step 13 (0.241 nm)
        return v

    reporter = TrajectoryReporter(tmp_path / "traj", interval=1, chunk_frames=100)
    sim = Simulation(ODE(drift), Heun(), State(pos.clone()), 0.01, None, [reporter],
                     check_interval=1, guards=[guard])  # fmt: skip
    with pytest.raises(SimulationError, match=r"bond C-N of replica 1 is 0\.241 nm, outside \[0\.070, 0\.240\]") as info:
        sim.run(100, progress=False)
    assert info.value.step == 13 and info.value.last_good_step == 12
    assert load_trajectory(tmp_path / "traj")["step"].tolist() == list(range(13))


def test_wall_clock_budget_stops_early_with_a_checkpoint_and_resumes(tmp_path):
    pot, term = harmonic_langevin()
    sim = Simulation(term, BAOAB(), start(pot), 0.002, SeededNoise(0), checkpoint_path=tmp_path / "c.pt")
    sim.run(1000, progress=False, max_seconds=0.0)
    assert sim.state.step == 1 and read_checkpoint(tmp_path / "c.pt")["step"] == 1
    again = Simulation.from_checkpoint(tmp_path / "c.pt", term, BAOAB())
    again.run(9, progress=False)
    reference = Simulation(term, BAOAB(), start(pot), 0.002, SeededNoise(0))
    reference.run(10, progress=False)
    torch.testing.assert_close(again.state.pos, reference.state.pos, rtol=0, atol=0)


def test_interrupted_and_resumed_run_writes_identical_files(tmp_path):
    pot = Harmonic(50.0, n_particles=3, dim=3)

    def run_uninterrupted(folder, split=None):
        _, term = harmonic_langevin()
        rep = TrajectoryReporter(folder, interval=3, chunk_frames=4, record_velocities=True)
        sim = Simulation(
            term,
            BAOAB(),
            start(pot),
            0.01,
            SeededNoise(5),
            [rep],
            checkpoint_path=folder / "ckpt.pt",
            checkpoint_interval=10,
        )
        for n in split or [50]:
            sim.run(n, progress=False)
        return sim.state

    def crashing_energy(limit):
        count = [0]

        def energy(x):
            count[0] += 1
            if count[0] > limit:
                raise RuntimeError("simulated crash")
            return pot.energy(x)

        return energy

    ref = run_uninterrupted(tmp_path / "ref")
    split = run_uninterrupted(tmp_path / "split", [23, 27])  # run() twice in one process

    folder = tmp_path / "crash"
    _, term = harmonic_langevin(energy_fn=crashing_energy(38))  # dies during step 38, after checkpoint 30
    rep = TrajectoryReporter(folder, interval=3, chunk_frames=4, record_velocities=True)
    sim = Simulation(
        term,
        BAOAB(),
        start(pot),
        0.01,
        SeededNoise(5),
        [rep],
        checkpoint_path=folder / "ckpt.pt",
        checkpoint_interval=10,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        sim.run(50, progress=False)
    assert len(load_trajectory(folder)["step"]) == 13  # frames after the checkpoint reached disk too

    _, term = harmonic_langevin()
    rep = TrajectoryReporter(folder, interval=3, chunk_frames=4, record_velocities=True)
    resumed = Simulation.from_checkpoint(
        folder / "ckpt.pt", term, BAOAB(), [rep], checkpoint_path=folder / "ckpt.pt", checkpoint_interval=10
    )
    assert resumed.state.step == 30
    # the folder now holds exactly the frames up to the checkpoint; those written after it are gone
    assert load_trajectory(folder)["step"].tolist() == list(range(0, 31, 3))
    resumed.run(20, progress=False)

    names = sorted(p.name for p in (tmp_path / "ref").glob("chunk_*.npz"))
    assert len(names) == 5  # 17 frames: 4 full chunks and one of 1
    for other in ("split", "crash"):
        assert sorted(p.name for p in (tmp_path / other).glob("chunk_*.npz")) == names
        for name in names:
            assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / other / name).read_bytes()
    assert torch.equal(ref.pos, resumed.state.pos) and torch.equal(ref.vel, resumed.state.vel)
    assert torch.equal(ref.pos, split.pos)

    with pytest.raises(ValueError, match="seed 5"):
        Simulation.from_checkpoint(folder / "ckpt.pt", term, BAOAB(), [rep], noise=SeededNoise(6))


def test_a_fresh_reporter_refuses_a_used_folder(tmp_path):
    pot, term = harmonic_langevin()
    Simulation(term, BAOAB(), start(pot), 0.01, SeededNoise(0), [TrajectoryReporter(tmp_path)]).run(3, False)
    sim = Simulation(term, BAOAB(), start(pot), 0.01, SeededNoise(0), [TrajectoryReporter(tmp_path)])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sim.run(3, progress=False)
    rep = TrajectoryReporter(tmp_path, overwrite=True)
    Simulation(term, BAOAB(), start(pot), 0.01, SeededNoise(0), [rep]).run(5, progress=False)
    assert load_trajectory(tmp_path)["step"].tolist() == list(range(6))


# --- precision, time direction, errors ------------------------------------------------------------------


def test_float32_runs_follow_the_float64_trajectory(tmp_path):
    pot, term = harmonic_langevin()
    finals = {}
    for dtype in (torch.float32, torch.float64):
        rep = TrajectoryReporter(tmp_path / str(dtype), interval=5)
        sim = Simulation(term, BAOAB(), start(pot, dtype=dtype), 0.01, SeededNoise(3), [rep])
        finals[dtype] = sim.run(50, progress=False)
        assert finals[dtype].pos.dtype == dtype and finals[dtype].vel.dtype == dtype
        traj = load_trajectory(tmp_path / str(dtype))
        assert traj["pos"].dtype == np.dtype(str(dtype).split(".")[1]) and np.isfinite(traj["energy"]).all()
    # the same seeded noise drives both precisions, so they differ only by rounding
    diff = (finals[torch.float32].pos.double() - finals[torch.float64].pos).abs().max().item()
    assert diff < 1e-4


def test_reverse_time_euler_maruyama_scales_noise_with_sqrt_abs_dt():
    # dx = g(t) dW stepped backwards from t = 1: one step has variance g(1)^2 |dt| (noise taken at the start)
    dt, b = -0.01, 40000
    term = SDE(lambda x, t: torch.zeros_like(x), lambda t: 0.5 + t)
    state = EulerMaruyama().step(term, State(torch.zeros(b, 1, 3, dtype=torch.float64), t=1.0), dt, SeededNoise(0))
    assert state.t == pytest.approx(0.99) and state.step == 1
    var, expected = state.pos.var().item(), 1.5**2 * abs(dt)
    assert abs(var - expected) < 5 * expected * math.sqrt(2 / state.pos.numel())


def test_deterministic_simulation_needs_no_noise_and_resumes(tmp_path):
    term = ODE(lambda x, t: -x)
    x0 = torch.ones(2, 1, 2, dtype=torch.float64)
    sim = Simulation(term, Heun(), State(x0), 0.1, None, checkpoint_path=tmp_path / "c.pt")
    sim.run(10, progress=False)
    resumed = Simulation.from_checkpoint(tmp_path / "c.pt", term, Heun())
    assert resumed.noise is None and resumed.state.step == 10
    resumed.run(10, progress=False)
    heun_factor = 1 - 0.1 + 0.1**2 / 2  # Heun's amplification factor for dx/dt = -x
    torch.testing.assert_close(resumed.state.pos, x0 * heun_factor**20, rtol=1e-12, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_replays_and_baoab_runs_on_the_gpu():
    noise = SeededNoise(1)
    z = noise.normal(3, (64, 5, 3), torch.float32, "cuda")
    assert z.device.type == "cuda" and torch.equal(z, noise.normal(3, (64, 5, 3), torch.float32, "cuda"))
    assert not torch.equal(z, noise.normal(4, (64, 5, 3), torch.float32, "cuda"))
    pot, term = harmonic_langevin()
    sim = Simulation(term, BAOAB(), start(pot, b=64).to("cuda"), 0.01, noise)
    final = sim.run(100, progress=False)
    assert final.pos.device.type == "cuda" and torch.isfinite(final.pos).all()


def test_bad_inputs_give_errors_that_name_the_problem():
    pot, term = harmonic_langevin()
    state = start(pot)
    baoab = BAOAB()
    ready = baoab.init(term, state, SeededNoise(0))
    with pytest.raises(ValueError, match="dt must be positive"):
        baoab.step(term, ready, -0.01, SeededNoise(0))
    with pytest.raises(ValueError, match="needs velocities"):
        baoab.step(term, state, 0.01, SeededNoise(0))
    with pytest.raises(ValueError, match="SeededNoise"):
        baoab.init(term, state)
    with pytest.raises(ValueError, match="non-zero"):
        Simulation(term, baoab, state, 0.0, SeededNoise(0))
    with pytest.raises(ValueError, match=r"pos\[None\]"):
        State(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="must match pos"):
        State(torch.zeros(2, 3, 3), vel=torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="3 masses"):
        baoab.init(term, State(torch.zeros(2, 4, 3)), SeededNoise(0))
    with pytest.raises(ValueError, match="masses"):
        Underdamped(pot.forces, torch.tensor([1.0, -1.0]), KT, 1.0)
    with pytest.raises(ValueError, match="friction"):
        Underdamped(pot.forces, torch.ones(3), KT, -1.0)
    with pytest.raises(TypeError, match="BAOAB"):
        EulerMaruyama().step(term, state, 0.01, SeededNoise(0))
    over = Overdamped(lambda x, t: -x, diffusion=torch.ones(4))
    with pytest.raises(ValueError, match="does not broadcast"):
        EulerMaruyama().step(over, State(torch.zeros(2, 3, 2)), 0.01, SeededNoise(0))
    with pytest.raises(ValueError, match="positive"):
        Overdamped(lambda x, t: -x, diffusion=-1.0)
    with pytest.raises(ValueError, match="SeededNoise"):
        EulerMaruyama().step(Overdamped(lambda x, t: -x, 1.0), state, 0.01)
    with pytest.raises(TypeError, match="deterministic"):
        Heun().step(Overdamped(lambda x, t: -x, 1.0), state, 0.01)
    with pytest.raises(ValueError, match="same shape"):
        Heun().step(ODE(lambda x, t: x[:, 0]), state, 0.01)
