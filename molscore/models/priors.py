"""Fixed energies added to a network's (in kT, diffusion coordinates): the network learns the rest.

Bond prior: learned coarse-grained force fields add a physical prior for the stiff bonds (CGnet, Wang et al.
2019), because a network trained briefly gets the soft torsions roughly right long before it resolves bonds whose length
fluctuates by 2% of the molecule's size, and a force field with weak bonds falls apart in simulation. Here the
prior is the Gaussian bond-length model of the data, r_b ~ N(r0_b, s_b^2), pushed through the forward
diffusion x_t = alpha x_0 + sigma eps (a bond vector gets noise of variance 2 sigma^2 per axis):

    E_prior(x, t) = sum_b (r_b - alpha(t) r0_b)^2 / (2 (alpha(t)^2 s_b^2 + 2 sigma(t)^2))      (units of kT)

At t -> 0 it is the Boltzmann-inverted bond potential of the data; at large t it fades into the noise. It is
a function of distances only, so it keeps every symmetry of the network. All lengths are in diffusion
coordinates (nm / scale); ``r0`` and ``s`` are set from the training data by :meth:`BondPrior.fit`.

Noise prior. At large t the noised data are close to N(0, I) (the data are scaled to unit variance), whose
energy is |x|^2 / 2. A network with a finite cutoff gives no restoring force to a configuration that strays
beyond its training range, and the reverse SDE then lets samples drift off (|x| grew from 3 to 24 for a
5-bead model trained for 800 steps). ``NoisePrior`` adds sigma(t)^2 |x|^2 / 2, the Gaussian part of the energy,
which vanishes at t -> 0, so the force field is unchanged there.
"""

import torch
from torch import Tensor, nn

from molscore.diffusion import VPSDE


class Prior(nn.Module):
    """A fixed energy ``(B,)`` of ``x (B, N, d)`` at times ``t (B,)``; ``fit(x, sde)`` sets it from data."""

    def __init__(self):
        super().__init__()
        self.register_buffer("beta", torch.tensor([VPSDE.beta_min, VPSDE.beta_max]))

    def fit(self, x: Tensor, sde: VPSDE) -> None:
        """Take the SDE's schedule (subclasses also fit to the training data ``x (M, N, d)``)."""
        self.beta.copy_(torch.tensor([sde.beta_min, sde.beta_max], dtype=self.beta.dtype))

    def alpha2_sigma2(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t)^2 and sigma(t)^2 as ``(B, 1)`` in the dtype of ``like``."""
        lo, hi, t = self.beta[0], self.beta[1], t.to(like.dtype)
        int_beta = (lo * t + 0.5 * t**2 * (hi - lo))[:, None]
        return torch.exp(-int_beta), -torch.expm1(-int_beta)


class PriorSum(nn.Module):
    """The sum of several priors."""

    def __init__(self, priors: list[Prior]):
        super().__init__()
        self.priors = nn.ModuleList(priors)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return sum(prior(x, t) for prior in self.priors)


class NoisePrior(Prior):
    """sigma(t)^2 |x|^2 / 2 (kT): the Gaussian part of the energy of the noised data (x centred)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        _, sigma2 = self.alpha2_sigma2(t, x)
        return 0.5 * sigma2[:, 0] * x.pow(2).flatten(1).sum(-1)


class BondPrior(Prior):
    """Energy ``(B,)`` in kT of ``x (B, N, d)`` at diffusion times ``t (B,)`` from harmonic bonds.

    Parameters
    ----------
    bonds : (M, 2) bead index pairs
    """

    def __init__(self, bonds):
        super().__init__()
        bonds = torch.as_tensor(bonds, dtype=torch.long).reshape(-1, 2)
        if len(bonds) == 0:
            raise ValueError("a bond prior needs at least one bond")
        self.register_buffer("bonds", bonds)
        self.register_buffer("r0", torch.ones(len(bonds)))  # set by fit
        self.register_buffer("var", torch.ones(len(bonds)))

    def fit(self, x: Tensor, sde: VPSDE) -> None:
        """Mean and variance of each bond length in data ``x (M, N, d)`` (diffusion coordinates); the SDE's
        schedule."""
        super().fit(x, sde)
        with torch.no_grad():
            r = self.lengths(x)
            self.r0.copy_(r.mean(0))
            self.var.copy_(r.var(0).clamp_min(1e-8))

    def lengths(self, x: Tensor) -> Tensor:
        """Bond lengths ``(B, M)``."""
        return (x[:, self.bonds[:, 1]] - x[:, self.bonds[:, 0]]).norm(dim=-1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha2, sigma2 = self.alpha2_sigma2(t, x)
        r = self.lengths(x)
        return ((r - alpha2.sqrt() * self.r0) ** 2 / (2 * (alpha2 * self.var + 2 * sigma2))).sum(-1)
