"""ASE calculator for a trained molscore energy model: the only place molscore's units meet ASE's.

molscore: nm, kJ/mol, kJ/(mol nm). ASE: Angstrom, eV, eV/Angstrom. The model sees the atoms (or beads) of
its training resolution, in the same order; the energy is the learned free energy kT E_theta(x, t_min)
(defined up to a constant).
"""

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import Calculator, all_changes

from molscore.models.diffusion_model import DiffusionModel

KJ_PER_MOL = units.kJ / units.mol
"""1 kJ/mol in eV."""
NM = 10.0 * units.Angstrom
"""1 nm in Angstrom."""


class MolscoreCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Angstrom) of a molscore model.

    Parameters
    ----------
    model : trained DiffusionModel (energy parameterisation for energies; forces work for any)
    t : diffusion time of the force field (default t_min; > 0 gives "Two for One" forces)
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: DiffusionModel, t: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model, self.t = model, t

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = self.model.spec.n_particles
        if len(self.atoms) != n:
            raise ValueError(f"the model describes {n} beads; these Atoms have {len(self.atoms)}")
        pos = torch.as_tensor(self.atoms.get_positions() / NM, dtype=self.model.dtype, device=self.model.device)
        pos = pos[None]
        forces = self.model.forces(pos, self.t)[0].detach().cpu().numpy().astype(np.float64)
        self.results["forces"] = forces * KJ_PER_MOL / NM
        if self.model.parameterisation == "energy":
            energy = float(self.model.energy(pos, self.t)[0].detach())
            self.results["energy"] = energy * KJ_PER_MOL
        elif "energy" in properties:
            raise TypeError("a direct score model has forces but no energy; train parameterisation: energy")
