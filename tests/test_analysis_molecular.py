"""Molecular observables against exact answers: basin-population error calibration, von Mises free energy,
hand-built bond lengths, shifted W1, bead bonds of alanine dipeptide, and the MD floor."""

from pathlib import Path

import mdtraj
import numpy as np
import pytest
from scipy.special import i0

from molscore.analysis.distributions import compare_2d
from molscore.analysis.molecular import (
    basin_population,
    bond_length_w1,
    bond_lengths,
    contiguous_stretches,
    free_energy_profile,
    md_floor,
    population_time_series,
    topology_bonds,
)
from molscore.data.resolution import select_beads

STRUCTURE = Path(__file__).parents[1] / "systems" / "alanine_dipeptide" / "structure.pdb"


def telegraph_batch(n_runs, n_frames, k_in, k_out, rng):
    """Indicators (n_frames, n_runs) of a 2-state chain: 0 -> 1 with prob k_in, 1 -> 0 with k_out, stationary start."""
    p = k_in / (k_in + k_out)
    s = rng.random(n_runs) < p
    out = np.empty((n_frames, n_runs))
    for t in range(n_frames):
        out[t] = s
        u = rng.random(n_runs)
        s = np.where(s, u >= k_out, u < k_in)
    return out, p


# basin populations ---------------------------------------------------------------------------------------------
def test_basin_population_binomial_is_calibrated():
    rng = np.random.default_rng(0)
    z = []
    for _ in range(400):
        phi = rng.uniform(-np.pi, np.pi, 500) + 2.0  # P(phi > 0) = (pi + 2) / (2 pi)
        res = basin_population(phi)
        z.append((res["p"] - (np.pi + 2) / (2 * np.pi)) / res["err"])
    assert res["method"] == "binomial" and res["n_frames"] == 500 and res["n_replicas"] is None
    assert abs(np.mean(z)) < 0.2 and 0.8 <= np.std(z) <= 1.25


def test_basin_population_replica_error_is_calibrated():
    # 300 data sets of 20 correlated replicas (tau of the indicator ~ 19 frames): the binomial error would be
    # ~4x too small; the between-replica error covers the truth at the stated rate.
    rng = np.random.default_rng(1)
    n_sets, n_rep, n_frames = 300, 20, 400
    ind, p_true = telegraph_batch(n_sets * n_rep, n_frames, 0.01, 0.04, rng)
    z, z_naive, z_tau = [], [], []
    replica = np.repeat(np.arange(n_rep), n_frames)  # the splits' layout: replica after replica
    for i in range(n_sets):
        phi = np.where(ind[:, i * n_rep : (i + 1) * n_rep].T.ravel() > 0, 1.0, -1.0)
        res = basin_population(phi, replica)
        z.append((res["p"] - p_true) / res["err"])
        z_tau.append((res["p"] - p_true) / res["err_autocorr"])
        z_naive.append((res["p"] - p_true) / basin_population(phi)["err"])
    assert res["method"] == "replicas" and res["n_replicas"] == n_rep and res["n_frames"] == n_rep * n_frames
    assert abs(np.mean(z)) < 0.2 and 0.8 <= np.std(z) <= 1.25
    assert 0.8 <= np.std(z_tau) <= 1.25
    assert np.std(z_naive) > 2.5


def test_basin_population_single_replica_uses_autocorrelation():
    rng = np.random.default_rng(2)
    ind, p_true = telegraph_batch(200, 20_000, 0.01, 0.04, rng)  # ~500 tau per run
    z = []
    for i in range(ind.shape[1]):
        res = basin_population(ind[:, i] - 0.5, np.zeros(20_000, dtype=int))
        z.append((res["p"] - p_true) / res["err"])
    assert res["method"] == "autocorrelation" and res["n_replicas"] == 1
    assert 0.8 <= np.std(z) <= 1.25


def test_population_time_series_converges_from_one_basin():
    rng = np.random.default_rng(3)
    ind, p_true = telegraph_batch(400, 600, 0.01, 0.04, rng)
    ind[0] = 0.0  # every replica starts outside the basin
    phi = np.where(ind > 0, 1.0, -1.0)
    ts = population_time_series(phi)
    assert set(ts) == {"p", "err", "running", "running_err"} and ts["p"].shape == (600,)
    assert ts["p"][0] == 0 and ts["running"][0] == 0
    late = ts["p"][300:].mean()
    assert abs(late - p_true) < 0.03  # relaxed (time constant 1 / 0.05 = 20 frames)
    assert np.all(ts["err"][1:] >= 0) and np.all(np.isfinite(ts["running_err"]))
    one = population_time_series(phi[:, 0])
    assert np.isnan(one["err"]).all() and one["p"].shape == (600,)


