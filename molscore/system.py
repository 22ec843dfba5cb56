"""A physical system: particles, masses, temperature, an optional analytic potential and topology.

Systems are defined by folders under ``systems/`` (``systems/<name>/system.yaml``); adding one needs a
folder, not a code change.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from molscore.potentials import POTENTIALS, Potential
from molscore.units import kT_from_temperature, temperature_from_kT

SYSTEMS_DIR = Path(__file__).resolve().parents[1] / "systems"


@dataclass
class System:
    """Particles in ``dim`` dimensions at a temperature.

    Attributes
    ----------
    name : system name
    masses : Tensor (N,), amu
    temperature : K
    dim : spatial dimension (3 for molecules, 2 for planar toy systems)
    potential : analytic potential, or None for systems known only through data
    centred : whether conformations are defined up to translation (molecules: True; a particle in an
        external potential: False). Centred data live in the d (N - 1)-dimensional zero-centroid subspace.
    topology : mdtraj.Topology or None (molecules: read from the structure file)
    settings : further entries of the definition file (integrator settings, histogram ranges, ...)
    folder : the system's folder under ``systems/``
    structure : structure file (PDB) of a molecule, nm
    md : reference MD set-up (force-field files, nonbonded method, constraints, timestep ps, friction 1/ps,
        frame_interval ps), with the chosen variant's overrides applied
    collective_variables : name -> {"dihedral": [[residue index, atom name], x4]}
    states : name -> {cv name: centre (rad), ..., "radius": rad}
    variant : the variant of the definition in use (e.g. "vacuum"), None for the default
    """

    name: str
    masses: Tensor
    temperature: float
    dim: int = 3
    potential: Potential | None = None
    centred: bool = True
    topology: object = None
    settings: dict = field(default_factory=dict)
    folder: Path | None = None
    structure: Path | None = None
    md: dict = field(default_factory=dict)
    collective_variables: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)
    variant: str | None = None

    def __post_init__(self):
        self.masses = torch.as_tensor(self.masses, dtype=torch.float64).reshape(-1)
        if (self.masses <= 0).any():
            raise ValueError(f"system {self.name!r}: masses must be positive (amu)")
        kT_from_temperature(self.temperature)  # validates

    @property
    def n_particles(self) -> int:
        return len(self.masses)

    @property
    def kT(self) -> float:
        """Thermal energy, kJ/mol."""
        return kT_from_temperature(self.temperature)

    @property
    def n_dof(self) -> int:
        """Dimension of configuration space the density lives in: d (N - 1) if centred, else d N."""
        return self.dim * (self.n_particles - 1 if self.centred else self.n_particles)

    def check_positions(self, pos, what: str = "positions") -> Tensor:
        """Validate ``pos : (B, N, d)`` (or (N, d)) for this system; returns a (B, N, d) tensor."""
        pos = torch.as_tensor(pos)
        if pos.ndim == 2:
            pos = pos[None]
        expected = (self.n_particles, self.dim)
        if pos.ndim != 3 or tuple(pos.shape[1:]) != expected:
            raise ValueError(
                f"{what} have shape {tuple(pos.shape)}; system {self.name!r} needs (B, {expected[0]}, "
                f"{expected[1]}) = (frames, particles, dimension)"
            )
        bad = ~torch.isfinite(pos).reshape(len(pos), -1).all(dim=1)
        if bad.any():
            frames = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"{what} contain NaN or infinite coordinates in {int(bad.sum())} frame(s), first {frames}; "
                "remove or repair those frames"
            )
        return pos

    def reference_samples(self, n: int, seed: int = 0) -> Tensor:
        """Exact Boltzmann samples ``(n, N, d)`` of the analytic potential, float64."""
        if self.potential is None:
            raise ValueError(f"system {self.name!r} has no analytic potential, so no exact samples")
        gen = torch.Generator().manual_seed(seed)
        return self.potential.sample(n, self.kT, generator=gen)


_SYSTEM_KEYS = {
    "name", "potential", "temperature", "kT", "masses", "dim", "centred", "settings", "structure", "md",
    "variants", "collective_variables", "states",
}  # fmt: skip


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def load_system(name_or_path: str | Path, variant: str | None = None) -> System:
    """Load a system from ``systems/<name>/system.yaml`` or from a path to such a file or folder.

    ``variant`` picks an entry of the file's ``variants`` (e.g. "vacuum"), whose keys override the default.
    """
    path = Path(name_or_path)
    if not path.exists():
        path = SYSTEMS_DIR / str(name_or_path)
    if path.is_dir():
        path = path / "system.yaml"
    if not path.is_file():
        known = sorted(p.name for p in SYSTEMS_DIR.iterdir() if (p / "system.yaml").is_file())
        raise FileNotFoundError(f"no system definition at {path}; known systems: {known}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _SYSTEM_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SYSTEM_KEYS)}")
    variants = spec.pop("variants", {}) or {}
    if variant is not None:
        if variant not in variants:
            raise ValueError(f"{path}: no variant {variant!r}; variants defined: {sorted(variants)}")
        spec = _merge(spec, variants[variant])
    if ("temperature" in spec) == ("kT" in spec):
        raise ValueError(f"{path}: give exactly one of 'temperature' (K) or 'kT' (kJ/mol)")
    temperature = spec.get("temperature") or temperature_from_kT(float(spec["kT"]))
    potential = None
    if "potential" in spec:
        pot_spec = dict(spec["potential"])
        kind = pot_spec.pop("type", None)
        if kind not in POTENTIALS:
            raise ValueError(f"{path}: potential type {kind!r} unknown; choose from {sorted(POTENTIALS)}")
        if kind == "gaussian_mixture":
            pot_spec.setdefault("kT", kT_from_temperature(temperature))
        potential = POTENTIALS[kind](**pot_spec)
    topology, structure = None, None
    if "structure" in spec:
        import mdtraj

        structure = path.parent / spec["structure"]
        if not structure.is_file():
            raise FileNotFoundError(f"{path}: structure file {structure} is missing")
        topology = mdtraj.load_topology(str(structure))
        masses = np.array([atom.element.mass for atom in topology.atoms])
        if "masses" in spec:  # coarse-grained beads (e.g. C-alphas standing for residues) weigh more than their atom
            given = np.asarray(spec["masses"], dtype=float)
            if given.ndim > 1 or given.size not in (1, len(masses)):
                raise ValueError(f"{path}: masses has {given.size} entries for {len(masses)} atoms of {structure.name}; "
                                 "give one mass (amu) for all or one per atom")  # fmt: skip
            masses = np.broadcast_to(given, masses.shape).copy()
    else:
        masses = np.atleast_1d(np.asarray(spec.get("masses", [1.0]), dtype=float))
    return System(
        name=spec.get("name", path.parent.name),
        masses=torch.as_tensor(masses),
        temperature=float(temperature),
        dim=int(spec.get("dim", 3)),
        potential=potential,
        centred=bool(spec.get("centred", True)),
        topology=topology,
        settings=dict(spec.get("settings", {})),
        folder=path.parent,
        structure=structure,
        md=dict(spec.get("md", {})),
        collective_variables=dict(spec.get("collective_variables", {})),
        states=dict(spec.get("states", {})),
        variant=variant,
    )
