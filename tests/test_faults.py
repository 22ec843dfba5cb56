"""Bad input and faults: each names the problem, exits non-zero from the CLI, and leaves what was written intact."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from molscore.cli import main
from molscore.config import ConfigError
from molscore.dynamics.guards import ExtentGuard
from molscore.pipeline import load_run_config, stages
from molscore.pipeline.stages import _integrator_setting
from molscore.system import load_system

SHIPPED_MD = Path(__file__).resolve().parents[1] / "systems" / "alanine_dipeptide" / "reference_md"


def tiny(tmp_path, **sections):
    config = {
        "system": "mueller_brown",
        "run_dir": str(tmp_path / "run"),
        "data": {"n_train": 1000, "n_validation": 100, "n_test": 500},
        "model": {"network_options": {"hidden": [16, 16]}},
        "train": {"steps": 20, "batch_size": 64, "checkpoint_every": 10, "validation_every": 10},
        "sample": {"n_samples": 100, "n_steps": 10},
        "simulate": {"replicas": 4, "steps": 40, "report_interval": 10, "chunk_frames": 2, "checkpoint_interval": 20},
    }
    for name, values in sections.items():
        config[name] = config.get(name, {}) | values
    return config


def cli(tmp_path, stage, config, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config) if isinstance(config, dict) else config)
    code = main([stage, str(path), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("simulate", {"timestep": 0.0}, "simulate.timestep must be positive"),
        ("simulate", {"friction": -1.0}, "simulate.friction must be >= 0"),
        ("simulate", {"replicas": 0}, "simulate.replicas must be >= 1"),
        ("simulate", {"steps": -5}, "simulate.steps must be >= 1"),
        ("simulate", {"escape_factor": 0.0}, "simulate.escape_factor must be positive"),
        ("simulate", {"t_eval": 2.0}, "simulate.t_eval must lie in"),
        ("sample", {"n_samples": 0}, "sample.n_samples must be >= 1"),
        ("data", {"stride": 0}, "data.stride must be >= 1"),
        ("evaluate", {"burn_in": 1.0}, "evaluate.burn_in"),
    ],
)
def test_nonsense_values_are_config_errors(tmp_path, capsys, section, values, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(tiny(tmp_path, **{section: values}))
    code, err = cli(tmp_path, "simulate", tiny(tmp_path, **{section: values}), capsys)
    assert code == 2 and message in err


def test_zero_friction_and_explicit_values_are_honoured_not_replaced_by_defaults():
    system = load_system("mueller_brown")
    assert system.settings["friction"] == 1.0
    assert _integrator_setting(0.0, system, "friction") == 0.0  # Verlet, not the default 1/ps
    assert _integrator_setting(None, system, "friction") == 1.0
    assert _integrator_setting(0.002, system, "timestep") == 0.002


def test_duplicate_yaml_keys_are_rejected(tmp_path, capsys):
    text = "system: mueller_brown\nrun_dir: run\ntrain:\n  steps: 10\n  steps: 20\n"
    code, err = cli(tmp_path, "train", text, capsys)
    assert code == 2 and "'steps' appears twice (lines 4 and 5)" in err


def test_unknown_network_option_suggests_the_right_one(tmp_path, capsys):
    config = tiny(tmp_path, model={"network_options": {"hiden": [16]}})
    assert cli(tmp_path, "data", config, capsys)[0] == 0
    code, err = cli(tmp_path, "train", config, capsys)
    assert code == 2 and "model.network_options.hiden" in err and "did you mean 'hidden'" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_missing_data_source_is_named_in_the_data_stage(tmp_path, capsys):
    code, err = cli(tmp_path, "data", tiny(tmp_path, data={"source": str(tmp_path / "nowhere")}), capsys)
    assert code == 2 and "does not exist" in err and "nowhere" in err and "run the 'data' stage first" not in err
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    code, err = cli(tmp_path, "data", tiny(tmp_path, data={"source": str(empty)}), capsys)
    assert code == 2 and "not an MD folder (no topology.pdb)" in err


def test_md_of_another_system_is_refused(tmp_path, capsys):
    source = SHIPPED_MD
    data = {"source": str(source), "resolution": "heavy", "n_validation_replicas": 1, "n_test_replicas": 1}
    config = {"system": "valine_dipeptide", "run_dir": str(tmp_path / "run"), "data": data}
    code, err = cli(tmp_path, "data", config, capsys)
    assert code == 2 and "holds MD of 'alanine_dipeptide'" in err and "valine_dipeptide" in err
    assert not (tmp_path / "run" / "data" / "train.npy").exists()


def test_md_with_the_wrong_atom_count_is_refused(tmp_path):
    import shutil

    source, copy = SHIPPED_MD, tmp_path / "md"
    copy.mkdir()
    shutil.copy(source / "topology.pdb", copy / "topology.pdb")
    shutil.copytree(source / "replica_000", copy / "replica_000")
    manifest = yaml.safe_load((source / "manifest.yaml").read_text())
    manifest["n_atoms"] = 28  # as if exported from MD of a 28-atom molecule
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    cfg = load_run_config({"system": "alanine_dipeptide", "run_dir": str(tmp_path / "run"),
                           "data": {"source": str(copy), "n_validation_replicas": 1, "n_test_replicas": 1}})  # fmt: skip
    with pytest.raises(ValueError, match="has 28 atoms .* but system 'alanine_dipeptide' has 22"):
        stages.prepare_data(cfg)
    manifest |= {"n_atoms": 10, "temperature_K": 350.0}  # right molecule, other temperature
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ValueError, match="is MD at 350 K .* but system 'alanine_dipeptide' is at 300 K"):
        stages.prepare_data(cfg)


def test_extent_guard_flags_an_escaped_particle_and_ignores_centroid_drift():
    frames = np.random.default_rng(0).uniform([-3.0, -1.5], [2.0, 3.5], size=(500, 1, 2))
    guard = ExtentGuard.from_frames(frames, factor=10.0)
    pos = torch.tensor([[[0.0, 1.0]], [[884.0, 0.0]], [[-40.0, 40.0]]])
    assert guard(pos).tolist() == [False, True, False]
    assert "particle 0 of replica 1 is at 884 nm in dimension 0" in guard.describe(pos, guard(pos))
    molecule = np.random.default_rng(1).normal(size=(100, 5, 3)) * 0.1
    centred = ExtentGuard.from_frames(molecule, factor=10.0, centred=True)
    drifted = torch.as_tensor(molecule[:2] + 50.0)  # the whole molecule diffused 50 nm away: fine
    exploded = torch.as_tensor(molecule[:1].copy())
    exploded[0, 0] += 100.0  # one bead 100 nm from the others
    assert centred(drifted).tolist() == [False, False] and centred(exploded).tolist() == [True]
    with pytest.raises(ValueError, match="factor"):
        ExtentGuard.from_frames(frames, factor=0.0)


def test_a_simulation_stopped_by_its_guard_exits_non_zero_and_keeps_its_frames(tmp_path, capsys):
    config = tiny(tmp_path, simulate={"timestep": 2.0, "steps": 200, "report_interval": 1, "chunk_frames": 5})
    for stage in ("data", "train"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0
    code, err = cli(tmp_path, "simulate", config, capsys)
    status = yaml.safe_load((tmp_path / "run" / "simulation" / "status.yaml").read_text())
    assert code == 3 and status["stable"] is False and "simulation stopped at step" in err
    assert "frames up to step" in err and list((tmp_path / "run" / "simulation").glob("chunk_*.npz"))


def test_a_good_run_exits_zero(tmp_path, capsys):
    config = tiny(tmp_path)
    for stage in ("data", "train", "simulate"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_model_checkpoint_and_chunk_are_named(tmp_path, capsys):
    config = tiny(tmp_path)
    for stage in ("data", "train", "simulate"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0
    run = tmp_path / "run"
    chunk = sorted((run / "simulation").glob("chunk_*.npz"))[0]
    truncate(chunk)
    code, err = cli(tmp_path, "evaluate", config, capsys)
    assert code == 2 and f"{chunk} is not a readable trajectory chunk" in err and "rerun the simulation" in err
    truncate(run / "simulation" / "checkpoint.pt")
    config["simulate"]["steps"] = 80  # resuming reads the checkpoint
    code, err = cli(tmp_path, "simulate", config, capsys)
    assert code == 2 and "checkpoint.pt is not a readable simulation checkpoint" in err and "delete it" in err
    model = run / "model.safetensors"
    size = model.stat().st_size
    truncate(model)
    code, err = cli(tmp_path, "sample", config, capsys)
    assert code == 2 and f"{model} is not a readable model file" in err and "train again" in err
    assert model.stat().st_size == size // 2  # nothing was overwritten


def test_garbage_openmm_state_is_named(tmp_path):
    from molscore.interfaces.openmm_md import _saved_steps

    (tmp_path / "state.xml").write_text("not xml at all")
    with pytest.raises(ValueError, match=r"state.xml is not a readable OpenMM state .* delete it to regenerate"):
        _saved_steps(tmp_path)


def recorded(tmp_path, stage):
    return yaml.safe_load((tmp_path / "run" / f"config_{stage}.yaml").read_text())[stage]


def test_resumed_training_honours_more_steps_and_refuses_other_changes(tmp_path, capsys):
    config = tiny(tmp_path)
    for stage in ("data", "train"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0
    summary = tmp_path / "run" / "train" / "summary.yaml"
    assert yaml.safe_load(summary.read_text())["steps"] == 20
    changed = tiny(tmp_path, train={"steps": 40, "learning_rate": 5e-2, "seed": 7})
    code, err = cli(tmp_path, "train", changed, capsys)
    assert code == 2 and "train.learning_rate: 0.0003 before, 0.05 now" in err and "train.seed: 0 before, 7 now" in err
    assert "--overwrite" in err and recorded(tmp_path, "train")["steps"] == 20  # the record is the run that happened
    more = tiny(tmp_path, train={"steps": 40})
    assert cli(tmp_path, "train", more, capsys)[0] == 0
    assert yaml.safe_load(summary.read_text())["steps"] == 40 and recorded(tmp_path, "train")["steps"] == 40
    code, err = cli(tmp_path, "train", tiny(tmp_path, train={"steps": 30}), capsys)
    assert code == 2 and "fewer cannot be resumed" in err
    assert cli(tmp_path, "train", changed, capsys)[0] != 0
    path = tmp_path / "config.yaml"
    assert main(["train", str(path), "--quiet", "--overwrite"]) == 0  # starts afresh with the new settings
    assert recorded(tmp_path, "train")["learning_rate"] == 5e-2 and yaml.safe_load(summary.read_text())["steps"] == 40


def test_extra_steps_run_at_the_final_learning_rate_after_the_schedule(tmp_path):
    from molscore.models import ModelSpec
    from molscore.train.estimator import ScoreEstimator, TrainConfig

    spec = ModelSpec(1, 2, centred=False, mixture_boundaries=[0.1, 0.6])
    data = torch.randn(256, 1, 2)
    first = TrainConfig(steps=30, batch_size=16, validation_every=10**9, checkpoint_every=10)
    ScoreEstimator(spec, first).fit(data, 1.0, checkpoint_dir=tmp_path, progress=False)
    later = ScoreEstimator(spec, TrainConfig(**{**first.__dict__, "steps": 50}))
    later.fit(data, 1.0, checkpoint_dir=tmp_path, progress=False)
    assert later.step == 50 and later.extra_steps == 20
    stages = later._stages
    assert [s["stop"] for s in stages] == [5, 10, 50] and stages[-1]["decay_stop"] == 30  # experts' plan unchanged
    assert later._learning_rate(40, stages[-1]) == pytest.approx(first.final_learning_rate)


def test_resumed_simulation_refuses_changed_settings_and_honours_more_steps(tmp_path, capsys):
    config = tiny(tmp_path)
    for stage in ("data", "train", "simulate"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0
    chunks = sorted((tmp_path / "run" / "simulation").glob("chunk_*.npz"))
    before = {p.name: p.read_bytes() for p in chunks}
    changed = tiny(tmp_path, simulate={"replicas": 8, "timestep": 0.001, "seed": 3})
    code, err = cli(tmp_path, "simulate", changed, capsys)
    assert code == 2 and "simulate.replicas: 4 before, 8 now" in err and "simulate.seed: 0 before, 3 now" in err
    assert recorded(tmp_path, "simulate")["replicas"] == 4
    assert {p.name: p.read_bytes() for p in chunks} == before  # nothing written was touched
    assert cli(tmp_path, "simulate", tiny(tmp_path, simulate={"steps": 80}), capsys)[0] == 0
    from molscore.dynamics import load_trajectory

    assert load_trajectory(tmp_path / "run" / "simulation")["pos"].shape[:2] == (9, 4)  # frames at 0, 10, ..., 80


def test_a_second_process_on_a_busy_run_folder_is_refused(tmp_path, capsys):
    import os

    from molscore.files import folder_lock

    config = tiny(tmp_path)
    assert cli(tmp_path, "data", config, capsys)[0] == 0
    with folder_lock(tmp_path / "run" / "train"):  # as if another training of this run were going on
        code, err = cli(tmp_path, "train", config, capsys)
        assert code == 4 and f"is in use by PID {os.getpid()}" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert cli(tmp_path, "train", config, capsys)[0] == 0  # the lock went with its holder
    with folder_lock(tmp_path / "run" / "simulation"):
        assert cli(tmp_path, "simulate", config, capsys)[0] == 4


def test_checkpoints_use_unique_temporary_names(tmp_path, monkeypatch):
    import tempfile

    from molscore.train.checkpoint import save_checkpoint

    made = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")
    save_checkpoint({"step": 2}, tmp_path / "checkpoint.pt")
    assert len(made) == 2 and made[0][1] != made[1][1] and not list(tmp_path.glob(".checkpoint.pt.*"))


def test_a_damaged_chunk_stops_the_simulate_stage_itself(tmp_path, capsys):
    config = tiny(tmp_path)
    for stage in ("data", "train", "simulate"):
        assert cli(tmp_path, stage, config, capsys)[0] == 0
    chunk = sorted((tmp_path / "run" / "simulation").glob("chunk_*.npz"))[0]
    truncate(chunk)
    code, err = cli(tmp_path, "simulate", tiny(tmp_path, simulate={"steps": 60}), capsys)
    assert code == 2 and f"{chunk} is not a readable trajectory chunk" in err


def run_killed_and_resumed(tmp_path, stage, config, until):
    """Run ``molscore STAGE`` in a subprocess, kill -9 it once ``until`` exists, rerun it to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "molscore.cli", stage, str(path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not until.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = job.poll() is None
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert killed, f"{stage} ended before it could be killed"
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0


@pytest.mark.slow
def test_drill_kill_9_during_training_and_simulation_then_resume_gives_the_uninterrupted_run(tmp_path, capsys):
    long = {"train": {"steps": 600, "checkpoint_every": 100}, "simulate": {"steps": 4000, "checkpoint_interval": 500}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    for folder in (whole, cut):
        assert cli(folder, "data", tiny(folder, **long), capsys)[0] == 0
    for stage in ("train", "simulate"):
        assert cli(whole, stage, tiny(whole, **long), capsys)[0] == 0
    until = {"train": cut / "run" / "train" / "checkpoint.pt", "simulate": cut / "run" / "simulation" / "checkpoint.pt"}
    for stage in ("train", "simulate"):
        run_killed_and_resumed(cut, stage, tiny(cut, **long), until[stage])
    from safetensors import safe_open
    from safetensors.torch import load_file

    from molscore.dynamics import load_trajectory

    models = [whole / "run" / "model.safetensors", cut / "run" / "model.safetensors"]
    weights = [load_file(str(m)) for m in models]  # (the file's metadata order is not fixed between processes)
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metadata = []
    for m in models:
        with safe_open(str(m), framework="pt") as f:
            metadata.append(f.metadata())
    assert metadata[0] == metadata[1]

    a, b = (load_trajectory(f / "run" / "simulation")["pos"] for f in (whole, cut))
    assert a.shape == b.shape and np.array_equal(a, b)
