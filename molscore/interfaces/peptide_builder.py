"""Build capped peptides (ACE-...-NME) from a sequence: PeptideBuilder places the heavy atoms with ideal
geometry, OpenMM's Modeller adds hydrogens from the force field's templates, and a short minimisation
relaxes the structure. Used once, to create a system folder; training never needs it.

Needs the optional dependency ``PeptideBuilder`` (``pip install -e ".[build]"``).
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
    import openmm
    from openmm import app, unit

    pdb = app.PDBFile(io.StringIO(_heavy_atom_pdb(sequence)))
    ff = app.ForceField(*forcefield)
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff)
    positions = modeller.positions
    if minimise:
        system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
        integrator = openmm.VerletIntegrator(0.001 * unit.picoseconds)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
        positions = context.getState(getPositions=True).getPositions()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        app.PDBFile.writeFile(modeller.topology, positions, f)
    if not np.isfinite(np.asarray(positions.value_in_unit(unit.nanometer))).all():
        raise RuntimeError(f"building {sequence!r} gave non-finite coordinates")
    return path
