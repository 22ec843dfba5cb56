"""Exact-answer tests of the 2-D distribution metrics (SCIENCE.md section 4)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from molscore.analysis.distributions import (
    bootstrap,
    compare_2d,
    floor_2d,
    histogram2d,
    js_divergence,
    pmf_error,
)

LN2 = np.log(2.0)
BOX = ((0.0, 2.0), (0.0, 2.0))


def test_histogram_overflow_counts_points_outside():
    x = np.array([0.5, 1.5, 5.0, 2.0, -np.inf])
    y = np.array([0.5, 0.5, 0.5, 2.0, 0.0])  # (2, 2) sits on the upper edge: last bin, as in numpy
    h = histogram2d(x, y, 2, BOX)
    np.testing.assert_allclose(h, [0.2, 0.0, 0.2, 0.2, 0.4])
    np.testing.assert_allclose(h.sum(), 1.0)


def test_histogram_without_overflow_normalises_inside():
    h = histogram2d([0.5, 1.5, 5.0], [0.5, 0.5, 0.5], 2, BOX, overflow=False)
    np.testing.assert_allclose(h, [[0.5, 0.0], [0.5, 0.0]])


def test_histogram_rectangular_bins_and_torch_input():
    x, y = np.random.default_rng(0).uniform(0, 2, size=(2, 100))
    h_np = histogram2d(x, y, (4, 3), BOX, overflow=False)
    h_t = histogram2d(torch.tensor(x), torch.tensor(y), (4, 3), BOX, overflow=False)
    assert h_np.shape == (4, 3)
    np.testing.assert_array_equal(h_np, h_t)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([0.5, np.nan], [0.5, 0.5], "NaN"),
        ([], [], "empty"),
        ([0.5, 0.5], [0.5], "same length"),
        ([[0.5]], [[0.5]], "1-D"),
    ],
)
def test_histogram_bad_points(x, y, match):
    with pytest.raises(ValueError, match=match):
        histogram2d(x, y, 2, BOX)


def test_histogram_bad_bins_and_range():
    with pytest.raises(ValueError, match="bins"):
        histogram2d([0.5], [0.5], 0, BOX)
    with pytest.raises(ValueError, match="lo < hi"):
        histogram2d([0.5], [0.5], 2, ((1.0, 0.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="widen the range"):
        histogram2d([5.0], [5.0], 2, BOX, overflow=False)


def test_js_exact_values():
    p = np.array([0.2, 0.3, 0.5])
    assert js_divergence(p, p) == 0.0
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(LN2)
    # m = (0.75, 0.25): JS = (KL(p|m) + KL(q|m)) / 2 = 0.75 ln(4/3)
    assert js_divergence([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.75 * np.log(4 / 3))
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8)), rng.random((8, 8))
    assert js_divergence(a, b) == pytest.approx(jensenshannon(a.ravel(), b.ravel()) ** 2, rel=1e-12)


def test_js_bad_input():
    with pytest.raises(ValueError, match="same number of bins"):
        js_divergence([0.5, 0.5], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="zero total mass"):
        js_divergence([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        js_divergence([-0.5, 1.5], [1.0, 0.0])


def test_pmf_exact_values():
    assert pmf_error([0.2, 0.8], [0.2, 0.8]) == 0.0
    expected = 0.375 * np.log(2.0) ** 2 + 0.625 * np.log(2 / 3) ** 2
    assert pmf_error([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    # the empty model bin is set to 1e-6 before the log and the weight
    w = (1e-6 + 0.5) / 2
    expected = 0.75 * np.log(2.0) ** 2 + w * np.log(1e-6 / 0.5) ** 2
    assert pmf_error([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected, rel=1e-12)
    # bins empty in both contribute nothing
    assert pmf_error([0.5, 0.5, 0.0], [0.25, 0.75, 0.0]) == pytest.approx(pmf_error([0.5, 0.5], [0.25, 0.75]))


def test_compare_2d_identical_and_disjoint():
    xy = np.random.default_rng(2).uniform(0, 2, size=(500, 2))
    assert compare_2d(xy, xy, bins=8, range=BOX) == {"js": 0.0, "pmf": 0.0}
    # a model whose mass is all outside the range lands in the overflow bin: disjoint support, JS = ln 2
    out = compare_2d(xy + 10.0, xy, bins=8, range=BOX)
    assert out["js"] == pytest.approx(LN2)
    assert out["pmf"] > 10.0
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        compare_2d(xy[:, 0], xy, bins=8, range=BOX)


def test_floor_shrinks_like_one_over_n():
    ref = np.random.default_rng(3).normal(size=(40000, 2))
    box = ((-3.0, 3.0), (-3.0, 3.0))
    small = floor_2d(ref, 2000, bins=6, range=box, n_pairs=8, seed=0)
    large = floor_2d(ref, 8000, bins=6, range=box, n_pairs=8, seed=0)
    assert small["mode"] == "random" and small["n"] == 2000 and small["n_pairs"] == 8
    # iid histograms: E[JS] ~ (K - 1) / (4 n) with K occupied bins, so 4x the points gives ~1/4 the floor
    assert 2.5 < small["js_mean"] / large["js_mean"] < 6.0
    assert 2.5 < small["pmf_mean"] / large["pmf_mean"] < 6.0
    assert small["js_mean"] == pytest.approx(36 / (4 * 2000), rel=0.5)


def test_floor_uses_halves_when_reference_is_short():
    ref = np.random.default_rng(4).normal(size=(101, 2))
    f = floor_2d(ref, 80, bins=4, range=((-3, 3), (-3, 3)))
    assert f["mode"] == "halves" and f["n"] == 50 and f["n_pairs"] == 1
    assert np.isnan(f["js_std"])
    assert f["js_mean"] == pytest.approx(compare_2d(ref[:50], ref[50:100], 4, ((-3, 3), (-3, 3)))["js"])
    with pytest.raises(ValueError, match="positive int"):
        floor_2d(ref, 0)


def test_bootstrap_is_seeded_and_spreads():
    rng = np.random.default_rng(5)
    s, r = rng.normal(size=(400, 2)), rng.normal(size=(4000, 2))

    def metric(a, b):
        return compare_2d(a, b, 6, ((-3, 3), (-3, 3)))["js"]

    mean, std = bootstrap(metric, s, r, n_boot=10, seed=1)
    assert (mean, std) == bootstrap(metric, s, r, n_boot=10, seed=1)
    assert std > 0 and 0 < mean < 0.1
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap(metric, s, r, n_boot=1)
