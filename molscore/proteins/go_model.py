"""C-alpha structure-based (Go) model of one protein chain (Clementi, Nymeyer & Onuchic 2000; SCIENCE.md section 7).

An exact energy with no coarse-graining error, whose MD converges on a CPU: the protein-scale reference of
molscore's learned force fields. With all lengths and angles taken from the native structure,

    E = sum_bonds K_b (r - r0)^2 + sum_angles K_theta (theta - theta0)^2
        + sum_dihedrals [K_1 (1 - cos(phi - phi0)) + K_3 (1 - cos 3 (phi - phi0))]
        + sum_native eps [5 (r0_ij / r)^12 - 6 (r0_ij / r)^10] + sum_non-native eps (sigma_rep / r)^12

Units: nm, rad, kJ/mol. K_b = 100 eps / A^2 = 10^4 eps / nm^2, K_theta = 20 eps / rad^2, K_1 = eps, K_3 = eps / 2,
sigma_rep = 0.4 nm; eps (kJ/mol) is the contact energy. OpenMM's harmonic forces are (k / 2)(x - x0)^2, so they
get k = 2 K. Native contacts: residues i, j with |i - j| >= 4 having a heavy-atom pair within 0.45 nm in the native
structure, r0_ij their C-alpha distance (12-10 contacts only). Pairs with |i - j| <= 3 are excluded from both
non-bonded terms. The signed dihedrals make the model chiral: the mirror image of the native is not a minimum.
"""

from dataclasses import dataclass
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import torch
from torch import Tensor

from molscore.geometry import dihedral_cos_sin

BOND_K, ANGLE_K, DIHEDRAL_K1, DIHEDRAL_K3 = 1.0e4, 20.0, 1.0, 0.5  # in units of eps (per nm^2, per rad^2, 1, 1)
SIGMA_REPULSION = 0.4  # nm
CONTACT_CUTOFF = 0.45  # nm, heavy-atom distance defining a native contact
MIN_SEPARATION = 4  # |i - j| of native contacts and of the repulsion; closer pairs are bonded terms only
MAX_CA_BOND = 0.42  # nm: a longer C-alpha - C-alpha distance is a chain break


