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

Angle and repulsion priors. An all-atom force field from a briefly trained network can still fold a methyl group
onto itself (two hydrogens of one carbon meeting) or pass atoms through each other: bonds alone do not fix bond
angles or keep non-bonded atoms apart. ``AnglePrior`` is the Gaussian model of each bond angle in the data,
theta ~ N(theta0, s^2), with the angular spread the forward noise adds to two bonds of lengths alpha r1, alpha r2:

    E_angle(x, t) = sum_a (theta_a - theta0_a)^2 / (2 (s_a^2 + 2 sigma^2 / alpha^2 (1 / r1^2 + 1 / r2^2)))   (kT)

``RepulsionPrior`` is a one-sided harmonic wall on every pair more than two bonds apart, of width w_ij = rho_ij / 20
at t -> 0 and broadened by the noise of a pair vector as the bond prior is:

    E_repulsion(x, t) = sum_ij relu(alpha rho_ij - r_ij)^2 / (2 (alpha^2 w_ij^2 + 2 sigma^2))      (kT)

with rho_ij = 0.8 x the pair's closest approach in the data. At t -> 0 it is zero wherever the data have been,
12.5 kT at 0.75 rho and 200 kT when two atoms meet, so it leaves the data's range to the network and forbids
only what the data never show.

``DihedralPrior`` keeps planar groups planar (the peptide bond: O-C-N-H, CA-C-N-CA, ...): for every proper dihedral
i-j-k-l of the bond graph whose spread in the data is narrow (circular standard deviation s < 0.5 rad), a von Mises
energy (1 - cos(phi - phi0)) / (s^2 + 4 sigma^2 / alpha^2 (1 / r1^2 + 1 / r2^2 + 1 / r3^2)) over its three bonds
(the noise term is twice the angle prior's, as measured on noised alanine dipeptide data for 0.03 < t < 0.1: the
ends and the axis all move); broad ones (phi, psi, methyl rotors) are left to the network.

The angle and repulsion priors are functions of distances and angles and keep every symmetry of the network; the
dihedral prior is invariant under rotations and translations and, like a chiral network, not under reflections
(phi -> -phi), which for planar groups (phi0 = 0 or pi) changes nothing.
"""

import torch
from torch import Tensor, nn

from molscore.diffusion import VPSDE
from molscore.geometry import dihedral_cos_sin
from molscore.topology import _pairs, bond_angles, nonbonded_pairs, proper_dihedrals

__all__ = ["bond_angles", "nonbonded_pairs", "proper_dihedrals"]  # re-exported: the priors are built on them


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


class AnglePrior(Prior):
    """Energy ``(B,)`` in kT of ``x (B, N, d)`` at diffusion times ``t (B,)`` from Gaussian bond angles.

    Parameters
    ----------
    bonds : (M, 2) bead index pairs; the prior holds every angle between two bonds sharing a bead
    n_particles : number of beads
    """

    def __init__(self, bonds, n_particles: int):
        super().__init__()
        angles = bond_angles(bonds, n_particles)
        if len(angles) == 0:
            raise ValueError("an angle prior needs two bonds sharing a bead; this topology has no bond angle")
        self.register_buffer("angles", angles)
        self.register_buffer("theta0", torch.ones(len(angles)))  # set by fit, radians
        self.register_buffer("var", torch.ones(len(angles)))
        self.register_buffer("inverse_r2", torch.ones(len(angles)))  # 1 / r1^2 + 1 / r2^2 of the mean bond lengths

    def fit(self, x: Tensor, sde: VPSDE) -> None:
        """Mean and variance of each angle in data ``x (M, N, d)`` and the mean lengths of its two bonds."""
        super().fit(x, sde)
        with torch.no_grad():
            theta = self.values(x)
            self.theta0.copy_(theta.mean(0))
            self.var.copy_(theta.var(0).clamp_min(1e-8))
            i, j, k = self.angles.unbind(-1)
            r1, r2 = (x[:, i] - x[:, j]).norm(dim=-1).mean(0), (x[:, k] - x[:, j]).norm(dim=-1).mean(0)
            self.inverse_r2.copy_(r1.pow(-2) + r2.pow(-2))

    def values(self, x: Tensor) -> Tensor:
        """Angles ``(B, A)``, radians (atan2 of |a x b| and a.b: smooth up to 180 degrees)."""
        i, j, k = self.angles.unbind(-1)
        a, b = x[:, i] - x[:, j], x[:, k] - x[:, j]
        cross = torch.linalg.cross(a, b, dim=-1) if x.shape[-1] == 3 else (a[..., :1] * b[..., 1:] - a[..., 1:] * b[..., :1])
        return torch.atan2((cross.pow(2).sum(-1) + 1e-30).sqrt(), (a * b).sum(-1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha2, sigma2 = self.alpha2_sigma2(t, x)
        spread = self.var + 2 * sigma2 / alpha2 * self.inverse_r2
        return ((self.values(x) - self.theta0) ** 2 / (2 * spread)).sum(-1)


class RepulsionPrior(Prior):
    """Energy ``(B,)`` in kT of ``x (B, N, d)``: sum_ij relu(alpha rho_ij - r_ij)^2 / (2 (alpha^2 w_ij^2 + 2 sigma^2))
    over pairs more than two bonds apart, rho_ij = 0.8 x the pair's closest approach in the data, w_ij = rho_ij / 20.

    Parameters
    ----------
    bonds : (M, 2) bead index pairs (they decide which pairs are non-bonded)
    n_particles : number of beads
    """

    closest_fraction, width_fraction = 0.8, 0.05

    def __init__(self, bonds, n_particles: int):
        super().__init__()
        pairs = nonbonded_pairs(bonds, n_particles)
        if len(pairs) == 0:
            raise ValueError("a repulsion prior needs beads more than two bonds apart; this topology has none")
        self.register_buffer("pairs", pairs)
        self.register_buffer("rho", torch.zeros(len(pairs)))  # set by fit

    def fit(self, x: Tensor, sde: VPSDE) -> None:
        """rho = 0.8 x each pair's smallest distance in data ``x (M, N, d)``."""
        super().fit(x, sde)
        with torch.no_grad():
            self.rho.copy_(self.closest_fraction * self.distances(x).amin(0))

    def distances(self, x: Tensor) -> Tensor:
        """Pair distances ``(B, P)`` (with a 1e-15 floor, so the force stays finite when two beads meet)."""
        return ((x[:, self.pairs[:, 1]] - x[:, self.pairs[:, 0]]).pow(2).sum(-1) + 1e-30).sqrt()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha2, sigma2 = self.alpha2_sigma2(t, x)
        overlap = torch.relu(alpha2.sqrt() * self.rho - self.distances(x))
        return (overlap**2 / (2 * (alpha2 * (self.width_fraction * self.rho) ** 2 + 2 * sigma2))).sum(-1)


