"""Irreps bookkeeping: which features the backbone may carry, and the gated nonlinearity on them.

Parity decides chirality. With ``reflection="invariant"`` only irreps of natural parity (-1)^l are allowed
(0e, 1o, 2e, ...): every feature transforms like a polynomial of the positions, scalars are true scalars and
the energy is E(3)-invariant, so a conformation and its mirror image get the same energy. With
``reflection="odd"`` (the default) unnatural-parity irreps are allowed too: pseudovectors 1e (cross products,
1o x 1o -> 1e) and pseudoscalars 0o (triple products, 1o x 1e -> 0o). A pseudoscalar changes sign under
reflection, so an energy that mixes 0e and 0o nonlinearly is SE(3)- but not E(3)-invariant, as a model of
chiral molecules must be (SCIENCE.md section 1).
"""

import torch
from e3nn import o3
from e3nn.nn import Gate

REFLECTIONS = ("odd", "invariant")
DEFAULT_HIDDEN = {"odd": "32x0e+8x0o+16x1o+8x1e", "invariant": "32x0e+16x1o"}


def natural_parity(ir: o3.Irrep) -> bool:
    """Whether ``ir`` has parity (-1)^l, like a polynomial of the positions (0e, 1o, 2e, ...)."""
    return ir.p == (-1) ** ir.l


def hidden_irreps(spec: str | None, reflection: str) -> o3.Irreps:
    """Validated, sorted and simplified hidden irreps for a reflection mode.

    Parameters
    ----------
    spec : e3nn irreps string (e.g. "32x0e+8x0o+16x1o+8x1e", l <= 2), or None for ``DEFAULT_HIDDEN``
    reflection : "odd" (chiral, SE(3)) or "invariant" (E(3))

    Raises ValueError unless the irreps contain 0e and 1o, and also 1e for "odd" (only natural-parity irreps
    for "invariant").
    """
    if reflection not in REFLECTIONS:
        raise ValueError(f"reflection must be one of {REFLECTIONS}, got {reflection!r}")
    irreps = o3.Irreps(DEFAULT_HIDDEN[reflection] if spec is None else spec).sort().irreps.simplify()
    if o3.Irrep("0e") not in irreps:
        raise ValueError(f"hidden_irreps {irreps} need even scalars (0e) for the gates and the time input")
    if o3.Irrep("1o") not in irreps:
        # without vectors the edge directions never enter: no pseudovectors (1o x 1o -> 1e), so no chirality,
        # and the score head (a linear map to 1o) would be identically zero
        raise ValueError(
            f"hidden_irreps {irreps} lack vectors (1o): the network would see distances only (no chirality, "
            "zero score); add e.g. 16x1o"
        )
    if reflection == "invariant" and not all(natural_parity(ir) for _, ir in irreps):
        raise ValueError(
            f"hidden_irreps {irreps} contain unnatural-parity irreps (0o, 1e, 2o); with reflection='invariant' "
            "use only 0e, 1o, 2e"
        )
    if reflection == "odd" and o3.Irrep("1e") not in irreps:
        raise ValueError(
            f"hidden_irreps {irreps} lack pseudovectors (1e): the model could not build pseudoscalars and would "
            "be reflection-invariant; add e.g. 8x1e (and 8x0o), or set reflection='invariant'"
        )
    return irreps


def gate(irreps: o3.Irreps) -> Gate:
    """Gated nonlinearity producing ``irreps``: SiLU on 0e, tanh on 0o (odd, so parity is kept), and each
    l > 0 channel multiplied by a sigmoid of its own extra 0e gate scalar.

    ``gate.irreps_in`` is scalars + gates + gated, with the 0e scalars first.
    """
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
    acts = {1: torch.nn.functional.silu, -1: torch.tanh}
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, [acts[ir.p] for _, ir in scalars], gates, [torch.sigmoid] * len(gates), gated)


def scalar_indices(irreps: o3.Irreps, parities=(1, -1)) -> torch.Tensor:
    """Positions of the scalar (l = 0) components of ``irreps`` with the given parities, int64."""
    index = [torch.arange(s.start, s.stop) for s, (_, ir) in zip(irreps.slices(), irreps, strict=True)]
    keep = [i for i, (_, ir) in zip(index, irreps, strict=True) if ir.l == 0 and ir.p in parities]
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
