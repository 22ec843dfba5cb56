"""Where a fixed-length path's improbability sits: in its start (x0, v0) or in the Langevin noise.

From the starts of reactive paths (e.g. a shooting ensemble's), :func:`end_probability` runs ``n_shots`` unbiased
fixed-length continuations per start and returns the fraction that ends in B, in one of three modes:

- ``"noise"``: the same x0 and v0, fresh noise. -log of it is what a control (which acts on the noise) can gain;
- ``"velocities"``: the same x0, fresh Maxwell-Boltzmann v0 and noise;
- ``"off-cv"``: the same x0 and the same CV rates (the mass-weighted velocity component along the CV gradients
  kept), the rest of v0 redrawn: whether the CV rates carry what makes a start reactive.

A learned path sampler has to supply what the noise does not carry through its start proposal
(``molscore.paths.learned_sampler``); these numbers say how much that is.
"""

import numpy as np
import torch
from torch import Tensor

from molscore.dynamics import SeededNoise
from molscore.paths.collective_variables import cv_gradients
from molscore.paths.path_dynamics import ForceFieldLangevin, maxwell_boltzmann, propagate
from molscore.paths.states import Region

MODES = ("noise", "velocities", "off-cv")


def redraw_off_cv(positions: Tensor, velocities: Tensor, fresh: Tensor, masses: Tensor, cvs) -> Tensor:
    """Velocities (B, N, d) with the CV rates of ``velocities`` and, orthogonal to the CV gradients in mass-weighted
    coordinates, the components of ``fresh`` (Maxwell-Boltzmann draws): the thermal velocity distribution
    conditioned on the CV rates. ``cvs: pos (B, N, d) -> (B, K)``; masses (N,) amu."""
    x = positions.detach().requires_grad_(True)
    root_m = torch.sqrt(masses)[None, :, None]
    jac = (cv_gradients(cvs(x), x) / root_m[:, None]).flatten(2)  # (B, K, N d): d cv / d (sqrt(m) x)

    def along_cvs(w: Tensor) -> Tensor:  # projection onto the rows of jac
        coef = torch.linalg.solve(jac @ jac.transpose(1, 2), jac @ w.flatten(1)[..., None])
        return (jac.transpose(1, 2) @ coef).reshape(w.shape)

    kept, new = root_m * velocities, root_m * fresh
    return ((along_cvs(kept) + new - along_cvs(new)) / root_m).detach()


def end_probability(
    term: ForceFieldLangevin,
    positions: Tensor,
    velocities: Tensor,
    state_b: Region,
    cvs,
    n_steps: int,
    dt: float,
    n_shots: int = 16,
    mode: str = "noise",
    seed: int = 0,
    batch_size: int = 1024,
) -> np.ndarray:
    """Fraction (S,) of ``n_shots`` unbiased continuations of ``n_steps`` BAOAB steps (dt ps) from each start
    ``positions, velocities : (S, N, d)`` (nm, nm/ps) whose last frame lies in ``state_b`` (CVs ``cvs``);
    ``mode`` (see the module docstring) says what is redrawn besides the noise."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if positions.ndim != 3 or velocities.shape != positions.shape:
        raise ValueError(f"positions and velocities must both be (S, N, d); got {tuple(positions.shape)}, "
                         f"{tuple(velocities.shape)}")  # fmt: skip
    if not (torch.isfinite(positions).all() and torch.isfinite(velocities).all()):
        raise ValueError("starts contain NaN or inf positions or velocities; pass the first frames of complete paths")
    x = positions.repeat_interleave(n_shots, 0)
    v = velocities.repeat_interleave(n_shots, 0)
    if mode != "noise":  # velocity draws from stream seed, the paths' noise from seeds seed + 1, seed + 2, ...
        fresh = maxwell_boltzmann(term.masses, term.kT, x.shape, SeededNoise(seed), step=0)
        v = fresh if mode == "velocities" else redraw_off_cv(x, v, fresh, term.masses, cvs)
    ends = []
    for i in range(0, len(x), batch_size):
        batch_noise = SeededNoise(seed + 1 + i // batch_size)
        segment = propagate(
            term, x[i : i + batch_size], v[i : i + batch_size], n_steps, dt, batch_noise, storage_dtype=torch.float32
        )
        ends.append(state_b.contains(cvs(segment.positions[-1].to(x.dtype))))
    return torch.cat(ends).reshape(-1, n_shots).double().mean(1).numpy()