# free energy, bonds --------------------------------------------------------------------------------------------
def test_free_energy_profile_of_von_mises():
    kappa, kT = 2.0, 2.5
    x = np.random.default_rng(4).vonmises(0.3, kappa, 1_000_000)
    centres, f = free_energy_profile(x, bins=64, kT=kT)
    assert centres.shape == f.shape == (64,) and np.nanmin(f) == 0.0
    np.testing.assert_allclose(centres[[0, -1]], [-np.pi + np.pi / 64, np.pi - np.pi / 64])
    # exact bin probabilities (fine midpoint rule inside each bin) and their statistical error in F
    fine = np.linspace(-np.pi, np.pi, 64 * 200 + 1)
    fine = 0.5 * (fine[1:] + fine[:-1])
    p_b = (np.exp(kappa * np.cos(fine - 0.3)) / (2 * np.pi * i0(kappa))).reshape(64, 200).mean(1) * (2 * np.pi / 64)
    diff = f + kT * np.log(p_b)  # constant up to noise
    z = (diff - diff.mean()) / (kT * np.sqrt((1 - p_b) / (x.size * p_b)))
    assert np.max(np.abs(z)) < 4.5 and 0.7 < np.std(z) < 1.3


def test_free_energy_profile_marks_empty_bins_nan():
    centres, f = free_energy_profile(np.array([0.1, 0.1, 0.2, 3.0]), bins=4, range=(0.0, 4.0))
    np.testing.assert_allclose(centres, [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(f, [0.0, np.nan, np.nan, np.log(3.0)])


def test_bond_lengths_of_hand_built_frame():
    xyz = np.array([[[0.0, 0, 0], [0.03, 0.04, 0], [0.03, 0.04, 0.12]]])  # nm: 3-4-5 and 5-12-13 triangles
    xyz = np.concatenate([xyz, 2 * xyz + 1.0])
    got = bond_lengths(xyz, [[0, 1], [1, 2], [0, 2]])
    np.testing.assert_allclose(got, [[0.05, 0.12, 0.13], [0.1, 0.24, 0.26]], rtol=1e-12)
    with pytest.raises(ValueError, match="bond indices"):
        bond_lengths(xyz, [[0, 3]])


def test_bond_length_w1_of_shifted_samples_is_the_shift():
    rng = np.random.default_rng(5)
    ref = rng.normal(scale=0.3, size=(500, 3, 3))
    model = ref.copy()
    model[:, 1, 0] += 0.02  # bond 0-1 stretched by 0.02 nm along x far away: check through lengths instead
    bonds = np.array([[0, 1], [1, 2]])
    shifted = ref.copy()
    # move bead 2 outward along the 1 -> 2 direction by 0.05 nm: bond 1-2 longer by exactly 0.05 in every frame
    d = ref[:, 2] - ref[:, 1]
    shifted[:, 2] += 0.05 * d / np.linalg.norm(d, axis=-1, keepdims=True)
    w1 = bond_length_w1(shifted, ref, bonds)
    np.testing.assert_allclose(w1, [0.0, 0.05], atol=1e-12)
    assert bond_length_w1(ref[:200], ref[:200], bonds).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("resolution", "names"),
    [
        ("backbone", [("C", "N"), ("N", "CA"), ("CA", "C"), ("C", "N")]),
        (
            "heavy",
            [
                ("CH3", "C"),
                ("C", "O"),
                ("C", "N"),
                ("N", "CA"),
                ("CA", "C"),
                ("CA", "CB"),
                ("C", "O"),
                ("C", "N"),
                ("N", "C"),
            ],  # fmt: skip
        ),
    ],
)
def test_topology_bonds_of_bead_pdb(tmp_path, resolution, names):
    traj = mdtraj.load(str(STRUCTURE))
    beads = select_beads(traj.topology, resolution)
    pdb = tmp_path / "beads.pdb"
    traj.atom_slice(beads.indices).save_pdb(str(pdb))  # exactly as molscore.data.splits writes beads.pdb
    exact = topology_bonds(beads.topology, traj.topology, beads.indices)
    top = mdtraj.load_topology(str(pdb))
    from_pdb = topology_bonds(top)
    np.testing.assert_array_equal(from_pdb, exact)
    assert sorted((top.atom(i).name, top.atom(j).name) for i, j in exact) == sorted(names)
    # every bond is a real covalent bond of the structure (< 0.16 nm)
    lengths = bond_lengths(traj.xyz[:, beads.indices], exact)
    assert np.all(lengths < 0.16)


def test_topology_bonds_calpha_and_bad_input():
    traj = mdtraj.load(str(STRUCTURE))
    beads = select_beads(traj.topology, "calpha")
    assert topology_bonds(beads.topology, traj.topology, beads.indices).shape == (0, 2)
    with pytest.raises(ValueError, match="together"):
        topology_bonds(beads.topology, traj.topology)


def test_topology_bonds_of_a_calpha_trace_join_consecutive_residues():
    trace = mdtraj.load_topology(str(STRUCTURE.parents[1] / "t4_lysozyme_go" / "structure.pdb"))  # resSeq 13-60
    assert np.array_equal(topology_bonds(trace), np.stack([np.arange(47), np.arange(1, 48)], axis=1))
    gapped = trace.subset([k for k in range(48) if k != 20])  # residue 33 missing: a chain break, not a bond
    bonds = topology_bonds(gapped)
    assert len(bonds) == 45 and [19, 20] not in bonds.tolist()


# MD floor ------------------------------------------------------------------------------------------------------
def test_contiguous_stretches_stay_inside_replicas():
    rng = np.random.default_rng(6)
    lengths = [50, 7, 120, 33]
    replica = np.repeat(np.arange(4), lengths)
    replica = np.concatenate([replica, np.tile([7, 8], 40)])  # plus two replicas in frame-major layout
    for n, cap in [(1, None), (45, None), (200, None), (replica.size, None), (150, 10), (replica.size, 16)]:
        parts = contiguous_stretches(replica, n, rng, cap)
        idx = np.concatenate(parts)
        assert idx.size == n and np.unique(idx).size == n
        for part in parts:
            assert np.unique(replica[part]).size == 1  # never crosses a replica boundary
            own = np.flatnonzero(replica == replica[part[0]])
            pos = np.searchsorted(own, part)
            assert np.all(np.diff(pos) == 1) and np.array_equal(own[pos], part)  # contiguous in time
            assert cap is None or part.size <= cap


def test_md_floor_iid_matches_iid_js_and_grows_with_correlation():
    rng = np.random.default_rng(7)
    box = ((-4.0, 4.0), (-4.0, 4.0))
    ref = rng.normal(size=(100_000, 2))
    n_rep, n_per = 10, 4000
    iid = rng.normal(size=(n_rep * n_per, 2))
    replica = np.repeat(np.arange(n_rep), n_per)
    n_eff = 1000
    floor = md_floor(iid, replica, ref, n_eff, 1.0, bins=16, range=box, n_draws=10)
    direct = np.mean([compare_2d(rng.normal(size=(n_eff, 2)), ref, 16, box)["js"] for _ in range(10)])
    assert floor["enough_data"] and floor["n_frames"] == n_eff and floor["n_draws"] == 10
    assert floor["js_mean"] == pytest.approx(direct, rel=0.25)

    # replicas that keep their point and redraw it with probability q per frame: every observable has
    # rho(k) = (1 - q)^k, tau = (2 - q) / q = 19 frames. The correct tau recovers the iid floor; treating the
    # correlated frames as independent (tau 1) gives a floor several times larger.
    q = 0.1
    fresh = rng.normal(size=(n_rep, n_per, 2))
    redraw = rng.random((n_rep, n_per)) < q
    redraw[:, 0] = True
    last = np.maximum.accumulate(np.where(redraw, np.arange(n_per), 0), axis=1)
    corr = np.take_along_axis(fresh, last[..., None], axis=1).reshape(-1, 2)
    right = md_floor(corr, replica, ref, n_eff, 19.0, bins=16, range=box, n_draws=10)
    wrong = md_floor(corr, replica, ref, n_eff, 1.0, bins=16, range=box, n_draws=10)
    assert right["n_frames"] == 19_000
    assert right["js_mean"] == pytest.approx(direct, rel=0.3)
    assert wrong["js_mean"] > 3 * right["js_mean"]


def test_md_floor_with_too_little_data_uses_all_of_it():
    rng = np.random.default_rng(8)
    v, ref = rng.normal(size=(300, 2)), rng.normal(size=(1000, 2))
    res = md_floor(v, np.repeat([0, 1, 2], 100), ref, n_effective=100, tau_frames=5.0, bins=8)
    assert not res["enough_data"] and res["n_frames"] == 300 and res["n_draws"] == 1
    assert res["n_effective_available"] == 60.0 and "fewer than" in res["note"] and np.isnan(res["js_std"])
