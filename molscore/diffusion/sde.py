"""Variance-preserving SDE (Song et al. 2021) with the linear schedule of SCIENCE.md section 1.

    dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW,   beta(t) = beta_min + t (beta_max - beta_min)
    x_t = alpha(t) x_0 + sigma(t) eps,   alpha = exp(-1/2 int_0^t beta),   sigma^2 = 1 - alpha^2

Diffusion coordinates are dimensionless (data divided by the scale of the model). For centred systems
noise and prior samples are projected onto the zero-centroid subspace, whose dimension is d (N - 1).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from molscore.geometry import remove_centroid


@dataclass(frozen=True)
class VPSDE:
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def beta(self, t):
        """beta(t), same type/shape as t."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t):
        """int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.int_beta(_as_time(t)))

    def sigma(self, t: Tensor) -> Tensor:
        # 1 - alpha^2 = -expm1(-int beta): accurate for t -> 0, where sigma^2 ~ beta_min t
        return torch.sqrt(-torch.expm1(-self.int_beta(_as_time(t))))

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of sigma(t): the diffusion time at which the noise level is ``sigma`` (in (0, 1))."""
        int_beta = -torch.log1p(-sigma.pow(2))
        slope = self.beta_max - self.beta_min
        # int_beta = beta_min t + slope t^2 / 2, solved for t >= 0 in a form without cancellation at small t
        return 2 * int_beta / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * int_beta))

    def drift(self, x: Tensor, t) -> Tensor:
        """Forward drift f(x, t) = -1/2 beta(t) x."""
        return -0.5 * _per_sample(self.beta(t), x) * x

    def noise(self, shape, centred: bool, generator=None, dtype=None, device=None) -> Tensor:
        """Standard normal noise ``(B, N, d)``, projected onto the zero-centroid subspace if centred."""
        eps = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return remove_centroid(eps) if centred else eps

    def perturb(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = alpha(t) x_0 + sigma(t) eps for per-sample times ``t : (B,)``."""
        return _per_sample(self.alpha(t), x0) * x0 + _per_sample(self.sigma(t), x0) * eps

    def prior(self, shape, centred: bool, generator=None, dtype=None, device=None) -> Tensor:
        """Samples of the t = 1 marginal, N(0, I) on the (projected) space."""
        return self.noise(shape, centred, generator, dtype, device)


def _per_sample(value, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample ``(B,)`` value against ``like : (B, N, d)``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def _as_time(t) -> Tensor:
    """Tensors pass through; Python numbers become float64 tensors (no silent float32 rounding)."""
    return t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)
