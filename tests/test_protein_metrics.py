"""Protein ensemble metrics: pseudo-dihedrals equal mdtraj's, the chiral metrics tell a mirror ensemble apart while
the achiral ones cannot, TICA and 1-D comparisons vanish for identical ensembles, and bad frames are refused."""

from pathlib import Path

import mdtraj
import numpy as np
import pytest

from molscore.proteins import metrics
from molscore.proteins.go_model import calpha_trace

T4L_GO = Path(__file__).resolve().parents[1] / "systems" / "t4_lysozyme_go" / "structure.pdb"


@pytest.fixture(scope="module")
def ensembles():
    native = mdtraj.load(str(T4L_GO)).xyz[0].astype(np.float64)
    rng = np.random.default_rng(0)
    frames = native[None] + 0.03 * rng.normal(size=(400, *native.shape))
    other = native[None] + 0.03 * rng.normal(size=(400, *native.shape))
    return native, frames, other, frames * np.array([-1.0, 1.0, 1.0])


def test_pseudo_dihedrals_equal_mdtraj(ensembles):
    native, frames, _, _ = ensembles
    traj = calpha_trace(str(T4L_GO))
    traj.xyz = frames[:5].astype(np.float32)
    quartets = [[k, k + 1, k + 2, k + 3] for k in range(frames.shape[1] - 3)]
    assert np.allclose(metrics.pseudo_dihedrals(frames[:5]), mdtraj.compute_dihedrals(traj, quartets), atol=1e-4)


def test_chiral_metrics_see_the_mirror_and_achiral_ones_do_not(ensembles):
    native, frames, other, mirror = ensembles
    to_native, to_mirror = metrics.rmsd_to_native(frames, native)
    assert to_native.mean() < 0.06 < 0.3 < to_mirror.mean()
    m_native, m_mirror = metrics.rmsd_to_native(mirror, native)
    assert np.allclose(m_native, to_mirror, atol=1e-5) and np.allclose(m_mirror, to_native, atol=1e-5)
    same, mirrored = metrics.pseudo_dihedral_js(other, frames), metrics.pseudo_dihedral_js(mirror, frames)
    assert same < 0.05 < 0.3 < mirrored
    assert metrics.pair_distance_js(mirror, frames) == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(metrics.contact_map(mirror), metrics.contact_map(frames))
    assert np.allclose(metrics.radius_of_gyration(mirror), metrics.radius_of_gyration(frames))


def test_tica_and_one_dimensional_comparisons(ensembles):
    native, frames, other, mirror = ensembles
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=400)) * 0.01  # a slow coordinate: stretch the chain along x
    slow = frames * (1 + walk[:, None, None] * np.array([1.0, 0.0, 0.0]))
    tica = metrics.fit_tica([slow[:200], slow[200:]], lagtime=5)
    assert tica.transform(metrics.tica_features(slow)).shape == (400, 2)
    assert metrics.tica_js(slow, slow, tica) == pytest.approx(0.0, abs=1e-12)
    assert metrics.tica_js(slow[:100], slow[300:], tica) > 0.1
    with pytest.raises(ValueError, match="shorter than lagtime"):
        metrics.fit_tica([slow[:5]], lagtime=10)
    values = rng.normal(size=1000)
    assert metrics.compare_1d(values, values, 20, (-3, 3)) == {"js": 0.0, "w1": 0.0}
    assert metrics.compare_1d(values + 0.1, values, 20, (-3, 3))["w1"] == pytest.approx(0.1)
    cmap = metrics.contact_map(frames)
    assert np.allclose(cmap, cmap.T) and np.all(np.diag(cmap) == 1)


def test_bad_frames_are_refused(ensembles):
    native, frames, _, _ = ensembles
    bad = frames.copy()
    bad[3, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.pseudo_dihedrals(bad)
    with pytest.raises(ValueError, match="frames, beads >= 4, 3"):
        metrics.pair_distances(frames[0])
    with pytest.raises(ValueError, match="native has 47 beads"):
        metrics.rmsd_to_native(frames, native[:-1])
