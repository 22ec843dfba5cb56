"""The alanine-dipeptide workflow end to end on the shipped reference MD, with a tiny model and few steps:
every output exists, trajectories open with mdtraj, the table's JS numbers are finite and bounded."""

import csv
import importlib.util
import json
from pathlib import Path

import mdtraj
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "workflows" / "alanine_dipeptide.py"


def load_workflow():
    spec = importlib.util.spec_from_file_location("alanine_dipeptide_workflow", SCRIPT)
    workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workflow)
    return workflow


def test_quick_workflow_writes_every_output_and_a_bounded_table(tmp_path, capsys):
    workflow = load_workflow()
    if not (workflow.REFERENCE_MD / "topology.pdb").exists():
        pytest.skip("no reference MD shipped in systems/alanine_dipeptide/reference_md")
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--steps", "60", "--samples", "200", "--sample-steps", "20"]
    workflow.main(argv + ["--sim-steps", "100", "--replicas", "4"])
    printed = capsys.readouterr().out
    assert "| energy, no FP |" in printed and "| energy + FP |" in printed  # the table is printed
    for name in ("table.md", "table.csv", "ramachandran.png", "phi_profiles.png", "data/beads.pdb"):
        assert (out / name).is_file(), name
    beads = mdtraj.load_topology(str(out / "data" / "beads.pdb"))
    assert beads.n_atoms == 5  # C-N-CA-C-N
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["model"] for r in rows] == ["energy, no FP", "energy + FP"]
    for variant, row in zip(("energy", "energy_fp"), rows, strict=True):
        run = out / variant
        for name in ("model.safetensors", "samples_sde.dcd", "metrics.json", "population.png", "molecular.png"):
            assert (run / name).is_file(), f"{variant}/{name}"
        samples = mdtraj.load(str(run / "samples_sde.dcd"), top=beads)
        assert samples.n_frames == 200 and np.isfinite(samples.xyz).all()
        replicas = sorted((run / "simulation" / "dcd").glob("replica_*.dcd"))
        assert len(replicas) == 4
        metrics = json.loads((run / "metrics.json").read_text())
        frames = mdtraj.load(str(replicas[0]), top=beads).n_frames
        if metrics["sim_status"]["stable"]:  # start + every 25th step
            assert frames == 100 // 25 + 1 and row["sim stable"] == "yes"
        else:  # a barely trained model may break a bond: the guard stops it and keeps the frames so far
            assert 1 <= frames < 100 // 25 + 1 and row["sim stable"].startswith("no: stopped by the guard")
            assert "bond" in metrics["sim_status"]["message"]
        for kind in ("iid", "sim"):
            js = metrics[kind]["js"]
            assert np.isfinite(js) and 0 <= js < 0.6, (variant, kind, js)  # ln 2 = 0.69 is the worst possible
            floor = metrics["molecular"][kind]["floor"]
            assert np.isfinite(floor["js_mean"]) and floor["js_mean"] >= 0
        assert float(row["iid JS (MD floor)"].split()[0]) == pytest.approx(metrics["iid"]["js"], abs=1e-4)
