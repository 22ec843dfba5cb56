"""The C-alpha Go model: its energy equals an independent hand calculation and OpenMM's, the native structure is a
local minimum, the mirror image is not, and bad structures are refused with messages that name the problem."""

import importlib.util
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from molscore.proteins.go_model import GoModel

ROOT = Path(__file__).resolve().parents[1]
T4L = ROOT / "systems" / "t4_lysozyme" / "structure.pdb"
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


def test_go_system_definition_builds_the_same_model_for_openmm_md(tmp_path):
    """systems/t4_lysozyme_go: bead masses from system.yaml, OpenMM energy equal to the torch Go energy, and its
    MD runs through generate_md (Go MD needs no force-field files)."""
    from molscore.interfaces.openmm_md import generate_md, go_model, load_md, openmm_system
    from molscore.system import load_system

    system = load_system("t4_lysozyme_go")
    model = go_model(system)
    assert system.n_particles == model.n_beads == 48 and torch.all(system.masses == 110.0)
    omm, _, positions = openmm_system(system)
    context = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    xyz = perturbed(model, 0.01, n=1)[0]
    context.setPositions(xyz)
    expected = model.energy(torch.as_tensor(xyz[None]))[0].item()
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == pytest.approx(expected, rel=1e-6)
    out = generate_md(system, tmp_path / "md", replicas=1, length_ps=10.0, equilibration_ps=5.0, processes=1,
                      progress=False)  # fmt: skip
    (traj,) = load_md(out)
    assert traj.xyz.shape == (2, 48, 3) and np.isfinite(traj.xyz).all()


def test_go_system_errors_name_the_problem(tmp_path):
    from molscore.interfaces.openmm_md import openmm_system
    from molscore.system import load_system

    folder = Path(__file__).resolve().parents[1] / "systems" / "t4_lysozyme_go"

    def definition(md_go: str, masses: str = "110.0") -> Path:
        (tmp_path / "structure.pdb").write_text((folder / "structure.pdb").read_text())
        (tmp_path / "system.yaml").write_text(
            f"name: bad\nstructure: structure.pdb\nmasses: {masses}\ntemperature: 300\n"
            f"md: {{go_model: {md_go}, timestep: 0.005, friction: 1.0, frame_interval: 5.0}}\n"
        )
        return tmp_path / "system.yaml"

    native = str(folder.parent / "t4_lysozyme" / "structure.pdb")
    with pytest.raises(ValueError, match="masses has 3 entries for 48 atoms"):
        load_system(definition(f"{{native: {native}, residues: [12, 60], eps: 2.5}}", "[1, 2, 3]"))
    with pytest.raises(ValueError, match="unknown key"):
        openmm_system(load_system(definition(f"{{native: {native}, residues: [12, 60], eps: 2.5, cutoff: 1}}")))
    with pytest.raises(ValueError, match="selects 50 residues but the structure"):
        openmm_system(load_system(definition(f"{{native: {native}, residues: [10, 60], eps: 2.5}}")))
    with pytest.raises(ValueError, match="lie up to"):
        openmm_system(load_system(definition(f"{{native: {native}, residues: [13, 61], eps: 2.5}}")))


def test_fraction_of_native_contacts_and_transition_counts(domain):
    from molscore.proteins.native_contacts import count_transitions, fraction_native_contacts, free_energy_barrier

    r0 = domain.native_values()["contacts"]
    native, expanded = domain.native[None], 2.0 * domain.native[None]
    q = fraction_native_contacts(np.concatenate([native, expanded]), domain.contacts, r0)
    # a native contact at r0 counts 1 / (1 + exp(-50 * 0.2 r0)) (0.99 or more for r0 > 0.45 nm); doubled, none
    assert q[0] == pytest.approx(np.mean(1 / (1 + np.exp(-50 * 0.2 * r0))), rel=1e-12) and q[0] > 0.99
    assert q[1] < 1e-6
    assert count_transitions(np.array([0.5, 0.1, 0.5, 0.8, 0.4, 0.2, 0.9, 0.6, 0.95]), 0.3, 0.7) == (2, 1)
    rng = np.random.default_rng(0)
    two_state = np.clip(np.concatenate([rng.normal(0.2, 0.05, 5000), rng.normal(0.85, 0.04, 5000)]), 0, 1)
    barrier, bimodal = free_energy_barrier(two_state)
    assert bimodal and 0.35 < barrier < 0.7
    assert free_energy_barrier(rng.normal(0.8, 0.05, 5000).clip(0, 1))[1] is False
    with pytest.raises(ValueError, match="frames, beads, 3"):
        fraction_native_contacts(domain.native, domain.contacts, r0)


def test_folding_temperature_scan_runs_and_reports(tmp_path):
    spec = importlib.util.spec_from_file_location("go_tf", ROOT / "workflows" / "go_folding_temperature.py")
    workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workflow)
    result = workflow.main(["--temperatures", "100", "600", "--replicas", "1", "--ns", "0.05",
                            "--equilibration-ps", "20", "--processes", "1", "--out", str(tmp_path)])  # fmt: skip
    cold, hot = result["rows"]
    assert cold["mean_q"] > 0.9 > 0.5 > hot["mean_q"]  # folded at 100 K, unfolded at 600 K
    assert result["tf_K"] is not None and 100 < result["tf_K"] < 600
    assert {p.name for p in tmp_path.iterdir()} >= {"folding_temperature.md", "folding_temperature.png"}
