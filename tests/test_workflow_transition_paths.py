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


@pytest.mark.filterwarnings("ignore:no trial path:UserWarning")
def test_alanine_workflow_learned_sampler_row(workflow_script, tmp_path):
    """--sampler-fit on tiny settings: the sampler is fitted to the one-way paths kept at full resolution (once the
    chains have left their pulled starting paths; else the row says it is not fitted) and its row (THP, ESS) is in the
    table, whether or not its paths reach C7ax."""
    module = workflow_script("transition_paths_alanine.py")
    for moves, method in (("3", "learned sampler (CV control, not fitted: no shooting path)"), ("16", None)):
        argv = ["--md-ps", "5", "--scan-grid", "6", "--chains", "2", "--moves", moves, "--burn-in", "1"]
        argv += ["--sampler-fit", "4", "--sampler-paths", "8", "--sampler-batch", "8", "--out", str(tmp_path / moves)]
        argv += ["--start-probe", "2", "--probe-shots", "2"]
        assert module.main(argv) == 0
        result = json.loads((tmp_path / moves / "table.json").read_text())
        rows, probe = result["rows"], result["start_probe"]
        # the start probe: no start to probe while the chains hold pulled pieces, else three fractions
        assert (not probe) if method else sorted(probe) == ["noise", "off-cv", "velocities"]
        assert all(0 <= p <= 1 for p in probe.values()) and any("start probe" in note for note in result["notes"])
        assert [row["method"] for row in rows[:2]] == ["two-way shooting (reference FF)", "one-way shooting (reference FF)"]
        assert rows[2]["method"] == (method or "learned sampler (CV control)")
        assert 0 <= float(rows[2]["THP %"]) <= 100 and rows[2]["decorrelated paths"].startswith("ESS ")


@pytest.mark.filterwarnings("ignore:no trial path:UserWarning")  # a 3-step model: shooting may accept nothing
def test_alanine_workflow_learned_force_field_row(workflow_script, tmp_path, capsys):
    """--learned on tiny settings (a small MLP in place of the GNN, for speed): the learned row is in the table with
    finite evaluation counts, or says that the learned FF gave no C7ax path; the model is trained once, then reused."""
    module = workflow_script("transition_paths_alanine.py")
    module.LEARNED = module.LEARNED | {
        "model": {"parameterisation": "energy", "network": "mlp", "network_options": {"hidden": [16]}}
    }
    argv = ["--md-ps", "5", "--scan-grid", "6", "--chains", "2", "--moves", "2", "--burn-in", "1", "--no-reference"]
    argv += ["--learned-chains", "2", "--learned-moves", "2", "--out", str(tmp_path)]
    assert module.main([*argv, "--learned", "3"]) == 0
    model = tmp_path / "learned_model" / "model.safetensors"
    assert model.stat().st_size > 0 and "trained 3 steps" in capsys.readouterr().out
    result = json.loads((tmp_path / "table.json").read_text())
    [row] = result["rows"]
    assert row["method"] == "two-way shooting (learned FF)"
    assert row["THP %"] in ("0", "100") and "learned FF" in (tmp_path / "table.md").read_text()
    if row["energy evals / trial path"] == "-":  # no C7ax path in the learned force field: said so in the notes
        assert "reached C7ax" in result["notes"][-1]
    else:
        assert 0 < float(row["energy evals / trial path"]) < float("inf")
        if row["acceptance"].startswith("0 ("):  # pulled starting paths only: said so in the notes
            assert "NO trial path was accepted" in result["notes"][-1]
    stamp = model.stat().st_mtime_ns
    assert module.main([*argv, "--learned", "5"]) == 0  # loads the trained model instead of training again
    assert model.stat().st_mtime_ns == stamp and "trained" not in capsys.readouterr().out