@dataclass(frozen=True)
class GoModel:
    """The Go model of a C-alpha trace.

    Attributes
    ----------
    native : (N, 3) C-alpha positions of the native structure, nm
    contacts : (C, 2) native contact pairs i < j, |i - j| >= 4
    eps : contact energy, kJ/mol
    residues : N residue names (for the bead topology)
    """

    native: np.ndarray
    contacts: np.ndarray
    eps: float = 1.0
    residues: tuple[str, ...] = ()

    def __post_init__(self):
        native = np.asarray(self.native, dtype=np.float64)
        if native.ndim != 2 or native.shape[1] != 3 or len(native) < 4:
            raise ValueError(f"native must be (N >= 4, 3) C-alpha positions in nm, got shape {native.shape}")
        if not np.isfinite(native).all():
            raise ValueError("native C-alpha positions contain NaN or inf")
        contacts = np.asarray(self.contacts, dtype=np.int64).reshape(-1, 2)
        if len(contacts) and (np.abs(contacts[:, 1] - contacts[:, 0]) < MIN_SEPARATION).any():
            raise ValueError(f"native contacts must join residues at least {MIN_SEPARATION} apart in sequence")
        if not self.eps > 0:
            raise ValueError(f"eps (the contact energy) must be positive, got {self.eps} kJ/mol")
        object.__setattr__(self, "native", native)
        object.__setattr__(self, "contacts", contacts)

    # construction -------------------------------------------------------------------------------------
    @classmethod
    def from_structure(cls, structure, eps: float = 1.0, residues: slice | None = None) -> "GoModel":
        """Build the model of the first chain of an all-atom structure (a PDB path or an mdtraj.Trajectory).

        ``residues`` selects a stretch of that chain (e.g. ``slice(0, 60)``: a subdomain). Heavy atoms define the
        native contacts; every residue needs a C-alpha, and consecutive C-alphas must be within 0.42 nm.
        """
        traj = structure if isinstance(structure, mdtraj.Trajectory) else _load_structure(structure)
        chain = _chain(traj, structure, residues)
        native = traj.xyz[0, _calpha_indices(chain)].astype(np.float64)
        gaps = np.linalg.norm(np.diff(native, axis=0), axis=1)
        if (gaps > MAX_CA_BOND).any():
            k = int(np.argmax(gaps > MAX_CA_BOND))
            raise ValueError(
                f"{_name(structure)}: chain break between {chain[k].name}{chain[k].resSeq} and "
                f"{chain[k + 1].name}{chain[k + 1].resSeq} (C-alpha distance {gaps[k]:.3f} nm > {MAX_CA_BOND} nm); "
                "select a stretch without breaks (residues=slice(...)) or model the missing residues first"
            )
        pairs = [(i, j) for i in range(len(chain)) for j in range(i + MIN_SEPARATION, len(chain))]
        heavy = [[a.index for a in r.atoms if a.element is not None and a.element.symbol != "H"] for r in chain]
        closest = _closest_heavy_distances(traj.xyz[0], heavy, pairs)
        contacts = np.array([p for p, d in zip(pairs, closest, strict=True) if d < CONTACT_CUTOFF]).reshape(-1, 2)
        return cls(native, contacts, eps, tuple(r.name for r in chain))

    # topology -----------------------------------------------------------------------------------------
    @property
    def n_beads(self) -> int:
        return len(self.native)

    @property
    def bonds(self) -> np.ndarray:
        return np.stack([np.arange(self.n_beads - 1), np.arange(1, self.n_beads)], axis=1)

    @property
    def repulsive_pairs(self) -> np.ndarray:
        """(P, 2) pairs |i - j| >= 4 that are not native contacts."""
        i, j = np.triu_indices(self.n_beads, k=MIN_SEPARATION)
        native = {tuple(p) for p in self.contacts.tolist()}
        keep = np.array([(a, b) not in native for a, b in zip(i.tolist(), j.tolist(), strict=True)], dtype=bool)
        return np.stack([i[keep], j[keep]], axis=1)

    def native_values(self) -> dict[str, np.ndarray]:
        """Bond lengths r0 (N-1,) nm, angles theta0 (N-2,) rad, dihedrals phi0 (N-3,) rad and contact r0 (C,) nm."""
        x = torch.as_tensor(self.native[None])
        r0, theta0, (cos0, sin0) = _bond_lengths(x), _angles(x), _dihedral_cos_sin(x)
        d = self.native[self.contacts[:, 1]] - self.native[self.contacts[:, 0]]
        return {"bonds": r0[0].numpy(), "angles": theta0[0].numpy(), "dihedrals": torch.atan2(sin0[0], cos0[0]).numpy(),
                "contacts": np.linalg.norm(d, axis=1)}  # fmt: skip

    # energy -------------------------------------------------------------------------------------------
    def energy_terms(self, pos: Tensor) -> dict[str, Tensor]:
        """Each term of E, ``(B,)`` kJ/mol, for positions ``pos : (B, N, 3)`` nm (any float dtype, differentiable)."""
        if pos.ndim != 3 or pos.shape[1:] != (self.n_beads, 3):
            raise ValueError(f"positions must be (B, {self.n_beads}, 3) nm, got {tuple(pos.shape)}")
        ref = {k: torch.as_tensor(v, dtype=pos.dtype, device=pos.device) for k, v in self.native_values().items()}
        eps = self.eps
        cos, sin = _dihedral_cos_sin(pos)
        delta_cos = cos * ref["dihedrals"].cos() + sin * ref["dihedrals"].sin()  # cos(phi - phi0)
        cos3 = 4 * delta_cos**3 - 3 * delta_cos  # cos 3 (phi - phi0)
        i, j = torch.as_tensor(self.contacts.T, device=pos.device)
        ratio2 = (ref["contacts"] / (pos[:, j] - pos[:, i]).norm(dim=-1)) ** 2
        a, b = torch.as_tensor(self.repulsive_pairs.T, device=pos.device)
        return {
            "bonds": eps * BOND_K * ((_bond_lengths(pos) - ref["bonds"]) ** 2).sum(-1),
            "angles": eps * ANGLE_K * ((_angles(pos) - ref["angles"]) ** 2).sum(-1),
            "dihedrals": eps * (DIHEDRAL_K1 * (1 - delta_cos) + DIHEDRAL_K3 * (1 - cos3)).sum(-1),
            "contacts": eps * (5 * ratio2**6 - 6 * ratio2**5).sum(-1),
            "repulsion": eps * ((SIGMA_REPULSION / (pos[:, b] - pos[:, a]).norm(dim=-1)) ** 12).sum(-1),
        }  # fmt: skip

    def energy(self, pos: Tensor) -> Tensor:
        """E(pos), ``(B,)`` kJ/mol, for ``pos : (B, N, 3)`` nm."""
        return sum(self.energy_terms(pos).values())

    def openmm_system(self, masses) -> openmm.System:
        """The same energy as an OpenMM System of N particles (no cutoff, no periodic box).

        ``masses``: one mass (amu) for every bead, or (N,) masses.
        """
        ref, eps, n = self.native_values(), self.eps, self.n_beads
        masses = np.broadcast_to(np.asarray(masses, dtype=np.float64), (n,))
        if not (masses > 0).all():
            raise ValueError("bead masses must be positive (amu)")
        system = openmm.System()
        for mass in masses:
            system.addParticle(float(mass))
        bonds, angles, torsions = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce(), openmm.PeriodicTorsionForce()
        for k in range(n - 1):
            bonds.addBond(k, k + 1, ref["bonds"][k], 2 * eps * BOND_K)  # OpenMM: (k/2)(r - r0)^2
        for k in range(n - 2):
            angles.addAngle(k, k + 1, k + 2, ref["angles"][k], 2 * eps * ANGLE_K)
        for k in range(n - 3):  # k (1 + cos(n phi - phase)) with phase = n phi0 + pi is k (1 - cos n (phi - phi0))
            phi0 = ref["dihedrals"][k]
            torsions.addTorsion(k, k + 1, k + 2, k + 3, 1, phi0 + np.pi, eps * DIHEDRAL_K1)
            torsions.addTorsion(k, k + 1, k + 2, k + 3, 3, 3 * phi0 + np.pi, eps * DIHEDRAL_K3)
        contacts = openmm.CustomBondForce("eps_go * (5 * (r0 / r)^12 - 6 * (r0 / r)^10)")
        contacts.addGlobalParameter("eps_go", eps)
        contacts.addPerBondParameter("r0")
        for (i, j), r0 in zip(self.contacts.tolist(), ref["contacts"], strict=True):
            contacts.addBond(i, j, [r0])
        repulsion = openmm.CustomNonbondedForce(f"eps_go * ({SIGMA_REPULSION} / r)^12")
        repulsion.addGlobalParameter("eps_go", eps)
        repulsion.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
        for _ in range(n):
            repulsion.addParticle([])
        for i in range(n):
            for j in range(i + 1, min(n, i + MIN_SEPARATION)):
                repulsion.addExclusion(i, j)
        for i, j in self.contacts.tolist():
            repulsion.addExclusion(i, j)
        for force in (bonds, angles, torsions, contacts, repulsion):
            system.addForce(force)
        return system


