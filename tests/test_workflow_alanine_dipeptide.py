"""The alanine-dipeptide workflow end to end on the shipped reference MD, with a tiny model and few steps:
every output exists, trajectories open with mdtraj, the table's JS numbers are finite and bounded."""

import csv
import json

import mdtraj
import numpy as np
import pytest
import yaml


def test_quick_workflow_writes_every_output_and_a_bounded_table(tmp_path, capsys, workflow_script):
    workflow = workflow_script("alanine_dipeptide.py")
    if not (workflow.REFERENCE_MD / "topology.pdb").exists():
        pytest.skip("no reference MD shipped in systems/alanine_dipeptide/reference_md")
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--steps", "60", "--samples", "200", "--sample-steps", "20"]
    workflow.main(argv + ["--sim-steps", "100", "--replicas", "4"])
    printed = capsys.readouterr().out
    assert "| energy + FP |" in printed and "| mixture + FP |" in printed  # the table is printed
    for name in ("table.md", "table.csv", "ramachandran.png", "phi_profiles.png", "data/beads.pdb"):
        assert (out / name).is_file(), name
    beads = mdtraj.load_topology(str(out / "data" / "beads.pdb"))
    assert beads.n_atoms == 5  # C-N-CA-C-N
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["model"] for r in rows] == ["energy + FP", "mixture + FP"]
    for variant, row in zip(("energy_fp", "mixture_fp"), rows, strict=True):
        run = out / variant
        for name in ("model.safetensors", "samples_sde.dcd", "metrics.json", "population.png", "molecular.png"):
            assert (run / name).is_file(), f"{variant}/{name}"
        samples = mdtraj.load(str(run / "samples_sde.dcd"), top=beads)
        assert samples.n_frames == 200 and np.isfinite(samples.xyz).all()
        replicas = sorted((run / "simulation" / "dcd").glob("replica_*.dcd"))
        assert len(replicas) == 4
        metrics = json.loads((run / "metrics.json").read_text())
        # the bond prior holds the simulated molecule together from the first step: start + every 25th step
        assert mdtraj.load(str(replicas[0]), top=beads).n_frames == 100 // 25 + 1 and row["sim stable"] == "yes"
        for kind in ("iid", "sim"):  # a few dozen training steps learn little: only the metrics are checked here
            js = metrics[kind]["js"]
            assert np.isfinite(js) and 0 <= js <= np.log(2) + 1e-9, (variant, kind, js)
            floor = metrics["molecular"][kind]["floor"]
            assert np.isfinite(floor["js_mean"]) and 0 <= floor["js_mean"] <= np.log(2) + 1e-9
            assert 0 <= metrics["molecular"][kind]["phi_positive"]["p"] <= 1
        assert metrics["sim_status"]["stable"] and metrics["molecular"]["sim"]["bond_w1_mean_nm"] < 0.01
        assert float(row["iid JS (floor)"].split()[0]) == pytest.approx(metrics["iid"]["js"], abs=1e-4)
        # the iid floor is N training frames against the test replicas; the ratio is the model's JS over it
        floor = metrics["molecular"]["iid"]["floor_training"]
        assert floor["n"] == 200 and float(row["iid / floor"]) == pytest.approx(metrics["iid"]["js"] / floor["js_mean"])
        # the force-field diagnostic: pooled error at t_min and at the noised times, and its figure
        assert set(metrics["forcefield"]) == {"t_min", "t=0.01", "t=0.05", "t=0.1"} and (run / "forcefield.png").is_file()
        assert metrics["forcefield"]["t_min"]["n_bins"] > 0 and float(row["FF error (kT)"]) >= 0
    assert "of the test frames" in (out / "table.md").read_text()  # the slow basin's coverage of the data
    # the sampler benchmark runs on a finished run folder: JS against evaluations, beside the training-draw floor
    bench = workflow_script("benchmarks/sampler_evaluations.py")
    rows = bench.main(["--run", str(out / "mixture_fp"), "--samples", "100", "--configs", "0", "7", "9"])
    assert [r["evaluations"] for r in rows] == [25, 100, 50] and all(0 <= r["iid_js"] <= np.log(2) for r in rows)
    assert (out / "mixture_fp" / "sampler_evaluations.md").is_file()
    # the chirality diagnostic: mirror gaps and partial denoising along t, on the same folder
    diagnostic = workflow_script("diagnostics/chirality_by_time.py")
    rows = diagnostic.main([str(out / "energy_fp"), "--frames", "40", "--centres", "300", "--sample-steps", "20"])
    gaps = [r for r in rows if "sigma" in r]
    assert len(gaps) == len(diagnostic.GAP_TIMES) and all(np.isfinite(r["mirror gap model (kT)"]) for r in gaps)
    assert gaps[0]["mirror gap data (kT)"] > gaps[-1]["mirror gap data (kT)"]  # the data's handedness fades with t
    assert all(0 <= r["phi>0 denoised from t"] <= 1 for r in rows if "phi>0 denoised from t" in r)
    assert (out / "energy_fp" / "diagnostics" / "chirality_by_time.png").is_file()


