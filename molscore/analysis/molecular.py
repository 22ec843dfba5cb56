"""Molecular observables for evaluation: basin populations with honest errors, 1-D free-energy profiles, bond
length distributions, and the MD-vs-MD floor at a given number of effectively independent frames.

Conventions: angles in rad, lengths in nm, free energies in units of ``kT``; ``replica`` arrays give the
independent trajectory each frame belongs to (frames of a replica in time order, SCIENCE.md section 4).
"""

from __future__ import annotations

import builtins
import itertools
import warnings

import mdtraj
import numpy as np
from scipy.stats import wasserstein_distance

from molscore.analysis.autocorrelation import series_by_replica, tau_with_window
from molscore.analysis.distributions import Range2D, _check_xy, _default_range, compare_2d, summarise_comparisons


# basin populations ------------------------------------------------------------------------------------------
def basin_population(phi, replica=None, threshold: float = 0.0) -> dict:
    """Fraction of frames with ``phi > threshold`` (e.g. the slow C7ax / alpha_L basin) and its standard error.

    - ``replica`` None (iid samples, e.g. from the diffusion sampler): binomial error sqrt(p (1 - p) / n).
    - several replicas (MD or simulation replicas, correlated in time): the frame-weighted mean over replicas
      with the between-replica error sqrt(R / (R - 1) sum_r w_r^2 (p_r - p)^2), w_r = n_r / n. It assumes
      nothing about the time correlation, but with few replicas the error itself is uncertain (a t
      distribution with R - 1 degrees of freedom); ``err_autocorr`` is a cross-check from the integrated
      autocorrelation time of the indicator, sqrt(p (1 - p) tau / n).
    - one replica: only the autocorrelation error is available (``method`` "autocorrelation").

    Parameters
    ----------
    phi : array (M,)
        Angle per frame, rad.
    replica : array (M,) int, optional
        Replica id per frame.
    threshold : float
        Basin boundary, rad.

    Returns
    -------
    dict
        ``p``, ``err``, ``n_frames``, ``n_replicas``, ``method`` ("binomial", "replicas" or "autocorrelation"),
        and with replicas ``err_autocorr``, ``tau`` (frames, of the indicator) and ``tau_converged`` (False:
        replicas shorter than ~5 tau, so tau and ``err_autocorr`` are lower bounds).
    """
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 1 or phi.size == 0:
        raise ValueError(f"phi must be a non-empty 1-D array (frames,), got shape {phi.shape}")
    if np.isnan(phi).any():
        raise ValueError("phi holds NaN; drop blown-up frames first")
    ind = (phi > threshold).astype(np.float64)
    n, p = ind.size, float(ind.mean())
    if replica is None:
        return {"p": p, "err": float(np.sqrt(p * (1 - p) / n)), "n_frames": n, "n_replicas": None, "method": "binomial"}
    parts = series_by_replica(ind, replica)
    tau, converged = tau_with_window(parts)
    out = {"p": p, "n_frames": n, "n_replicas": len(parts), "tau": tau, "tau_converged": converged}
    out["err_autocorr"] = float(np.sqrt(p * (1 - p) * tau / n))
    if len(parts) == 1:
        return out | {"err": out["err_autocorr"], "method": "autocorrelation"}
    r = len(parts)
    w = np.array([x.size for x in parts]) / n
    p_r = np.array([x.mean() for x in parts])
    err = np.sqrt(r / (r - 1) * np.sum(w**2 * (p_r - p) ** 2))
    return out | {"err": float(err), "method": "replicas"}