def calpha_trace(structure, residues: slice | None = None) -> mdtraj.Trajectory:
    """The C-alpha atoms of ``residues`` of the first chain of ``structure`` (a PDB path or mdtraj.Trajectory): the
    bead structure (``structure:`` of a Go system's system.yaml) whose energy :meth:`GoModel.from_structure` gives."""
    traj = structure if isinstance(structure, mdtraj.Trajectory) else _load_structure(structure)
    return traj.atom_slice(_calpha_indices(_chain(traj, structure, residues)))


def _chain(traj: mdtraj.Trajectory, structure, residues: slice | None) -> list:
    chain = [r for r in traj.topology.chain(0).residues if r.is_protein]
    chain = chain[residues] if residues is not None else chain
    if len(chain) < 4:
        raise ValueError(f"{_name(structure)}: the selection holds {len(chain)} protein residues; need at least 4")
    missing = [f"{r.name}{r.resSeq}" for r in chain if not any(a.name == "CA" for a in r.atoms)]
    if missing:
        raise ValueError(f"{_name(structure)}: residues without a C-alpha atom: {', '.join(missing[:10])}; "
                         "rebuild the missing atoms first (e.g. with pdbfixer)")  # fmt: skip
    return chain


def _calpha_indices(chain: list) -> np.ndarray:
    return np.array([next(a.index for a in r.atoms if a.name == "CA") for r in chain])


def _load_structure(path) -> mdtraj.Trajectory:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no structure file at {path}")
    return mdtraj.load(str(path))


def _name(structure) -> str:
    return str(structure) if not isinstance(structure, mdtraj.Trajectory) else "the structure"


def _closest_heavy_distances(xyz: np.ndarray, heavy: list[list[int]], pairs: list[tuple[int, int]]) -> np.ndarray:
    """Closest heavy-atom distance (nm) of each residue pair."""
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs):
        d = xyz[heavy[i]][:, None, :] - xyz[heavy[j]][None, :, :]
        out[k] = np.sqrt((d**2).sum(-1).min())
    return out


def _bond_lengths(x: Tensor) -> Tensor:
    return (x[:, 1:] - x[:, :-1]).norm(dim=-1)


def _angles(x: Tensor) -> Tensor:
    """Bond angles (B, N - 2), rad, as atan2(|u x v|, u . v): smooth near 0 and pi, unlike acos."""
    u, v = x[:, :-2] - x[:, 1:-1], x[:, 2:] - x[:, 1:-1]
    return torch.atan2(torch.linalg.cross(u, v, dim=-1).norm(dim=-1), (u * v).sum(-1))


def _dihedral_cos_sin(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[1]
    quartets = torch.stack([torch.arange(k, n - 3 + k, device=x.device) for k in range(4)], dim=-1)
    return dihedral_cos_sin(x, quartets)
