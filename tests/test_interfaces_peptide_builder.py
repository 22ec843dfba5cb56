"""Peptides built from a sequence: capped (ACE-X-NME) and free zwitterionic chains, with hydrogens."""

import mdtraj
import numpy as np
import pytest

pytest.importorskip("PeptideBuilder")
pytest.importorskip("pdbfixer")

from molscore.interfaces.peptide_builder import build_capped_peptide, build_peptide  # noqa: E402


def test_capped_alanine_dipeptide_has_22_atoms(tmp_path):
    top = mdtraj.load(str(build_capped_peptide("A", tmp_path / "ala.pdb", minimise=False))).topology
    assert [r.name for r in top.residues] == ["ACE", "ALA", "NME"]
    assert top.n_atoms == 22


def test_free_peptide_is_zwitterionic_and_finite(tmp_path):
    traj = mdtraj.load(str(build_peptide("GG", tmp_path / "gg.pdb")))
    top = traj.topology
    assert [r.name for r in top.residues] == ["GLY", "GLY"]
    names = [a.name for a in top.atoms]
    assert "OXT" in names and names[:4] == ["N", "H", "H2", "H3"]  # NH3+ and COO- termini
    assert top.n_atoms == 17
    assert np.isfinite(traj.xyz).all()
    ca = traj.xyz[0, top.select("name CA")]
    assert 0.3 < np.linalg.norm(ca[1] - ca[0]) < 0.42  # one peptide bond apart, nm


def test_unknown_residue_code_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown one-letter codes"):
        build_peptide("AXB", tmp_path / "bad.pdb")
