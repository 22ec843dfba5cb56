"""Figures of path ensembles: the path density on two CVs (side by side, over the potential energy) and the
distribution of path lengths, both weighted by the paths' Monte Carlo multiplicities.

The path density counts, per path, each CV-space bin the path visits once (weighted by the path's weight), so
long paths that linger in a bin do not dominate it: it is the probability that a path of the ensemble passes
through a bin, normalised to sum 1 over bins. :func:`path_density` gives it as an array for comparisons between
ensembles (e.g. ``scipy.spatial.distance.jensenshannon`` of two flattened densities on the same bins).
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

Range = tuple[tuple[float, float], tuple[float, float]]


def _cv_values(paths: Sequence, cv_fn: Callable, columns: tuple[int, int], chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """CV values (total frames, 2) of all frames, and the path index of each frame."""
    frames = np.concatenate([np.asarray(p) for p in paths])
    owner = np.repeat(np.arange(len(paths)), [len(p) for p in paths])
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), chunk):
            values = cv_fn(torch.as_tensor(frames[i : i + chunk], dtype=torch.float64))
            out.append(values[:, list(columns)].detach().cpu().numpy())
    return np.concatenate(out), owner


def _bins(bins) -> tuple[int, int]:
    bx, by = (bins, bins) if np.ndim(bins) == 0 else bins
    return int(bx), int(by)


def path_density(
    paths: Sequence,
    weights,
    cv_fn: Callable,
    bins: int | tuple[int, int] = 50,
    range: Range | None = None,
    columns: tuple[int, int] = (0, 1),
    chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weighted path density on two CVs: each path adds its weight once to every bin it visits.

    Parameters
    ----------
    paths : list of arrays (F_i, N, d), nm (e.g. ``PathEnsemble.paths``)
    weights : (n_paths,) path weights (e.g. ``ensemble.weights(burn_in)``), or None for equal weights
    cv_fn : positions Tensor (B, N, d) -> CV values Tensor (B, K) (e.g. :class:`CollectiveVariables`)
    bins : bins per CV (one int, or one per CV)
    range : ((lo, hi), (lo, hi)) of the two CVs, in their units; frames outside are not counted. Default: the
        extent of the frames (give it explicitly to compare ensembles on the same bins)
    columns : which two of the K CVs
    chunk : frames per call of ``cv_fn``

    Returns
    -------
    density : ndarray (bins_x, bins_y), sums to 1 (all zero if no path has a frame in range)
    x_edges, y_edges : ndarray (bins_x + 1,), (bins_y + 1,)
    """
    if len(paths) == 0:
        raise ValueError("no paths given")
    weights = np.ones(len(paths)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(paths):
        raise ValueError(f"got {len(weights)} weights for {len(paths)} paths; give one weight per path")
    values, owner = _cv_values(paths, cv_fn, columns, chunk)
    bx, by = _bins(bins)
    if range is None:
        range = tuple((float(values[:, k].min()), float(values[:, k].max())) for k in (0, 1))
    x_edges = np.linspace(*range[0], bx + 1)
    y_edges = np.linspace(*range[1], by + 1)
    ix = np.searchsorted(x_edges, values[:, 0], side="right") - 1
    iy = np.searchsorted(y_edges, values[:, 1], side="right") - 1
    ix[values[:, 0] == x_edges[-1]] = bx - 1  # the last bin is closed, as in numpy.histogram2d
    iy[values[:, 1] == y_edges[-1]] = by - 1
    inside = (ix >= 0) & (ix < bx) & (iy >= 0) & (iy < by)
    visits = np.unique(owner[inside].astype(np.int64) * (bx * by) + ix[inside] * by + iy[inside])
    path_of, cell = np.divmod(visits, bx * by)
    density = np.bincount(cell, weights=weights[path_of], minlength=bx * by).reshape(bx, by)
    total = density.sum()
    return (density / total if total > 0 else density), x_edges, y_edges


def plot_path_density(
    ensembles: dict,
    cv_fn: Callable,
    cv_names: Sequence[str],
    path_png: str | Path,
    bins: int | tuple[int, int] = 50,
    range: Range | None = None,
    background: Callable[[np.ndarray], np.ndarray] | None = None,
    columns: tuple[int, int] = (0, 1),
    levels: int = 15,
    title: str | None = None,
) -> Path:
    """Write a PNG of the path densities of several ensembles side by side, on common bins and colour scale.

    Parameters
    ----------
    ensembles : label -> (paths: list of (F_i, N, d) nm, weights (n_paths,) or None)
    cv_fn, bins, columns : as in :func:`path_density`
    cv_names : axis labels of the two CVs (with units)
    path_png : output file
    range : ((lo, hi), (lo, hi)); default the extent of all ensembles' frames
    background : optional ``values (G, 2) in CV units -> potential energy (G,) kJ/mol`` drawn as contour lines
        (for Mueller-Brown: ``lambda v: potential.energy(torch.as_tensor(v)[:, None]).numpy()``)
    levels : contour levels of the background, spread from its minimum to its 60th percentile on the grid
    """
    if not ensembles:
        raise ValueError("no ensembles given: pass {label: (paths, weights)}")
    if range is None:
        extent = np.array([_extent(p, cv_fn, columns) for p, _ in ensembles.values()])
        range = ((extent[:, 0].min(), extent[:, 1].max()), (extent[:, 2].min(), extent[:, 3].max()))
    densities = {k: path_density(p, w, cv_fn, bins, range, columns) for k, (p, w) in ensembles.items()}
    vmax = max(float(d[0].max()) for d in densities.values()) or 1.0
    n = len(densities)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.8, 4.2), squeeze=False, sharey=True)
    grid = None
    if background is not None:
        gx = np.linspace(*range[0], 200)
        gy = np.linspace(*range[1], 200)
        xx, yy = np.meshgrid(gx, gy, indexing="ij")
        energy = np.asarray(background(np.stack([xx.ravel(), yy.ravel()], 1)), dtype=np.float64).reshape(xx.shape)
        lv = np.linspace(energy.min(), np.quantile(energy, 0.6), levels)
        grid = (xx, yy, energy, lv)
    mesh = None
    for ax, (label, (density, xe, ye)) in zip(axes[0], densities.items(), strict=True):
        shown = np.ma.masked_equal(density, 0.0)
        mesh = ax.pcolormesh(xe, ye, shown.T, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
        if grid is not None:
            ax.contour(grid[0], grid[1], grid[2], levels=grid[3], colors="0.4", linewidths=0.6)
        n_paths = len(ensembles[label][0])
        ax.set_title(f"{label} ({n_paths} paths)")
        ax.set_xlabel(cv_names[0])
        ax.set_xlim(*range[0])
        ax.set_ylim(*range[1])
    axes[0, 0].set_ylabel(cv_names[1])
    fig.colorbar(mesh, ax=axes[0].tolist(), label="path density (each path once per bin)")
    if title:
        fig.suptitle(title)
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _extent(paths, cv_fn, columns) -> list[float]:
    values, _ = _cv_values(paths, cv_fn, columns, 65536)
    return [values[:, 0].min(), values[:, 0].max(), values[:, 1].min(), values[:, 1].max()]


def plot_path_lengths(
    ensembles: dict,
    path_png: str | Path,
    bins: int = 40,
    range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG overlaying the weighted path-length distributions of several ensembles.

    Parameters
    ----------
    ensembles : label -> (lengths (n_paths,) ps, e.g. ``ensemble.path_lengths()``, weights (n_paths,) or None)
    path_png : output file
    bins, range : common bins of the histograms (range in ps; default the extent of all lengths)
    """
    if not ensembles:
        raise ValueError("no ensembles given: pass {label: (lengths_ps, weights)}")
    data = {k: (np.asarray(v, dtype=np.float64), None if w is None else np.asarray(w, dtype=np.float64))
            for k, (v, w) in ensembles.items()}  # fmt: skip
    if range is None:
        every = np.concatenate([v for v, _ in data.values()])
        range = (float(every.min()), float(every.max()) if every.max() > every.min() else float(every.min()) + 1.0)
    edges = np.linspace(*range, bins + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for label, (lengths, weights) in data.items():
        mean = np.average(lengths, weights=weights)
        ax.hist(lengths, bins=edges, weights=weights, density=True, histtype="step", linewidth=1.5,
                label=f"{label}: mean {mean:.3g} ps")  # fmt: skip
    ax.set_xlabel("path length (ps)")
    ax.set_ylabel("probability density (1/ps)")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
