"""A molecule driven out of equilibrium by a constant torque on one dihedral (SCIENCE.md section 6).

All atoms move overdamped, dx = b dt + sqrt(2 D) dW, with b = D / kT (F(x) + tau grad phi): F the OpenMM force
field of the molecule (the system's ``md`` settings), tau a torque (kJ/mol/rad) that turns the dihedral phi
forward, D one diffusion coefficient for every atom (nm^2/ps). Time is in ps, entropy in kB. The torque force
tau grad phi is not a gradient on the circle (phi winds), so the steady state carries a current and
sigma = tau <dphi/dt> / kT. It exerts no net force and no net torque on the molecule and is divergence-free.
"""

import math

import mdtraj
import numpy as np
import openmm
import torch
from torch import Tensor

from molscore.analysis.collective_variables import cv_atom_indices
from molscore.interfaces.openmm_md import openmm_system
from molscore.nonequilibrium.driven_system import DrivenSystem
from molscore.system import System, load_system


def _atom_index(atoms, n_atoms: int) -> Tensor:
    """The 4 atom indices of a dihedral as a LongTensor, checked against the atom count."""
    index = torch.as_tensor(atoms).reshape(-1)
    if index.numel() != 4 or index.is_floating_point() or len(set(index.tolist())) != 4:
        raise ValueError(f"a dihedral needs 4 distinct integer atom indices, got {atoms}")
    if index.min() < 0 or index.max() >= n_atoms:
        raise ValueError(f"dihedral atom indices {index.tolist()} out of range for {n_atoms} atoms")
    return index.long()


def _checked(x: Tensor, atoms) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must be a Tensor of shape (B, N, 3), got {tuple(np.shape(x))}")
    return x, _atom_index(atoms, x.shape[1]).to(x.device)


def _geometry(x: Tensor, index: Tensor):
    """Bond vectors b (B, 3, 3) (b1 = x_j - x_i, b2, b3) and normals n (B, 2, 3) (n1 = b1 x b2, n2 = b2 x b3)."""
    b = torch.diff(x.index_select(1, index), dim=1)
    return b, torch.linalg.cross(b[:, :2], b[:, 1:])


def _angle(x: Tensor, index: Tensor) -> Tensor:
    b, n = _geometry(x, index)
    return torch.atan2(b[:, 1].norm(dim=-1) * (b[:, 0] * n[:, 1]).sum(-1), (n[:, 0] * n[:, 1]).sum(-1))


def _gradient(x: Tensor, index: Tensor) -> Tensor:
    b, n = _geometry(x, index)
    g2 = (b[:, 1] * b[:, 1]).sum(-1, keepdim=True)  # |b2|^2
    end = g2.sqrt()[:, None] / (n * n).sum(-1, keepdim=True) * n  # |b2| n / |n|^2: (B, 2, 3)
    d0, d3 = -end[:, 0], end[:, 1]
    f1, f3 = (b[:, 0] * b[:, 1]).sum(-1, keepdim=True) / g2, (b[:, 2] * b[:, 1]).sum(-1, keepdim=True) / g2
    parts = torch.stack([d0, -(1 + f1) * d0 + f3 * d3, -(1 + f3) * d3 + f1 * d0, d3], dim=1)
    return torch.zeros_like(x).index_add(1, index, parts)


def dihedral_angle(x: Tensor, atoms) -> Tensor:
    """Dihedral angle (B,) in rad, in (-pi, pi], of atoms i-j-k-l (IUPAC sign, as mdtraj) in ``x`` (B, N, 3) nm.

    atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)) with b1 = x_j - x_i, ...: differentiable except at collinear
    atoms.
    """
    return _angle(*_checked(x, atoms))


def dihedral_gradient(x: Tensor, atoms) -> Tensor:
    """grad phi, (B, N, 3) in rad/nm, zero except on the 4 atoms (analytic, Bekker's formula; differentiable).

    It sums to zero over atoms and has no moment (sum x_i x grad_i phi = 0): phi is invariant under rigid motions.
    Its divergence over each atom's coordinates is zero (phi is an azimuthal angle about the central bond).
    """
    return _gradient(*_checked(x, atoms))


def torque_force(x: Tensor, atoms, torque: float) -> Tensor:
    """Force tau grad phi (B, N, 3), kJ/(mol nm), of a torque ``torque`` (kJ/mol/rad) turning phi forward."""
    return torque * dihedral_gradient(x, atoms)


