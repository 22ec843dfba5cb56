"""Fraction of native contacts Q and the folded / unfolded split it defines (SCIENCE.md section 7).

    Q(x) = 1 / C sum_(i, j) native  1 / (1 + exp(beta (r_ij(x) - lambda r0_ij)))

with r0_ij the native C-alpha distance of contact (i, j). For C-alpha traces lambda is 1.2-1.5 (here 1.2, the
Go model's own "formed" criterion r < 1.2 r0); Best, Hummer & Eaton's lambda = 1.8 is for heavy-atom pairs.
beta = 50 / nm smooths the switch over ~0.02 nm.
"""

import numpy as np

LAMBDA_CALPHA = 1.2
BETA = 50.0  # 1/nm


def fraction_native_contacts(
    xyz: np.ndarray, contacts: np.ndarray, r0: np.ndarray, lam: float = LAMBDA_CALPHA, beta: float = BETA
) -> np.ndarray:
    """Q of each frame.

    Parameters
    ----------
    xyz : (F, N, 3) bead positions, nm
    contacts : (C, 2) native contact pairs (bead indices)
    r0 : (C,) native distances, nm

    Returns
    -------
    (F,) Q in [0, 1].
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be (frames, beads, 3) in nm, got shape {xyz.shape}")
    contacts = np.asarray(contacts).reshape(-1, 2)
    if len(contacts) == 0 or len(contacts) != len(r0):
        raise ValueError(f"need one r0 per native contact and at least one contact; got {len(contacts)} and {len(r0)}")
    if contacts.max() >= xyz.shape[1]:
        raise ValueError(f"contact indices reach {contacts.max()} but frames have {xyz.shape[1]} beads")
    r = np.linalg.norm(xyz[:, contacts[:, 1]] - xyz[:, contacts[:, 0]], axis=-1)
    return (0.5 * (1 - np.tanh(0.5 * beta * (r - lam * np.asarray(r0))))).mean(axis=1)  # stable logistic


def free_energy_barrier(q: np.ndarray, bins: int = 40, smooth: int = 2) -> tuple[float, bool]:
    """Q at the top of the barrier of F(Q) = -ln p(Q) between its unfolded and folded minima.

    Returns ``(q_barrier, bimodal)``: with a single minimum (no barrier: far from the folding temperature, or the
    ensemble is not converged) ``bimodal`` is False and ``q_barrier`` is 0.5.
    """
    hist, edges = np.histogram(np.asarray(q), bins=bins, range=(0.0, 1.0))
    kernel = np.ones(2 * smooth + 1) / (2 * smooth + 1)
    p = np.convolve(hist.astype(float), kernel, mode="same")
    centres = 0.5 * (edges[1:] + edges[:-1])
    peaks = [k for k in range(1, bins - 1) if p[k] > 0 and p[k] >= p[k - 1] and p[k] >= p[k + 1]]
    if p[0] > p[1]:
        peaks.insert(0, 0)
    if p[-1] > p[-2]:
        peaks.append(bins - 1)
    if len(peaks) < 2:
        return 0.5, False
    lo, hi = peaks[0], peaks[-1]  # the outermost maxima of p: the unfolded and folded basins
    k = lo + int(np.argmin(p[lo : hi + 1]))
    depth = min(p[lo], p[hi])
    return float(centres[k]), bool(p[k] < 0.5 * depth)  # a real barrier: p drops to below half of the lower basin


def count_transitions(q: np.ndarray, unfolded_below: float, folded_above: float) -> tuple[int, int]:
    """Folding and unfolding events along one trajectory's Q ``(F,)``, with hysteresis (transition-based
    assignment): an event is a passage from Q < ``unfolded_below`` to Q > ``folded_above`` or back; recrossings of
    the barrier region in between do not count."""
    if not unfolded_below < folded_above:
        raise ValueError(f"need unfolded_below < folded_above, got {unfolded_below} and {folded_above}")
    state, folding, unfolding = 0, 0, 0  # 0: not yet in a basin, -1 unfolded, +1 folded
    for value in np.asarray(q):
        new = 1 if value > folded_above else -1 if value < unfolded_below else state
        if state and new != state:
            folding += new == 1
            unfolding += new == -1
        state = new
    return folding, unfolding
