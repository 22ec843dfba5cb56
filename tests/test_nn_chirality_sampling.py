"""A diffusion model trained on one-handed data samples that hand (chiral default), while a reflection-invariant
model cannot: its density is mirror-symmetric, so half its samples are mirror images."""

import numpy as np
import pytest
import torch

from molscore.models import ModelSpec
from molscore.sampling import sample
from molscore.train.estimator import ScoreEstimator, TrainConfig

# four beads of four types with a dihedral of about -0.9 rad: one hand only (never near 0 or pi in the data)
CHIRAL = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.5, 1.0 + 0.0, 0.78]])


def dihedral(x: torch.Tensor) -> np.ndarray:
    """Dihedral angle of beads 0-1-2-3, (n,) rad."""
    b0, b1, b2 = x[:, 0] - x[:, 1], x[:, 2] - x[:, 1], x[:, 3] - x[:, 2]
    n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
    m = torch.linalg.cross(n1, b1 / b1.norm(dim=-1, keepdim=True))
    return torch.atan2((m * n2).sum(-1), (n1 * n2).sum(-1)).numpy()


def one_handed_data(n=2048, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return CHIRAL + 0.08 * torch.randn(n, 4, 3, generator=g, dtype=torch.float32)


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_handedness(reflection: str, parameterisation: str = "energy", steps: int = 500) -> float:
    """Fraction of diffusion samples with the data's handedness (dihedral sign)."""
    hidden = "16x0e+4x0o+8x1o+4x1e" if reflection == "odd" else "16x0e+8x1o"
    spec = ModelSpec(n_particles=4, dim=3, centred=True, parameterisation=parameterisation, network="gnn",
                     network_options={"hidden_irreps": hidden, "n_layers": 2, "bead_types": [0, 1, 2, 3],
                                      "reflection": reflection, "cutoff": 10.0})  # fmt: skip
    config = TrainConfig(steps=steps, batch_size=128, learning_rate=3e-3, final_learning_rate=3e-4, seed=0)
    model = ScoreEstimator(spec, config).fit(one_handed_data(), kT=2.5, progress=False).fetch_model()
    x = sample(model, 512, "sde", n_steps=60, seed=1, progress=False)
    return float(np.mean(np.sign(dihedral(x)) == np.sign(dihedral(CHIRAL[None]))))


def test_data_are_one_handed():
    angles = dihedral(one_handed_data())
    assert np.all(angles < -0.2) and np.all(angles > -2.8)


def test_chiral_model_samples_the_trained_hand_and_invariant_model_both():
    chiral, invariant = trained_handedness("odd"), trained_handedness("invariant")
    assert chiral > 0.9  # the hand of the data
    assert abs(invariant - 0.5) < 0.1  # a mirror-symmetric density: 512 samples give 0.5 +- 0.022 (1 sd)


@pytest.mark.slow
def test_chiral_direct_score_model_samples_the_trained_hand():
    assert trained_handedness("odd", "score", steps=800) > 0.8  # measured 0.88 (gated score head)
