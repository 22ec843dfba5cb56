"""The ASE calculator: unit conversion and ASE's own finite-difference force check."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.test import gradient_test

from molscore.interfaces.ase_calculator import KJ_PER_MOL, NM, MolscoreCalculator
from molscore.models import ModelSpec
from molscore.train.estimator import ScoreEstimator, TrainConfig


def small_model(n=5):
    """A small energy model trained briefly on jittered copies of one conformation."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, n, 3, generator=gen, dtype=torch.float64) * 0.15
    data = base + 0.01 * torch.randn(512, n, 3, generator=gen, dtype=torch.float64)
    spec = ModelSpec(n, 3, centred=True, network_options={"hidden": [32, 32]})
    est = ScoreEstimator(spec, TrainConfig(steps=40, batch_size=64), dtype=torch.float64)
    return est.fit(data, kT=2.49, progress=False).fetch_model()


def atoms(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return Atoms("C" * n, positions=rng.normal(scale=1.5, size=(n, 3)))  # Angstrom


def test_forces_pass_ase_gradient_test():
    a = atoms()
    a.calc = MolscoreCalculator(small_model())
    f, fn = gradient_test(a)
    assert np.abs(f - fn).max() < 1e-6 * max(1.0, np.abs(f).max())


def test_units_are_converted_only_at_the_interface():
    model, a = small_model(), atoms()
    a.calc = MolscoreCalculator(model)
    pos_nm = torch.as_tensor(a.get_positions() / 10.0)[None]
    assert a.get_potential_energy() == pytest.approx(float(model.energy(pos_nm)[0]) * KJ_PER_MOL, rel=1e-12)
    np.testing.assert_allclose(a.get_forces(), model.forces(pos_nm)[0].numpy() * KJ_PER_MOL / NM, rtol=1e-12)
    assert KJ_PER_MOL == pytest.approx(0.010364, rel=1e-4) and NM == pytest.approx(10.0)


def test_wrong_atom_count_is_an_error():
    a = atoms(n=4)
    a.calc = MolscoreCalculator(small_model(5))
    with pytest.raises(ValueError, match="5 beads"):
        a.get_forces()
