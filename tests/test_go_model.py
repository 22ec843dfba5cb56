"""The C-alpha Go model: its energy equals an independent hand calculation and OpenMM's, the native structure is a
local minimum, the mirror image is not, and bad structures are refused with messages that name the problem."""

from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from molscore.proteins.go_model import GoModel

T4L = Path(__file__).resolve().parents[1] / "systems" / "t4_lysozyme" / "structure.pdb"
KJ = openmm.unit.kilojoule_per_mole


@pytest.fixture(scope="module")
def domain() -> GoModel:
    """The first 60 residues of T4 lysozyme (its N-terminal part), eps = 2.5 kJ/mol."""
    return GoModel.from_structure(T4L, eps=2.5, residues=slice(0, 60))


def perturbed(model: GoModel, scale: float, n: int = 3, seed: int = 0) -> np.ndarray:
    return model.native[None] + scale * np.random.default_rng(seed).normal(size=(n, *model.native.shape))


def hand_energy(model: GoModel, xyz: np.ndarray) -> np.ndarray:
    """E of frames (B, N, 3) nm written out term by term with numpy loops and mdtraj's angles and dihedrals."""
    eps, n = model.eps, model.n_beads
    top = mdtraj.Topology()
    residue = top.add_residue("GLY", top.add_chain())
    for _ in range(n):
        top.add_atom("CA", mdtraj.element.carbon, residue)
    both = mdtraj.Trajectory(np.concatenate([model.native[None], xyz]).astype(np.float64), top)
    triples = [[k, k + 1, k + 2] for k in range(n - 2)]
    quartets = [[k, k + 1, k + 2, k + 3] for k in range(n - 3)]
    theta, phi = mdtraj.compute_angles(both, triples), mdtraj.compute_dihedrals(both, quartets)
    dist = np.linalg.norm(both.xyz[:, :, None] - both.xyz[:, None, :], axis=-1)
    native = {tuple(c) for c in model.contacts.tolist()}
    out = []
    for f in range(1, len(both)):
        e = sum(1e4 * eps * (dist[f, k, k + 1] - dist[0, k, k + 1]) ** 2 for k in range(n - 1))
        e += sum(20 * eps * (theta[f, k] - theta[0, k]) ** 2 for k in range(n - 2))
        e += sum(eps * (1 - np.cos(d)) + 0.5 * eps * (1 - np.cos(3 * d)) for d in phi[f] - phi[0])
        for i in range(n):
            for j in range(i + 4, n):
                if (i, j) in native:
                    ratio = dist[0, i, j] / dist[f, i, j]
                    e += eps * (5 * ratio**12 - 6 * ratio**10)
                else:
                    e += eps * (0.4 / dist[f, i, j]) ** 12
        out.append(e)
    return np.array(out)


def openmm_energy_forces(model: GoModel, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    context = openmm.Context(model.openmm_system(110.0), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))  # fmt: skip
    energies, forces = [], []
    for frame in xyz:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ / openmm.unit.nanometer))
    return np.array(energies), np.array(forces)


def test_native_contacts_follow_the_heavy_atom_definition(domain):
    """Contacts: residue pairs |i - j| >= 4 with a heavy-atom pair within 0.45 nm (brute force over all pairs)."""
    traj = mdtraj.load(str(T4L))
    residues = list(traj.topology.residues)[:60]
    expected = set()
    for i in range(60):
        for j in range(i + 4, 60):
            a = [x.index for x in residues[i].atoms if x.element.symbol != "H"]
            b = [x.index for x in residues[j].atoms if x.element.symbol != "H"]
            if np.linalg.norm(traj.xyz[0, a][:, None] - traj.xyz[0, b][None], axis=-1).min() < 0.45:
                expected.add((i, j))
    assert {tuple(c) for c in domain.contacts.tolist()} == expected and len(expected) > 60
    ca = traj.xyz[0, [next(a.index for a in r.atoms if a.name == "CA") for r in residues]]
    r0 = domain.native_values()["contacts"]
    np.testing.assert_allclose(r0, np.linalg.norm(ca[domain.contacts[:, 1]] - ca[domain.contacts[:, 0]], axis=1), rtol=1e-6)
    assert domain.residues[:3] == ("MET", "ASN", "ILE")


def test_energy_equals_a_hand_calculation_and_openmm(domain):
    xyz = perturbed(domain, 0.03)
    torch_energy = domain.energy(torch.as_tensor(xyz)).numpy()
    np.testing.assert_allclose(torch_energy, hand_energy(domain, xyz), rtol=1e-5)  # mdtraj's angles are float32
    energy, forces = openmm_energy_forces(domain, xyz)
    np.testing.assert_allclose(torch_energy, energy, rtol=1e-9)
    pos = torch.as_tensor(xyz).requires_grad_(True)
    (grad,) = torch.autograd.grad(domain.energy(pos).sum(), pos)
    np.testing.assert_allclose(-grad.numpy(), forces, rtol=1e-6, atol=1e-6 * np.abs(forces).max())
    # at the native structure only the contacts (-eps each) and the weak repulsion remain
    terms = domain.energy_terms(torch.as_tensor(domain.native[None]))
    assert float(terms["contacts"]) == pytest.approx(-2.5 * len(domain.contacts))
    assert max(abs(float(terms[k])) for k in ("bonds", "angles", "dihedrals")) < 1e-9 and 0 < float(terms["repulsion"]) < 2.5


def test_native_is_a_local_minimum_and_its_mirror_image_is_not(domain):
    context = openmm.Context(domain.openmm_system(110.0), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))  # fmt: skip
    context.setPositions(domain.native)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3)
    minimum = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    assert np.sqrt(((minimum - domain.native) ** 2).sum(-1).mean()) < 0.01  # the repulsion moves it only slightly
    e_min = float(domain.energy(torch.as_tensor(minimum[None])))
    around = domain.energy(torch.as_tensor(perturbed(domain, 0.005, n=20, seed=1) - domain.native + minimum))
    assert bool((around > e_min).all())
    mirror = domain.native * np.array([-1.0, 1.0, 1.0])  # same distances and angles, every dihedral negated
    terms = domain.energy_terms(torch.as_tensor(mirror[None]))
    assert float(terms["contacts"]) == pytest.approx(-2.5 * len(domain.contacts)) and float(terms["dihedrals"]) > 50 * 2.5


def test_bad_structures_are_refused_with_the_problem_named(tmp_path):
    traj = mdtraj.load(str(T4L))
    with pytest.raises(ValueError, match=r"chain break between GLY30 and HIS31 \(C-alpha distance"):
        broken = traj.xyz.copy()
        second_half = [a.index for a in traj.topology.atoms if a.residue.index >= 30]
        broken[0, second_half] += 1.0
        GoModel.from_structure(mdtraj.Trajectory(broken, traj.topology), residues=slice(0, 60))
    no_ca = traj.atom_slice([a.index for a in traj.topology.atoms if not (a.name == "CA" and a.residue.index == 5)])
    with pytest.raises(ValueError, match=r"without a C-alpha atom: MET6; rebuild"):
        GoModel.from_structure(no_ca, residues=slice(0, 20))
    with pytest.raises(FileNotFoundError, match="no structure file"):
        GoModel.from_structure(tmp_path / "missing.pdb")
    with pytest.raises(ValueError, match="at least 4"):
        GoModel.from_structure(traj, residues=slice(0, 3))
    model = GoModel.from_structure(traj, residues=slice(0, 20))
    with pytest.raises(ValueError, match=r"\(B, 20, 3\)"):
        model.energy(torch.zeros(2, 19, 3))
