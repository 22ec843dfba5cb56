"""The protein scaling benchmark (workflows/benchmarks/protein_scaling.py) runs end to end on small copies of the
T4 lysozyme C-alpha trace and reports finite, positive costs with per-bead ratios to its base size."""

import math


def test_quick_run_reports_every_cost(workflow_script, tmp_path):
    bench = workflow_script("benchmarks/protein_scaling.py")
    positions, bonds, types = bench.protein(400)  # 162 + 162 + 76 beads, three chains
    assert positions.shape == (400, 3) and len(bonds) == 400 - 3 and len(types) == 400
    assert all(j == i + 1 for i, j in bonds) and [161, 162] not in bonds  # no bond between copies
    rows = bench.main(["--quick", "--networks", "bondgraph", "--out", str(tmp_path)])
    assert [(r["network"], r["beads"]) for r in rows] == [("bondgraph", 50), ("bondgraph", 200)]
    for row in rows:
        for key in ("forces_s", "train_step_s", "train_step_fp_s", "langevin_ns_per_day", "edges_per_bead"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert len(row["per_bead_cost"]) == 4 and all(v > 0 for v in row["per_bead_cost"])
    assert rows[0]["per_bead_cost"] == [1.0, 1.0, 1.0, 1.0]  # the base row (no size >= 1,000 in a quick run)
    assert (tmp_path / "protein_scaling.md").read_text().startswith("| network | beads |")
