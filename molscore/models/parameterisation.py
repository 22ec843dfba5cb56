"""The two parameterisations of the score, and the mixture of time experts.

All work in diffusion coordinates (centred, divided by the model's scale): ``x : (B, N, d)``, per-sample
diffusion times ``t : (B,)``. Energies are dimensionless (units of kT): log q_theta(x, t) = -E_theta(x, t).
"""

import torch
from torch import Tensor, nn

from molscore.geometry import remove_centroid


class EnergyScore(nn.Module):
    """Energy-based (conservative) model: s(x, t) = -grad_x E(x, t), E = net + prior.

    ``net(x, t) -> (B,)``; ``prior(x, t) -> (B,)`` an optional fixed energy (e.g.
    :mod:`molscore.models.priors`). For centred systems the input is centred first, so the
    score lies in the zero-centroid subspace whatever the network.
    """

    parameterisation = "energy"

    def __init__(self, net: nn.Module, centred: bool, prior: nn.Module | None = None):
        super().__init__()
        self.net, self.centred, self.prior = net, centred, prior

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        x = remove_centroid(x) if self.centred else x
        return self.net(x, t) if self.prior is None else self.net(x, t) + self.prior(x, t)

    def score(self, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(x, t).sum(), x, create_graph=create_graph)
        return -grad

    def score_and_time_derivative(self, x: Tensor, t: Tensor, create_graph: bool = True):
        """Score ``(B, N, d)`` and dE/dt ``(B,)`` in one backward pass (t is an input to autograd)."""
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            t = t.detach().requires_grad_(True)
            gx, gt = torch.autograd.grad(self.energy(x, t).sum(), (x, t), create_graph=create_graph)
        return -gx, gt


class DirectScore(nn.Module):
    """Direct (not necessarily conservative) score: s(x, t) = net(x, t) - grad prior(x, t), ``net -> (B, N, d)``."""

    parameterisation = "score"

    def __init__(self, net: nn.Module, centred: bool, prior: nn.Module | None = None):
        super().__init__()
        self.net, self.centred, self.prior = net, centred, prior

    def score(self, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
        x = remove_centroid(x) if self.centred else x
        s = self.net(x, t)
        if self.prior is not None:
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.prior(xg, t).sum(), xg, create_graph=create_graph or x.requires_grad)
            s = s - grad
        return remove_centroid(s) if self.centred else s


class MixtureOfExperts(nn.Module):
    """Separate models on disjoint diffusion-time intervals (Plainer et al. 2025).

    Parameters
    ----------
    experts : models ordered from small t to large t
    boundaries : increasing interior boundaries, e.g. (0.1, 0.6) for [0, 0.1], [0.1, 0.6], [0.6, 1]
    """

    def __init__(self, experts: list[nn.Module], boundaries):
        super().__init__()
        if len(experts) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
            raise ValueError("a mixture needs len(boundaries) + 1 experts and increasing boundaries")
        self.experts = nn.ModuleList(experts)
        self.boundaries = tuple(float(b) for b in boundaries)
        self.parameterisation = experts[0].parameterisation

    def expert_index(self, t: Tensor) -> Tensor:
        return torch.bucketize(t.detach().contiguous(), torch.tensor(self.boundaries, dtype=t.dtype, device=t.device))

    def expert_at(self, t: float) -> nn.Module:
        """The expert that serves diffusion time ``t`` (a float)."""
        return self.experts[int(self.expert_index(torch.tensor([float(t)], dtype=torch.float64)))]

    def time_range(self, k: int) -> tuple[float, float]:
        """The interval [lo, hi] of diffusion time expert k covers."""
        edges = (0.0, *self.boundaries, 1.0)
        return edges[k], edges[k + 1]

    def _route(self, method: str, x: Tensor, t: Tensor, **kwargs):
        index = self.expert_index(t)
        out = None
        for k, expert in enumerate(self.experts):
            mask = index == k
            if not mask.any():
                continue
            part = getattr(expert, method)(x[mask], t[mask], **kwargs)
            if out is None:
                out = part.new_zeros((len(x), *part.shape[1:]))
            out = out.index_put((mask,), part)
        return out

    def score(self, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
        return self._route("score", x, t, create_graph=create_graph)

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        """Energy of the expert each t is routed to (those experts must be energy models)."""
        for k in self.expert_index(t).unique().tolist():
            if not hasattr(self.experts[k], "energy"):
                lo, hi = self.time_range(k)
                raise TypeError(f"expert {k} (t in [{lo}, {hi}]) is a direct score model: it has no energy")
        return self._route("energy", x, t)
