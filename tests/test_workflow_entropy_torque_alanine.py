"""The ``--score`` path of workflows/entropy_torque_alanine.py on tiny settings (a few training steps)."""

import math

import pytest
import torch

from molscore.nonequilibrium import load_driven_system
from molscore.nonequilibrium.steady_state import SteadyStateRun

pytestmark = pytest.mark.usefixtures("one_thread")


def test_learned_score_runs_on_tiny_settings(workflow_script, tmp_path, monkeypatch):
    workflow = workflow_script("entropy_torque_alanine.py")
    train = workflow.SCORE_MODEL["train"] | {"steps": 2, "batch_size": 4, "fit_steps_to_budget": False}
    monkeypatch.setitem(workflow.SCORE_MODEL, "train", train)
    system, _ = load_driven_system(workflow.SYSTEM, torque=60.0)
    gen = torch.Generator().manual_seed(0)
    samples = system.initial + 0.003 * torch.randn((16, 4, *system.shape), generator=gen, dtype=torch.float64)
    run = SteadyStateRun(samples, samples, torch.zeros(16, 4), dt=system.timestep, stride=1)
    est, summary = workflow.learned_score(system, run, tmp_path / "score", 0.01, 8, progress=False)
    assert summary["steps"] == 2 and (tmp_path / "score" / "model.safetensors").exists()
    assert est.n_samples == 8 and math.isfinite(est.value) and est.value > 0 and est.per_dof.shape == system.shape
    again, _ = workflow.learned_score(system, run, tmp_path / "score", 0.01, 8, progress=False)  # reuses the model
    assert again.value == pytest.approx(est.value)
