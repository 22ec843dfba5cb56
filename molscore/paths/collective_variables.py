"""Collective variables in torch, evaluated in batch: dihedrals, distances, Cartesian coordinates and RMSD.

Declared in a system's folder (``collective_variables`` in ``system.yaml``), one entry per CV:

    phi: {dihedral: [[0, C], [1, N], [1, CA], [1, C]]}     # (residue index, atom name) x 4, rad
    d:   {distance: [[0, CH3], [2, C]]}                     # nm
    x:   {coordinate: [0, 0]}                               # particle 0, axis 0 (toy systems), nm
    rmsd_c7ax: {rmsd: c7ax.pdb, atoms: heavy}               # Kabsch-aligned RMSD to a structure, nm
    tic0: {tica: tica.npz, component: 0}                    # a TICA component of other CVs (molscore.paths.tica)

Atoms may also be given as plain indices (``dihedral: [4, 6, 8, 14]``). Dihedrals are periodic (period 2 pi)
and agree with mdtraj's ``compute_dihedrals``; the others are not periodic.
"""

from pathlib import Path

import torch
from torch import Tensor

from molscore.geometry import dihedral

KINDS = ("dihedral", "distance", "coordinate", "rmsd", "tica")


def cv_gradients(values: Tensor, pos: Tensor, create_graph: bool = False) -> Tensor:
    """Gradients grad_x cv_k, (B, K, N, d), of CV ``values (B, K)`` computed from ``pos (B, N, d)`` (which must require
    grad); differentiable in ``pos`` with ``create_graph``."""
    grads = [
        torch.autograd.grad(values[:, k].sum(), pos, create_graph=create_graph, retain_graph=True)[0]
        for k in range(values.shape[1])
    ]
    return torch.stack(grads, 1)


def kabsch_rmsd(pos: Tensor, reference: Tensor) -> Tensor:
    """RMSD (B,), nm, of ``pos : (B, n, 3)`` to ``reference : (n, 3)`` after optimal superposition."""
    x = pos - pos.mean(1, keepdim=True)
    y = (reference - reference.mean(0)).to(x)
    h = x.transpose(1, 2) @ y  # (B, 3, 3)
    # the sum of singular values of H, with the sign of the smallest flipped for a reflection
    sv = torch.linalg.svdvals(h)
    sign = torch.sign(torch.linalg.det(h))
    trace = sv[:, 0] + sv[:, 1] + sign * sv[:, 2]
    msd = ((x**2).sum((1, 2)) + (y**2).sum() - 2 * trace) / x.shape[1]
    return torch.sqrt(msd.clamp_min(0))


class CollectiveVariables:
    """CVs of a system, ``pos (B, N, d) -> (B, K)``, in declaration order.

    Parameters
    ----------
    spec : name -> declaration (see the module docstring)
    topology : mdtraj.Topology for (residue, atom name) references, heavy-atom selections and RMSD structures
    folder : where RMSD reference structures are looked up (the system's folder)

    Attributes
    ----------
    names : CV names, in column order;  periodic : Tensor (K,) bool
    atoms : name -> Tensor of atom indices, for dihedral (4) and distance (2) CVs
    """

    def __init__(self, spec: dict, topology=None, folder: Path | None = None):
        if not spec:
            raise ValueError("no collective variables declared; add 'collective_variables' to the system.yaml")
        self.names = list(spec)
        self.atoms: dict[str, Tensor] = {}  # name -> atom indices of a dihedral or distance CV
        self._evaluators = []
        periodic = []
        tica = [n for n, e in spec.items() if "tica" in e]
        for name, entry in spec.items():
            kinds = [k for k in KINDS if k in entry]
            if len(kinds) != 1:
                raise ValueError(f"collective variable {name!r}: {entry} must have exactly one of the keys {KINDS}")
            kind = kinds[0]
            extra = set(entry) - {kind, "atoms", "component"}
            if extra:
                raise ValueError(f"collective variable {name!r}: unknown key(s) {sorted(extra)}")
            if kind != "tica":
                self._evaluators.append(self._evaluator(name, kind, entry, topology, folder))
            periodic.append(kind == "dihedral")
        self.periodic = torch.tensor(periodic)
        if tica:  # TICA components project other (non-TICA) CVs, so they are built once those exist
            from molscore.paths.tica import tica_evaluator

            base = CollectiveVariables({n: e for n, e in spec.items() if n not in tica}, topology, folder)
            for name in tica:
                self._evaluators.insert(self.names.index(name), tica_evaluator(base, spec[name], folder, name))

    def __call__(self, pos: Tensor) -> Tensor:
        if pos.ndim != 3:
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, N, d)")
        return torch.stack([f(pos) for f in self._evaluators], dim=1)

    @staticmethod
    def _atoms(refs, topology, name: str) -> Tensor:
        out = []
        for ref in refs:
            if isinstance(ref, int):
                out.append(ref)
                continue
            if topology is None:
                raise ValueError(f"collective variable {name!r} names atoms {ref}; that needs a molecule's topology")
            residue, atom = int(ref[0]), str(ref[1])
            found = [a.index for a in topology.residue(residue).atoms if a.name == atom]
            if not found:
                raise ValueError(f"collective variable {name!r}: residue {residue} has no atom {atom!r}")
            out.append(found[0])
        return torch.tensor(out)

    def _evaluator(self, name, kind, entry, topology, folder):
        if kind == "dihedral":
            quartet = self.atoms[name] = self._atoms(entry["dihedral"], topology, name)
            if len(quartet) != 4:
                raise ValueError(f"collective variable {name!r}: a dihedral needs 4 atoms, got {len(quartet)}")
            return lambda pos: dihedral(pos, quartet)
        if kind == "distance":
            pair = self.atoms[name] = self._atoms(entry["distance"], topology, name)
            if len(pair) != 2:
                raise ValueError(f"collective variable {name!r}: a distance needs 2 atoms, got {len(pair)}")
            i, j = pair.tolist()
            return lambda pos: (pos[:, i] - pos[:, j]).norm(dim=-1)
        if kind == "coordinate":
            particle, axis = (int(v) for v in entry["coordinate"])
            return lambda pos: pos[:, particle, axis]
        return self._rmsd(name, entry, topology, folder)

    def _rmsd(self, name, entry, topology, folder):
        import mdtraj

        path = Path(entry["rmsd"])
        path = path if path.is_absolute() or folder is None else Path(folder) / path
        if not path.is_file():
            raise FileNotFoundError(f"collective variable {name!r}: reference structure {path} is missing")
        ref = mdtraj.load(str(path))
        selection = entry.get("atoms", "heavy")
        if selection == "heavy":
            atoms = [a.index for a in ref.topology.atoms if a.element.symbol != "H"]
        elif selection == "all":
            atoms = list(range(ref.n_atoms))
        else:
            atoms = [int(i) for i in selection]
        if topology is not None and topology.n_atoms != ref.n_atoms:
            raise ValueError(f"collective variable {name!r}: {path} has {ref.n_atoms} atoms, the system {topology.n_atoms}")
        index = torch.tensor(atoms)
        reference = torch.as_tensor(ref.xyz[0][atoms], dtype=torch.float64)
        return lambda pos: kabsch_rmsd(pos[:, index], reference)
