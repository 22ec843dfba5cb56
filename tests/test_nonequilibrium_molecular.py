"""Torque-driven alanine dipeptide: the dihedral and its torque force, the OpenMM drift, a short steady-state run
in which the entropy-production estimators agree with tau <dphi/dt> / kT, and clear errors for bad input."""

import math

import mdtraj
import numpy as np
import pytest
import torch

from molscore.analysis.autocorrelation import block_average
from molscore.interfaces.reference_energy import ReferenceForceField
from molscore.nonequilibrium import drift_identity, load_driven_system, path_estimate, run_steady_state
from molscore.nonequilibrium.divergence import divergence
from molscore.nonequilibrium.molecular import (
    MoleculeForces,
    dihedral_angle,
    dihedral_gradient,
    dihedral_increment,
    dihedral_velocity,
    torque_driven_molecule,
    torque_force,
)
from molscore.system import load_system

pytestmark = pytest.mark.usefixtures("one_thread")
TORQUE = 120.0  # kJ/mol/rad (48 kT/rad): phi turns about once per 0.7 ps


@pytest.fixture(scope="module")
def molecule():
    return load_system("alanine_dipeptide")


@pytest.fixture(scope="module")
def driven():
    system, run = load_driven_system("alanine_dipeptide_torque", torque=TORQUE)
    return system


