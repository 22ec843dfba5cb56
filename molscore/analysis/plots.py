"""Figures for reports: side-by-side 2-D free-energy panels and line plots, written as PNG.

Figures are built with :class:`matplotlib.figure.Figure` on a :class:`FigureCanvasAgg`, so nothing here
touches pyplot or the global backend (safe on headless machines and inside notebooks alike). Files are
written atomically: a reader never sees a half-written PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molscore.analysis.distributions import Range2D, _as_numpy, _check_range, histogram2d
from molscore.files import atomic_write

DPI = 120


def _save_atomic(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _panel_histogram(x, y, bins: int | Sequence[int], range: Range2D) -> np.ndarray:
    """(bx, by) probabilities of the points inside ``range``; NaN points dropped, all zero if none inside."""
    x, y = _as_numpy(x).ravel(), _as_numpy(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"panel x and y lengths differ ({x.size} vs {y.size})")
    bx, by = (bins, bins) if np.isscalar(bins) else tuple(bins)
    ok = ~(np.isnan(x) | np.isnan(y))  # a blown-up simulation still gets drawn
    if not ok.any():
        return np.zeros((int(bx), int(by)))
    counts = histogram2d(x[ok], y[ok], bins, range, overflow=True)[:-1]
    inside = counts.sum()
    return (counts / inside if inside > 0 else counts).reshape(int(bx), int(by))


def _free_energy_images(images: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """-log p of each histogram (NaN where empty), shifted so the minimum over all of them is 0; and the maximum."""
    with np.errstate(divide="ignore"):
        images = {k: np.where(p > 0, -np.log(p), np.nan) for k, p in images.items()}
    finite = [im[np.isfinite(im)] for im in images.values() if np.isfinite(im).any()]
    vmin = min(f.min() for f in finite) if finite else 0.0
    vmax = max((f.max() - vmin for f in finite), default=1.0)
    return {k: im - vmin for k, im in images.items()}, (vmax if vmax > 0 else 1.0)


def _bounding_box(x, y) -> Range2D:
    x, y = _as_numpy(x), _as_numpy(y)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise ValueError("the first panel has no finite points; pass range explicitly")
    return (float(x[ok].min()), float(x[ok].max())), (float(y[ok].min()), float(y[ok].max()))


def density_panels(
    panels: dict[str, tuple],
    path: str | os.PathLike,
    bins: int | Sequence[int] = 64,
    range: Range2D | None = None,
    potential_contours: tuple | Callable | None = None,
    title: str | None = None,
    log: bool = True,
    xlabel: str = "x",
    ylabel: str = "y",
    n_contours: int = 12,
    ncols: int | None = None,
) -> Path:
    """Side-by-side 2-D densities (e.g. reference MD | diffusion samples | simulation) on one colour scale.

    Parameters
    ----------
    panels : dict[str, (x (n,), y (n,))]
        Panel title -> coordinates (numpy or torch), drawn left to right in dict order.
    path : str or Path
        Output ``.png``; parent folders are created, the file is replaced atomically.
    bins : int or (int, int)
        Bins per axis.
    range : ((x_lo, x_hi), (y_lo, y_hi)), optional
        Plot and histogram range; default the bounding box of the first panel (the reference).
    potential_contours : (X, Y, U) arrays or callable, optional
        Energy contours drawn over every panel: either grids ``X, Y, U`` of shape (gx, gy) as from
        ``np.meshgrid(..., indexing="ij")``, or ``U = f(X, Y)`` evaluated on a 100 x 100 grid over ``range``.
    title : str, optional
        Figure title.
    log : bool
        If True, show the free energy :math:`F = -\\log p` in kT, shifted so its minimum over all panels is 0
        (empty bins blank); else the bin probabilities ``p``.
    xlabel, ylabel : str
        Axis labels, with units (e.g. ``"phi (rad)"``).
    n_contours : int
        Number of energy contour levels.
    ncols : int, optional
        Panels per row (default: all in one row); panels fill rows left to right.

    Returns
    -------
    Path
        The written file.
    """
    if not panels:
        raise ValueError("panels is empty; pass e.g. {'reference': (x, y), 'samples': (x, y)}")
    first = next(iter(panels.values()))
    range = _check_range(_bounding_box(*first) if range is None else range)
    (x_lo, x_hi), (y_lo, y_hi) = range

    images = {name: _panel_histogram(x, y, bins, range) for name, (x, y) in panels.items()}
    if log:
        images, vmax = _free_energy_images(images)
        label = "free energy (kT)"
    else:
        vmax = max(float(im.max()) for im in images.values()) or 1.0
        label = "probability per bin"

    contours = None
    if potential_contours is not None:
        if callable(potential_contours):
            gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 100), np.linspace(y_lo, y_hi, 100), indexing="ij")
            contours = (gx, gy, np.asarray(potential_contours(gx, gy), dtype=float))
        else:
            contours = tuple(np.asarray(a, dtype=float) for a in potential_contours)
            if len(contours) != 3 or not (contours[0].shape == contours[1].shape == contours[2].shape):
                raise ValueError("potential_contours must be a callable U(X, Y) or arrays (X, Y, U) of one shape")

    n = len(images)
    ncols = n if ncols is None else max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.8, 3.4 * nrows + 0.2), layout="constrained")
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for ax in grid.flat[n:]:
        ax.set_visible(False)
    axes = list(grid.flat[:n])
    mappable = None
    for ax, (name, im) in zip(axes, images.items(), strict=True):
        # imshow wants (rows = y, cols = x): transpose the (bx, by) histogram, origin at the bottom
        mappable = ax.imshow(
            im.T,
            origin="lower",
            extent=(x_lo, x_hi, y_lo, y_hi),
            aspect="auto",
            cmap="viridis_r" if log else "viridis",
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
        )
        if contours is not None:
            ax.contour(*contours, levels=n_contours, colors="0.3", linewidths=0.6)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    for row in grid:
        row[0].set_ylabel(ylabel)
    fig.colorbar(mappable, ax=axes, label=label, shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path)


def line_plot(
    series: dict[str, tuple],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    errors: dict[str, object] | None = None,
) -> Path:
    """Curves on one set of axes (loss curves, autocorrelations, free-energy profiles, populations in time).

    Parameters
    ----------
    series : dict[str, (x (n,), y (n,))]
        Legend label -> points (numpy, torch or lists).
    path : str or Path
        Output ``.png``, written atomically.
    xlabel, ylabel : str
        Axis labels, with units.
    title : str, optional
        Axes title.
    logx, logy : bool
        Logarithmic axes.
    errors : dict[str, array (n,)], optional
        Label -> standard error of that curve, drawn as a +-1 error band. NaN values (e.g. empty bins of a
        free-energy profile) leave gaps.

    Returns
    -------
    Path
        The written file.
    """
    if not series:
        raise ValueError("series is empty; pass e.g. {'train loss': (steps, values)}")
    if errors and set(errors) - set(series):
        raise ValueError(f"errors name series that do not exist: {sorted(set(errors) - set(series))}")
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (x, y) in series.items():
        x, y = _as_numpy(x).ravel(), _as_numpy(y).ravel()
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: x and y lengths differ ({x.size} vs {y.size})")
        (line,) = ax.plot(x, y, label=name, lw=1.2)
        if errors is not None and name in errors:
            e = _as_numpy(errors[name]).ravel()
            if e.shape != y.shape:
                raise ValueError(f"errors of series {name!r} have {e.size} values for {y.size} points")
            ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.25, lw=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear", yscale="log" if logy else "linear")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return _save_atomic(fig, path)


def ramachandran_rows(
    rows: dict[str, dict[str, tuple]],
    path: str | os.PathLike,
    bins: int = 64,
    title: str | None = None,
    labels: tuple[str, str] = ("phi (rad)", "psi (rad)"),
) -> Path:
    """Ramachandran free-energy grid: one row per model variant, one column per data source, one colour scale.

    Parameters
    ----------
    rows : dict[str, dict[str, (phi (n,), psi (n,))]]
        Row label (model variant) -> column label (e.g. "MD", "samples", "simulation") -> angles in rad.
        Columns are the union of the rows' keys in order of first appearance; a row without a column gets an
        empty "n/a" panel. NaN frames are dropped.
    path : str or Path
        Output ``.png``, written atomically.
    bins : int
        Bins per axis over [-pi, pi]^2.
    title : str, optional
        Figure title.
    labels : (str, str)
        Axis labels.

    Returns
    -------
    Path
        The written file. Colour: F = -log p in kT per bin, minimum over all panels 0, empty bins blank.
    """
    if not rows or not all(rows.values()):
        raise ValueError("rows must map each variant to a non-empty {column: (phi, psi)} dict")
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    box = ((-np.pi, np.pi), (-np.pi, np.pi))
    hists = {(r, c): _panel_histogram(*xy, bins, box) for r, row in rows.items() for c, xy in row.items()}
    hists = {k: v for k, v in hists.items() if v.sum() > 0}
    images, vmax = _free_energy_images(hists)
    nrows, ncols = len(rows), len(columns)
    fig = Figure(figsize=(3.0 * ncols + 0.9, 2.8 * nrows + 0.3), layout="constrained")
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    ticks, tick_labels = [-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["-π", "-π/2", "0", "π/2", "π"]
    mappable = None
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            ax = grid[i, j]
            if (r, c) in images:
                im, extent = images[r, c].T, (-np.pi, np.pi, -np.pi, np.pi)
                mappable = ax.imshow(
                    im, origin="lower", extent=extent, cmap="viridis_r", vmin=0.0, vmax=vmax, interpolation="nearest"
                )
            else:
                ax.text(0, 0, "n/a", ha="center", va="center", color="0.5")
                ax.set(xlim=(-np.pi, np.pi), ylim=(-np.pi, np.pi), aspect="equal")
            ax.set_xticks(ticks, tick_labels)
            ax.set_yticks(ticks, tick_labels)
            if i == 0:
                ax.set_title(c)
            if i == nrows - 1:
                ax.set_xlabel(labels[0])
            if j == 0:
                ax.set_ylabel(f"{r}\n{labels[1]}")
    if mappable is not None:
        fig.colorbar(mappable, ax=grid.ravel().tolist(), label="free energy (kT)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path)
