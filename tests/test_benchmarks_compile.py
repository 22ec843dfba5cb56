"""The torch.compile benchmark runs and reports both paths (compilation takes ~20 s: slow)."""

import pytest


@pytest.mark.slow
def test_compile_cost_reports_eager_and_compiled_paths(one_thread, workflow_script):
    result = workflow_script("benchmarks/compile_cost.py").main(["--beads", "3", "--batch", "8", "--replicas", "8"])
    assert result["train_eager_ms"] > 0 and result["forces_eager_ms"] > 0 and result["forces_compiled_ms"] > 0
    assert (result["train_compiled_ms"] is None) == ("train_compile_error" in result)
    assert result["field_eager_ms"] > 0 and result["field_compiled_ms"] > 0
