"""MD data pipeline: resolution maps, collective variables, replica splits, input errors."""

import mdtraj
import numpy as np
import pytest
import yaml

from molscore.analysis.collective_variables import compute_cvs
from molscore.data import load_frames, select_beads
from molscore.data.resolution import RESOLUTIONS
from molscore.data.splits import split_replicas
from molscore.pipeline import load_run_config, stages
from molscore.system import load_system

ALA = load_system("alanine_dipeptide")


@pytest.mark.parametrize(
    "system, counts",
    [("alanine_dipeptide", {"all": 22, "heavy": 10, "backbone": 5, "calpha": 1}),
     ("valine_dipeptide", {"all": 28, "heavy": 12, "backbone": 5, "calpha": 1})],
)  # fmt: skip
def test_resolution_maps_give_the_expected_bead_counts(system, counts):
    topology = load_system(system).topology
    for resolution, n in counts.items():
        beads = select_beads(topology, resolution)
        assert beads.n_beads == n == len(beads.bead_types) == beads.topology.n_atoms


def test_backbone_beads_are_the_phi_psi_atoms_in_order():
    beads = select_beads(ALA.topology, "backbone")
    names = [f"{a.residue.name}:{a.name}" for a in beads.topology.atoms]
    assert names == ["ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N"]
    assert len(set(beads.bead_types)) == 5  # all distinct types


def test_empty_selection_and_unknown_resolution_are_errors():
    ace_only = ALA.topology.subset(range(6))
    with pytest.raises(ValueError, match="selects no atoms"):
        select_beads(ace_only, "calpha")
    with pytest.raises(ValueError, match="unknown"):
        select_beads(ALA.topology, "martini")


