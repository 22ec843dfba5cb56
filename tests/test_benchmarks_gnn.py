"""The GNN cost benchmark (workflows/benchmarks/gnn_cost.py) runs end to end and writes sensible tables."""

import csv
import math

import pytest


@pytest.fixture(scope="module")
def gnn_cost(workflow_script):
    return workflow_script("benchmarks/gnn_cost.py")


def _positive_finite(rows, keys):
    for row in rows:
        for key in keys:
            value = float(row[key])
            assert math.isfinite(value) and value > 0, (key, row)


def test_quick_run_tables(gnn_cost, tmp_path):
    argv = ["--quick", "--threads", "1", "--out", str(tmp_path), "--resolutions", "backbone", "heavy"]
    argv += ["--batch-size", "4", "--force-batches", "1", "4", "--sizes", "50", "200"]
    results = gnn_cost.main(argv)

    training = results["training"]
    assert [(r["resolution"], r["fp_fraction"]) for r in training] == [
        (name, fraction) for name in ("backbone", "heavy") for fraction in (0.0, 0.25, 1.0)
    ]
    assert [r["beads"] for r in training] == [5] * 3 + [10] * 3
    _positive_finite(training, ["step_ms", "ratio_to_no_fp", "ms_per_frame", "peak_mem_MB", "mem_per_frame_kB"])
    assert all(r["ratio_to_no_fp"] == 1.0 for r in training if r["fp_fraction"] == 0)

    forces = results["forces"]
    assert [(r["resolution"], r["batch"]) for r in forces] == [(n, b) for n in ("backbone", "heavy") for b in (1, 4)]
    _positive_finite(forces, ["ms_per_call", "frames_per_s", "speedup_vs_first_batch"])

    scaling = results["scaling"]
    assert [r["beads"] for r in scaling] == [50, 200]
    _positive_finite(scaling, ["mean_neighbours", "graph_ms", "cell_list_ms", "energy_forces_ms", "us_per_bead"])
    assert all(math.isfinite(v) for v in results["exponents"].values())

    for name, n_rows in (("training", 6), ("forces", 4), ("scaling", 2)):
        with (tmp_path / f"{name}.csv").open() as f:
            assert len(list(csv.DictReader(f))) == n_rows
    markdown = (tmp_path / "gnn_cost.md").read_text()
    assert all(f"## ({part})" in markdown for part in "abcd")


def test_training_worker_in_subprocess(gnn_cost):
    """Configurations of the full run go through a fresh process and come back as JSON."""
    cfg = {
        "bead_types": [0, 1, 2, 3, 4],
        "positions": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 1.0]],
        "network": gnn_cost.NETWORK,
        "batch_size": 4,
        "fp_fraction": 0.5,
        "warmup": 1,
        "repeats": 1,
        "budget": None,
        "device": "cpu",
        "dtype": "float32",
        "seed": 0,
        "threads": 1,
    }
    result = gnn_cost.run_training_config(cfg, "subprocess")
    assert result["timed"] == 1 and result["seconds"] > 0 and result["memory_bytes"] >= 0
