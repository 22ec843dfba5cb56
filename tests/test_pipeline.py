"""The run pipeline and the ``molscore`` command end to end on a tiny Mueller-Brown run."""

import json

import numpy as np
import pytest
import yaml

from molscore.cli import main
from molscore.dynamics import load_trajectory
from molscore.pipeline import load_run_config, stages


def tiny_config(tmp_path, **train):
    return {
        "system": "mueller_brown",
        "run_dir": str(tmp_path / "run"),
        "data": {"n_train": 2000, "n_validation": 200, "n_test": 2000},
        "model": {"network_options": {"hidden": [16, 16]}},
        "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 10, "validation_every": 10, **train},
        "sample": {"n_samples": 300, "n_steps": 20},
        "simulate": {"replicas": 8, "steps": 60, "report_interval": 10, "chunk_frames": 3, "checkpoint_interval": 20},
    }


def test_cli_runs_every_stage_and_writes_outputs(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, fp_weight=5e-4, fp_fraction=0.5)))
    for stage in ("data", "train", "sample", "simulate", "evaluate"):
        assert main([stage, str(path), "--quiet"]) == 0
    run = tmp_path / "run"
    for name in ("model.safetensors", "samples_sde.npy", "metrics.json", "density.png", "train/loss.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"iid", "sim", "floor", "sim_status"}
    status = metrics["sim_status"]
    assert status["stable"] and status["finished"] and status["step"] == status["steps_requested"] == 60
    assert 0 <= metrics["iid"]["js"] <= np.log(2) and metrics["iid"]["n"] == 300
    assert metrics["sim"]["n"] == 6 * 8  # 7 frames, the first 20% (1 frame) discarded, 8 replicas
    traj = load_trajectory(run / "simulation")["pos"]
    assert traj.shape == (7, 8, 1, 2)  # frames at steps 0, 10, ..., 60
    resolved = yaml.safe_load((run / "config_train.yaml").read_text())
    assert resolved["train"]["fp_weight"] == 5e-4


def test_simulation_stage_resumes_to_the_same_trajectory(tmp_path):
    cfg = load_run_config(tiny_config(tmp_path))
    stages.prepare_data(cfg)
    stages.train(cfg, progress=False)
    stages.simulate(cfg, progress=False)
    full = load_trajectory(tmp_path / "run" / "simulation")["pos"]
    # a second run folder stopped at 40 steps, then resumed to 60
    cfg2 = load_run_config(tiny_config(tmp_path) | {"run_dir": str(tmp_path / "run2")})
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "data").symlink_to(tmp_path / "run" / "data")
    (tmp_path / "run" / "model.safetensors").rename(tmp_path / "run2" / "model.safetensors")
    cfg2.simulate.steps = 40
    stages.simulate(cfg2, progress=False)
    cfg2.simulate.steps = 60
    stages.simulate(cfg2, progress=False)
    assert np.array_equal(load_trajectory(tmp_path / "run2" / "simulation")["pos"], full)


def test_cli_rejects_unknown_key_and_wrong_type(tmp_path, capsys):
    bad = tiny_config(tmp_path)
    bad["train"]["lerning_rate"] = 1e-3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.lerning_rate" in err and "learning_rate" in err
    bad = tiny_config(tmp_path)
    bad["sample"]["n_samples"] = "many"
    path.write_text(yaml.safe_dump(bad))
    assert main(["sample", str(path)]) == 2
    assert "sample.n_samples" in capsys.readouterr().err


def test_stage_without_its_input_names_the_missing_stage(tmp_path):
    cfg = load_run_config(tiny_config(tmp_path))
    with pytest.raises(FileNotFoundError, match="run the 'data' stage first"):
        stages.train(cfg, progress=False)
    stages.prepare_data(cfg)
    with pytest.raises(FileNotFoundError, match="run the 'train' stage first"):
        stages.sample(cfg, progress=False)


def test_extra_priors_are_checked_and_need_a_molecule(tmp_path):
    from molscore.config import ConfigError
    from molscore.system import load_system

    bad = tiny_config(tmp_path)
    bad["model"]["extra_priors"] = ["angels"]
    with pytest.raises(ConfigError, match="did you mean 'angles'"):
        load_run_config(bad)
    cfg = tiny_config(tmp_path)
    cfg["model"]["extra_priors"] = ["angles"]
    cfg = load_run_config(cfg)
    stages.prepare_data(cfg)
    with pytest.raises(ValueError, match="needs the bead topology's bonds"):
        stages.model_spec(cfg, load_system("mueller_brown"), 1)


def test_training_without_time_for_one_step_says_so(tmp_path):
    cfg = load_run_config(tiny_config(tmp_path, max_minutes=1e-6))
    stages.prepare_data(cfg)
    with pytest.raises(RuntimeError, match="raise train.max_minutes"):
        stages.train(cfg, progress=False)