def dihedral_velocity(drift, diffusion, x: Tensor, atoms) -> Tensor:
    """Mean local velocity of the dihedral, L phi = b . grad phi, (B,) rad per unit time, at ``x`` (B, N, 3).

    L is the generator of dx = b dt + sqrt(2 D) dW, so the steady-state average of L phi is <dphi/dt>. The
    diffusion term sum_i D_i d^2 phi / dx_i^2 vanishes because phi is harmonic in each atom's coordinates; that
    needs D isotropic per atom: ``diffusion`` broadcastable to (N, 3) with equal columns.
    """
    x, index = _checked(x, atoms)
    d = torch.broadcast_to(torch.as_tensor(diffusion).to(x), x.shape[1:])
    if not torch.allclose(d, d[:, :1].expand_as(d)):
        raise ValueError("dihedral_velocity needs the same diffusion along x, y and z of each atom")
    with torch.no_grad():
        return (drift(x) * _gradient(x, index)).flatten(1).sum(1)


def wrapped_difference(phi_new: Tensor, phi: Tensor) -> Tensor:
    """phi_new - phi wrapped into [-pi, pi) (rad): the change of an angle over a step much shorter than a turn."""
    return torch.remainder(phi_new - phi + math.pi, 2 * math.pi) - math.pi


def dihedral_increment(atoms):
    """Current increment for :func:`~molscore.nonequilibrium.steady_state.run_steady_state`: the wrapped change
    of the dihedral over one step, (x (B, N, 3), x' (B, N, 3)) -> (B,) rad.

    The angle of x' is kept for the next call: when that call's x is the same tensor (as in the runner, which
    passes x' back as the next x) it is not recomputed.
    """
    index = _atom_index(atoms, max(torch.as_tensor(atoms).reshape(-1).tolist()) + 1)
    last = [None, None]  # x' of the previous call and its angle

    def increment(x: Tensor, x_next: Tensor) -> Tensor:
        idx = index.to(x.device)
        phi = last[1] if x is last[0] else dihedral_angle(x, idx)
        phi_next = dihedral_angle(x_next, idx)
        last[:] = [x_next, phi_next]
        return wrapped_difference(phi_next, phi)

    return increment


def dihedral_atoms(system: System, dihedral: str) -> list[int]:
    """Atom indices (4,) of the collective variable ``dihedral`` declared in the system's folder."""
    cvs = system.collective_variables
    if dihedral not in cvs:
        raise ValueError(f"system {system.name!r} declares no dihedral {dihedral!r}; choose from {sorted(cvs)}")
    if system.topology is None:
        raise ValueError(f"system {system.name!r} has no topology (structure file), so no dihedral atoms")
    return cv_atom_indices(system.topology, cvs[dihedral]).tolist()


class MoleculeForces:
    """OpenMM forces of a molecule plus an optional torque on one dihedral: (B, N, 3) nm -> (B, N, 3) kJ/(mol nm).

    The torque is a CustomTorsionForce with energy -tau theta inside the same OpenMM system, so it costs nothing
    extra; its force is tau grad theta everywhere (the energy jumps at theta = +-pi, the force does not). Forces
    only, no energy: ~0.08 ms per frame for alanine dipeptide on the Reference platform.

    Parameters
    ----------
    system : an all-atom molecule from :func:`molscore.system.load_system`
    platform : OpenMM platform name
    torque : tau, kJ/mol/rad; atoms : the dihedral's 4 atom indices (needed when torque != 0)
    """

    def __init__(self, system: System, platform: str = "Reference", torque: float = 0.0, atoms=None):
        omm_system, _, _ = openmm_system(system)
        if omm_system.getNumParticles() != system.n_particles:
            raise ValueError(f"system {system.name!r}: OpenMM has {omm_system.getNumParticles()} particles, "
                             f"the system {system.n_particles}; the force field needs the all-atom system")  # fmt: skip
        if torque != 0:
            if atoms is None:
                raise ValueError("a torque needs the dihedral's 4 atom indices")
            custom = openmm.CustomTorsionForce("-tau * theta")
            custom.addGlobalParameter("tau", float(torque))
            custom.addTorsion(*_atom_index(atoms, system.n_particles).tolist(), [])
            omm_system.addForce(custom)
        try:
            chosen = openmm.Platform.getPlatformByName(platform)
        except openmm.OpenMMException as err:
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise ValueError(f"OpenMM platform {platform!r} is not available here; choose from {names}") from err
        self.system, self.torque = system, float(torque)
        self._context = openmm.Context(omm_system, openmm.VerletIntegrator(0.001), chosen)

    def __call__(self, pos: Tensor) -> Tensor:
        pos = self.system.check_positions(pos, what="positions given to the force field")
        frames = pos.detach().to("cpu", torch.float64).numpy()
        out = np.empty(frames.shape)
        for b, frame in enumerate(frames):
            self._context.setPositions(frame)
            state = self._context.getState(getForces=True)
            if hasattr(state, "_getVectorAsNumpy"):  # straight into the array, in kJ/(mol nm): getForces' unit
                state._getVectorAsNumpy(openmm.State.Forces, out[b])  # wrapping costs as much as the forces
            else:  # public API, for OpenMM versions without the private helper
                out[b] = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
        return torch.as_tensor(out).to(device=pos.device, dtype=pos.dtype)


