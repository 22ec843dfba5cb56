"""The Langevin/sampler throughput benchmark runs (quick sizes) and prints its three comparisons."""

import pytest


def test_quick_run_prints_every_comparison(capsys, workflow_script):
    bench = workflow_script("benchmarks/langevin_throughput.py")
    if not (bench.REFERENCE_MD / "topology.pdb").exists():
        pytest.skip("no reference MD shipped in systems/alanine_dipeptide/reference_md")
    bench.main(["--quick"])
    out = capsys.readouterr().out
    assert "(a) Langevin" in out and "(b) OpenMM" in out and "(c) diffusion sampler" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("1 |", "8 |"))]
    assert len(rows) == 2 and all(float(r.split("|")[1]) > 0 for r in rows)
