"""The transition-path workflows end to end on their quick settings."""

import json

import pytest

pytestmark = pytest.mark.usefixtures("float64_default", "one_thread")  # the workflows set float64 as default


def test_mueller_brown_workflow_writes_tables_and_figures(workflow_script, tmp_path):
    module = workflow_script("transition_paths_mueller_brown.py")
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    tables = json.loads((tmp_path / "table.json").read_text())
    for ensemble in ("flexible", "fixed"):
        methods = [row["method"] for row in tables[ensemble]]
        assert methods[:3] == ["brute force", "two-way shooting", "one-way shooting"]
        floor = tables[ensemble][-1]["JS vs brute force"]
        assert 0 < floor < 0.7
    for name in ("table.md", "path_density_flexible.png", "path_density_fixed.png", "path_lengths.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    files = {p.name for p in (tmp_path / "flexible_one-way_shooting").iterdir()}
    assert "checkpoint.pt" in files and "chunk_00000.npz" in files


@pytest.mark.slow
def test_alanine_workflow_quick(workflow_script, tmp_path):
    module = workflow_script("transition_paths_alanine.py")
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "table.json").read_text())
    assert 25 < result["barrier"] < 50  # kJ/mol above the C7eq minimum (36.4 at fine resolution)
    assert all(row["THP %"] == "100" for row in result["rows"])