def _build(mol: System, atoms, dihedral, torque, diffusion, timestep, relaxation_time, platform, control):
    kT = mol.kT
    mobility = diffusion / kT  # nm^2/ps per kJ/mol
    forces = MoleculeForces(mol, platform, torque, atoms)

    def drift(x: Tensor) -> Tensor:
        return mobility * forces(x)

    initial = torch.as_tensor(mdtraj.load(str(mol.structure)).xyz[0], dtype=torch.float64)
    return DrivenSystem(
        f"{mol.name}_torque", drift, torch.full(initial.shape, float(diffusion), dtype=torch.float64), initial, exact=None,
        control=control, timestep=timestep, relaxation_time=relaxation_time,
        description=f"{mol.name}, all {len(initial)} atoms overdamped, torque {torque:g} kJ/mol/rad on {dihedral} "
        f"(= {torque / kT:.3g} kT/rad at {mol.temperature:g} K), D = {diffusion:g} nm^2/ps, dt = {timestep:g} ps",
        parameters={"system": mol.name, "torque": torque, "dihedral": dihedral, "dihedral_atoms": atoms,
                    "diffusion": diffusion, "timestep": timestep, "kT": kT, "platform": platform},
    )  # fmt: skip


def torque_driven_molecule(
    system: str | System = "alanine_dipeptide",
    torque: float = 120.0,
    dihedral: str = "phi",
    diffusion: float = 0.01,
    timestep: float = 2e-5,
    relaxation_time: float = 0.05,
    platform: str = "Reference",
) -> DrivenSystem:
    """All-atom overdamped molecule with a constant torque on one dihedral, as a :class:`DrivenSystem`.

    b = D/kT (F + tau grad phi), D the same for every atom; positions start at the structure file's.

    Parameters
    ----------
    system : molecule name or loaded all-atom :class:`~molscore.system.System` (force field from its ``md``)
    torque : tau, kJ/mol/rad; positive turns the dihedral towards larger angles (alanine dipeptide, D = 0.01:
        phi stays in its basin at 30; at 60 it turns once per ~3 ps, stalling ~1 ps at -0.8 and +1.5 rad; once
        per ~1 ps at 120; at 240 the torque opens the C-N-CA angle to ~170 degrees in ~1% of frames, where phi
        is ill-defined)
    dihedral : name of a dihedral collective variable of the system (e.g. "phi")
    diffusion : D, nm^2/ps (time scales as 1/D)
    timestep : Euler-Maruyama step, ps; D dt lambda / kT must stay well below 1 for the largest Hessian
        eigenvalue lambda (alanine dipeptide: 1.4e6 kJ/mol/nm^2, so 0.11 at D dt = 2e-7 nm^2)
    relaxation_time : ps, 1/10 of the default burn-in: thermalisation of the internal modes from the structure
    platform : OpenMM platform ("Reference" is fastest for a few dozen atoms)

    The control has torque 0 (sigma = 0).
    """
    if not (math.isfinite(torque) and diffusion > 0 and timestep > 0 and relaxation_time > 0):
        raise ValueError(
            f"need a finite torque and positive diffusion, timestep, relaxation_time; got {torque}, {diffusion}, "
            f"{timestep}, {relaxation_time}"
        )
    mol = load_system(system) if isinstance(system, str) else system
    atoms = dihedral_atoms(mol, dihedral)
    rest = (diffusion, timestep, relaxation_time, platform)
    control = _build(mol, atoms, dihedral, 0.0, *rest, None) if torque != 0 else None
    return _build(mol, atoms, dihedral, float(torque), *rest, control)
