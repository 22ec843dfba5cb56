"""CV controls on alanine dipeptide's phi/psi: CVControl, a force -grad_x U_theta(CVs, dCVs/dt, t/T), and
CVForceControl, a force sum_k g_k(CVs, dCVs/dt, t/T) grad_x cv_k (the form of the Doob drift)."""

import math

import mdtraj
import pytest
import torch

from molscore.paths import load_states
from molscore.paths.path_controls import CVControl, CVForceControl, CVLogNormaliser, checked_control
from molscore.system import load_system


@pytest.fixture(scope="module")
def alanine():
    system = load_system("alanine_dipeptide", variant="vacuum")
    cvs, _ = load_states(system)
    pos = torch.as_tensor(mdtraj.load(str(system.structure)).xyz, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    pos = pos + 0.01 * torch.randn((3, *pos.shape[1:]), generator=gen, dtype=torch.float64)  # (3, 22, 3)
    vel = 0.5 * torch.randn(pos.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 0.9], dtype=torch.float64)
    return cvs, pos, vel, t


def _trained(cvs, seed=1, kind=CVControl, **kwargs):
    torch.manual_seed(seed)
    control = kind(cvs, hidden=16, force_scale=5.0, velocity_scale=2.0, **kwargs).double()
    with torch.no_grad():
        for p in control.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return control


def _rotation(seed=2) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))  # proper rotation


@pytest.mark.parametrize("kind", [CVControl, CVForceControl])
def test_zero_force_at_initialisation(alanine, kind):
    cvs, pos, vel, t = alanine
    control = kind(cvs).double()
    force = checked_control(control, pos, vel, t)
    assert force.shape == pos.shape
    assert torch.all(force == 0)
    with torch.no_grad():  # as in a rollout
        assert torch.all(control(pos, vel, t) == 0)


@pytest.mark.parametrize("velocity", [True, False])
def test_force_is_minus_gradient_of_the_potential(alanine, velocity):
    cvs, pos, vel, t = alanine
    control = _trained(cvs, velocity=velocity)
    with torch.no_grad():
        force = control(pos, vel, t)
    assert force.abs().max() > 1e-3
    eps = 1e-6
    numeric = torch.zeros_like(pos)
    for atom in range(pos.shape[1]):
        for axis in range(3):
            step = torch.zeros_like(pos)
            step[:, atom, axis] = eps
            up = control.potential(pos + step, vel, t) if not velocity else _potential(control, pos + step, vel, t)
            down = control.potential(pos - step, vel, t) if not velocity else _potential(control, pos - step, vel, t)
            numeric[:, atom, axis] = -(up - down).detach() / (2 * eps)
    torch.testing.assert_close(force, numeric, rtol=1e-5, atol=1e-6 * float(force.abs().max()))


def _potential(control, pos, vel, t):  # the velocity features need positions that require grad
    with torch.enable_grad():
        return control.potential(pos.clone().requires_grad_(True), vel, t).detach()


def test_velocity_features_are_exact_time_derivatives(alanine):
    cvs, pos, vel, t = alanine
    control = _trained(cvs)
    x = pos.clone().requires_grad_(True)
    rates = control.features(x, vel, t)[:, 4:6] * 2.0  # cos, sin of phi and psi, then dphi/dt, dpsi/dt
    eps = 1e-6
    diff = cvs(pos + eps * vel) - cvs(pos - eps * vel)
    diff = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi  # wrap the periodic differences
    torch.testing.assert_close(rates.detach(), diff / (2 * eps), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", [CVControl, CVForceControl])
def test_force_rotates_with_the_molecule_and_ignores_translations(alanine, kind):
    cvs, pos, vel, t = alanine
    control = _trained(cvs, kind=kind)
    rot, shift = _rotation(), torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    with torch.no_grad():
        force = control(pos, vel, t)
        rotated = control(pos @ rot.T, vel @ rot.T, t)
        moved = control(pos + shift, vel, t)
    torch.testing.assert_close(rotated, force @ rot.T, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(moved, force, rtol=1e-7, atol=1e-9)


def test_gradients_reach_the_network_through_the_force(alanine):
    cvs, pos, vel, t = alanine
    control = CVControl(cvs, velocity_scale=2.0).double()  # zero last layer: only it gets a gradient at first
    probe = torch.randn(pos.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = (checked_control(control, pos, vel, t) * probe).sum()  # not uniform: the total force is zero
    loss.backward()
    assert control.net[-1].weight.grad is not None and control.net[-1].weight.grad.abs().sum() > 0
    trained = _trained(cvs)
    loss = (trained(pos, vel, t) ** 2).sum()
    loss.backward()
    weights = [p for name, p in trained.net.named_parameters() if name != f"{len(trained.net) - 1}.bias"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)  # U's offset exerts no force
    with torch.no_grad():  # no graph in a rollout
        assert not trained(pos, vel, t).requires_grad


def test_cv_force_control_is_a_combination_of_the_cv_gradients(alanine):
    """CVForceControl's force is sum_k g_k grad_x cv_k with g = force_scale * MLP(features): solving for g by least
    squares on the gradients (finite differences of the CVs) gives back the network's output; gradients reach every
    weight through the force; no graph under no_grad (rollouts)."""
    cvs, pos, vel, t = alanine
    control = _trained(cvs, kind=CVForceControl)
    with torch.no_grad():
        force = control(pos, vel, t)
    eps = 1e-6
    grads = torch.zeros(3, 2, *pos.shape[1:], dtype=torch.float64)
    for atom in range(pos.shape[1]):
        for axis in range(3):
            step = torch.zeros_like(pos)
            step[:, atom, axis] = eps
            grads[:, :, atom, axis] = (cvs(pos + step) - cvs(pos - step)) / (2 * eps)
    g = torch.linalg.lstsq(grads.flatten(2).transpose(1, 2), force.flatten(1)[..., None]).solution[..., 0]  # (3, 2)
    x = pos.clone().requires_grad_(True)
    expected = control.force_scale * control.net(control.features(x, vel, t)).detach()
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.einsum("bk,bkni->bni", g, grads), force, rtol=1e-5, atol=1e-6)
    (control(pos, vel, t) ** 2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in control.parameters())
    with torch.no_grad():
        assert not control(pos, vel, t).requires_grad


def test_cv_log_normaliser_is_invariant_trainable_and_works_without_grad(alanine):
    """log Z of (phi, psi, their rates): constant at first; after a random draw of its weights the same for the
    rotated and translated molecule, differentiable in its parameters, and callable under no_grad."""
    cvs, pos, vel, _ = alanine
    torch.manual_seed(3)
    log_z = CVLogNormaliser(cvs, hidden=16, velocity_scale=2.0).double()
    assert torch.equal(log_z(pos, vel), torch.zeros(3, dtype=torch.float64))
    with torch.no_grad():
        for p in log_z.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    r = _rotation()
    value = log_z(pos, vel)
    assert torch.allclose(log_z(pos @ r.T + 0.3, vel @ r.T), value, atol=1e-10)
    assert not torch.allclose(log_z(pos, 2 * vel), value)  # the rates matter
    value.sum().backward()
    assert all(p.grad is not None for p in log_z.parameters())
    with torch.no_grad():
        assert torch.allclose(log_z(pos, vel), value.detach())
