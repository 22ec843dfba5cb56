"""The shooting throughput benchmark runs (tiny sizes), prints one row per chain count and writes --out."""

import pytest


@pytest.mark.usefixtures("one_thread")
def test_tiny_run_prints_rates_and_ratio(capsys, workflow_script, tmp_path):
    bench = workflow_script("benchmarks/shooting_throughput.py")
    out = tmp_path / "shooting_throughput.txt"
    rows = bench.main(["--chains", "1", "4", "--moves", "2", "--steps", "60", "--out", str(out)])
    printed = capsys.readouterr().out
    assert [r["chains"] for r in rows] == [1, 4]
    assert all(r["trial/s"] > 0 and r["evals/s"] > 0 and 0 <= r["acceptance"] <= 1 for r in rows)
    assert "ratio 4 / 1 chains" in printed and out.read_text() == printed
