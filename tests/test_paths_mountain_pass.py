"""The lowest mountain pass on a grid, and the minimum-energy-path barrier of alanine dipeptide in vacuum."""

import math

import mdtraj
import numpy as np
import pytest

from molscore.interfaces.dihedral_scan import adiabatic_scan, minimise
from molscore.paths.collective_variables import CollectiveVariables
from molscore.paths.mountain_pass import mountain_pass
from molscore.system import load_system


def _connected_threshold(energy, start, end):
    """Independent answer: the lowest level at which start and end lie in one connected sublevel set."""
    from scipy.ndimage import label

    for level in np.unique(energy):
        labels, _ = label(energy <= level)
        if labels[start] and labels[start] == labels[end]:
            return level
    raise AssertionError("never connected")


def test_mountain_pass_is_the_lowest_connecting_level():
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-2, 2, 41), np.linspace(-2, 2, 41), indexing="ij")
    energy = (x**2 - 1) ** 2 + y**2 + 0.3 * rng.random(x.shape)
    energy[20, :25] = 5.0  # a wall across x = 0, open only for y > 0.5
    start, end = (10, 20), (30, 20)
    barrier, path = mountain_pass(energy, start, end, periodic=False)
    assert barrier == pytest.approx(_connected_threshold(energy, start, end))
    assert path[0] == start and path[-1] == end
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:], strict=False))
    assert max(energy[c] for c in path) == pytest.approx(barrier)
    assert all(c[1] >= 25 for c in path if c[0] == 20)  # it goes round the wall
    # periodic: going the other way round a ring is allowed
    ring = np.array([0, 1, 2, 9, 9, 9, 2, 1, 0.5, 0.2])[:, None]
    assert mountain_pass(ring, (0, 0), (2, 0), periodic=True)[0] == 2.0
    assert mountain_pass(ring, (1, 0), (7, 0), periodic=True)[0] == 1.0
    assert mountain_pass(ring, (1, 0), (7, 0), periodic=False)[0] == 9.0
    with pytest.raises(ValueError, match="NaN"):
        mountain_pass(np.full((3, 3), np.nan), (0, 0), (2, 2))


def test_alanine_vacuum_barrier_from_an_adiabatic_scan():
    """SCIENCE.md section 5: the C7eq -> C7ax minimum-energy path of amber99sb-ildn in vacuum is 36.4 kJ/mol."""
    system = load_system("alanine_dipeptide", variant="vacuum")
    cvs = CollectiveVariables(system.collective_variables, system.topology)
    quartets = np.stack(
        [cvs._atoms(system.collective_variables[n]["dihedral"], system.topology, n).numpy() for n in cvs.names]
    )
    start = mdtraj.load(str(system.structure)).xyz
    pos, energy = minimise(system, start)
    angles, surface = adiabatic_scan(system, quartets, pos[0], n_grid=16, progress=False)
    assert np.isfinite(surface).all() and surface.min() >= energy[0] - 5.0

    def cell(phi, psi):
        near = lambda a: int(np.argmin(np.abs(np.angle(np.exp(1j * (angles - a))))))  # noqa: E731
        return near(phi), near(psi)

    barrier, path = mountain_pass(surface, cell(-1.4, 1.2), cell(1.2, -1.2))
    relative = barrier - surface.min()
    assert 30.0 < relative < 45.0, relative  # a 16 x 16 grid (22.5 degrees) resolves it to a few kJ/mol
    assert len(path) > 4 and math.isfinite(barrier)
