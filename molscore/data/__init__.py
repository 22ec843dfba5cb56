"""MD data: trajectories via mdtraj, resolution maps (coarse-graining), per-bead features, splits by replica."""

from molscore.data.resolution import RESOLUTIONS, Beads, select_beads
from molscore.data.trajectories import load_frames

__all__ = ["RESOLUTIONS", "Beads", "load_frames", "select_beads"]
