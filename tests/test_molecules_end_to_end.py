"""A second molecule through the whole chain with no code of its own: OpenMM MD -> data -> GNN training ->
samples -> simulation -> metrics, with every trajectory output readable by mdtraj."""

import json

import mdtraj
import numpy as np
import pytest
import yaml

from molscore.analysis.collective_variables import compute_cvs, in_state
from molscore.dynamics import load_trajectory
from molscore.interfaces.openmm_md import generate_md, load_md
from molscore.interfaces.trajectory_files import write_replicas, write_trajectory
from molscore.models import DiffusionModel
from molscore.pipeline import load_run_config, run_all
from molscore.pipeline.stages import prepare_data
from molscore.system import load_system


@pytest.fixture(scope="module")
def valine_md(tmp_path_factory):
    out = tmp_path_factory.mktemp("valine_md")
    system = load_system("valine_dipeptide")
    return generate_md(system, out, replicas=3, length_ps=30, equilibration_ps=2, chunk_frames=10, processes=1,
                       progress=False)  # fmt: skip


def test_valine_runs_through_the_pipeline_without_code_changes(valine_md, tmp_path):
    cfg = load_run_config(
        {
            "system": "valine_dipeptide",
            "run_dir": str(tmp_path / "run"),
            "data": {"source": str(valine_md), "resolution": "heavy", "n_validation_replicas": 1, "n_test_replicas": 1},
            "model": {
                "network": "gnn",
                "network_options": {"hidden_irreps": "8x0e+2x0o+4x1o+2x1e", "n_layers": 2},
                "extra_priors": ["angles", "repulsion", "dihedrals"],
            },
            "train": {"steps": 3, "batch_size": 8, "fp_weight": 1e-3, "fp_fraction": 0.5},
            "sample": {"n_samples": 16, "n_steps": 25},
            "simulate": {"replicas": 4, "steps": 20, "report_interval": 5, "start": "state:beta+data"},
        }
    )
    metrics = run_all(cfg, progress=False)
    run = tmp_path / "run"
    beads = mdtraj.load_topology(str(run / "data" / "beads.pdb"))
    assert beads.n_atoms == 12  # valine dipeptide heavy atoms: 6 (caps) + 7 (VAL) - 1 (NME has C and N only)
    assert np.load(run / "data" / "train.npy").shape[1:] == (12, 3)
    for key in ("iid", "sim", "floor"):
        assert np.isfinite(metrics[key]["js"]) and 0 <= metrics[key]["js"] <= np.log(2) + 1e-12
    molecular = metrics["molecular"]
    assert set(molecular) == {"md", "iid", "sim"} and molecular["sim"]["finite"]
    assert 0 <= molecular["iid"]["phi_positive"]["p"] <= 1 and molecular["md"]["tau_frames"] >= 1
    assert set(molecular["iid"]["bond_w1_nm"]) >= {"C-N", "N-CA", "CA-C"}  # heavy-atom bonds of the backbone
    assert molecular["iid"]["floor"]["n_frames"] > 0 and (run / "molecular.png").exists()
    assert (run / "population.png").exists()
    frames = load_trajectory(run / "simulation")["pos"]  # (5, 4, 12, 3): the start and every 5th step
    assert frames.shape == (5, 4, 12, 3) and json.loads((run / "metrics.json").read_text())["sim"]["frames"] == 4
    model = DiffusionModel.load(run / "model.safetensors")
    kinds = {type(prior).__name__ for prior in model.score_model.prior.priors}
    assert kinds == {
        "BondPrior",
        "AnglePrior",
        "RepulsionPrior",
        "DihedralPrior",
        "NoisePrior",
    }  # extra_priors reach the saved model
    samples = mdtraj.load(str(run / "samples_sde.dcd"), top=beads)
    np.testing.assert_allclose(samples.xyz, np.load(run / "samples_sde.npy"), atol=1e-5)
    system = load_system("valine_dipeptide")
    start_cvs = compute_cvs(frames[0], beads, system.collective_variables, ["phi", "psi"])
    assert in_state(start_cvs[:2], ["phi", "psi"], system.states["beta"]).all()  # the first half starts in the basin
    train = np.load(run / "data" / "train.npy")  # the second half from training frames
    assert all(np.isclose(train, frames[0, r]).all(axis=(1, 2)).any() for r in (2, 3))
    by_start = molecular["sim"]["phi_positive_by_start"]
    assert set(by_start) == {"state:beta", "data"} and all(0 <= g["p"] <= 1 for g in by_start.values())
    assert "CA" in molecular["md"]["stereocentres"]  # C-alpha keeps its handedness in MD
    assert all(0 <= molecular[k]["mirrored_fraction"] <= 1 for k in ("iid", "sim"))
    replicas = sorted((run / "simulation" / "dcd").glob("replica_*.dcd"))
    assert len(replicas) == 4
    np.testing.assert_allclose(mdtraj.load(str(replicas[2]), top=beads).xyz, frames[:, 2], atol=1e-5)


