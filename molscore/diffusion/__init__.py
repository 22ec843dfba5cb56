"""The VP diffusion process on (centred, scaled) conformations."""

from molscore.diffusion.sde import VPSDE

__all__ = ["VPSDE"]
