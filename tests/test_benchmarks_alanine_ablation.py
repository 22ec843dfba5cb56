"""The ablation benchmark (workflows/benchmarks/alanine_ablation.py) trains, samples and diagnoses end to end."""

import json

import numpy as np


def test_ablation_run_reports_js_floor_and_forcefield_error(tmp_path, workflow_script):
    ablation = workflow_script("benchmarks/alanine_ablation.py")
    argv = ["--steps", "20", "--samples", "100", "--out", str(tmp_path), "--fp", "5e-4"]
    result = ablation.main(argv)
    assert 0 < result["iid_floor"] < result["iid_js"] <= np.log(2) + 1e-9  # 20 steps learn less than the data
    assert set(result["forcefield_mae_kT"]) == {"t_min", "t=0.01", "t=0.05", "t=0.1"}
    assert all(v is None or v >= 0 for v in result["forcefield_mae_kT"].values())
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [result] and result["options"]["fp"] == 5e-4
