"""OpenMM MD data generation: layout, frame spacing, exact resumption, settings guards, system building."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
import yaml
from openmm import unit

from molscore.interfaces import openmm_md
from molscore.interfaces.openmm_md import generate_md, load_md, openmm_system, replica_files
from molscore.system import load_system

ROOT = Path(__file__).resolve().parents[1]
TINY = {"replicas": 2, "length_ps": 5.0, "equilibration_ps": 1.0, "chunk_frames": 2, "progress": False}


@pytest.fixture(scope="module")
def alanine():
    return load_system("alanine_dipeptide")


def frames_of(out):
    return [traj.xyz for traj in load_md(out)]


def test_tiny_dataset_layout_and_frame_spacing(alanine, tmp_path):
    out = generate_md(alanine, tmp_path / "md", processes=2, **TINY)  # two spawned workers
    files = replica_files(out)
    assert [[f.name for f in chunks] for chunks in files] == [
        ["chunk_000000.dcd", "chunk_000001.dcd", "chunk_000002.dcd"]
    ] * 2
    top = mdtraj.load_topology(str(out / "topology.pdb"))
    trajs = [mdtraj.load(str(f), top=top) for f in files[0]]
    assert [t.n_frames for t in trajs] == [2, 2, 1] and trajs[0].n_atoms == 22
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["replicas"] == 2 and manifest["timestep_ps"] == 0.001 and manifest["constraints"] is None
    assert not list(out.glob("replica_*/.*"))  # no temporary files left
    xyz = frames_of(out)
    assert not np.array_equal(xyz[0], xyz[1])  # replicas are independent

    # frames are 1 ps (1000 steps) apart after 1 ps of equilibration: replay replica 1 with plain OpenMM
    omm_system, _, _ = openmm_system(alanine)
    start = openmm.app.PDBFile(str(out / "topology.pdb")).getPositions()

    def context(noise_seed):
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.001 * unit.picosecond)
        integrator.setRandomNumberSeed(noise_seed)
        return openmm.Context(omm_system, integrator, openmm.Platform.getPlatformByName("Reference"))

    ctx = context(openmm_md._seed(0, 1, 1))
    ctx.setPositions(start)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, openmm_md._seed(0, 1, 0))
    ctx.getIntegrator().step(1000)
    state = ctx.getState(getPositions=True, getVelocities=True)
    ctx = context(openmm_md._seed(0, 1, 2))
    ctx.setState(state)
    for k in range(2):
        ctx.getIntegrator().step(1000)
        expected = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        np.testing.assert_allclose(xyz[1][k], expected, atol=1e-5)
    saved = openmm.XmlSerializer.deserialize((out / "replica_001" / "state.xml").read_text())
    assert saved.getStepCount() == 1000 + 5 * 1000


def test_interrupted_run_resumes_exactly(alanine, tmp_path, monkeypatch):
    reference = generate_md(alanine, tmp_path / "whole", processes=1, **TINY)
    real_write = openmm_md._write_text
    calls = {"state": 0}

    def dying_write(path, text):  # dies after chunk 0 of replica 0 is renamed but before its state is saved
        if path.name == "state.xml":
            calls["state"] += 1
            if calls["state"] == 2:
                raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(openmm_md, "_write_text", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_md(alanine, tmp_path / "cut", processes=1, **TINY)
    monkeypatch.setattr(openmm_md, "_write_text", real_write)
    cut = tmp_path / "cut"
    assert [f.name for f in replica_files(cut)[0]] == ["chunk_000000.dcd"]  # chunk saved, state not
    assert openmm_md._saved_steps(cut / "replica_000") == 1000  # state still at the end of equilibration

    generate_md(alanine, cut, processes=1, **TINY)
    for whole, resumed in zip(frames_of(reference), frames_of(cut), strict=True):
        assert whole.shape == resumed.shape == (5, 22, 3)
        assert np.array_equal(whole, resumed)  # the rerun chunk 0 and its successors continue the same trajectory
        assert len(np.unique(resumed.reshape(5, -1), axis=0)) == 5  # no duplicated frames
    for r in range(2):
        assert openmm_md._saved_steps(cut / f"replica_{r:03d}") == 6000
        assert len(replica_files(cut)[r]) == 3


def test_extension_appends_frames_and_skips_complete_replicas(alanine, tmp_path):
    out = generate_md(alanine, tmp_path / "md", processes=1, **TINY)
    before = frames_of(out)
    stamp = (out / "replica_000" / "chunk_000002.dcd").stat().st_mtime_ns
    generate_md(alanine, out, processes=1, **TINY)  # nothing to do
    assert (out / "replica_000" / "chunk_000002.dcd").stat().st_mtime_ns == stamp
    generate_md(alanine, out, processes=1, **{**TINY, "length_ps": 8.0, "replicas": 3})
    after = frames_of(out)
    assert [x.shape[0] for x in after] == [8, 8, 8]
    for old, new in zip(before, after, strict=False):
        assert np.array_equal(new[:5], old)
        assert len(np.unique(new.reshape(8, -1), axis=0)) == 8
        step = np.linalg.norm(new[5] - new[4], axis=-1).max()
        assert 0 < step < 0.5  # the first new frame continues 1 ps after the last saved one


def test_a_damaged_chunk_is_caught_and_its_replica_regenerated_identically(alanine, tmp_path):
    from molscore.data.trajectories import dcd_frames, load_frames
    from molscore.files import CorruptFileError

    out = generate_md(alanine, tmp_path / "md", processes=1, **TINY)
    before = frames_of(out)
    chunk = out / "replica_001" / "chunk_000001.dcd"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # header still says 2 frames
    with pytest.raises(CorruptFileError, match="chunk_000001.dcd holds .* bytes, but its header's 2 frames"):
        dcd_frames(chunk)
    with pytest.raises(CorruptFileError, match="chunk_000001.dcd"):  # the data stage would read it
        load_frames(replica_files(out)[1], out / "topology.pdb")
    generate_md(alanine, out, processes=1, **TINY)  # not "complete": the replica is redone from its seed
    after = frames_of(out)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert dcd_frames(chunk) == 2


def test_restart_with_other_settings_raises(alanine, tmp_path):
    out = generate_md(alanine, tmp_path / "md", processes=1, **{**TINY, "replicas": 1, "length_ps": 2.0})
    with pytest.raises(ValueError, match="seed"):
        generate_md(alanine, out, processes=1, seed=1, **{**TINY, "replicas": 1, "length_ps": 2.0})
    other = load_system("alanine_dipeptide")
    other.md["timestep"] = 0.0005
    with pytest.raises(ValueError, match="timestep_ps"):
        generate_md(other, out, processes=1, **{**TINY, "replicas": 1, "length_ps": 2.0})
    with pytest.raises(ValueError, match="length_ps"):
        generate_md(alanine, out, processes=1, **{**TINY, "replicas": 1, "length_ps": 1.0})
    assert [len(x) for x in frames_of(out)] == [2]  # the data are untouched


def test_bad_arguments_raise(alanine, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        generate_md(alanine, tmp_path / "a", replicas=1, length_ps=2.5, progress=False)
    with pytest.raises(ValueError, match="platform"):
        generate_md(alanine, tmp_path / "b", replicas=1, length_ps=2.0, platform="Nonsense", progress=False)
    with pytest.raises(ValueError, match="replicas"):
        generate_md(alanine, tmp_path / "c", replicas=0, length_ps=2.0, progress=False)


def test_openmm_system_from_definition(alanine):
    forces = {type(f).__name__ for f in openmm_system(alanine)[0].getForces()}
    assert "GBSAOBCForce" in forces
    vacuum, topology, positions = openmm_system(load_system("alanine_dipeptide", variant="vacuum"))
    assert "GBSAOBCForce" not in {type(f).__name__ for f in vacuum.getForces()}
    assert vacuum.getNumParticles() == topology.getNumAtoms() == len(positions) == 22
    assert vacuum.getNumConstraints() == 0
    nonbonded = next(f for f in vacuum.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    valine = openmm_system(load_system("valine_dipeptide"))[0]
    assert valine.getNumParticles() == 28


def test_cli_quick_settings(workflow_script):
    cli = workflow_script("generate_md.py")
    args = cli.parse_args(["--system", "alanine_dipeptide", "--quick"])
    assert args.out == Path("data/alanine_dipeptide_quick") and args.replicas == 4 and args.equilibration_ps == 5.0
    args = cli.parse_args(["--variant", "vacuum"])
    assert args.out == Path("data/alanine_dipeptide_vacuum") and args.replicas * args.ns >= 200


@pytest.mark.slow
def test_killed_workflow_resumes(tmp_path):
    """SIGKILL the workflow (and its workers) mid-run, rerun it, and get the uninterrupted data exactly."""
    command = [sys.executable, str(ROOT / "workflows" / "generate_md.py"), "--replicas", "2", "--ns", "0.06"]
    command += ["--equilibration-ps", "2", "--chunk-frames", "10", "--processes", "2", "--no-progress"]
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    job = subprocess.Popen([*command, "--out", str(tmp_path / "cut")], start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "cut").glob("replica_*/chunk_000002.dcd")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert len(list((tmp_path / "cut").glob("replica_*/chunk_*.dcd"))) < 12  # really interrupted
    subprocess.run([*command, "--out", str(tmp_path / "cut")], check=True, capture_output=True)
    for whole, resumed in zip(frames_of(tmp_path / "whole"), frames_of(tmp_path / "cut"), strict=True):
        assert whole.shape == (60, 22, 3) and np.array_equal(whole, resumed)


@pytest.mark.slow
def test_workers_die_with_a_killed_parent_and_a_second_generator_is_refused(tmp_path):
    """kill -9 of the parent alone: its pool workers stop within seconds (PR_SET_PDEATHSIG); while it runs, a
    second generate_md on the same folder stops at once naming the first one's PID."""
    from molscore.files import FolderInUseError

    command = [sys.executable, str(ROOT / "workflows" / "generate_md.py"), "--replicas", "2", "--ns", "0.5"]
    command += ["--equilibration-ps", "2", "--chunk-frames", "10", "--processes", "2", "--no-progress"]
    job = subprocess.Popen([*command, "--out", str(tmp_path / "md")], start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "md").glob("replica_*/chunk_000001.dcd")) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(FolderInUseError, match=f"MD folder .* is in use by PID {job.pid}"):
        generate_md(load_system("alanine_dipeptide"), tmp_path / "md", processes=1, **{**TINY, "length_ps": 500.0})
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()]
    assert children, "the pool workers were not found"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 20
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"workers {alive} outlived their killed parent"