def population_time_series(phi, threshold: float = 0.0) -> dict:
    """Basin population against time across replicas, to show that simulations started in one basin converge.

    Parameters
    ----------
    phi : array (T, R)
        Angle (rad) of R replicas at T common times (a 1-D array is one replica).
    threshold : float
        Basin boundary, rad.

    Returns
    -------
    dict of arrays (T,)
        ``p``: fraction of replicas with phi > threshold at each frame; ``err``: its standard error over
        replicas (std / sqrt(R), NaN for R = 1); ``running``: cumulative estimate, the mean of ``p`` over
        frames 0..t; ``running_err``: standard error over replicas of the per-replica running means.
    """
    phi = np.asarray(phi, dtype=np.float64)
    phi = phi[:, None] if phi.ndim == 1 else phi
    if phi.ndim != 2 or phi.shape[0] == 0:
        raise ValueError(f"phi must have shape (frames, replicas), got {phi.shape}")
    ind = (phi > threshold).astype(np.float64)
    running = np.cumsum(ind, axis=0) / np.arange(1, ind.shape[0] + 1)[:, None]  # (T, R)
    r = ind.shape[1]

    def sem(a):
        return np.std(a, axis=1, ddof=1) / np.sqrt(r) if r > 1 else np.full(a.shape[0], np.nan)

    return {"p": ind.mean(1), "err": sem(ind), "running": running.mean(1), "running_err": sem(running)}


