"""Divergence of a vector field f : (B, N, d) -> (B, N, d): exact by autograd, Hutchinson's stochastic
trace for many degrees of freedom, or central finite differences for fields without autograd (e.g. forces
computed by OpenMM).
"""

from collections.abc import Callable

import torch
from torch import Tensor

Field = Callable[[Tensor], Tensor]
METHODS = ("auto", "exact", "hutchinson", "finite_difference")


def _differentiable(field: Field, x: Tensor) -> bool:
    with torch.enable_grad():
        probe = x[:1].detach().requires_grad_(True)
        return field(probe).requires_grad


def divergence(
    field: Field,
    x: Tensor,
    method: str = "auto",
    n_probes: int = 8,
    step: float = 1e-4,
    max_exact_dof: int = 128,
    per_dof: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """sum_i d f_i / d x_i at each configuration, Tensor (B,) (or the diagonal (B, N, d) with ``per_dof``).

    Parameters
    ----------
    field : x (B, N, d) -> (B, N, d)
    x : Tensor (B, N, d)
    method : "exact" (one vector-Jacobian product per degree of freedom), "hutchinson" (``n_probes``
        Rademacher probes, unbiased), "finite_difference" (central differences with ``step``, in units of x;
        2 N d field evaluations), or "auto": exact up to ``max_exact_dof`` degrees of freedom, Hutchinson
        above, finite differences whenever the field does not carry gradients
    per_dof : return the Jacobian diagonal instead of its sum (exact and finite differences only)
    """
    if method not in METHODS:
        raise ValueError(f"divergence method {method!r} unknown; choose from {METHODS}")
    if x.ndim != 3:
        raise ValueError(f"positions must have shape (B, N, d), got {tuple(x.shape)}")
    n_dof = x.shape[1] * x.shape[2]
    if method == "auto":
        if not _differentiable(field, x):
            method = "finite_difference"
        else:
            method = "exact" if n_dof <= max_exact_dof or per_dof else "hutchinson"
    if per_dof and method == "hutchinson":
        raise ValueError("per-DOF divergence needs method 'exact' or 'finite_difference'")
    if method == "finite_difference":
        return _finite_difference(field, x, step, per_dof)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        f = field(xg)
        if not f.requires_grad:
            raise ValueError("the field does not carry gradients; use method='finite_difference'")
        if method == "exact":
            diag = torch.zeros_like(x).flatten(1)
            basis = torch.zeros_like(x).flatten(1)
            for i in range(n_dof):
                basis.zero_()
                basis[:, i] = 1.0
                (g,) = torch.autograd.grad(f, xg, grad_outputs=basis.view_as(x), retain_graph=i < n_dof - 1)
                diag[:, i] = g.flatten(1)[:, i]
            diag = diag.view_as(x).detach()
            return diag if per_dof else diag.flatten(1).sum(1)
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k in range(n_probes):
            q = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x) * 2 - 1
            (g,) = torch.autograd.grad(f, xg, grad_outputs=q, retain_graph=k < n_probes - 1)
            total = total + (g * q).flatten(1).sum(1)
        return (total / n_probes).detach()


@torch.no_grad()
def _finite_difference(field: Field, x: Tensor, step: float, per_dof: bool) -> Tensor:
    flat = x.flatten(1)
    diag = torch.zeros_like(flat)
    for i in range(flat.shape[1]):
        plus, minus = flat.clone(), flat.clone()
        plus[:, i] += step
        minus[:, i] -= step
        diag[:, i] = (field(plus.view_as(x)).flatten(1)[:, i] - field(minus.view_as(x)).flatten(1)[:, i]) / (2 * step)
    diag = diag.view_as(x)
    return diag if per_dof else diag.flatten(1).sum(1)
