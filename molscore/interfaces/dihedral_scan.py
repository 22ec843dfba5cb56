"""Energy minimisation and adiabatic dihedral scans with a molecule's OpenMM force field.

An adiabatic scan minimises the molecule with two dihedrals (e.g. phi, psi) held near each point of a grid by
stiff harmonic restraints, and reports the force field's own energy (restraints excluded) of each minimised
structure: the potential of the relaxed molecule as a function of the two dihedrals. The lowest mountain pass
between two basins on that surface (:func:`molscore.paths.mountain_pass.mountain_pass`) approximates the
minimum-energy-path barrier, a bound no thermal path goes below.
"""

import math
from typing import TYPE_CHECKING

import numpy as np
import openmm
from openmm import unit
from tqdm.auto import tqdm

from molscore.interfaces.openmm_md import openmm_system

if TYPE_CHECKING:
    from molscore.system import System

RESTRAINT_GROUP = 1


def _context(system: "System", quartets=(), stiffness: float = 0.0):
    omm, _, _ = openmm_system(system)
    for force in omm.getForces():
        force.setForceGroup(0)
    targets = []
    if len(quartets):
        restraint = openmm.CustomTorsionForce("0.5*k*(atan2(sin(theta-theta0), cos(theta-theta0)))^2")
        restraint.addGlobalParameter("k", stiffness)
        restraint.addPerTorsionParameter("theta0")
        for quartet in quartets:
            targets.append(restraint.addTorsion(*[int(i) for i in quartet], [0.0]))
        restraint.setForceGroup(RESTRAINT_GROUP)
        omm.addForce(restraint)
    else:
        restraint = None
    platform = openmm.Platform.getPlatformByName("Reference")
    return openmm.Context(omm, openmm.VerletIntegrator(0.001), platform), restraint, targets


def _energy(context) -> float:
    """The force field's energy (force group 0, restraints excluded), kJ/mol."""
    state = context.getState(getEnergy=True, groups={0})
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def minimise(system: "System", frames: np.ndarray, tolerance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Local energy minimisation of each frame.

    Parameters
    ----------
    frames : (M, N, 3) nm, all atoms of the system's OpenMM force field
    tolerance : kJ/mol/nm, OpenMM's force tolerance

    Returns
    -------
    positions (M, N, 3) nm and energies (M,) kJ/mol of the minimised frames
    """
    context, _, _ = _context(system)
    frames = np.asarray(frames, dtype=float).reshape(-1, system.n_particles, 3)
    out, energies = np.empty_like(frames), np.empty(len(frames))
    for i, frame in enumerate(frames):
        context.setPositions(frame)
        openmm.LocalEnergyMinimizer.minimize(context, tolerance, 0)
        out[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        energies[i] = _energy(context)
    return out, energies


def adiabatic_scan(
    system: "System",
    quartets: np.ndarray,
    start: np.ndarray,
    n_grid: int = 24,
    stiffness: float = 2000.0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Relaxed energy on an ``n_grid x n_grid`` grid of two dihedrals.

    Parameters
    ----------
    quartets : (2, 4) atom indices of the two dihedrals
    start : (N, 3) nm, the structure the first grid point starts from; each grid point starts from its
        neighbour's minimised structure (a serpentine walk), so the scan follows one conformer family
    stiffness : restraint constant, kJ/mol/rad^2

    Returns
    -------
    angles (n_grid,) rad in [-pi, pi) (grid points of both dihedrals), energies (n_grid, n_grid) kJ/mol with
    index [i, j] for (angle_i, angle_j), force field only
    """
    quartets = np.asarray(quartets, dtype=int)
    if quartets.shape != (2, 4):
        raise ValueError(f"quartets must be (2, 4) atom indices of two dihedrals, got shape {quartets.shape}")
    context, restraint, targets = _context(system, quartets, stiffness)
    angles = -math.pi + 2 * math.pi * np.arange(n_grid) / n_grid
    energies = np.empty((n_grid, n_grid))
    context.setPositions(np.asarray(start, dtype=float))
    bar = tqdm(total=n_grid * n_grid, desc="adiabatic dihedral scan", disable=not progress, leave=False)
    for i in range(n_grid):
        row = range(n_grid) if i % 2 == 0 else range(n_grid - 1, -1, -1)
        for j in row:
            for k, angle in enumerate((angles[i], angles[j])):
                restraint.setTorsionParameters(targets[k], *[int(a) for a in quartets[k]], [angle])
            restraint.updateParametersInContext(context)
            openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
            energies[i, j] = _energy(context)
            bar.update()
    bar.close()
    return angles, energies