# free-energy profile ----------------------------------------------------------------------------------------
def free_energy_profile(angles, bins: int = 64, kT: float = 1.0, range=(-np.pi, np.pi)) -> tuple[np.ndarray, np.ndarray]:
    """Free energy F = -kT log p along one coordinate, minimum shifted to 0.

    Parameters
    ----------
    angles : array (M,)
        Samples (rad, or any unit of ``range``); points outside ``range`` are ignored.
    bins : int
        Number of bins.
    kT : float
        Energy unit of F (1: F in kT).
    range : (lo, hi)
        Histogram range.

    Returns
    -------
    centres : ndarray (bins,)
        Bin centres.
    F : ndarray (bins,)
        Free energy, NaN in empty bins.
    """
    x = np.asarray(angles, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("angles hold NaN; drop blown-up frames first")
    counts, edges = np.histogram(x, bins=int(bins), range=(float(range[0]), float(range[1])))
    if counts.sum() == 0:
        raise ValueError(f"no sample lies inside range {range}")
    with np.errstate(divide="ignore"):
        f = np.where(counts > 0, -kT * np.log(counts / counts.sum()), np.nan)
    return 0.5 * (edges[1:] + edges[:-1]), f - np.nanmin(f)


# bonds ------------------------------------------------------------------------------------------------------
def bond_lengths(xyz, bonds) -> np.ndarray:
    """Bond lengths, ``(M, B)`` nm, of frames ``xyz (M, N, 3)`` nm for ``bonds (B, 2)`` bead index pairs."""
    xyz, bonds = np.asarray(xyz, dtype=np.float64), np.asarray(bonds, dtype=np.int64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (frames, beads, 3), got {xyz.shape}")
    if bonds.ndim != 2 or bonds.shape[1] != 2:
        raise ValueError(f"bonds must have shape (B, 2), got {bonds.shape}")
    if bonds.size and (bonds.min() < 0 or bonds.max() >= xyz.shape[1]):
        raise ValueError(f"bond indices must lie in [0, {xyz.shape[1]}), got range [{bonds.min()}, {bonds.max()}]")
    return np.linalg.norm(xyz[:, bonds[:, 1]] - xyz[:, bonds[:, 0]], axis=-1)


def bond_length_w1(model_xyz, reference_xyz, bonds) -> np.ndarray:
    """Wasserstein-1 distance, ``(B,)`` nm, between model and reference bond-length distributions per bond.

    Parameters
    ----------
    model_xyz : array (M, N, 3) nm
    reference_xyz : array (K, N, 3) nm
    bonds : array (B, 2) int
    """
    a, b = bond_lengths(model_xyz, bonds), bond_lengths(reference_xyz, bonds)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("non-finite bond lengths; drop blown-up frames first")
    return np.array([wasserstein_distance(a[:, i], b[:, i]) for i in builtins.range(a.shape[1])])


def _without_bonds(topology: mdtraj.Topology) -> mdtraj.Topology:
    new = mdtraj.Topology()
    for chain in topology.chains:
        c = new.add_chain()
        for res in chain.residues:
            r = new.add_residue(res.name, c, res.resSeq, res.segment_id)
            for atom in res.atoms:
                new.add_atom(atom.name, atom.element, r, serial=atom.serial)
    return new


def topology_bonds(topology: mdtraj.Topology, full_topology: mdtraj.Topology | None = None, atom_indices=None) -> np.ndarray:
    """Bonded bead pairs ``(B, 2)`` (i < j, sorted) of a bead topology whose beads are atoms.

    - With ``full_topology`` and ``atom_indices`` (beads.yaml's ``indices``): the bonds of the full topology
      between two beads, exact for any slice resolution; consecutive beads that are not bonded there (e.g.
      C-alpha to C-alpha) are not bonds.
    - Otherwise, e.g. ``mdtraj.load_topology(run_dir / "data/beads.pdb")``: bonds from mdtraj's residue
      templates (standard amino acids and caps such as ACE / NME, peptide bonds between consecutive residues)
      on the bead names alone. The topology's own bonds are ignored, because mdtraj writes wrong CONECT records
      for an ``atom_slice`` (they index renumbered atoms, the serials keep the old numbers: at heavy resolution
      ACE O reads back bonded to ALA CA). If the templates know none of the residues, the topology's own bonds
      are used with a warning.

    For alanine dipeptide this gives C-N, N-CA, CA-C, C-N (backbone, 5 beads) and the 9 heavy-atom bonds
    (heavy, 10 beads). A C-alpha trace (every bead a CA, as in Go-model MD) has its virtual bonds: consecutive
    residues of a chain (resSeq i, i + 1; a gap in the numbering is a chain break, not a bond).
    """
    if full_topology is not None or atom_indices is not None:
        if full_topology is None or atom_indices is None:
            raise ValueError("pass full_topology and atom_indices together")
        idx = np.asarray(atom_indices, dtype=np.int64)
        if idx.size != topology.n_atoms:
            raise ValueError(f"{idx.size} atom indices for a topology of {topology.n_atoms} beads")
        bead_of = {int(a): i for i, a in enumerate(idx)}
        pairs = [(bead_of.get(a.index), bead_of.get(b.index)) for a, b in full_topology.bonds]
        pairs = [p for p in pairs if None not in p]
    elif topology.n_atoms > 1 and all(a.name == "CA" for a in topology.atoms):  # a C-alpha trace
        pairs = [
            (a.index, b.index)
            for chain in topology.chains
            for a, b in itertools.pairwise(chain.atoms)
            if b.residue.resSeq == a.residue.resSeq + 1
        ]
    else:
        fresh = _without_bonds(topology)
        fresh.create_standard_bonds()
        pairs = [(a.index, b.index) for a, b in fresh.bonds]
        if not pairs and topology.n_bonds:
            warnings.warn("no residue templates match; using the topology's own bonds", RuntimeWarning, stacklevel=2)
            pairs = [(a.index, b.index) for a, b in topology.bonds]
    return np.array(sorted({(min(p), max(p)) for p in pairs}), dtype=np.int64).reshape(-1, 2)


# MD floor at a given number of effective frames -------------------------------------------------------------
def contiguous_stretches(replica, n_frames: int, rng: np.random.Generator, max_stretch: int | None = None) -> list:
    """Random non-overlapping contiguous stretches of frames, each inside one replica, totalling ``n_frames``.

    Each replica is cut into blocks of ``max_stretch`` frames at a random phase (default: one block per
    replica); blocks are taken in random order, and the last one is cut to a random sub-stretch so the total is
    exact. Stretches never cross a replica boundary.

    Parameters
    ----------
    replica : array (M,) int
        Replica id per frame, frames of a replica in time order.
    n_frames : int
        Total frames wanted (at most M).
    rng : numpy Generator
    max_stretch : int, optional
        Longest stretch, frames (e.g. the length of the model's simulation replicas).

    Returns
    -------
    list of int arrays
        Frame indices of each stretch, in time order.
    """
    replica = np.asarray(replica)
    if not 1 <= n_frames <= replica.size:
        raise ValueError(f"n_frames must lie in [1, {replica.size}], got {n_frames}")
    blocks = []
    for r in np.unique(replica):
        idx = np.flatnonzero(replica == r)
        size = idx.size if max_stretch is None else int(max_stretch)
        cuts = np.arange(int(rng.integers(size)) if size < idx.size else 0, idx.size, size)
        blocks += [b for b in np.split(idx, cuts) if b.size]
    out, left = [], n_frames
    for i in rng.permutation(len(blocks)):
        b = blocks[i]
        if b.size >= left:
            start = int(rng.integers(b.size - left + 1))
            out.append(b[start : start + left])
            break
        out.append(b)
        left -= b.size
    return out


def md_floor(
    validation_xy,
    validation_replica,
    reference_xy,
    n_effective: float,
    tau_frames: float,
    bins: int = 64,
    range: Range2D | None = None,
    n_draws: int = 20,
    seed: int = 0,
    max_stretch: int | None = None,
) -> dict:
    """MD-vs-MD floor of JS and PMF error at ``n_effective`` effectively independent frames.

    Each draw takes random contiguous stretches of the validation replicas (never crossing a replica boundary)
    totalling ``round(n_effective * tau_frames)`` frames and compares them with the reference exactly as
    :func:`~molscore.analysis.distributions.compare_2d` compares a model. ``n_effective`` is the model's
    number of iid samples, or its simulation frames / their tau; ``tau_frames`` the integrated
    autocorrelation time of the slowest observable of the validation data (e.g. the phi > 0 indicator).
    If the validation data hold fewer frames than asked, all of them are used once (``enough_data`` False).

    Parameters
    ----------
    validation_xy : array (M, 2)
        CVs of the validation frames (rad).
    validation_replica : array (M,) int
        Replica id per validation frame.
    reference_xy : array (K, 2)
        CVs of the reference (test) frames.
    n_effective, tau_frames : float
        Effective frames wanted; autocorrelation time (frames) of the validation data.
    bins, range
        As in ``compare_2d`` (range default: the reference's bounding box).
    n_draws : int
        Number of random draws.
    seed : int
        Seed of the draws.
    max_stretch : int, optional
        Longest stretch in frames (default: whole replicas).

    Returns
    -------
    dict
        ``js_mean, js_std, pmf_mean, pmf_std`` (std NaN for a single draw), per-draw ``js, pmf`` lists,
        ``n_frames`` (frames per draw), ``n_effective`` (asked), ``n_effective_available`` (M / tau),
        ``n_draws``, ``enough_data`` and ``note``.
    """
    v, ref = _check_xy(validation_xy, "validation_xy"), _check_xy(reference_xy, "reference_xy")
    rep = np.asarray(validation_replica)
    if rep.shape != (v.shape[0],):
        raise ValueError(f"validation_replica must have shape ({v.shape[0]},), got {rep.shape}")
    if not (n_effective > 0 and tau_frames >= 1):
        raise ValueError(f"need n_effective > 0 and tau_frames >= 1, got {n_effective} and {tau_frames}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    range = _default_range(ref) if range is None else range
    want = max(1, round(n_effective * tau_frames))
    available = v.shape[0] / tau_frames
    enough = want <= v.shape[0]
    if enough:
        rng = np.random.default_rng(seed)
        draws = [np.concatenate(contiguous_stretches(rep, want, rng, max_stretch)) for _ in builtins.range(n_draws)]
        note = ""
    else:
        draws = [np.arange(v.shape[0])]
        note = (
            f"validation data hold {available:.0f} effective frames ({v.shape[0]} frames, tau {tau_frames:g}), "
            f"fewer than the {n_effective:g} asked: the floor uses all of them and overstates the model's floor"
        )
    res = [compare_2d(v[d], ref, bins, range) for d in draws]
    return summarise_comparisons(res) | {
        "n_frames": int(draws[0].size),
        "n_effective": float(n_effective),
        "n_effective_available": float(available),
        "n_draws": len(res),
        "enough_data": bool(enough),
        "note": note,
    }
