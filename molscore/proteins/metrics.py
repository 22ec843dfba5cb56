"""Ensemble metrics of C-alpha traces, each comparing model frames with reference MD frames (issue 19).

- TICA on C-alpha pair distances and sin / cos of the signed pseudo-dihedrals (deeptime), fitted on training MD:
  JS on (TIC0, TIC1), 100 x 100 bins;
- chirality-sensitive: JS of each signed pseudo-dihedral's distribution (mean over quartets), RMSD to the native
  beside RMSD to its mirror image (Q, distances, contact maps and Rg cannot tell mirror images apart);
- pair-distance JS (|i - j| >= 3, mean over pairs), radius of gyration, contact maps;
- 1-D distributions (Q, RMSD): JS on fixed bins and Wasserstein-1.

All positions are ``(F, N, 3)`` arrays in nm; frames need not be aligned.
"""

import mdtraj
import numpy as np
import torch
from scipy.stats import wasserstein_distance

from molscore.analysis.distributions import compare_2d, js_divergence
from molscore.geometry import dihedral

MIN_PAIR_SEPARATION = 3
CONTACT_DISTANCE = 0.8  # nm: C-alpha pairs closer than this count as in contact in contact maps


def _frames(xyz, what: str = "frames") -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or xyz.shape[1] < 4:
        raise ValueError(f"{what} must be (frames, beads >= 4, 3) C-alpha positions in nm, got shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError(f"{what} contain NaN or infinite coordinates; remove or repair those frames")
    return xyz


def pseudo_dihedrals(xyz) -> np.ndarray:
    """Signed C-alpha pseudo-dihedrals of consecutive quartets, ``(F, N - 3)`` rad."""
    xyz = _frames(xyz)
    n = xyz.shape[1]
    quartets = torch.stack([torch.arange(k, n - 3 + k) for k in range(4)], dim=-1)
    return dihedral(torch.as_tensor(xyz), quartets).numpy()


def pair_indices(n_beads: int, min_separation: int = MIN_PAIR_SEPARATION) -> np.ndarray:
    """``(P, 2)`` pairs i < j with j - i >= ``min_separation``."""
    i, j = np.triu_indices(n_beads, k=min_separation)
    return np.stack([i, j], axis=1)


def pair_distances(xyz, min_separation: int = MIN_PAIR_SEPARATION) -> np.ndarray:
    """``(F, P)`` distances of the pairs of :func:`pair_indices`, nm."""
    xyz = _frames(xyz)
    pairs = pair_indices(xyz.shape[1], min_separation)
    return np.linalg.norm(xyz[:, pairs[:, 1]] - xyz[:, pairs[:, 0]], axis=-1)


def tica_features(xyz) -> np.ndarray:
    """``(F, P + 2 (N - 3))``: pair distances (nm), then cos and sin of the pseudo-dihedrals."""
    phi = pseudo_dihedrals(xyz)
    return np.concatenate([pair_distances(xyz), np.cos(phi), np.sin(phi)], axis=1)


def fit_tica(trajectories: list, lagtime: int, dim: int = 2):
    """deeptime TICA on :func:`tica_features` of each training trajectory ``(F_r, N, 3)``; ``lagtime`` in frames.

    Returns the fitted ``deeptime`` model (``.transform(features)`` gives the TICs).
    """
    from deeptime.decomposition import TICA

    features = [tica_features(xyz) for xyz in trajectories]
    short = [len(f) for f in features if len(f) <= lagtime]
    if len(short) == len(features):
        raise ValueError(f"every trajectory is shorter than lagtime + 1 = {lagtime + 1} frames; lower the lag")
    return TICA(lagtime=lagtime, dim=dim).fit([f for f in features if len(f) > lagtime]).fetch_model()


def tica_js(model_xyz, reference_xyz, tica, bins: int = 100) -> float:
    """JS on (TIC0, TIC1) of model against reference frames, bins over the reference's range (+ overflow)."""
    project = lambda xyz: tica.transform(tica_features(xyz))[:, :2]  # noqa: E731
    return compare_2d(project(model_xyz), project(reference_xyz), bins=bins)["js"]


def mean_1d_js(model_values: np.ndarray, reference_values: np.ndarray, bins: int, range_) -> float:
    """Mean over columns of the JS of the column's histogram (``bins`` over ``range_``, per column or shared)."""
    model_values, reference_values = np.asarray(model_values), np.asarray(reference_values)
    if model_values.shape[1:] != reference_values.shape[1:]:
        raise ValueError(f"model has {model_values.shape[1:]} columns, reference {reference_values.shape[1:]}")
    ranges = np.broadcast_to(np.asarray(range_, dtype=float), (model_values.shape[1], 2))
    out = []
    for k, (lo, hi) in enumerate(ranges):
        edges = np.linspace(lo, hi, bins + 1)
        p = np.histogram(np.clip(model_values[:, k], lo, hi), edges)[0]
        q = np.histogram(np.clip(reference_values[:, k], lo, hi), edges)[0]
        out.append(js_divergence(p + 0.0, q + 0.0))
    return float(np.mean(out))


def pseudo_dihedral_js(model_xyz, reference_xyz, bins: int = 36) -> float:
    """Mean over quartets of the JS of each signed pseudo-dihedral on ``bins`` bins over [-pi, pi]."""
    return mean_1d_js(pseudo_dihedrals(model_xyz), pseudo_dihedrals(reference_xyz), bins, (-np.pi, np.pi))


def pair_distance_js(model_xyz, reference_xyz, bins: int = 50) -> float:
    """Mean over pairs |i - j| >= 3 of the JS of each distance on ``bins`` bins over the reference's range
    (values outside clipped into the end bins)."""
    model, reference = pair_distances(model_xyz), pair_distances(reference_xyz)
    ranges = np.stack([reference.min(0), reference.max(0) + 1e-9], axis=1)
    return mean_1d_js(model, reference, bins, ranges)


def rmsd_to_native(xyz, native: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rmsd to native, rmsd to the mirrored native)``, each ``(F,)`` nm after optimal superposition (mdtraj).

    The mirror image (x -> -x) has the same distances, Q and contact map as the native; only chiral quantities
    see the difference, so a model with the wrong handedness is close to the second, not the first.
    """
    xyz, native = _frames(xyz), _frames(np.asarray(native)[None], "native")
    if native.shape[1] != xyz.shape[1]:
        raise ValueError(f"native has {native.shape[1]} beads, frames {xyz.shape[1]}")
    top = mdtraj.Topology()
    residue = top.add_residue("GLY", top.add_chain())
    for _ in range(xyz.shape[1]):
        top.add_atom("CA", mdtraj.element.carbon, residue)
    frames = mdtraj.Trajectory(xyz.astype(np.float32), top)
    mirror = native * np.array([-1.0, 1.0, 1.0])
    return (mdtraj.rmsd(frames, mdtraj.Trajectory(native.astype(np.float32), top)).astype(np.float64),
            mdtraj.rmsd(frames, mdtraj.Trajectory(mirror.astype(np.float32), top)).astype(np.float64))  # fmt: skip


def radius_of_gyration(xyz) -> np.ndarray:
    """``(F,)`` nm, equal bead weights."""
    xyz = _frames(xyz)
    return np.sqrt(((xyz - xyz.mean(1, keepdims=True)) ** 2).sum(-1).mean(-1))


def contact_map(xyz, distance: float = CONTACT_DISTANCE) -> np.ndarray:
    """``(N, N)`` probability that C-alphas i, j are closer than ``distance`` nm."""
    xyz = _frames(xyz)
    d = np.linalg.norm(xyz[:, :, None] - xyz[:, None, :], axis=-1)
    return (d < distance).mean(0)


def compare_1d(model_values, reference_values, bins: int, range_: tuple[float, float]) -> dict[str, float]:
    """``{"js": ..., "w1": ...}`` of two 1-D samples (e.g. Q or RMSD): JS on fixed bins, Wasserstein-1 exact."""
    model_values, reference_values = np.ravel(model_values), np.ravel(reference_values)
    js = mean_1d_js(model_values[:, None], reference_values[:, None], bins, range_)
    return {"js": js, "w1": float(wasserstein_distance(model_values, reference_values))}
