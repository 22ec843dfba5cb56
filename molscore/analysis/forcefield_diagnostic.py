"""Diagnostic of a learned force field alone: free-energy differences along torsions, model against MD.

For every populated (phi, psi) bin b of the test MD and a torsion shift delta (rad), the model's free-energy
difference between b and the bin shifted by delta along that torsion is estimated by free-energy perturbation
(Zwanzig) over the MD frames in b,

    dF_model(b, delta) = -ln < exp(-(E(T_delta x) - E(x))) >_{x in b},

where T_delta rigidly rotates the smaller side of the torsion's central bond j-k about the j-k axis so that the
dihedral i-j-k-l becomes its old value + delta. The rotation preserves volume and maps b onto b + delta, so for
the true energy (in kT) this equals MD's histogram estimate

    dF_MD(b, delta) = -ln( p(b + delta) / p(b) )

(periodic bins; p(b + delta) counts the frames whose torsion minus delta falls in b, so the shifted bin need not
lie on the grid). The comparison needs no sampling from the model: it measures the force field's energy
differences alone, where MD has the data. Bins enter only where both estimates have a bootstrap standard error
below ``max_error`` kT; the summary is the population-weighted (p(b) of MD) mean absolute error per torsion and
shift and over all of them.

At diffusion times t > t_min the "MD" side is the MD frames noised with the model's SDE,
x_t = alpha(t) x_0 + sigma(t) eps in diffusion coordinates (centred noise for centred models), binned by their own
(phi, psi), and the model's energy is evaluated at t: the same identity then tests E_theta(x, t) against the
exactly noised data, showing where along t the learned energy loses the torsional free energy.

Exponential averages are biased upwards (dF_model too large) when a few frames with low E(T x) - E(x) dominate,
and the bootstrap does not see that bias. It is small where the shift changes the energy smoothly (for the exact
torsion energy of a chain of fixed bonds and angles: < 0.02 kT at 3 rad with 5 x 10^4 frames), larger where the
energy change fluctuates within a bin: on a broad Cartesian Gaussian (exact energies, 4 x 10^4 frames) the
population-weighted mean error was +0.01 kT at 1 rad but +0.1 to +0.25 kT at 2-3 rad, shrinking with more frames.
Each bin's Kish effective number of frames of the weights exp(-(E(T x) - E(x))) is reported (``n_effective``):
values far below the bin's frame count flag it.

Conventions: positions in nm, angles in rad, free energies and ``energy_fn`` in units of kT. Bootstrap errors
resample frames independently: thin correlated MD (keep frames about one autocorrelation time apart) or the
errors, and with them the choice of bins, are too optimistic. The MAE of two noisy estimates is positive even for
an exact model; ``noise_floor`` (the weighted mean of sqrt(2 / pi) sqrt(err_model^2 + err_md^2), the expected
absolute difference of two unbiased estimates) is reported beside it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from molscore.geometry import dihedral

if TYPE_CHECKING:
    from molscore.models.diffusion_model import DiffusionModel

EnergyFn = Callable[[Tensor], Tensor]
"""``energy_fn(pos (B, N, 3) nm) -> (B,)`` energies in kT."""


# geometry ---------------------------------------------------------------------------------------------------
def _check_quartet(quartet, n_particles: int, name: str = "quartet") -> tuple[int, int, int, int]:
    q = np.asarray(quartet.tolist() if torch.is_tensor(quartet) else quartet)
    if q.shape != (4,) or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"{name} must be 4 integer bead indices (i, j, k, l), got {quartet!r}")
    if q.min() < 0 or q.max() >= n_particles:
        raise ValueError(f"{name} {q.tolist()} has a bead index out of range for {n_particles} beads")
    if len(set(q.tolist())) != 4:
        raise ValueError(f"{name} {q.tolist()} repeats a bead")
    return tuple(int(a) for a in q)


def _check_bonds(bonds, n_particles: int) -> list[tuple[int, int]]:
    b = np.asarray(bonds.tolist() if torch.is_tensor(bonds) else bonds)
    if b.size == 0 or b.ndim != 2 or b.shape[1] != 2 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"bonds must be a non-empty list of bead index pairs, got shape {b.shape}")
    if b.min() < 0 or b.max() >= n_particles:
        raise ValueError(f"bonds hold a bead index out of range for {n_particles} beads")
    if (b[:, 0] == b[:, 1]).any():
        raise ValueError("bonds hold a bead bonded to itself")
    return [(int(i), int(j)) for i, j in b]


def _component(neighbours: list[set[int]], start: int, cut: tuple[int, int]) -> set[int]:
    """Beads reachable from ``start`` in the bond graph without crossing the bond ``cut``."""
    seen, stack = {start}, [start]
    while stack:
        a = stack.pop()
        for b in neighbours[a]:
            if {a, b} == set(cut) or b in seen:
                continue
            seen.add(b)
            stack.append(b)
    return seen


def moving_beads(bonds, n_particles: int, quartet) -> list[int]:
    """The beads a rotation about the central bond j-k of the torsion ``quartet`` = (i, j, k, l) moves.

    Cutting bond j-k splits the bond graph in two; the l side is the component of k without k, the i side the
    component of j without j. The smaller side moves (the l side on a tie). For the 5-bead backbone C-N-CA-C-N
    that is bead 4 for psi = (1, 2, 3, 4) and bead 0 for phi = (0, 1, 2, 3).

    Parameters
    ----------
    bonds : (M, 2) ints
        Bonded bead pairs.
    n_particles : int
        Number of beads.
    quartet : (4,) ints
        The torsion's beads i-j-k-l.

    Returns
    -------
    list[int]
        Sorted bead indices (contains l or i, never j or k).

    Raises
    ------
    ValueError
        If j-k is not a bond, lies in a ring (no rigid rotation about it), or i (l) is not on j's (k's) side.
    """
    i, j, k, m = _check_quartet(quartet, n_particles)
    pairs = _check_bonds(bonds, n_particles)
    neighbours = [set() for _ in range(n_particles)]
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    if k not in neighbours[j]:
        raise ValueError(f"the central beads {j}-{k} of torsion {[i, j, k, m]} are not bonded")
    k_side = _component(neighbours, k, (j, k))
    if j in k_side:
        raise ValueError(f"bond {j}-{k} of torsion {[i, j, k, m]} lies in a ring: no rigid rotation about it")
    j_side = _component(neighbours, j, (j, k))
    if m not in k_side or i not in j_side:
        raise ValueError(f"torsion {[i, j, k, m]}: bead {i} must be connected to {j} and bead {m} to {k} by bonds")
    l_moving, i_moving = sorted(k_side - {k}), sorted(j_side - {j})
    return l_moving if len(l_moving) <= len(i_moving) else i_moving


def rotate_about_bond(pos: Tensor, quartet, moving, delta) -> Tensor:
    """Rotate the ``moving`` beads rigidly about the axis through beads j and k so that the dihedral of
    ``quartet`` = (i, j, k, l) becomes its old value + ``delta`` (mod 2 pi).

    Rodrigues' rotation of every moving bead about the unit vector (x_k - x_j) / |x_k - x_j| through x_j, by
    +delta if the moving beads are on the l side, by -delta if on the i side (see :func:`moving_beads`). The
    other beads are unchanged; the map preserves volume.

    Parameters
    ----------
    pos : Tensor (B, N, 3)
        Positions, nm.
    quartet : (4,) ints
        The torsion i-j-k-l.
    moving : list[int] or Tensor
        Beads to rotate: contains l or i (not both), not j or k.
    delta : float or Tensor (B,)
        Dihedral change, rad.

    Returns
    -------
    Tensor (B, N, 3)
        A rotated copy of ``pos``.
    """
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"pos must be (B, N, 3), got shape {tuple(pos.shape)}")
    i, j, k, m = _check_quartet(quartet, pos.shape[1])
    moving = sorted({int(a) for a in (moving.tolist() if torch.is_tensor(moving) else moving)})
    if not moving or min(moving) < 0 or max(moving) >= pos.shape[1]:
        raise ValueError(f"moving beads {moving} are empty or out of range for {pos.shape[1]} beads")
    if j in moving or k in moving:
        raise ValueError(f"moving beads {moving} hold an axis bead of bond {j}-{k}")
    if (m in moving) == (i in moving):
        raise ValueError(f"moving beads {moving} must hold exactly one end of torsion {[i, j, k, m]}")
    sign = 1.0 if m in moving else -1.0
    angle = sign * torch.as_tensor(delta, dtype=pos.dtype, device=pos.device).reshape(-1, 1, 1)
    axis = pos[:, k] - pos[:, j]
    axis = (axis / axis.norm(dim=-1, keepdim=True))[:, None]  # (B, 1, 3)
    idx = torch.tensor(moving, device=pos.device)
    v = pos[:, idx] - pos[:, j, None]  # (B, M, 3)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cross = torch.linalg.cross(axis.expand_as(v), v, dim=-1)
    rotated = v * cos + cross * sin + axis * (v * axis).sum(-1, keepdim=True) * (1 - cos)
    out = pos.clone()
    out[:, idx] = pos[:, j, None] + rotated
    return out


# results ----------------------------------------------------------------------------------------------------
@dataclass
class ShiftErrors:
    """Model vs MD free-energy differences for one torsion and shift, over the bins that passed the error cut.

    Attributes
    ----------
    torsion : str
        Torsion name (a key of ``quartets``).
    delta : float
        Shift, rad.
    bins : ndarray (K, 2) int
        (bin along the first torsion, bin along the second) of each bin used.
    weight : ndarray (K,)
        MD population p(b) of each bin (fraction of all frames).
    df_model, df_md : ndarray (K,)
        Free-energy differences F(b + delta) - F(b), kT.
    err_model, err_md : ndarray (K,)
        Their bootstrap standard errors, kT.
    n_effective : ndarray (K,)
        Kish effective number of frames of the Zwanzig weights exp(-dE) in each bin (the bin's frame count if dE
        is constant in it; small values flag a biased exponential average).
    mae : float
        Population-weighted mean |df_model - df_md|, kT (NaN if no bin passed).
    mean_error : float
        Population-weighted mean of df_model - df_md, kT (negative: the model's landscape is too flat uphill).
    noise_floor : float
        Population-weighted mean of sqrt(2 / pi) sqrt(err_model^2 + err_md^2): the MAE of an exact model, kT.
    n_populated : int
        Bins holding at least one frame (candidates before the error cut).
    """

    torsion: str
    delta: float
    bins: np.ndarray
    weight: np.ndarray
    df_model: np.ndarray
    df_md: np.ndarray
    err_model: np.ndarray
    err_md: np.ndarray
    n_effective: np.ndarray
    mae: float
    mean_error: float
    noise_floor: float
    n_populated: int

    @property
    def n_bins(self) -> int:
        return len(self.weight)

    def summary(self) -> dict:
        """JSON-ready numbers (NaN as None)."""
        return {
            "mae": _json_float(self.mae),
            "mean_error": _json_float(self.mean_error),
            "noise_floor": _json_float(self.noise_floor),
            "n_bins": self.n_bins,
            "n_populated": self.n_populated,
            "min_n_effective": _json_float(float(self.n_effective.min())) if self.n_bins else None,
            "median_n_effective": _json_float(float(np.median(self.n_effective))) if self.n_bins else None,
            "population": float(self.weight.sum()),
        }


@dataclass
class FreeEnergyErrors:
    """Result of :func:`torsion_free_energy_errors`.

    Attributes
    ----------
    shifts : dict[(torsion name, delta), ShiftErrors]
        One entry per torsion and shift.
    mae, mean_error, noise_floor : float
        The same population-weighted means pooled over every (torsion, shift, bin) used, kT.
    bins : (int, int)
        Grid over [-pi, pi]^2 along the first and second torsion.
    n_frames : int
        Frames used.
    t : float or None
        Diffusion time of the energy (set by :func:`forcefield_diagnostic`; None for a plain ``energy_fn``).
    """

    shifts: dict[tuple[str, float], ShiftErrors]
    mae: float
    mean_error: float
    noise_floor: float
    bins: tuple[int, int]
    n_frames: int
    t: float | None = None
    torsions: tuple[str, str] = field(default=("phi", "psi"))

    @property
    def n_bins(self) -> int:
        return sum(s.n_bins for s in self.shifts.values())

    def summary(self) -> dict:
        """JSON-ready numbers: overall and per torsion and shift (``{"psi": {"1": {...}}}``, delta formatted %g)."""
        per: dict[str, dict] = {}
        for (name, delta), s in self.shifts.items():
            per.setdefault(name, {})[f"{delta:g}"] = s.summary()
        return {
            "t": self.t,
            "mae": _json_float(self.mae),
            "mean_error": _json_float(self.mean_error),
            "noise_floor": _json_float(self.noise_floor),
            "n_bins": self.n_bins,
            "n_frames": self.n_frames,
            "grid": list(self.bins),
            "shifts": per,
        }


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _weighted(values: np.ndarray, weight: np.ndarray) -> float:
    return float(np.sum(weight * values) / np.sum(weight)) if len(weight) else float("nan")


# the estimate ----------------------------------------------------------------------------------------------
def _check_frames(frames) -> Tensor:
    if not torch.is_tensor(frames):
        frames = torch.as_tensor(np.asarray(frames, dtype=np.float64))
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (M, N, 3) positions in nm, got shape {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"frames holds {frames.shape[0]} frame(s); the histogram needs many")
    if not frames.is_floating_point():
        frames = frames.double()
    bad = ~torch.isfinite(frames).reshape(len(frames), -1).all(-1)
    if bad.any():
        raise ValueError(f"frames hold NaN or inf in {int(bad.sum())} of {len(frames)} frames; drop them first")
    return frames


def _check_quartets(quartets: Mapping, n_particles: int) -> dict[str, tuple[int, int, int, int]]:
    if not isinstance(quartets, Mapping) or len(quartets) != 2:
        raise ValueError("quartets must be a dict of exactly two torsions, e.g. {'phi': (0, 1, 2, 3), 'psi': (1, 2, 3, 4)}")
    return {str(n): _check_quartet(q, n_particles, f"quartet {n!r}") for n, q in quartets.items()}


def _grid(bins) -> tuple[int, int]:
    b = (bins, bins) if np.isscalar(bins) else tuple(bins)
    if len(b) != 2 or any(int(x) != x or x < 1 for x in b):
        raise ValueError(f"bins must be a positive int or a pair of them, got {bins!r}")
    return int(b[0]), int(b[1])


def _bin_of(angle: np.ndarray, n: int) -> np.ndarray:
    """Periodic bin index in [0, n) of angles (rad) on a grid of n bins over [-pi, pi)."""
    return np.floor((angle + np.pi) / (2 * np.pi) * n).astype(np.int64) % n


def _energies(energy_fn: EnergyFn, pos: Tensor) -> np.ndarray:
    e = energy_fn(pos)
    if not torch.is_tensor(e) or e.shape != (len(pos),):
        shape = tuple(e.shape) if torch.is_tensor(e) else type(e).__name__
        raise ValueError(f"energy_fn must return a ({len(pos)},) tensor of energies in kT, got {shape}")
    return e.detach().to("cpu", torch.float64).numpy()


def torsion_free_energy_errors(
    energy_fn: EnergyFn,
    frames,
    quartets: Mapping[str, Sequence[int]],
    bonds,
    deltas: Sequence[float] = (1.0, 2.0, 3.0),
    bins: int | Sequence[int] = 18,
    n_bootstrap: int = 100,
    max_error: float = 0.2,
    seed: int = 0,
    batch_size: int = 4096,
) -> FreeEnergyErrors:
    """Free-energy differences along torsion shifts: Zwanzig with ``energy_fn`` against the frames' histogram.

    Parameters
    ----------
    energy_fn : callable
        ``energy_fn(pos (B, N, 3) nm) -> (B,)`` energies in kT (e.g. a learned model's energy / kT). Called in
        batches of ``batch_size`` frames under ``torch.no_grad()``, with tensors of the frames' dtype.
    frames : Tensor or array (M, N, 3)
        Boltzmann-distributed positions (MD frames), nm; ideally uncorrelated (see the module docstring).
    quartets : dict of two torsions
        ``{"phi": (i, j, k, l), "psi": (i, j, k, l)}``: the first names the grid's first axis, the second its
        second axis; both are shifted.
    bonds : (P, 2) ints
        Bonded bead pairs: they decide which beads a torsion shift moves (:func:`moving_beads`).
    deltas : sequence of float
        Shifts, rad (non-zero mod 2 pi).
    bins : int or (int, int)
        Grid over [-pi, pi]^2 (18: ~20 degrees; 64 x 64 is too fine for errors < 0.2 kT with ~10^4 frames).
    n_bootstrap : int
        Bootstrap resamples of the frames (>= 10), shared by both estimates (seeded by ``seed``).
    max_error : float
        A bin enters only if both bootstrap standard errors are below this, kT.
    seed : int
        Seed of the bootstrap.
    batch_size : int
        Frames per energy evaluation.

    Returns
    -------
    FreeEnergyErrors
        Per (torsion, delta) the bins used and both estimates with errors; pooled population-weighted MAE.

    Raises
    ------
    ValueError
        Bad frames (shape, NaN), quartets (not two, index out of range), bonds, deltas or bins; a shift that
        also changes the other torsion (the shifted bin would not be b + delta); an energy_fn returning the
        wrong shape or NaN.
    """
    frames = _check_frames(frames)
    n_frames, n_particles = frames.shape[:2]
    quartets = _check_quartets(quartets, n_particles)
    _check_bonds(bonds, n_particles)
    grid = _grid(bins)
    deltas = [float(d) for d in deltas]
    if not deltas or any(not math.isfinite(d) or abs(math.remainder(d, 2 * math.pi)) < 1e-9 for d in deltas):
        raise ValueError(f"deltas must be finite shifts, rad, non-zero mod 2 pi; got {deltas}")
    if int(n_bootstrap) < 10:
        raise ValueError(f"n_bootstrap must be >= 10, got {n_bootstrap}")
    if not max_error > 0:
        raise ValueError(f"max_error must be > 0 kT, got {max_error}")
    names = list(quartets)
    moving = {n: moving_beads(bonds, n_particles, q) for n, q in quartets.items()}
    for n in names:
        other = quartets[names[1 - names.index(n)]]
        inside = len(set(moving[n]) & set(other))
        if inside not in (0, 4):
            raise ValueError(f"shifting {n} moves beads {moving[n]}, which changes the torsion {other} as well")

    # torsions and energies of every frame, unshifted and shifted
    pairs = [(n, d) for n in names for d in deltas]
    angles = dihedral(frames.detach().to("cpu", torch.float64), torch.tensor([quartets[n] for n in names])).numpy()
    energy0 = np.empty(n_frames)
    d_energy = {p: np.empty(n_frames) for p in pairs}
    with torch.no_grad():
        for start in range(0, n_frames, int(batch_size)):
            chunk = frames[start : start + int(batch_size)]
            sl = slice(start, start + len(chunk))
            energy0[sl] = _energies(energy_fn, chunk)
            for name, delta in pairs:
                shifted = rotate_about_bond(chunk, quartets[name], moving[name], delta)
                d_energy[name, delta][sl] = _energies(energy_fn, shifted) - energy0[sl]
    if not np.isfinite(energy0).all():
        raise ValueError("energy_fn returned NaN or inf on the frames themselves")
    for p, de in d_energy.items():
        if np.isnan(de).any() or (de == -np.inf).any():  # +inf (a clash after the shift) is a valid energy
            raise ValueError(f"energy_fn returned NaN or -inf on frames shifted along {p[0]} by {p[1]:g} rad")

    # bins: b of every frame, and the b whose shift along the torsion holds the frame
    nx, ny = grid
    n_cells = nx * ny
    ix, iy = _bin_of(angles[:, 0], nx), _bin_of(angles[:, 1], ny)
    cell = ix * ny + iy
    source = {}
    for name, delta in pairs:
        if names.index(name) == 0:
            source[name, delta] = _bin_of(angles[:, 0] - delta, nx) * ny + iy
        else:
            source[name, delta] = ix * ny + _bin_of(angles[:, 1] - delta, ny)
    log_w = {p: -d_energy[p] for p in pairs}  # log exp(-dE)
    log_w_max = {}
    for p in pairs:  # per-cell maximum (over all frames) for a stable log-mean-exp
        m = np.full(n_cells, -np.inf)
        np.maximum.at(m, cell, log_w[p])
        log_w_max[p] = np.where(np.isfinite(m), m, 0.0)

    def estimates(mult: np.ndarray) -> dict:
        counts = np.bincount(cell, weights=mult, minlength=n_cells)
        out = {"counts": counts}
        with np.errstate(divide="ignore", invalid="ignore"):
            for p in pairs:
                shifted = np.bincount(source[p], weights=mult, minlength=n_cells)
                s = np.bincount(cell, weights=mult * np.exp(log_w[p] - log_w_max[p][cell]), minlength=n_cells)
                out[p] = (-(log_w_max[p] + np.log(s / counts)), -np.log(shifted / counts))
        return out

    full = estimates(np.ones(n_frames))
    n_effective = {}  # Kish effective number of frames of the Zwanzig weights exp(-dE) per cell
    for p in pairs:
        w = np.exp(log_w[p] - log_w_max[p][cell])
        with np.errstate(divide="ignore", invalid="ignore"):
            n_effective[p] = np.bincount(cell, w, n_cells) ** 2 / np.bincount(cell, w**2, n_cells)
    rng = np.random.default_rng(seed)
    boot = {p: (np.empty((n_bootstrap, n_cells)), np.empty((n_bootstrap, n_cells))) for p in pairs}
    for r in range(int(n_bootstrap)):
        mult = np.bincount(rng.integers(0, n_frames, n_frames), minlength=n_frames).astype(np.float64)
        est = estimates(mult)
        for p in pairs:
            boot[p][0][r], boot[p][1][r] = est[p]

    def std_err(samples: np.ndarray) -> np.ndarray:
        ok = np.isfinite(samples).all(0)
        err = np.full(samples.shape[1], np.inf)
        err[ok] = samples[:, ok].std(0, ddof=1)
        return err

    weight_all = full["counts"] / n_frames
    populated = full["counts"] > 0
    shifts, pooled = {}, []
    for p in pairs:
        df_model, df_md = full[p]
        err_model, err_md = std_err(boot[p][0]), std_err(boot[p][1])
        use = populated & np.isfinite(df_model) & np.isfinite(df_md) & (err_model < max_error) & (err_md < max_error)
        idx = np.flatnonzero(use)
        w = weight_all[idx]
        diff = df_model[idx] - df_md[idx]
        floor = math.sqrt(2 / math.pi) * np.sqrt(err_model[idx] ** 2 + err_md[idx] ** 2)
        shifts[p] = ShiftErrors(
            torsion=p[0],
            delta=p[1],
            bins=np.stack([idx // ny, idx % ny], axis=1),
            weight=w,
            df_model=df_model[idx],
            df_md=df_md[idx],
            err_model=err_model[idx],
            err_md=err_md[idx],
            n_effective=n_effective[p][idx],
            mae=_weighted(np.abs(diff), w),
            mean_error=_weighted(diff, w),
            noise_floor=_weighted(floor, w),
            n_populated=int(populated.sum()),
        )
        pooled.append((w, diff, floor))
    w, diff, floor = (np.concatenate(a) for a in zip(*pooled, strict=True))
    return FreeEnergyErrors(
        shifts=shifts,
        mae=_weighted(np.abs(diff), w),
        mean_error=_weighted(diff, w),
        noise_floor=_weighted(floor, w),
        bins=grid,
        n_frames=n_frames,
        torsions=(names[0], names[1]),
    )


# with a diffusion model -------------------------------------------------------------------------------------
def noised_frames(model: DiffusionModel, frames: Tensor, t: float, generator: torch.Generator | None = None) -> Tensor:
    """MD frames diffused to time ``t`` with the model's SDE: x_t = alpha(t) x_0 + sigma(t) eps in diffusion
    coordinates (eps projected onto the zero-centroid subspace for centred models), returned in nm.

    Parameters
    ----------
    model : DiffusionModel
    frames : Tensor (M, N, 3)
        Positions, nm, in the model's dtype and on its device.
    t : float
        Diffusion time.
    generator : torch.Generator, optional
        Source of the noise (on the frames' device).

    Returns
    -------
    Tensor (M, N, 3)
        Noised positions, nm (centred if the model is).
    """
    x0 = model.to_diffusion(frames)
    tt = torch.as_tensor(float(t), dtype=torch.float64)
    alpha, sigma = float(model.sde.alpha(tt)), float(model.sde.sigma(tt))
    eps = model.sde.noise(x0.shape, model.spec.centred, generator, dtype=x0.dtype, device=x0.device)
    return model.to_physical(alpha * x0 + sigma * eps)


def _label(t: float | None) -> str:
    return "t_min" if t is None else f"t={t:g}"


def forcefield_free_energy_errors(
    model: DiffusionModel,
    frames,
    quartets: Mapping[str, Sequence[int]],
    bonds,
    times: Sequence[float | None] = (None, 0.01, 0.05, 0.1),
    seed: int = 0,
    **options,
) -> dict[str, FreeEnergyErrors]:
    """:func:`torsion_free_energy_errors` of a diffusion model's energy at several diffusion times.

    Parameters
    ----------
    model : DiffusionModel
        An energy model (``model.energy(pos, t)`` in kJ/mol; divided by ``model.kT``).
    frames : Tensor or array (M, N, 3)
        Test MD frames, nm.
    quartets, bonds : see :func:`torsion_free_energy_errors`
    times : sequence of float or None
        Diffusion times; None is t_min (the learned force field, on the MD frames themselves). At t > t_min the
        frames are noised to t first (:func:`noised_frames`, noise seeded by ``seed`` and the time's position).
    seed : int
        Seed of the noise and of the bootstrap.
    **options
        Passed on: ``deltas``, ``bins``, ``n_bootstrap``, ``max_error``, ``batch_size``.

    Returns
    -------
    dict[str, FreeEnergyErrors]
        Keyed ``"t_min"``, ``"t=0.01"``, ...; each result's ``t`` is the time used.
    """
    if not hasattr(model.score_model, "energy"):
        raise TypeError("the force-field diagnostic needs an energy model; this is a direct score model")
    frames = _check_frames(frames).to(device=model.device, dtype=model.dtype)
    out = {}
    for index, t in enumerate(times):
        if t is not None and not (model.sde.t_min <= float(t) <= model.sde.t_max):
            raise ValueError(f"diffusion time {t} outside [{model.sde.t_min}, {model.sde.t_max}]")
        if t is None:
            pos = frames
        else:
            generator = torch.Generator(device=frames.device).manual_seed(seed + 1 + index)
            with torch.no_grad():
                pos = noised_frames(model, frames, float(t), generator)

        def energy_fn(x: Tensor, t=t) -> Tensor:
            return model.energy(x, t) / model.kT

        result = torsion_free_energy_errors(energy_fn, pos, quartets, bonds, seed=seed, **options)
        result.t = float(model.sde.t_min if t is None else t)
        out[_label(t)] = result
    return out


def forcefield_diagnostic(
    model: DiffusionModel,
    frames,
    quartets: Mapping[str, Sequence[int]],
    bonds,
    times: Sequence[float | None] = (None, 0.01, 0.05, 0.1),
    plot_path: str | os.PathLike | None = None,
    seed: int = 0,
    **options,
) -> dict:
    """The force-field diagnostic as JSON-ready numbers (for metrics.json), optionally with its figure.

    Parameters are those of :func:`forcefield_free_energy_errors`; ``plot_path`` (a ``.png``), if given, gets
    :func:`plot_forcefield_diagnostic` of the results.

    Returns
    -------
    dict
        ``{"t_min": summary, "t=0.01": summary, ...}``, each :meth:`FreeEnergyErrors.summary`: ``t``, the pooled
        ``mae``, ``mean_error`` and ``noise_floor`` (kT), ``n_bins`` used, ``n_frames``, ``grid`` and per
        torsion and shift (``"psi" -> "1" -> {...}``) the same numbers with ``n_populated`` and the MD
        ``population`` the bins used cover. NaN (no bin passed) is None.
    """
    results = forcefield_free_energy_errors(model, frames, quartets, bonds, times, seed=seed, **options)
    if plot_path is not None:
        plot_forcefield_diagnostic(results, plot_path)
    return {label: r.summary() for label, r in results.items()}


# figure -----------------------------------------------------------------------------------------------------
def plot_forcefield_diagnostic(results: Mapping[str, FreeEnergyErrors] | FreeEnergyErrors, path) -> Path:
    """Scatter of dF_model against dF_MD (kT, with bootstrap error bars) with the line y = x, one panel per
    diffusion time; colour by shift, marker by torsion. Written atomically as PNG.

    Parameters
    ----------
    results : dict[str, FreeEnergyErrors] or FreeEnergyErrors
        From :func:`forcefield_free_energy_errors` (or one :func:`torsion_free_energy_errors` result).
    path : str or Path
        Output ``.png``.

    Returns
    -------
    Path
        The written file.
    """
    from matplotlib.figure import Figure

    from molscore.analysis.plots import _save_atomic

    if isinstance(results, FreeEnergyErrors):
        results = {_label(results.t) if results.t is not None else "energy": results}
    if not results:
        raise ValueError("results is empty")
    fig = Figure(figsize=(3.8 * len(results) + 0.6, 4.0), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    markers = ["o", "s", "^", "D"]
    for ax, (label, res) in zip(axes, results.items(), strict=True):
        deltas = sorted({d for _, d in res.shifts})
        colours = {d: f"C{n}" for n, d in enumerate(deltas)}
        lo, hi = 0.0, 1.0
        for (name, delta), s in res.shifts.items():
            if not s.n_bins:
                continue
            marker = markers[res.torsions.index(name) % len(markers)] if name in res.torsions else "x"
            ax.errorbar(s.df_md, s.df_model, xerr=s.err_md, yerr=s.err_model, fmt=marker, ms=3, lw=0.6,
                        color=colours[delta], alpha=0.7, label=f"{name} +{delta:g}")  # fmt: skip
            lo = min(lo, float(np.min(s.df_md)), float(np.min(s.df_model)))
            hi = max(hi, float(np.max(s.df_md)), float(np.max(s.df_model)))
        pad = 0.05 * (hi - lo)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        mae = "n/a" if not np.isfinite(res.mae) else f"{res.mae:.2f}"
        ax.set_title(f"{label}: MAE {mae} kT ({res.n_bins} bins)", fontsize=9)
        ax.set_xlabel("dF MD (kT)")
        ax.set_ylabel("dF model, Zwanzig (kT)")
        if res.n_bins:
            ax.legend(fontsize=6, loc="upper left")
    return _save_atomic(fig, path)