def test_md_dihedrals_match_mdtraj_on_the_raw_files(valine_md):
    system = load_system("valine_dipeptide")
    replicas = load_md(valine_md)
    assert [t.n_frames for t in replicas] == [30, 30, 30] and replicas[0].n_atoms == 28
    ours = compute_cvs(replicas[0].xyz, replicas[0].topology, system.collective_variables)
    _, phi = mdtraj.compute_phi(replicas[0])
    _, psi = mdtraj.compute_psi(replicas[0])
    np.testing.assert_allclose(ours[:, 0], phi[:, 0], atol=1e-5)
    np.testing.assert_allclose(ours[:, 1], psi[:, 0], atol=1e-5)


@pytest.mark.parametrize("suffix", [".dcd", ".xtc", ".h5", ".pdb"])
def test_trajectory_writers_round_trip(valine_md, tmp_path, suffix):
    if suffix == ".h5":
        pytest.importorskip("tables")
    traj = load_md(valine_md)[0][:5]
    path = write_trajectory(tmp_path / f"frames{suffix}", traj.xyz, traj.topology)
    back = mdtraj.load(str(path), top=traj.topology)
    atol = 1e-3 if suffix in (".xtc", ".pdb") else 1e-6  # XTC and PDB store 3 decimals (of nm, of Angstrom)
    np.testing.assert_allclose(back.xyz, traj.xyz, atol=atol)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_trajectory_writers_reject_bad_input(valine_md, tmp_path):
    traj = load_md(valine_md)[0][:2]
    with pytest.raises(ValueError, match="do not match the topology"):
        write_trajectory(tmp_path / "x.dcd", traj.xyz[:, :5], traj.topology)
    bad = traj.xyz.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_trajectory(tmp_path / "x.dcd", bad, traj.topology)
    with pytest.raises(ValueError, match="unknown trajectory format"):
        write_trajectory(tmp_path / "x.mp4", traj.xyz, traj.topology)
    with pytest.raises(ValueError, match="frames, B, N, 3"):
        write_replicas(tmp_path, traj.xyz, traj.topology)


def test_state_membership_is_periodic_and_validated():
    state = {"phi": 3.0, "psi": -3.0, "radius": 0.5}
    cvs = np.array([[3.0, -3.0], [-3.1, 3.1], [3.0, 0.0], [2.6, -3.0], [2.4, -3.0]])
    # (-3.1, 3.1) is 0.18 rad from (3, -3) across the periodic boundary; (2.4, -3) is 0.6 rad away
    assert in_state(cvs, ["phi", "psi"], state).tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="radius"):
        in_state(cvs, ["phi", "psi"], {"phi": 0.0})
    with pytest.raises(ValueError, match="not among"):
        in_state(cvs, ["phi", "psi"], {"omega": 0.0, "radius": 1.0})


def test_unknown_start_state_is_named(valine_md, tmp_path):
    from molscore.pipeline.stages import simulate

    data = {"source": str(valine_md), "n_validation_replicas": 1, "n_test_replicas": 1}
    cfg = load_run_config(
        {"system": "valine_dipeptide", "run_dir": str(tmp_path), "data": data, "simulate": {"start": "state:helix"}}
    )
    prepare_data(cfg)
    with pytest.raises(ValueError, match="declares states"):
        simulate(cfg, progress=False, force_fn=lambda x: 0 * x)


def test_extra_priors_on_beads_without_bonds_name_the_resolution(valine_md, tmp_path):
    from molscore.pipeline.stages import model_spec

    data = {"source": str(valine_md), "resolution": "calpha", "n_validation_replicas": 1, "n_test_replicas": 1}
    cfg = load_run_config(
        {"system": "valine_dipeptide", "run_dir": str(tmp_path), "data": data, "model": {"extra_priors": ["angles"]}}
    )
    prepare_data(cfg)
    with pytest.raises(ValueError, match="have no bonds .*resolution"):
        model_spec(cfg, load_system("valine_dipeptide"), 2)