def fake_md(folder, n_replicas=5, n_frames=20, seed=0):
    """An MD-like folder: topology.pdb + replica_*/chunk_*.dcd of jittered structures."""
    rng = np.random.default_rng(seed)
    ref = mdtraj.load(str(ALA.structure))
    folder.mkdir(parents=True, exist_ok=True)
    ref.save_pdb(str(folder / "topology.pdb"))
    for r in range(n_replicas):
        xyz = ref.xyz + rng.normal(scale=0.02, size=(n_frames, ref.n_atoms, 3)).astype(np.float32)
        (folder / f"replica_{r:03d}").mkdir()
        for c in range(2):  # two chunks per replica
            half = xyz[c * n_frames // 2 : (c + 1) * n_frames // 2]
            mdtraj.Trajectory(half, ref.topology).save_dcd(str(folder / f"replica_{r:03d}" / f"chunk_{c:06d}.dcd"))
    return folder


@pytest.mark.parametrize("resolution", ["backbone", "heavy", "all"])
def test_pipeline_phi_psi_equal_mdtraj_on_the_raw_files(tmp_path, resolution):
    md = fake_md(tmp_path / "md")
    cfg = load_run_config(
        {"system": "alanine_dipeptide", "run_dir": str(tmp_path / "run"),
         "data": {"source": str(md), "resolution": resolution, "n_validation_replicas": 1, "n_test_replicas": 2}}
    )  # fmt: skip
    stages.prepare_data(cfg)
    data = tmp_path / "run" / "data"
    test = np.load(data / "test.npy")
    owner = np.load(data / "test_replica.npy")
    cvs = stages.observables(ALA, test, tmp_path / "run")
    expected = []
    for r in sorted(set(owner.tolist())):
        raw = mdtraj.load(sorted(str(p) for p in (md / f"replica_{r:03d}").glob("*.dcd")), top=str(md / "topology.pdb"))
        expected.append(np.stack([mdtraj.compute_phi(raw)[1][:, 0], mdtraj.compute_psi(raw)[1][:, 0]], 1))
    np.testing.assert_array_equal(cvs, np.concatenate(expected))
    assert test.shape[1] == {"backbone": 5, "heavy": 10, "all": 22}[resolution]
    # beads.pdb reads back with the bonds of the full topology between beads (no renumbering artefacts)
    beads = mdtraj.load_topology(str(data / "beads.pdb"))
    full = mdtraj.load_topology(str(md / "topology.pdb"))
    kept = full.select(RESOLUTIONS[resolution])
    expected_bonds = {(int(np.flatnonzero(kept == a.index)[0]), int(np.flatnonzero(kept == b.index)[0]))
                      for a, b in full.bonds if a.index in kept and b.index in kept}  # fmt: skip
    assert {tuple(sorted((a.index, b.index))) for a, b in beads.bonds} == {tuple(sorted(b)) for b in expected_bonds}


def test_stride_runs_over_the_concatenated_chunks(tmp_path):
    md = fake_md(tmp_path / "md", n_replicas=1, n_frames=20)  # two chunks of 10 frames
    files = sorted((md / "replica_000").glob("*.dcd"))
    whole = load_frames(files, md / "topology.pdb")
    np.testing.assert_array_equal(load_frames(files, md / "topology.pdb", stride=3).xyz, whole.xyz[::3])


def test_splits_hold_out_whole_replicas_reproducibly(tmp_path):
    splits = split_replicas(10, 2, 3, seed=4)
    assert sorted(sum(splits.values(), [])) == list(range(10))
    assert len(splits["validation"]) == 2 and len(splits["test"]) == 3
    assert splits == split_replicas(10, 2, 3, seed=4) != split_replicas(10, 2, 3, seed=5)
    with pytest.raises(ValueError, match="replicas"):
        split_replicas(3, 1, 2, seed=0)
    md = fake_md(tmp_path / "md")
    cfg = load_run_config({"system": "alanine_dipeptide", "run_dir": str(tmp_path / "run"), "data": {"source": str(md)}})
    stages.prepare_data(cfg)
    data = tmp_path / "run" / "data"
    owners = {name: set(np.load(data / f"{name}_replica.npy").tolist()) for name in ("train", "validation", "test")}
    assert not (owners["train"] & owners["test"]) and not (owners["train"] & owners["validation"])
    assert sum(len(o) for o in owners.values()) == 5


def test_a_second_md_folder_is_the_whole_test_split(tmp_path):
    train_md, test_md = fake_md(tmp_path / "md", n_replicas=4), fake_md(tmp_path / "long", n_replicas=3, seed=7)
    spec = {"system": "alanine_dipeptide", "run_dir": str(tmp_path / "run"),
            "data": {"source": str(train_md), "test_source": str(test_md), "resolution": "backbone",
                     "n_validation_replicas": 1, "n_test_replicas": 2}}  # fmt: skip
    stages.prepare_data(load_run_config(spec))
    data = tmp_path / "run" / "data"
    owners = {name: np.load(data / f"{name}_replica.npy") for name in ("train", "validation", "test")}
    assert sorted(set(owners["test"].tolist())) == [0, 1, 2]  # every replica of the second folder, none held back
    assert len(set(owners["train"].tolist())) == 3 and len(set(owners["validation"].tolist())) == 1
    assert not set(owners["train"].tolist()) & set(owners["validation"].tolist())
    beads = select_beads(ALA.topology, "backbone").indices
    raw = load_frames(sorted((test_md / "replica_002").glob("*.dcd")), test_md / "topology.pdb", atom_indices=beads)
    np.testing.assert_array_equal(np.load(data / "test.npy")[owners["test"] == 2], raw.xyz)
    assert yaml.safe_load((data / "splits.yaml").read_text())["test_source"] == str(test_md)
    # a test folder of other beads (heavy atoms only, asked for all atoms), or other frame intervals: refused
    heavy = tmp_path / "heavy"
    heavy.mkdir()
    keep = ALA.topology.select("element != H")
    mdtraj.load(str(test_md / "topology.pdb")).atom_slice(keep).save_pdb(str(heavy / "topology.pdb"))
    for replica in sorted(test_md.glob("replica_*")):
        (heavy / replica.name).mkdir()
        traj = mdtraj.load(sorted(str(f) for f in replica.glob("*.dcd")), top=str(test_md / "topology.pdb"))
        traj.atom_slice(keep).save_dcd(str(heavy / replica.name / "chunk_000000.dcd"))
    spec["data"] |= {"test_source": str(heavy), "resolution": "all"}
    with pytest.raises(ValueError, match="data.test_source .* has 10 atoms"):
        stages.prepare_data(load_run_config(spec))
    (heavy / "manifest.yaml").write_text(yaml.safe_dump({"n_atoms": 22, "export": {"resolution": "heavy"}}))
    with pytest.raises(ValueError, match="beads .* are not the training MD's"):  # a reduced copy of the molecule
        stages.prepare_data(load_run_config(spec))
    for folder, interval in ((train_md, 1.0), (test_md, 2.0)):
        (folder / "manifest.yaml").write_text(yaml.safe_dump({"system": "alanine_dipeptide", "frame_interval_ps": interval}))
    spec["data"] |= {"test_source": str(test_md), "resolution": "backbone"}
    with pytest.raises(ValueError, match="every 1.0 ps but data.test_source every 2.0"):
        stages.prepare_data(load_run_config(spec))
    spec["data"] |= {"test_source": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match="test_source .* is not an MD folder"):
        stages.prepare_data(load_run_config(spec))


def test_trajectory_errors_name_the_problem(tmp_path):
    md = fake_md(tmp_path / "md", n_replicas=1)
    chunk = md / "replica_000" / "chunk_000000.dcd"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_frames(tmp_path / "missing.dcd", md / "topology.pdb")
    with pytest.raises(ValueError, match="does not match the topology"):
        load_frames(chunk, load_system("valine_dipeptide").structure)
    xyz = mdtraj.load(str(chunk), top=str(md / "topology.pdb")).xyz
    xyz[3, 2, 1] = np.nan
    mdtraj.Trajectory(xyz, ALA.topology).save_dcd(str(tmp_path / "nan.dcd"))
    with pytest.raises(ValueError, match="NaN"):
        load_frames(tmp_path / "nan.dcd", md / "topology.pdb")
    with pytest.raises(ValueError, match="no frames"):
        load_frames(chunk, md / "topology.pdb", frames=slice(100, None))


def test_cv_missing_atom_at_coarse_resolution_is_an_error():
    beads = select_beads(ALA.topology, "calpha")
    with pytest.raises(ValueError, match="resolution drops it"):
        compute_cvs(np.zeros((1, 1, 3)), beads.topology, ALA.collective_variables)
