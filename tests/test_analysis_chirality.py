"""Mirror gaps along diffusion time, against exact answers: a delta mixture's exact model IS the empirical
noised density of its centres, so its gap must equal the data's at every t; its mirror-symmetrised version must
show no gap at all while the data's stays."""

import numpy as np
import pytest
import torch

from molscore.analysis.chirality import mirror, mirror_gaps, noised_log_density
from molscore.diffusion import VPSDE
from molscore.models import DiffusionModel, ModelSpec
from molscore.models.analytic import GaussianMixtureScore
from molscore.potentials import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")

TIMES = (0.05, 0.1, 0.3, 0.6, 1.0)


def chiral_frames(n: int, seed: int = 0) -> torch.Tensor:
    """n centred, distorted right-handed tetrahedra of 4 beads, ``(n, 4, 3)`` (unit-scale coordinates)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 1.5]])
    x = torch.as_tensor(base + 0.05 * rng.normal(size=(n, 4, 3)))
    return x - x.mean(dim=1, keepdim=True)


def delta_model(centres: torch.Tensor) -> DiffusionModel:
    sde = VPSDE()
    mix = GaussianMixture(torch.full((len(centres),), 1.0 / len(centres)), centres, [1e-4] * len(centres))
    spec = ModelSpec(4, 3, centred=True, network="exact_gaussian_mixture")
    return DiffusionModel(spec, GaussianMixtureScore(mix, sde), sde, scale=1.0, kT=1.0)


def test_mirror_is_an_improper_isometry():
    x = chiral_frames(3)
    y = mirror(x)
    assert torch.allclose(torch.cdist(x, x), torch.cdist(y, y))
    volume = lambda z: torch.linalg.det(z[:, 1:] - z[:, :1])  # noqa: E731
    assert torch.allclose(volume(y), -volume(x))


def test_noised_log_density_is_the_gaussian_mixture_log_density():
    centres, x = chiral_frames(7, seed=1), chiral_frames(5, seed=2)
    alpha, sigma = 0.8, 0.6
    sq = ((x[:, None] - alpha * centres[None]) ** 2).flatten(2).sum(-1)
    expected = torch.logsumexp(-0.5 * sq / sigma**2, dim=1)
    assert torch.allclose(noised_log_density(x, centres, alpha, sigma, chunk=2), expected)


def test_exact_model_of_the_centres_has_the_data_gap_and_a_symmetrised_one_has_none():
    centres, frames = chiral_frames(40, seed=3), chiral_frames(200, seed=4)
    exact = mirror_gaps(delta_model(centres), frames, centres, TIMES)
    for row in exact:
        assert row["model"] == pytest.approx(row["data"], rel=1e-3, abs=1e-6), row
    gaps = [row["data"] for row in exact]
    assert gaps[0] > 10 and all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True)) and abs(gaps[-1]) < 0.1, gaps

    racemic = mirror_gaps(delta_model(torch.cat([centres, mirror(centres)])), frames, centres, TIMES)
    for row, exact_row in zip(racemic, exact, strict=True):
        assert abs(row["model"]) < 1e-9 and row["data"] == pytest.approx(exact_row["data"], rel=1e-9)


def test_mirror_gaps_refuse_models_they_cannot_judge():
    sde = VPSDE()
    mix = GaussianMixture([1.0], torch.zeros(1, 4, 3), [1.0])
    flat = DiffusionModel(ModelSpec(4, 3, centred=False, network="exact_gaussian_mixture"),
                          GaussianMixtureScore(mix, sde), sde, scale=1.0, kT=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="centred 3-d"):
        mirror_gaps(flat, chiral_frames(2), chiral_frames(2), TIMES)