def test_seeds_get_their_own_run_folders_and_a_mean_row(workflow_script):
    workflow = workflow_script("alanine_dipeptide.py")
    args = workflow.parse_args(["--quick", "--out", "out", "--seeds", "0", "2"])
    assert args.test_data == workflow.REFERENCE_MD_LONG  # default: tested on the independent long replicas
    assert workflow.parse_args(["--data", "md"]).test_data is None  # a user's own MD: test replicas held out of it
    spec = workflow.variant_config("energy", args, seed=2)
    assert spec["run_dir"].endswith("energy_seed2") and workflow.variant_config("energy", args)["run_dir"].endswith("energy")
    assert spec["train"]["seed"] == spec["sample"]["seed"] == spec["simulate"]["seed"] == 2
    assert spec["data"]["test_source"] == str(workflow.REFERENCE_MD_LONG) and "seed" not in spec["data"]  # one split
    score = workflow.variant_config("score", args)["model"]  # the direct score: the GNN, with its own options only
    assert score["network"] == "gnn" and "hidden" not in score["network_options"] and score["parameterisation"] == "score"
    rows = [{"model": "a", "iid / floor": 1.0, "sim stable": "yes"}, {"model": "b", "iid / floor": 3.0, "sim stable": "yes"}]
    metrics = [{"iid": {"js": 0.1}}, {"iid": {"js": 0.3}}]
    row = workflow.seed_summary_row("energy", rows, metrics)
    assert row["model"] == "energy, no FP: mean ± sd over 2 seeds" and "sim stable" not in row
    assert row["iid / floor"] == "2.0 ± 1.4" and row["iid JS (floor)"] == "0.20 ± 0.14" and row["sim JS (floor)"] == ""


def test_learning_curve_runs_one_folder_per_budget_and_plots_quality_against_minutes(tmp_path, workflow_script):
    curve = workflow_script("alanine_learning_curve.py")
    if not (workflow_script("alanine_dipeptide.py").REFERENCE_MD / "topology.pdb").exists():
        pytest.skip("no reference MD shipped in systems/alanine_dipeptide/reference_md")
    out = tmp_path / "lc"
    argv = ["--minutes", "0.1", "0.2", "--variant", "energy", "--steps", "40", "--samples", "100", "--out", str(out)]
    curve.main(argv + ["--sim-minutes", "0.05"])
    rows = list(csv.DictReader((out / "learning_curve.csv").open()))
    assert [float(r["budget (min)"]) for r in rows] == [0.1, 0.2] and (out / "learning_curve.png").is_file()
    for row, folder in zip(rows, ("0.1min", "0.2min"), strict=True):
        metrics = json.loads((out / folder / "energy" / "metrics.json").read_text())
        assert row["model"] == "energy, no FP" and float(row["FF error (kT)"]) >= 0
        assert float(row["iid JS (floor)"].split()[0]) == pytest.approx(metrics["iid"]["js"], abs=1e-4)
        train = yaml.safe_load((out / folder / "energy" / "train" / "summary.yaml").read_text())
        assert float(row["train min"]) == pytest.approx(train["train_seconds"] / 60, rel=1e-3) and train["steps"] <= 40
