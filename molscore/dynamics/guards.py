"""Guards: physical sanity checks a :class:`~molscore.dynamics.Simulation` applies to every replica.

The simulation always stops on non-finite or far-flung coordinates. A learned force field can also fail
quietly: a molecule that stretches a bond to twice its length or collapses two bonded beads is still finite.
A guard flags such replicas so the run stops with a message naming the bond, keeping the frames written so far.
"""

import numpy as np
import torch

from molscore.analysis.molecular import bond_lengths


class BondLengthGuard:
    """Flags replicas whose bonded bead pairs leave ``[lower, upper]`` nm.

    Parameters
    ----------
    bonds : (M, 2) int bead index pairs
    lower, upper : (M,) nm, allowed range of each bond
    names : M labels for messages (default "i-j")
    """

    def __init__(self, bonds, lower, upper, names=None):
        bonds = torch.as_tensor(np.asarray(bonds), dtype=torch.long).reshape(-1, 2)
        lower, upper = (torch.as_tensor(np.asarray(v), dtype=torch.float64).reshape(-1) for v in (lower, upper))
        if not (len(lower) == len(upper) == len(bonds)):
            raise ValueError(f"{len(bonds)} bonds but {len(lower)} lower and {len(upper)} upper bounds")
        if bool((lower >= upper).any()) or bool((lower < 0).any()):
            raise ValueError("need 0 <= lower < upper for every bond")
        self.bonds, self.lower, self.upper = bonds, lower, upper
        self.names = list(names) if names is not None else [f"{i}-{j}" for i, j in bonds.tolist()]

    @classmethod
    def from_frames(cls, bonds, frames, slack: float = 0.5, names=None) -> "BondLengthGuard":
        """Bounds ``(1 - slack) x`` the shortest and ``(1 + slack) x`` the longest length of each bond in
        reference ``frames (F, N, 3)`` nm (e.g. the training MD): far outside thermal fluctuations, so only a
        broken or collapsed molecule trips it."""
        if not 0 < slack < 1:
            raise ValueError(f"slack must lie in (0, 1), got {slack}")
        lengths = bond_lengths(frames, np.asarray(bonds, dtype=np.int64).reshape(-1, 2))
        return cls(bonds, (1 - slack) * lengths.min(0), (1 + slack) * lengths.max(0), names)

    def lengths(self, pos: torch.Tensor) -> torch.Tensor:
        """Bond lengths (B, M) nm of positions (B, N, 3) nm."""
        bonds = self.bonds.to(pos.device)
        return (pos[:, bonds[:, 1]] - pos[:, bonds[:, 0]]).norm(dim=-1)

    def __call__(self, pos: torch.Tensor) -> torch.Tensor:
        """(B,) bool: replicas with a bond out of range."""
        if len(self.bonds) == 0:
            return torch.zeros(len(pos), dtype=torch.bool, device=pos.device)
        length = self.lengths(pos)
        return ((length < self.lower.to(length)) | (length > self.upper.to(length))).any(1)

    def describe(self, pos: torch.Tensor, bad: torch.Tensor) -> str:
        """One line naming the first bad replica's worst bond, its length and its allowed range."""
        replica = int(torch.nonzero(bad).flatten()[0])
        length = self.lengths(pos[replica : replica + 1])[0].double().cpu()
        excess = torch.maximum(self.lower - length, length - self.upper)
        m = int(excess.argmax())
        return (
            f"bond {self.names[m]} of replica {replica} is {float(length[m]):.3f} nm, outside "
            f"[{float(self.lower[m]):.3f}, {float(self.upper[m]):.3f}] nm (the reference range widened by the guard's slack)"
        )


class ExtentGuard:
    """Flags replicas with a coordinate far outside the region the reference data cover.

    Per dimension the allowed interval is [lo - factor (hi - lo), hi + factor (hi - lo)], with [lo, hi] the
    data's range. A particle in an external potential is judged on its raw coordinates; a molecule
    (``centred``) on coordinates relative to its centroid, since its centroid diffuses freely.

    Parameters
    ----------
    lower, upper : (d,) nm, the allowed interval of each dimension
    centred : judge positions relative to each replica's centroid
    """

    def __init__(self, lower, upper, centred: bool = False):
        self.lower, self.upper = (torch.as_tensor(np.asarray(v), dtype=torch.float64).reshape(-1) for v in (lower, upper))
        if self.lower.shape != self.upper.shape or bool((self.lower >= self.upper).any()):
            raise ValueError("need lower < upper in every dimension")
        self.centred = bool(centred)

    @classmethod
    def from_frames(cls, frames, factor: float = 10.0, centred: bool = False) -> "ExtentGuard":
        """Bounds from reference ``frames (F, N, d)`` nm, widened by ``factor`` x their range on each side."""
        if not 0 < factor < float("inf"):
            raise ValueError(f"factor must be positive and finite, got {factor}")
        x = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
        if centred:
            x = x - x.mean(1, keepdim=True)
        lo, hi = x.flatten(0, 1).min(0).values, x.flatten(0, 1).max(0).values
        span = (hi - lo).clamp_min(1e-6)
        return cls(lo - factor * span, hi + factor * span, centred)

    def _relative(self, pos: torch.Tensor) -> torch.Tensor:
        return pos - pos.mean(1, keepdim=True) if self.centred else pos

    def __call__(self, pos: torch.Tensor) -> torch.Tensor:
        """(B,) bool: replicas with a coordinate outside the allowed region."""
        x = self._relative(pos)
        lower, upper = self.lower.to(x), self.upper.to(x)
        return ((x < lower) | (x > upper)).flatten(1).any(1)

    def describe(self, pos: torch.Tensor, bad: torch.Tensor) -> str:
        """One line naming the first bad replica, its farthest coordinate and the allowed interval."""
        replica = int(torch.nonzero(bad).flatten()[0])
        x = self._relative(pos[replica]).double().cpu()
        excess = torch.maximum(self.lower - x, x - self.upper)
        particle, dim = divmod(int(excess.argmax()), x.shape[1])
        where = " relative to the centroid" if self.centred else ""
        return (
            f"particle {particle} of replica {replica} is at {float(x[particle, dim]):.3g} nm in dimension {dim}"
            f"{where}, outside [{float(self.lower[dim]):.3g}, {float(self.upper[dim]):.3g}] nm (the data's range "
            "widened by simulate.escape_factor times itself on each side)"
        )
