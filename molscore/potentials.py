"""Analytic potentials with exact energies (forces by autograd of the exact expression) and exact samplers.

Every potential acts on batched positions ``pos : Tensor (B, N, d)`` and returns energies ``(B,)`` in kJ/mol.
Each can draw exact Boltzmann samples at a given kT (closed form, Gaussian-mixture sampling or rejection
sampling on a box), which the tests and workflows use as ground truth.
"""

import math

import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from molscore.forces import energy_and_forces


class Potential(nn.Module):
    """Base class: ``energy(pos) -> (B,)``; ``forces(pos) -> (B, N, d)``; ``sample(n, kT) -> (n, N, d)``."""

    n_particles: int
    dim: int

    def energy(self, pos: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pos: Tensor) -> Tensor:
        return self.energy(pos)

    def forces(self, pos: Tensor) -> Tensor:
        """Forces -dE/dpos, Tensor (B, N, d), kJ/(mol nm)."""
        return energy_and_forces(self.energy, pos)[1]

    def sample(self, n: int, kT: float, generator: torch.Generator | None = None) -> Tensor:
        """Exact Boltzmann samples ``(n, N, d)`` at thermal energy kT (kJ/mol), float64."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")


class Harmonic(Potential):
    """U = 1/2 sum_i k_i (x_i - x0_i)^2 over all coordinates.

    Parameters
    ----------
    k : float or array (N, d), kJ/(mol nm^2)
    centre : array (N, d), nm (zeros by default)
    """

    def __init__(self, k, n_particles: int = 1, dim: int = 2, centre=None):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        k = torch.as_tensor(k, dtype=torch.float64).expand(n_particles, dim).clone()
        if (k <= 0).any():
            raise ValueError("harmonic spring constants k must be positive")
        centre = torch.zeros(n_particles, dim) if centre is None else torch.as_tensor(centre)
        self.register_buffer("k", k)
        self.register_buffer("centre", centre.to(torch.float64).reshape(n_particles, dim))

    def energy(self, pos: Tensor) -> Tensor:
        k, c = self.k.to(pos), self.centre.to(pos)
        return 0.5 * (k * (pos - c) ** 2).sum(dim=(-1, -2))

    def sample(self, n, kT, generator=None):
        z = torch.randn(n, self.n_particles, self.dim, dtype=torch.float64, generator=generator)
        return self.centre + z * torch.sqrt(kT / self.k)


class DoubleWell(Potential):
    """2-D double well U(x, y) = barrier (x^2 - 1)^2 + 1/2 k_y y^2, minima at x = +-1 (one particle)."""

    def __init__(self, barrier: float = 5.0, k_y: float = 10.0, box=((-2.5, 2.5), (-2.5, 2.5))):
        super().__init__()
        self.n_particles, self.dim = 1, 2
        self.barrier, self.k_y, self.box = float(barrier), float(k_y), box

    def energy(self, pos: Tensor) -> Tensor:
        x, y = pos[..., 0, 0], pos[..., 0, 1]
        return self.barrier * (x**2 - 1) ** 2 + 0.5 * self.k_y * y**2

    def sample(self, n, kT, generator=None):
        return rejection_sample(self, n, kT, self.box, generator)


class MuellerBrown(Potential):
    """The standard four-Gaussian Mueller-Brown potential (one particle in the plane).

    U(x, y) = sum_k A_k exp(a_k (x - x_k)^2 + b_k (x - x_k)(y - y_k) + c_k (y - y_k)^2),
    A = (-200, -100, -170, 15). Minima near (-0.558, 1.442), (0.623, 0.028), (-0.050, 0.467).
    """

    A = (-200.0, -100.0, -170.0, 15.0)
    a = (-1.0, -1.0, -6.5, 0.7)
    b = (0.0, 0.0, 11.0, 0.6)
    c = (-10.0, -10.0, -6.5, 0.7)
    x0 = (1.0, 0.0, -0.5, -1.0)
    y0 = (0.0, 0.5, 1.5, 1.0)

    def __init__(self, box=((-3.0, 2.0), (-1.5, 3.5))):
        super().__init__()
        self.n_particles, self.dim, self.box = 1, 2, box
        self.register_buffer("params", torch.tensor([self.A, self.a, self.b, self.c, self.x0, self.y0]))

    def energy(self, pos: Tensor) -> Tensor:
        A, a, b, c, x0, y0 = self.params.to(pos)
        dx = pos[..., 0, 0, None] - x0
        dy = pos[..., 0, 1, None] - y0
        return (A * torch.exp(a * dx**2 + b * dx * dy + c * dy**2)).sum(-1)

    def sample(self, n, kT, generator=None):
        return rejection_sample(self, n, kT, self.box, generator)


class GaussianMixture(Potential):
    """Boltzmann density of a Gaussian mixture: U = -kT log sum_k w_k N(x; mu_k, s_k^2 I).

    Parameters
    ----------
    weights : array (K,), normalised here
    means : array (K, N, d), nm
    stds : array (K,), nm (isotropic per component)
    kT : thermal energy the energy is expressed at, kJ/mol

    The mixture is closed under the VP diffusion: :meth:`diffused` gives q_t exactly, which makes it the
    ground truth for samplers, likelihoods and the Fokker-Planck residual.
    """

    def __init__(self, weights, means, stds, kT: float = 1.0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 3:
            raise ValueError(f"means must have shape (K, N, d), got {tuple(means.shape)}")
        weights = torch.as_tensor(weights, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(len(means)).clone()
        if weights.shape != (len(means),) or (weights <= 0).any() or (stds <= 0).any():
            raise ValueError("weights (K,) and stds (K,) must be positive and match means (K, N, d)")
        self.n_particles, self.dim = means.shape[1], means.shape[2]
        self.kT = float(kT)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)

    def log_prob(self, pos: Tensor) -> Tensor:
        """Normalised log density, Tensor (B,)."""
        mu, s, w = self.means.to(pos), self.stds.to(pos), self.weights.to(pos)
        n_dof = self.n_particles * self.dim
        sq = ((pos[:, None] - mu) ** 2).sum(dim=(-1, -2))  # (B, K)
        log_comp = -0.5 * sq / s**2 - n_dof * torch.log(s) - 0.5 * n_dof * math.log(2 * math.pi)
        return torch.logsumexp(log_comp + torch.log(w), dim=-1)

    def energy(self, pos: Tensor) -> Tensor:
        return -self.kT * self.log_prob(pos)

    def score(self, pos: Tensor) -> Tensor:
        """grad log p, Tensor (B, N, d), exact (closed form)."""
        mu, s, w = self.means.to(pos), self.stds.to(pos), self.weights.to(pos)
        n_dof = self.n_particles * self.dim
        sq = ((pos[:, None] - mu) ** 2).sum(dim=(-1, -2))
        log_r = torch.log(w) - 0.5 * sq / s**2 - n_dof * torch.log(s)
        r = torch.softmax(log_r, dim=-1)  # responsibilities (B, K)
        return torch.einsum("bk,bknd->bnd", r / s**2, mu - pos[:, None])

    def diffused(self, alpha: float, sigma: float) -> "GaussianMixture":
        """The law of alpha x + sigma eps, eps ~ N(0, I): another Gaussian mixture."""
        stds = torch.sqrt(alpha**2 * self.stds**2 + sigma**2)
        return GaussianMixture(self.weights, alpha * self.means, stds, self.kT)

    def sample(self, n, kT=None, generator=None):
        """Exact samples of the mixture (kT must equal the mixture's own kT, if given)."""
        if kT is not None and abs(kT - self.kT) > 1e-12 * self.kT:
            raise ValueError(f"this mixture is defined at kT = {self.kT}; got kT = {kT}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.n_particles, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None, None] * z


def rejection_sample(potential: Potential, n: int, kT: float, box, generator: torch.Generator | None = None) -> Tensor:
    """Exact Boltzmann samples of a one-particle 2-D potential restricted to a box, by rejection.

    Proposals are uniform on ``box = ((x_lo, x_hi), (y_lo, y_hi))`` and accepted with probability
    exp(-(U - U_min) / kT); U_min is the global minimum on the box (grid search refined by L-BFGS), so the
    acceptance probability never exceeds one. Returns Tensor (n, 1, 2), float64.
    """
    lo = torch.tensor([b[0] for b in box], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in box], dtype=torch.float64)
    u_min = _box_minimum(potential, lo, hi)
    out, have = [], 0
    while have < n:
        prop = lo + (hi - lo) * torch.rand(
            min(max(4 * (n - have), 10_000), 2_000_000), 2, dtype=torch.float64, generator=generator
        )
        with torch.no_grad():
            u = potential.energy(prop[:, None, :])
        if (u < u_min - 1e-9).any():
            raise RuntimeError("rejection sampler found energies below its bound; refine the box minimum")
        keep = torch.rand(len(prop), dtype=torch.float64, generator=generator) < torch.exp(-(u - u_min) / kT)
        out.append(prop[keep])
        have += int(keep.sum())
    return torch.cat(out)[:n, None, :]


def _box_minimum(potential: Potential, lo: Tensor, hi: Tensor) -> float:
    axes = [torch.linspace(float(a), float(b), 401, dtype=torch.float64) for a, b in zip(lo, hi, strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        u = potential.energy(grid[:, None, :])
    start = grid[u.argmin()].numpy()

    def fun(p):
        e, f = energy_and_forces(potential.energy, torch.as_tensor(p).reshape(1, 1, 2))
        return float(e), -f.reshape(2).numpy()

    res = minimize(fun, start, jac=True, bounds=list(zip(lo.numpy(), hi.numpy(), strict=True)))
    return min(float(res.fun), float(u.min())) - 1e-9


POTENTIALS = {
    "harmonic": Harmonic,
    "double_well": DoubleWell,
    "mueller_brown": MuellerBrown,
    "gaussian_mixture": GaussianMixture,
}
"""Potential families by the name a system definition file uses."""