@pytest.fixture(scope="module")
def frames(molecule):
    """8 thermally distorted copies of the structure, (8, 22, 3) nm."""
    x0 = torch.as_tensor(mdtraj.load(str(molecule.structure)).xyz[0], dtype=torch.float64)
    return x0 + 0.01 * torch.randn((8, *x0.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_dihedral_matches_mdtraj_and_its_gradient_finite_differences(molecule, driven, frames):
    atoms = driven.parameters["dihedral_atoms"]
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(frames.numpy(), molecule.topology), [atoms])[:, 0]
    assert np.allclose(dihedral_angle(frames, atoms).numpy(), ref, atol=1e-5)  # mdtraj works in float32
    force = torque_force(frames, atoms, TORQUE)
    h, flat = 1e-6, frames.flatten(1)
    numeric = torch.zeros_like(flat)
    for i in range(flat.shape[1]):
        step = torch.zeros_like(flat)
        step[:, i] = h
        up, down = dihedral_angle((flat + step).view_as(frames), atoms), dihedral_angle((flat - step).view_as(frames), atoms)
        numeric[:, i] = TORQUE * torch.remainder(up - down + math.pi, 2 * math.pi).sub(math.pi) / (2 * h)
    assert torch.allclose(force.flatten(1), numeric, rtol=1e-6, atol=1e-4 * TORQUE)
    xg = frames.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(dihedral_angle(xg, atoms).sum(), xg)
    assert torch.allclose(dihedral_gradient(frames, atoms), auto, atol=1e-10)


def test_torque_force_is_internal_and_divergence_free(driven, frames):
    """No net force, no net moment (the torque turns one part of the molecule against the other), zero divergence."""
    atoms = driven.parameters["dihedral_atoms"]
    force = torque_force(frames, atoms, TORQUE)
    scale = force.abs().max()
    assert torch.allclose(force.sum(1), torch.zeros(len(frames), 3, dtype=force.dtype), atol=1e-10 * scale)
    moment = torch.linalg.cross(frames, force).sum(1)
    assert torch.allclose(moment, torch.zeros_like(moment), atol=1e-10 * scale)
    per_dof = divergence(lambda x: torque_force(x, atoms, TORQUE), frames, "exact", per_dof=True)
    assert per_dof.sum(-1).abs().max() < 1e-9 * scale  # harmonic in each atom's coordinates


def test_drift_is_mobility_times_openmm_force_plus_torque(molecule, driven, frames):
    atoms = driven.parameters["dihedral_atoms"]
    _, force = ReferenceForceField(molecule).energy_and_forces(frames)
    mobility = driven.parameters["diffusion"] / molecule.kT
    expected = mobility * (force + torque_force(frames, atoms, TORQUE))
    assert torch.allclose(driven.drift(frames), expected, rtol=1e-9, atol=1e-9 * expected.abs().max())
    assert torch.allclose(driven.control.drift(frames), mobility * force, rtol=1e-12, atol=1e-12)
    assert driven.control.parameters["torque"] == 0.0 and driven.exact is None
    assert torch.equal(driven.diffusion, torch.full((22, 3), driven.parameters["diffusion"], dtype=torch.float64))


def test_dihedral_increment_reuses_only_the_same_tensor(driven, frames):
    atoms = driven.parameters["dihedral_atoms"]
    inc = dihedral_increment(atoms)
    a, b, c = frames, frames + 0.01, frames - 0.02
    fresh = dihedral_increment(atoms)
    assert torch.allclose(inc(a, b), fresh(a, b))
    assert torch.allclose(inc(b, c), dihedral_increment(atoms)(b, c))  # cached angle of b
    assert torch.allclose(inc(a.clone(), c), dihedral_increment(atoms)(a, c))  # another tensor: recomputed


def test_short_run_estimators_agree_with_the_measured_entropy_production(driven):
    """tau <dphi/dt> / kT from the phi current; the path estimate and the generator form tau/kT E[b . grad phi]
    carry small errors and must agree within 4 combined standard errors. The finite-difference drift identity is
    checked the same way, but its error bar (set by the stiff bonds, ~2e4 kB/ps per frame) is much larger than
    sigma here: the check only says it is not wildly off."""
    atoms = driven.parameters["dihedral_atoms"]
    kT = driven.parameters["kT"]
    dt = driven.timestep
    run = run_steady_state(
        driven, n_replicas=8, n_windows=100, stride=100, burn_in=round(0.03 / dt), seed=1,
        currents={"dphi": dihedral_increment(atoms)}, progress=False,
    )  # fmt: skip
    wt = run.window_time
    rate, rate_err = block_average(run.currents["dphi"].numpy() / wt)
    measured, measured_err = TORQUE / kT * rate, TORQUE / kT * rate_err
    assert rate > 3 * rate_err  # phi turns forward

    path = path_estimate(run.path_increments, wt)
    vel = dihedral_velocity(driven.drift, driven.diffusion, run.samples.flatten(0, 1), atoms).view(run.samples.shape[:2])
    gen, gen_err = (TORQUE / kT * v for v in block_average(vel.numpy()))
    di = drift_identity(driven.drift, driven.diffusion, run.samples[::20], divergence_method="finite_difference")
    for name, value, err in [("path", path.value, path.error), ("generator", gen, gen_err), ("drift", di.value, di.error)]:
        assert abs(value - measured) < 4 * math.hypot(err, measured_err), (name, value, err, measured, measured_err)


def test_bad_input_gives_clear_errors(molecule, driven, frames):
    atoms = driven.parameters["dihedral_atoms"]
    with pytest.raises(ValueError, match="declares no dihedral 'chi'.*phi"):
        torque_driven_molecule(molecule, dihedral="chi")
    with pytest.raises(ValueError, match="positive diffusion"):
        torque_driven_molecule(molecule, diffusion=-1.0)
    with pytest.raises(ValueError, match="shape"):
        dihedral_angle(frames[0], atoms)  # (N, 3) without the batch axis
    with pytest.raises(ValueError, match="4 distinct"):
        dihedral_gradient(frames, atoms[:3])
    with pytest.raises(ValueError, match="out of range"):
        dihedral_angle(frames[:, :5], atoms)
    with pytest.raises(ValueError, match=r"needs \(B, 22, 3\)"):
        driven.drift(torch.zeros(2, 21, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="platform 'NoSuchPlatform'"):
        MoleculeForces(molecule, "NoSuchPlatform")
    with pytest.raises(ValueError, match="bad parameters"):
        load_driven_system("alanine_dipeptide_torque", torgue=1.0)
