"""Build peptides from a sequence: PeptideBuilder places the heavy atoms with ideal geometry (an extended
chain), hydrogens come from the force field's templates (capped ACE-...-NME peptides, OpenMM's Modeller) or from
pdbfixer (free zwitterionic termini, which need the C-terminal OXT added), and a short minimisation relaxes the
structure. Used once, to create a system folder; training never needs it.

Needs the optional dependencies ``PeptideBuilder`` and ``pdbfixer`` (``pip install -e ".[build]"``).
"""

import io
from pathlib import Path

import numpy as np

THREE_LETTER = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS",
    "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
    "Y": "TYR", "V": "VAL",
}  # fmt: skip


def _heavy_atom_pdb(sequence: str) -> str:
    """PDB text of ACE-sequence-NME heavy atoms (caps carved out of two extra alanines)."""
    try:
        import PeptideBuilder
        from Bio.PDB import PDBIO
    except ImportError as err:
        raise ImportError("building peptides needs PeptideBuilder: pip install -e '.[build]'") from err
    unknown = sorted(set(sequence) - set(THREE_LETTER))
    if not sequence or unknown:
        raise ValueError(f"sequence {sequence!r} has unknown one-letter codes {unknown}")
    structure = PeptideBuilder.initialize_res("A")
    for aa in sequence + "A":
        PeptideBuilder.add_residue(structure, aa)
    buffer = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buffer)
    last = len(sequence) + 2
    lines = []
    for line in buffer.getvalue().splitlines():
        if not line.startswith("ATOM"):
            continue
        name, res = line[12:16].strip(), int(line[22:26])
        if res == 1:  # ACE: methyl carbon (from CA), C, O
            if name not in ("CA", "C", "O"):
                continue
            resname, name = "ACE", {"CA": "CH3"}.get(name, name)
        elif res == last:  # NME: N and methyl carbon (from CA)
            if name not in ("N", "CA"):
                continue
            resname, name = "NME", {"CA": "C"}.get(name, name)
        else:
            resname = line[17:20]
        lines.append(f"{line[:12]} {name:<3s} {resname}{line[20:]}")
    return "\n".join(lines) + "\nEND\n"


def _minimised(topology, positions, ff):
    import openmm
    from openmm import app, unit

    system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    integrator = openmm.VerletIntegrator(0.001 * unit.picoseconds)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    return context.getState(getPositions=True).getPositions()


def _write(topology, positions, path, sequence: str) -> Path:
    from openmm import app, unit

    if not np.isfinite(np.asarray(positions.value_in_unit(unit.nanometer))).all():
        raise RuntimeError(f"building {sequence!r} gave non-finite coordinates")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        app.PDBFile.writeFile(topology, positions, f)
    return path


def build_peptide(
    sequence: str, path: str | Path, forcefield=("amber14-all.xml", "implicit/gbn2.xml"), minimise: bool = True
) -> Path:
    """Write the free peptide ``<sequence>`` (zwitterionic NH3+ / COO- termini, protonation at pH 7) with
    hydrogens to a PDB file: an extended chain (e.g. ``"YYDPETGTWY"``, chignolin CLN025), to be folded by MD.

    Parameters as :func:`build_capped_peptide`; the default force field is amber14 with GBn2 implicit solvent.
    """
    try:
        from pdbfixer import PDBFixer
    except ImportError as err:
        raise ImportError("building free peptides needs pdbfixer: pip install -e '.[build]'") from err
    from openmm import app

    heavy = _heavy_atom_pdb(sequence)  # ACE-sequence-NME: drop the caps
    residues = [line for line in heavy.splitlines() if line.startswith("ATOM") and line[17:20] not in ("ACE", "NME")]
    first = int(residues[0][22:26])
    body = "\n".join(f"{line[:22]}{int(line[22:26]) - first + 1:4d}{line[26:]}" for line in residues)
    fixer = PDBFixer(pdbfile=io.StringIO(body + "\nEND\n"))
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # the chain is complete: only the terminal OXT is missing
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    ff = app.ForceField(*forcefield)
    positions = _minimised(fixer.topology, fixer.positions, ff) if minimise else fixer.positions
    return _write(fixer.topology, positions, path, sequence)


def build_capped_peptide(
    sequence: str, path: str | Path, forcefield=("amber99sbildn.xml", "amber99_obc.xml"), minimise: bool = True
) -> Path:
    """Write ``ACE-<sequence>-NME`` with hydrogens to a PDB file.

    Parameters
    ----------
    sequence : one-letter amino-acid codes, e.g. "A" for alanine dipeptide, "V" for valine dipeptide
    path : output PDB
    forcefield : OpenMM force-field files whose templates name the hydrogens
    minimise : relax the built structure (no cutoff, Reference platform)
    """
    from openmm import app

    pdb = app.PDBFile(io.StringIO(_heavy_atom_pdb(sequence)))
    ff = app.ForceField(*forcefield)
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff)
    positions = _minimised(modeller.topology, modeller.positions, ff) if minimise else modeller.positions
    return _write(modeller.topology, positions, path, sequence)
