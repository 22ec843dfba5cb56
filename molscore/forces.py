"""Forces as the negative gradient of an energy: the one autograd helper every energy model uses."""

from collections.abc import Callable

import torch
from torch import Tensor


def energy_and_forces(
    energy_fn: Callable[[Tensor], Tensor], pos: Tensor, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Evaluate an energy and its forces.

    Parameters
    ----------
    energy_fn : callable, pos -> Tensor (B,), kJ/mol
    pos : Tensor (B, N, d), nm
    create_graph : keep the graph of the gradient (for training on forces or scores).

    Returns
    -------
    energy : Tensor (B,), kJ/mol
    forces : Tensor (B, N, d), kJ/(mol nm), equal to -dE/dpos
    """
    with torch.enable_grad():
        pos = pos if pos.requires_grad else pos.detach().requires_grad_(True)
        energy = energy_fn(pos)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    return (energy if create_graph else energy.detach()), -grad