class DihedralPrior(Prior):
    """Energy ``(B,)`` in kT of ``x (B, N, 3)`` at diffusion times ``t (B,)``: von Mises terms on the dihedrals that
    are narrow in the data (circular standard deviation below ``max_spread`` rad); the others carry no energy.

    Parameters
    ----------
    bonds : (M, 2) bead index pairs; the prior holds every proper dihedral of the bond graph
    n_particles : number of beads
    """

    max_spread = 0.5

    def __init__(self, bonds, n_particles: int):
        super().__init__()
        dihedrals = proper_dihedrals(bonds, n_particles)
        if len(dihedrals) == 0:
            raise ValueError("a dihedral prior needs three bonds in a row; this topology has no dihedral")
        self.register_buffer("dihedrals", dihedrals)
        self.register_buffer("phi0", torch.zeros(len(dihedrals)))  # set by fit, radians
        self.register_buffer("var", torch.ones(len(dihedrals)))
        self.register_buffer("active", torch.zeros(len(dihedrals)))  # 1 for the narrow dihedrals
        self.register_buffer("inverse_r2", torch.ones(len(dihedrals)))  # sum of 1 / r^2 over its three bonds

    def fit(self, x: Tensor, sde: VPSDE) -> None:
        """Circular mean and spread of each dihedral in data ``x (M, N, 3)``; which are narrow; mean bond lengths."""
        super().fit(x, sde)
        with torch.no_grad():
            cos, sin = dihedral_cos_sin(x, self.dihedrals)
            mean = torch.complex(cos.mean(0), sin.mean(0))
            self.phi0.copy_(torch.angle(mean))
            self.var.copy_((-2 * torch.log(mean.abs().clamp(1e-12, 1.0))).clamp_min(1e-6))
            self.active.copy_((self.var.sqrt() < self.max_spread).to(self.active))
            i, j, k, m = self.dihedrals.unbind(-1)
            length2 = lambda a, b: (x[:, a] - x[:, b]).pow(2).sum(-1).mean(0)  # noqa: E731
            self.inverse_r2.copy_(1 / length2(i, j) + 1 / length2(j, k) + 1 / length2(k, m))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha2, sigma2 = self.alpha2_sigma2(t, x)
        cos, sin = dihedral_cos_sin(x, self.dihedrals)
        cos_dev = cos * torch.cos(self.phi0) + sin * torch.sin(self.phi0)  # cos(phi - phi0)
        spread = self.var + 4 * sigma2 / alpha2 * self.inverse_r2
        return (self.active * (1 - cos_dev) / spread).sum(-1)


class BondPrior(Prior):
    """Energy ``(B,)`` in kT of ``x (B, N, d)`` at diffusion times ``t (B,)`` from harmonic bonds.

    Parameters
    ----------
    bonds : (M, 2) bead index pairs
    """

    def __init__(self, bonds):
        super().__init__()
        bonds = _pairs(bonds)
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
