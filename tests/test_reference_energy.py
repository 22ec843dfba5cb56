"""ReferenceForceField: OpenMM energies and forces of batched molscore frames."""

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from molscore.interfaces.openmm_md import openmm_system
from molscore.interfaces.reference_energy import ReferenceForceField
from molscore.system import load_system

REFERENCE = openmm.Platform.getPlatformByName("Reference")


@pytest.fixture(scope="module")
def alanine():
    return load_system("alanine_dipeptide")


@pytest.fixture(scope="module")
def frames(alanine):
    """Three distorted copies of the structure, (3, 22, 3) nm, float64."""
    start = openmm_system(alanine)[2].value_in_unit(unit.nanometer)
    noise = np.random.default_rng(0).normal(scale=0.005, size=(3, 22, 3))
    return torch.as_tensor(np.asarray(start)[None] + noise)


def openmm_energy(context, frame):
    context.setPositions(frame)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


@pytest.mark.parametrize("variant", [None, "vacuum"])
def test_energies_match_direct_openmm(variant, frames):
    system = load_system("alanine_dipeptide", variant=variant)
    energy, forces = ReferenceForceField(system).energy_and_forces(frames)
    assert energy.shape == (3,) and forces.shape == (3, 22, 3) and energy.dtype == torch.float64
    context = openmm.Context(openmm_system(system)[0], openmm.VerletIntegrator(0.001), REFERENCE)
    expected = [openmm_energy(context, frame.numpy()) for frame in frames]
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-12, atol=1e-9)
    assert len(set(energy.tolist())) == 3  # each frame evaluated, not the first one three times


def test_forces_are_minus_energy_gradient(alanine, frames):
    _, forces = ReferenceForceField(alanine).energy_and_forces(frames[:1])
    context = openmm.Context(openmm_system(alanine)[0], openmm.VerletIntegrator(0.001), REFERENCE)
    frame, h = frames[0].numpy(), 1e-5
    gradient = np.empty_like(frame)
    for i in range(22):
        for d in range(3):
            plus, minus = frame.copy(), frame.copy()
            plus[i, d] += h
            minus[i, d] -= h
            gradient[i, d] = (openmm_energy(context, plus) - openmm_energy(context, minus)) / (2 * h)
    assert np.abs(gradient).max() > 10  # a non-trivial check: the frame is not at a minimum
    np.testing.assert_allclose(forces[0].numpy(), -gradient, rtol=1e-5, atol=1e-3)


def test_dtype_device_and_numpy_input(alanine, frames):
    field = ReferenceForceField(alanine)
    energy64, _ = field(frames)
    energy32, forces32 = field(frames.float())
    assert energy32.dtype == forces32.dtype == torch.float32 and energy32.device == frames.device
    np.testing.assert_allclose(energy32.numpy(), energy64.numpy(), rtol=1e-5)
    energy_np, forces_np = field(frames[0].numpy())  # one frame (N, 3) as numpy
    assert energy_np.shape == (1,) and forces_np.shape == (1, 22, 3) and isinstance(energy_np, torch.Tensor)


def test_bad_input_raises(alanine, frames):
    field = ReferenceForceField(alanine)
    with pytest.raises(ValueError, match="22"):
        field(frames[:, :5])
    bad = frames.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        field(bad)
    with pytest.raises(ValueError, match="platform"):
        ReferenceForceField(alanine, platform="Nonsense")


def test_samples_are_scored_against_the_md_energy_distribution(alanine):
    from molscore.pipeline.molecular_evaluation import reference_energy_comparison

    start = np.asarray(openmm_system(alanine)[2].value_in_unit(unit.nanometer))
    rng = np.random.default_rng(1)
    md = start[None] + rng.normal(scale=0.003, size=(200, 22, 3))
    same = reference_energy_comparison(alanine, md[:100], md[100:])
    assert 0.85 <= same["fraction_in_md_range"] <= 1 and same["w1_kT"] < 0.3 * np.diff(same["md_range_kT"])[0]
    clashing = md[:100].copy()
    clashing[:, 1] = clashing[:, 0] + 0.02  # an atom 0.02 nm from its neighbour
    clashing[:3] = np.nan  # non-finite samples count as outside the range
    bad = reference_energy_comparison(alanine, clashing, md[100:])
    assert bad["fraction_in_md_range"] == 0 and bad["median_kT"] > same["md_range_kT"][1] and bad["n"] == 100
