"""Resolution maps: which atoms become beads, and the per-bead features a network sees.

- ``all``: every atom;
- ``heavy``: every non-hydrogen atom;
- ``backbone``: N, CA, C of each residue plus the caps' C (ACE) and N (NME): the C-N-CA-C-N beads that
  define each phi/psi pair (5 for alanine dipeptide);
- ``calpha``: C-alpha atoms only.

Beads are atoms (a slice map): positions at a resolution are the selected atoms' positions, so collective
variables that use only selected atoms are computed exactly as on the raw trajectory.
"""

from dataclasses import dataclass

import mdtraj
import numpy as np

RESOLUTIONS = {
    "all": "all",
    "heavy": "not element H",
    "backbone": "name N CA C and not (resname NME NMA and name C)",
    "calpha": "name CA",
}
"""Resolution name -> mdtraj selection."""


@dataclass
class Beads:
    """The beads of one resolution.

    Attributes
    ----------
    resolution : a key of ``RESOLUTIONS``
    indices : (n_beads,) atom indices into the full topology
    topology : mdtraj.Topology of the beads alone
    bead_types : (n_beads,) int, one type per distinct (residue name, atom name), in order of appearance
    type_names : "RES:NAME" of each type
    elements : element symbol of each bead
    """

    resolution: str
    indices: np.ndarray
    topology: mdtraj.Topology
    bead_types: list[int]
    type_names: list[str]
    elements: list[str]

    @property
    def n_beads(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict:
        return {
            "resolution": self.resolution,
            "indices": [int(i) for i in self.indices],
            "bead_types": self.bead_types,
            "type_names": self.type_names,
            "elements": self.elements,
        }


def select_beads(topology: mdtraj.Topology, resolution: str) -> Beads:
    """The beads of ``topology`` at ``resolution``; an empty selection is an error."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r} unknown; choose from {sorted(RESOLUTIONS)}")
    indices = topology.select(RESOLUTIONS[resolution])
    if len(indices) == 0:
        raise ValueError(f"resolution {resolution!r} selects no atoms of this topology ({topology})")
    sub = topology.subset(indices)
    type_names, bead_types = [], []
    for atom in sub.atoms:
        key = f"{atom.residue.name}:{atom.name}"
        if key not in type_names:
            type_names.append(key)
        bead_types.append(type_names.index(key))
    elements = [atom.element.symbol for atom in sub.atoms]
    return Beads(resolution, np.asarray(indices), sub, bead_types, type_names, elements)