def test_first_replica_reproduces_the_same_replicas_elsewhere(alanine, tmp_path):
    whole = frames_of(generate_md(alanine, tmp_path / "all", processes=1, **{**TINY, "replicas": 3}))
    part = generate_md(alanine, tmp_path / "part", processes=1, first_replica=1, **{**TINY, "replicas": 3})
    assert not (part / "replica_000").exists()
    for r, xyz in zip((1, 2), frames_of(part), strict=True):
        assert np.array_equal(xyz, whole[r])  # replica r depends only on (seed, r), not on who ran it
    with pytest.raises(ValueError, match="first_replica"):
        generate_md(alanine, tmp_path / "bad", processes=1, first_replica=3, **{**TINY, "replicas": 3})


def test_hydrogen_mass_repartitioning_moves_mass_from_heavy_atoms():
    from molscore.interfaces.openmm_md import openmm_system
    from molscore.system import load_system

    system = load_system("alanine_dipeptide")
    plain, topology, _ = openmm_system(system)
    system.md["hydrogen_mass"] = 4.0
    heavy, _, _ = openmm_system(system)
    masses = [
        [s.getParticleMass(i).value_in_unit(openmm.unit.amu) for i in range(s.getNumParticles())] for s in (plain, heavy)
    ]
    hydrogens = [a.index for a in topology.atoms() if a.element.symbol == "H"]
    assert all(masses[1][i] == pytest.approx(4.0) for i in hydrogens)
    assert sum(masses[1]) == pytest.approx(sum(masses[0]))  # repartitioned, not added
    system.md["hydrogen_mass"] = 12.0
    with pytest.raises(ValueError, match="hydrogen_mass"):
        openmm_system(system)
