"""Distances between 2-D distributions: JS divergence and PMF error (SCIENCE.md section 4).

Conventions follow ScoreMD so numbers are comparable with the reference work:

- ``js``: squared ``scipy.spatial.distance.jensenshannon`` (natural log) between 2-D probability histograms;
  alanine dipeptide uses (phi, psi) with 64 x 64 bins over [-pi, pi]^2.
- ``pmf``: :math:`\\sum_b w_b (\\log p_{model,b} - \\log p_{ref,b})^2`,
  :math:`w_b = (p_{model,b} + p_{ref,b})/2`, empty bins set to 1e-6.

By default histograms carry one extra *overflow* entry holding the probability mass outside the histogram
range, so a model that puts mass where the reference has none is penalised instead of silently renormalised.
Always report :func:`floor_2d` beside a model's numbers: a model cannot be judged below the data-vs-data
floor.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon

Range2D = tuple[tuple[float, float], tuple[float, float]]


def _as_numpy(a) -> np.ndarray:
    """Return ``a`` (numpy array, torch tensor or sequence) as a float64 numpy array."""
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _check_points(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of shape (n,), got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("cannot histogram an empty set of points (n = 0); pass at least one frame")
    n_nan = int(np.isnan(x).sum() + np.isnan(y).sum())
    if n_nan:
        raise ValueError(
            f"{n_nan} NaN values in the input points; drop non-finite frames first "
            "(a NaN often means a simulation blew up: check the time step and the forces)"
        )


def _check_xy(xy, name: str) -> np.ndarray:
    xy = _as_numpy(xy)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {xy.shape}")
    return xy


def _bins_pair(bins: int | Sequence[int]) -> tuple[int, int]:
    pair = (bins, bins) if np.isscalar(bins) else tuple(bins)
    if len(pair) != 2 or any(int(b) != b or b < 1 for b in pair):
        raise ValueError(f"bins must be a positive int or a pair of positive ints, got {bins!r}")
    return int(pair[0]), int(pair[1])


def _check_range(range: Range2D) -> Range2D:
    try:
        (x_lo, x_hi), (y_lo, y_hi) = range
    except (TypeError, ValueError):
        raise ValueError(f"range must be ((x_lo, x_hi), (y_lo, y_hi)), got {range!r}") from None
    for lo, hi in ((x_lo, x_hi), (y_lo, y_hi)):
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"each range must be finite with lo < hi, got {range!r}")
    return (float(x_lo), float(x_hi)), (float(y_lo), float(y_hi))


def histogram2d(x, y, bins: int | Sequence[int], range: Range2D, overflow: bool = True) -> np.ndarray:
    """Probability histogram of 2-D points.

    Parameters
    ----------
    x, y : array or Tensor (n,)
        Coordinates of the points (e.g. phi, psi in rad). NaN is an error; +-inf counts as outside the range.
    bins : int or (int, int)
        Number of bins along x and y.
    range : ((x_lo, x_hi), (y_lo, y_hi))
        Histogram range; points on the upper edge fall in the last bin (numpy's convention).
    overflow : bool
        If True, return a flat array of ``bx * by + 1`` probabilities whose last entry is the fraction of
        points outside the range (row-major: entry ``i * by + j`` is x-bin i, y-bin j). If False, return
        the ``(bx, by)`` histogram normalised over the points inside the range.

    Returns
    -------
    ndarray (bx * by + 1,) or (bx, by)
        Probabilities summing to 1.
    """
    x, y = _as_numpy(x), _as_numpy(y)
    _check_points(x, y)
    bx, by = _bins_pair(bins)
    (x_lo, x_hi), (y_lo, y_hi) = _check_range(range)
    inside = (x >= x_lo) & (x <= x_hi) & (y >= y_lo) & (y <= y_hi)
    counts, _, _ = np.histogram2d(x[inside], y[inside], bins=(bx, by), range=((x_lo, x_hi), (y_lo, y_hi)))
    n = x.shape[0]
    if overflow:
        return np.append(counts.ravel(), n - inside.sum()) / n
    n_in = int(inside.sum())
    if n_in == 0:
        raise ValueError(f"none of the {n} points lies inside range {range!r}; widen the range or use overflow=True")
    return counts / n_in


def _check_pq(p, q) -> tuple[np.ndarray, np.ndarray]:
    p, q = _as_numpy(p).ravel(), _as_numpy(q).ravel()
    if p.shape != q.shape:
        raise ValueError(f"histograms must have the same number of bins, got {p.size} and {q.size}")
    for name, a in (("p", p), ("q", q)):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"histogram {name} must be finite and non-negative")
        if a.sum() <= 0:
            raise ValueError(f"histogram {name} has zero total mass; it must contain at least one point")
    return p, q


def js_divergence(p, q) -> float:
    """Squared Jensen-Shannon distance (natural log), ``jensenshannon(p.ravel(), q.ravel()) ** 2``.

    Parameters
    ----------
    p, q : array (...)
        Histograms of the same shape (normalised by scipy, so counts work too).

    Returns
    -------
    float
        JS divergence in nats, in [0, ln 2].
    """
    p, q = _check_pq(p, q)
    d = jensenshannon(p, q)
    # Identical histograms can give a sum of -1e-17 inside scipy's sqrt, hence NaN; the divergence is 0.
    return 0.0 if np.isnan(d) else float(d) ** 2


def pmf_error(p_model, p_ref, floor: float = 1e-6) -> float:
    r"""Weighted squared error of the potential of mean force, in units of kT squared.

    .. math:: \sum_b w_b (\log p_{model,b} - \log p_{ref,b})^2, \qquad w_b = (p_{model,b} + p_{ref,b}) / 2

    Both histograms are normalised to sum 1, then empty bins are set to ``floor`` (1e-6 as in ScoreMD) before
    the logarithms and the weights are taken.

    Parameters
    ----------
    p_model, p_ref : array (...)
        Histograms of the same shape.
    floor : float
        Value given to empty bins.
    """
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor}")
    p, q = _check_pq(p_model, p_ref)
    p, q = p / p.sum(), q / q.sum()
    p, q = np.where(p > 0, p, floor), np.where(q > 0, q, floor)
    w = 0.5 * (p + q)
    return float(np.sum(w * (np.log(p) - np.log(q)) ** 2))


def _default_range(reference_xy: np.ndarray) -> Range2D:
    lo, hi = np.nanmin(reference_xy, axis=0), np.nanmax(reference_xy, axis=0)
    if np.any(hi <= lo):
        raise ValueError(f"reference has zero extent along an axis (min {lo}, max {hi}); pass range explicitly")
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def compare_2d(samples_xy, reference_xy, bins: int | Sequence[int] = 64, range: Range2D | None = None) -> dict[str, float]:
    """JS divergence and PMF error between model samples and reference points.

    Parameters
    ----------
    samples_xy : array or Tensor (n, 2)
        Model points (e.g. phi, psi in rad).
    reference_xy : array or Tensor (m, 2)
        Reference points.
    bins : int or (int, int)
        Bins per axis (64 for alanine dipeptide, 100 for proteins' TICs).
    range : ((x_lo, x_hi), (y_lo, y_hi)), optional
        Histogram range; default the reference's bounding box. Use ``((-pi, pi), (-pi, pi))`` for dihedrals.
        Mass outside the range goes to the overflow bin.

    Returns
    -------
    dict
        ``{"js": float, "pmf": float}``.
    """
    s, r = _check_xy(samples_xy, "samples_xy"), _check_xy(reference_xy, "reference_xy")
    range = _default_range(r) if range is None else range
    p = histogram2d(s[:, 0], s[:, 1], bins, range)
    q = histogram2d(r[:, 0], r[:, 1], bins, range)
    return {"js": js_divergence(p, q), "pmf": pmf_error(p, q)}


def summarise_comparisons(results: list[dict]) -> dict:
    """Mean and spread of several :func:`compare_2d` results: ``js_mean, js_std, pmf_mean, pmf_std`` (std NaN
    for one result) and the per-result ``js`` and ``pmf`` lists."""
    js, pmf = [d["js"] for d in results], [d["pmf"] for d in results]
    std = (lambda v: float(np.std(v, ddof=1))) if len(results) > 1 else (lambda v: float("nan"))
    return {"js_mean": float(np.mean(js)), "js_std": std(js), "pmf_mean": float(np.mean(pmf)), "pmf_std": std(pmf),
            "js": js, "pmf": pmf}  # fmt: skip


def floor_2d(
    reference_xy,
    n: int,
    bins: int | Sequence[int] = 64,
    range: Range2D | None = None,
    n_pairs: int = 5,
    seed: int = 0,
) -> dict:
    """Data-vs-data floor: JS and PMF between two disjoint parts of the reference with ``n`` points each.

    With at least ``2 n`` reference points, each of ``n_pairs`` pairs is two disjoint random subsets of size
    ``n``. Random frames of a correlated MD trajectory are closer to independent than the model's frames may
    be, so for a correlated simulation also compare with contiguous stretches. With fewer than ``2 n`` points
    the floor uses the two contiguous halves (``m // 2`` points each, one pair, std NaN) and
    ``"mode"`` says ``"halves"``.

    Parameters
    ----------
    reference_xy : array or Tensor (m, 2)
        Reference points.
    n : int
        Number of model frames the floor is for.
    bins, range
        As in :func:`compare_2d`; range defaults to the bounding box of the whole reference.
    n_pairs : int
        Number of random pairs averaged.
    seed : int
        Seed of the random subsets.

    Returns
    -------
    dict
        ``js_mean, js_std, pmf_mean, pmf_std`` (floats), ``js, pmf`` (per-pair lists), ``n`` (points per
        part), ``n_pairs`` and ``mode`` (``"random"`` or ``"halves"``).
    """
    r = _check_xy(reference_xy, "reference_xy")
    m = r.shape[0]
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int (the model's number of frames), got {n!r}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if m < 2:
        raise ValueError(f"reference needs at least 2 points for a floor, got {m}")
    range = _default_range(r) if range is None else range
    if m >= 2 * n:
        mode, rng = "random", np.random.default_rng(seed)
        parts = []
        for _ in builtins.range(n_pairs):  # `range` is the histogram range here
            idx = rng.permutation(m)[: 2 * n]
            parts.append((r[idx[:n]], r[idx[n:]]))
    else:
        mode, n, half = "halves", m // 2, m // 2
        parts = [(r[:half], r[half : 2 * half])]
    res = [compare_2d(a, b, bins, range) for a, b in parts]
    return summarise_comparisons(res) | {
        "n": int(n),
        "n_pairs": len(res),
        "mode": mode,
    }


def training_draw_floor(
    training_xy,
    reference_xy,
    n: int,
    bins: int | Sequence[int] = 64,
    range: Range2D | None = None,
    n_draws: int = 20,
    seed: int = 0,
) -> dict:
    """The iid floor of a model trained on ``training_xy``: JS and PMF of ``n`` frames drawn at random from the
    training data against the reference, ``n_draws`` times: the score of a model that reproduces its training
    data exactly, at the model's sample count. Returns :func:`summarise_comparisons` of the draws plus ``n``."""
    t = _check_xy(training_xy, "training_xy")
    if int(n) != n or not 1 <= n <= len(t):
        raise ValueError(f"n = {n!r}: need 1 <= n <= {len(t)} (the training frames)")
    rng = np.random.default_rng(seed)
    res = [
        compare_2d(t[rng.choice(len(t), int(n), replace=False)], reference_xy, bins, range) for _ in builtins.range(n_draws)
    ]
    out = summarise_comparisons(res) | {"n": int(n), "n_draws": n_draws}
    out.pop("js", None), out.pop("pmf", None)
    return out


def bootstrap(
    metric_fn: Callable[[np.ndarray, np.ndarray], float], samples, reference, n_boot: int = 20, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap mean and standard deviation of ``metric_fn(resampled_samples, reference)``.

    Parameters
    ----------
    metric_fn : callable (samples (n, d), reference (m, d)) -> float
        E.g. ``lambda s, r: compare_2d(s, r, 64, dihedral_range)["js"]``.
    samples : array or Tensor (n, ...)
        Model points, resampled with replacement along the first axis.
    reference : array or Tensor (m, ...)
        Reference points, passed unchanged.
    n_boot : int
        Number of resamples.
    seed : int
        Seed of the resampling.

    Returns
    -------
    (float, float)
        Mean and standard deviation (ddof=1) over the resamples.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 to estimate a spread, got {n_boot}")
    s, r = _as_numpy(samples), _as_numpy(reference)
    if s.ndim == 0 or s.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty array (n, ...), got shape {s.shape}")
    rng = np.random.default_rng(seed)
    vals = [float(metric_fn(s[rng.integers(0, s.shape[0], s.shape[0])], r)) for _ in range(n_boot)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))
