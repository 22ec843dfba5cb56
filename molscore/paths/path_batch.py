"""A batch of C paths of different lengths, padded to a common number of frames, and the cuts and joins that
shooting moves are made of.

Every frame carries an id: frames drawn together share nothing, a frame copied from an older path keeps its
id, so two paths are decorrelated when they have no id in common.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from molscore.paths.path_dynamics import Segment


@dataclass
class PathBatch:
    """C paths, time-major; frames past a path's end are NaN (ids -1).

    Attributes
    ----------
    positions : Tensor (F, C, N, d), nm
    velocities : Tensor (F, C, N, d), nm/ps
    energies : Tensor (F, C), kJ/mol (NaN where unknown)
    lengths : Tensor (C,) long, steps per path (its last frame index)
    ids : Tensor (F, C) long, frame identities
    """

    positions: Tensor
    velocities: Tensor
    energies: Tensor
    lengths: Tensor
    ids: Tensor

    @classmethod
    def from_segment(cls, segment: Segment, first_ids: Tensor, next_id: int) -> tuple["PathBatch", int]:
        """Wrap a :class:`Segment`; frame 0 gets ``first_ids (C,)``, later frames fresh ids from ``next_id``.

        Returns the batch and the next unused id.
        """
        n_frames, n_paths = segment.positions.shape[:2]
        ids = next_id + torch.arange(n_frames * n_paths, device=first_ids.device).view(n_frames, n_paths)
        ids[0] = first_ids
        batch = cls(segment.positions, segment.velocities, segment.energies, segment.lengths.clone(), ids)
        return batch.masked(), next_id + n_frames * n_paths

    @classmethod
    def from_positions(cls, paths: list, dtype: torch.dtype | None = None) -> "PathBatch":
        """Paths given as positions only, a list of arrays (L_i + 1, N, d) nm (e.g. brute-force transition paths).

        Velocities are zero and energies unknown (NaN): fine as starting paths of two-way shooting, which draws
        velocities at the shooting frame; one-way moves from such a path see zero velocities until it is replaced.
        """
        if not len(paths):
            raise ValueError("no paths given")
        n, c = max(len(p) for p in paths), len(paths)
        pos = torch.full((n, c, *np.shape(paths[0])[1:]), float("nan"), dtype=dtype or torch.get_default_dtype())
        for i, p in enumerate(paths):
            pos[: len(p), i] = torch.as_tensor(np.asarray(p), dtype=pos.dtype)
        lengths = torch.tensor([len(p) - 1 for p in paths])
        ids = torch.arange(n * c).view(n, c)
        return cls(pos, torch.zeros_like(pos), torch.full((n, c), float("nan"), dtype=pos.dtype), lengths, ids).masked()

    @classmethod
    def concatenate(cls, batches: list["PathBatch"]) -> "PathBatch":
        """The paths of several batches side by side (padded to the longest)."""
        n = max(len(b.positions) for b in batches)
        padded = [b._padded(n) for b in batches]
        return cls(
            torch.cat([b.positions for b in padded], 1),
            torch.cat([b.velocities for b in padded], 1),
            torch.cat([b.energies for b in padded], 1),
            torch.cat([b.lengths for b in padded]),
            torch.cat([b.ids for b in padded], 1),
        )

    @property
    def n_paths(self) -> int:
        return self.positions.shape[1]

    def frame(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Positions, velocities (C, N, d) and ids (C,) at frame ``index[c]`` of each path."""
        c = torch.arange(self.n_paths, device=index.device)
        return self.positions[index, c], self.velocities[index, c], self.ids[index, c]

    def first(self) -> Tensor:
        return self.positions[0]

    def last(self) -> Tensor:
        return self.frame(self.lengths)[0]

    def masked(self) -> "PathBatch":
        """Frames past each path's end set to NaN (ids -1)."""
        beyond = torch.arange(len(self.positions), device=self.lengths.device)[:, None] > self.lengths[None]
        pos, vel = self.positions.clone(), self.velocities.clone()
        pos[beyond], vel[beyond] = float("nan"), float("nan")
        energies, ids = self.energies.masked_fill(beyond, float("nan")), self.ids.masked_fill(beyond, -1)
        return PathBatch(pos, vel, energies, self.lengths, ids)

    def _gather(self, index: Tensor, lengths: Tensor, flip: Tensor | None = None) -> "PathBatch":
        """Frames ``index (F', C)`` of each path; velocities negated where ``flip (F', C)``."""
        index = index.clamp(0, len(self.positions) - 1)
        expand = index[:, :, None, None].expand(-1, -1, *self.positions.shape[2:])
        pos, vel = self.positions.gather(0, expand), self.velocities.gather(0, expand)
        if flip is not None:
            vel = torch.where(flip[:, :, None, None], -vel, vel)
        out = PathBatch(pos, vel, self.energies.gather(0, index), lengths, self.ids.gather(0, index))
        return out.masked()

    def reversed(self) -> "PathBatch":
        """Each path run backwards in time: frames in reverse order, velocities negated."""
        j = torch.arange(int(self.lengths.max()) + 1, device=self.lengths.device)[:, None]
        index = self.lengths[None] - j
        return self._gather(index, self.lengths, flip=torch.ones_like(index, dtype=torch.bool))

    def head(self, k: Tensor) -> "PathBatch":
        """Frames 0..k[c] of each path."""
        j = torch.arange(int(k.max()) + 1, device=k.device)[:, None]
        return self._gather(j.expand(-1, self.n_paths), k.clone())

    def tail(self, k: Tensor) -> "PathBatch":
        """Frames k[c]..end of each path, renumbered from 0."""
        lengths = self.lengths - k
        j = torch.arange(int(lengths.max()) + 1, device=k.device)[:, None]
        return self._gather(k[None] + j, lengths)

    def then(self, other: "PathBatch") -> "PathBatch":
        """This path followed by ``other``, whose frame 0 is this path's last frame (kept from ``self``)."""
        lengths = self.lengths + other.lengths
        j = torch.arange(int(lengths.max()) + 1, device=lengths.device)[:, None]
        mine = j <= self.lengths[None]
        a = self._gather(j.expand(-1, self.n_paths), lengths)
        b = other._gather(j - self.lengths[None], lengths)
        pick = mine[:, :, None, None]
        return PathBatch(
            torch.where(pick, a.positions, b.positions),
            torch.where(pick, a.velocities, b.velocities),
            torch.where(mine, a.energies, b.energies),
            lengths,
            torch.where(mine, a.ids, b.ids),
        ).masked()

    def where(self, take: Tensor, other: "PathBatch") -> "PathBatch":
        """Per path: ``other`` where ``take (C,)``, else this one (padded to the longer)."""
        n = max(len(self.positions), len(other.positions))
        a, b = self._padded(n), other._padded(n)
        t4, t2 = take[None, :, None, None], take[None, :]
        return PathBatch(
            torch.where(t4, b.positions, a.positions),
            torch.where(t4, b.velocities, a.velocities),
            torch.where(t2, b.energies, a.energies),
            torch.where(take, other.lengths, self.lengths),
            torch.where(t2, b.ids, a.ids),
        )

    def _padded(self, n_frames: int) -> "PathBatch":
        extra = n_frames - len(self.positions)
        if extra <= 0:
            return self
        pad = lambda t, value: torch.cat([t, t.new_full((extra, *t.shape[1:]), value)])  # noqa: E731
        return PathBatch(
            pad(self.positions, float("nan")),
            pad(self.velocities, float("nan")),
            pad(self.energies, float("nan")),
            self.lengths,
            pad(self.ids, -1),
        )

    def trimmed(self) -> "PathBatch":
        """Padding beyond the longest path removed."""
        n = int(self.lengths.max()) + 1
        return PathBatch(self.positions[:n], self.velocities[:n], self.energies[:n], self.lengths, self.ids[:n])

    def select(self, chains: Tensor) -> "PathBatch":
        """The paths ``chains`` (index or bool mask), trimmed."""
        return PathBatch(
            self.positions[:, chains],
            self.velocities[:, chains],
            self.energies[:, chains],
            self.lengths[chains],
            self.ids[:, chains],
        ).trimmed()