def test_exported_copy_is_an_md_folder_with_the_same_beads(valine_md, tmp_path):
    from molscore.data.export import export_md

    copy = export_md(valine_md, tmp_path / "copy", resolution="heavy", stride=3, fmt=".xtc")
    original, reduced = load_md(valine_md), load_md(copy)
    assert reduced[0].n_atoms == 12 and [t.n_frames for t in reduced] == [10, 10, 10]
    heavy = original[1].topology.select("not element H")
    np.testing.assert_allclose(reduced[1].xyz, original[1].xyz[::3][:, heavy], atol=6e-4)  # XTC: 0.001 nm grid
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    assert manifest["export"]["frame_interval_ps"] == 3.0 and manifest["system"] == "valine_dipeptide"
    # the pipeline reads the copy as it reads the original: backbone beads are a subset of the heavy atoms
    for folder, name, stride in ((valine_md, "a", 3), (copy, "b", 1)):
        cfg = load_run_config({"system": "valine_dipeptide", "run_dir": str(tmp_path / name),
                               "data": {"source": str(folder), "resolution": "backbone", "stride": stride,
                                        "n_validation_replicas": 1, "n_test_replicas": 1}})  # fmt: skip
        prepare_data(cfg)
    np.testing.assert_allclose(np.load(tmp_path / "b/data/train.npy"), np.load(tmp_path / "a/data/train.npy"), atol=6e-4)


def test_export_of_a_run_in_progress_ships_only_its_finished_replicas(valine_md, tmp_path):
    import shutil

    from molscore.data.export import export_md

    partial = tmp_path / "partial"
    shutil.copytree(valine_md, partial)
    for chunk in sorted((partial / "replica_001").glob("chunk_*"))[1:]:  # replica 1 still running: 10 of 30 frames
        chunk.unlink()
    copy = export_md(partial, tmp_path / "copy", resolution="heavy", complete_only=True)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    assert manifest["export"]["replicas"] == ["replica_000", "replica_002"]
    assert manifest["export"]["incomplete"] == ["replica_001"]
    assert [t.n_frames for t in load_md(copy)] == [30, 30]
    assert len(load_md(export_md(partial, tmp_path / "all", resolution="heavy"))) == 3  # the default copies all
    for replica in ("replica_000", "replica_002"):
        shutil.rmtree(partial / replica)
    with pytest.raises(FileNotFoundError, match="no replica is complete"):
        export_md(partial, tmp_path / "none", complete_only=True)


def test_a_molecule_pulled_apart_is_stopped_by_the_bond_guard_and_keeps_its_frames(valine_md, tmp_path):
    from molscore.pipeline.stages import evaluate, simulate

    data = {"source": str(valine_md), "resolution": "heavy", "n_validation_replicas": 1, "n_test_replicas": 1}
    cfg = load_run_config({"system": "valine_dipeptide", "run_dir": str(tmp_path), "data": data,
                           "simulate": {"replicas": 2, "steps": 400, "report_interval": 5, "timestep": 0.002}})  # fmt: skip
    prepare_data(cfg)

    def pull_first_bead(pos):  # 1e5 kJ/mol/nm along x on bead 0 only: a bond breaks within a few dozen steps
        force = 0 * pos
        force[:, 0, 0] = 1e5
        return force

    out = simulate(cfg, progress=False, force_fn=pull_first_bead)
    status = yaml.safe_load((out / "status.yaml").read_text())
    assert status["stable"] is False and not status["finished"] and 0 < status["step"] < 400
    assert "bond" in status["message"] and "outside" in status["message"] and "written to disk" in status["message"]
    frames = load_trajectory(out)
    assert 1 <= len(frames["pos"]) and frames["step"][-1] <= status["last_good_step"]
    beads = mdtraj.load_topology(str(tmp_path / "data" / "beads.pdb"))
    kept = mdtraj.load(str(out / "dcd" / "replica_001.dcd"), top=beads)
    assert kept.n_frames == len(frames["pos"]) and np.isfinite(kept.xyz).all()
    assert evaluate(cfg)["sim_status"]["stable"] is False
