"""Reference energies and forces of molscore frames from the system's OpenMM force field (all-atom resolution)."""

from typing import TYPE_CHECKING

import numpy as np
import openmm
import torch
from openmm import unit
from torch import Tensor

from molscore.interfaces.openmm_md import openmm_system

if TYPE_CHECKING:
    from molscore.system import System


class ReferenceForceField:
    """The OpenMM force field a molecule's MD data were generated with, evaluated frame by frame.

    One OpenMM Context is built once and reused for every frame, so a batch costs ``B`` single-point evaluations
    (about 0.1 ms each for alanine dipeptide on the Reference platform). Outputs are plain tensors: OpenMM is not
    differentiable through torch.

    Parameters
    ----------
    system : a molecule loaded with :func:`molscore.system.load_system` (force field, solvent model and
        nonbonded settings from its ``md`` entry, including the chosen variant)
    platform : OpenMM platform, "Reference" (default, double precision), "CPU" or "CUDA"
    """

    def __init__(self, system: "System", platform: str = "Reference"):
        self.system = system
        omm_system, _, _ = openmm_system(system)
        self.n_atoms = omm_system.getNumParticles()
        if system.n_particles != self.n_atoms:
            raise ValueError(
                f"system {system.name!r} has {system.n_particles} particles but its OpenMM system {self.n_atoms}; "
                "the reference force field needs the all-atom system (resolution 'all')"
            )
        try:
            chosen = openmm.Platform.getPlatformByName(platform)
        except openmm.OpenMMException as err:
            available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise ValueError(f"OpenMM platform {platform!r} is not available here; choose from {available}") from err
        self.platform = platform
        self._context = openmm.Context(omm_system, openmm.VerletIntegrator(0.001), chosen)

    def energy_and_forces(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Potential energy and forces of each frame.

        Parameters
        ----------
        pos : Tensor or ndarray (B, N, 3) (or (N, 3) for one frame), nm; N must equal the system's atom count

        Returns
        -------
        energy : Tensor (B,), kJ/mol
        forces : Tensor (B, N, 3), kJ/(mol nm), = -dE/dpos
            Both in the input's floating dtype (float64 for integer input) and on its device.
        """
        pos = self.system.check_positions(pos, what="positions given to ReferenceForceField")
        dtype = pos.dtype if pos.is_floating_point() else torch.float64
        frames = pos.detach().to("cpu", torch.float64).numpy()
        energy = np.empty(len(frames))
        forces = np.empty(frames.shape)
        for b, frame in enumerate(frames):
            self._context.setPositions(frame)
            state = self._context.getState(getEnergy=True, getForces=True)
            energy[b] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            forces[b] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return (
            torch.as_tensor(energy).to(device=pos.device, dtype=dtype),
            torch.as_tensor(forces).to(device=pos.device, dtype=dtype),
        )

    def __call__(self, pos: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Alias of :meth:`energy_and_forces`."""
        return self.energy_and_forces(pos)
