"""Figures of a non-equilibrium steady state: where dissipation happens (per particle) and, for
two-dimensional and ring systems, the probability current j = p v over the density.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from molscore.nonequilibrium.driven_system import DrivenSystem  # noqa: E402
from molscore.nonequilibrium.estimators import probability_velocity  # noqa: E402


def per_particle(system: DrivenSystem, per_dof) -> np.ndarray:
    """Sum a (N, d) decomposition over each particle's rows (``system.particle_of_row``) -> (P,)."""
    values = np.asarray(per_dof, dtype=np.float64).sum(axis=1)
    owner = np.asarray(system.particle_of_row if system.particle_of_row is not None else range(len(values)))
    return np.bincount(owner, weights=values)


def plot_steady_state(system: DrivenSystem, score, samples: torch.Tensor, per_dof, path: str | Path) -> Path:
    """Write a PNG: dissipation per particle (from the score-based decomposition of E[v^T D^-1 v]) and, for
    a single particle in 2-D or on a ring, the current field over the steady-state density.

    Parameters
    ----------
    score : the steady-state score x (B, N, d) -> (B, N, d) (learned or exact)
    samples : steady-state configurations (..., N, d)
    per_dof : (N, d) score-based dissipation per degree of freedom, kB per unit time
    """
    x = samples.reshape(-1, *system.shape)
    panels = 2 if system.shape in ((1, 2), (1, 1)) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    if len(set(system.particle_of_row or range(system.shape[0]))) == 1:  # one particle: per coordinate
        values = np.asarray(per_dof, dtype=np.float64).ravel()
        ax.bar(["xyz"[i] if system.shape[1] <= 3 else str(i) for i in range(len(values))], values, color="tab:red")
        ax.set_xlabel("coordinate")
    else:
        values = per_particle(system, per_dof)
        ax.bar(np.arange(1, len(values) + 1), values, color="tab:red")
        ax.set_xlabel("particle" if system.particle_of_row else "bead")
    ax.set_ylabel("dissipation E[v_i D_i^-1 v_i]  (kB / time)")
    ax.set_title(f"{system.name}: total {values.sum():.3g}" + (f" (exact {system.exact:.4g})" if system.exact else ""))
    if panels == 2:
        ax = axes[0, 1]
        if system.shape == (1, 2):
            _current_field_2d(ax, system, score, x)
        else:
            _current_on_ring(ax, system, score, x)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _current_field_2d(ax, system, score, x):
    pts = x[:, 0].cpu().numpy()
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    hist, ex, ey = np.histogram2d(pts[:, 0], pts[:, 1], bins=60, range=[[lo[0], hi[0]], [lo[1], hi[1]]], density=True)
    ax.imshow(hist.T, origin="lower", extent=[ex[0], ex[-1], ey[0], ey[-1]], cmap="Blues", aspect="auto")
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 15), np.linspace(lo[1], hi[1], 15))
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1)[:, None, :], dtype=x.dtype)
    v = probability_velocity(system.drift, system.diffusion, score, grid)[:, 0].numpy()
    ix = np.clip(np.searchsorted(ex, gx.ravel()) - 1, 0, len(ex) - 2)
    iy = np.clip(np.searchsorted(ey, gy.ravel()) - 1, 0, len(ey) - 2)
    j = v * hist[ix, iy][:, None]
    ax.quiver(gx.ravel(), gy.ravel(), j[:, 0], j[:, 1], color="tab:red")
    ax.set_title("probability current j = p v over p")
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def _current_on_ring(ax, system, score, x):
    period = system.period or float(x.max() - x.min())
    grid = torch.linspace(0, period, 200, dtype=x.dtype)[:, None, None]
    v = probability_velocity(system.drift, system.diffusion, score, grid)[:, 0, 0].numpy()
    wrapped = np.mod(x[:, 0, 0].cpu().numpy(), period)
    p, edges = np.histogram(wrapped, bins=50, range=(0, period), density=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    ax.plot(centres, p, label="p(x)")
    ax.plot(grid[:, 0, 0].numpy(), v * np.interp(grid[:, 0, 0].numpy(), centres, p), label="j = p v (learned score)")
    if "mean_velocity" in system.parameters:
        ax.axhline(system.parameters["mean_velocity"] / period, color="k", ls="--", label="exact j = <dx/dt> / L")
    ax.set_xlabel(f"x (period {period:.3g}" + (" = 2 pi)" if math.isclose(period, 2 * math.pi) else ")"))
    ax.legend()
    ax.set_title("density and current on the ring")
