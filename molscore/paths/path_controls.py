"""Networks of the learned path sampler: the control force u(x, v, t) added to BAOAB's O step, and the
log-normaliser log Z(x_0, v_0) of the starts (see :mod:`molscore.paths.learned_sampler`)."""

import torch
from torch import Tensor, nn


# controls --------------------------------------------------------------------------------------------------------
class MLPControl(nn.Module):
    """Control force from an MLP over flattened positions, velocities and the time t/T (low-dimensional systems).

    ``u(x, v, t) = force_scale * MLP((x - offset) / length_scale, v / speed_scale, t)``, reshaped to (B, N, d); the last
    layer starts at zero, so training starts from the unbiased dynamics.

    Parameters
    ----------
    n_particles, dim : N, d
    hidden : width of the hidden layers;  n_layers : number of hidden layers
    force_scale : kJ/(mol nm) per unit network output
    length_scale : nm, positions are divided by it;  offset : Tensor broadcastable to (N, d), nm, subtracted first
    speed_scale : nm/ps, velocities are divided by it (e.g. the thermal speed sqrt(kT/m))
    velocity, time : whether the control sees the velocities and the time (False, False: a position-only bias)
    """

    def __init__(
        self,
        n_particles: int,
        dim: int,
        hidden: int = 64,
        n_layers: int = 2,
        force_scale: float = 100.0,
        length_scale: float = 1.0,
        offset: Tensor | None = None,
        speed_scale: float = 1.0,
        velocity: bool = True,
        time: bool = True,
    ):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        self.force_scale, self.length_scale, self.speed_scale = float(force_scale), float(length_scale), float(speed_scale)
        self.velocity, self.time = velocity, time
        self.register_buffer("offset", torch.zeros(n_particles, dim) if offset is None else torch.as_tensor(offset))
        layers, width = [], n_particles * dim * (2 if velocity else 1) + (1 if time else 0)
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, n_particles * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps; t (B,) in [0, 1] -> control force (B, N, d) kJ/(mol nm)."""
        if pos.ndim != 3 or pos.shape[1:] != (self.n_particles, self.dim):
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, {self.n_particles}, {self.dim})")
        features = [((pos - self.offset.to(pos)) / self.length_scale).flatten(1)]
        if self.velocity:
            features.append((vel / self.speed_scale).flatten(1))
        if self.time:
            features.append(t.to(pos).reshape(-1, 1))
        h = torch.cat(features, 1).to(self.net[-1].weight.dtype)
        return self.force_scale * self.net(h).view(pos.shape).to(pos)


class EquivariantBias(nn.Module):
    """Position-only control from :class:`~molscore.nn.gnn.EquivariantGNN` (``output="score"``): E(3)-equivariant.

    ``u(x) = force_scale * gain * GNN(x / length_scale, t=0)``, with the learnable ``gain`` starting at 0 (the
    dynamics start unbiased; the gradient of ``gain`` is the GNN's output, so training moves it first). Velocities and
    time are ignored (the optimal control depends on both: this is an approximation for molecules).

    Parameters
    ----------
    n_particles : N (positions are (B, N, 3), nm)
    bead_types : N ints (e.g. elements), see the GNN
    hidden_irreps, n_layers, reflection : of the GNN (small by default)
    force_scale : kJ/(mol nm) per unit output;  length_scale : nm per network length unit
    cutoff : nm, interaction range of the GNN
    """

    def __init__(
        self,
        n_particles: int,
        bead_types: list[int] | None = None,
        hidden_irreps: str = "16x0e+8x1o",
        n_layers: int = 2,
        reflection: str = "invariant",
        force_scale: float = 100.0,
        length_scale: float = 0.1,
        cutoff: float = 1.0,
    ):
        super().__init__()
        from molscore.nn.gnn import EquivariantGNN

        self.n_particles, self.force_scale, self.length_scale = n_particles, float(force_scale), float(length_scale)
        self.gnn = EquivariantGNN(
            n_particles,
            dim=3,
            output="score",
            bead_types=bead_types,
            hidden_irreps=hidden_irreps,
            n_layers=n_layers,
            reflection=reflection,
            cutoff=cutoff / length_scale,
        )
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos (B, N, 3) nm -> control force (B, N, 3) kJ/(mol nm); ``vel`` and ``t`` are ignored."""
        dtype = self.gain.dtype
        out = self.gnn(pos.to(dtype) / self.length_scale, torch.zeros((), dtype=dtype, device=pos.device))
        return (self.force_scale * self.gain * out).to(pos)


def checked_control(control, pos: Tensor, vel: Tensor, t: Tensor) -> Tensor:
    """``control(pos, vel, t)``, raising a clear error unless it is a force of the positions' shape (B, N, d)."""
    force = control(pos, vel, t)
    if not isinstance(force, Tensor) or force.shape != pos.shape:
        shape = tuple(force.shape) if isinstance(force, Tensor) else type(force).__name__
        raise ValueError(
            f"the control must return a force of the positions' shape {tuple(pos.shape)} (B, N, d); got {shape}"
        )
    return force


class LogNormaliser(nn.Module):
    """Learned log Z_phi(x_0, v_0): an MLP over the flattened start positions and velocities plus a scalar offset.

    ``log Z(x, v) = offset + MLP((x - offset_x) / length_scale, v / speed_scale)``; the last layer starts at zero, so
    log Z starts constant. Trained by the trajectory-balance loss it estimates the soft log P(B | x_0, v_0) under the
    optimal control; the sampler draws starts in proportion to Z^beta.
    """

    def __init__(
        self,
        n_particles: int,
        dim: int,
        hidden: int = 64,
        n_layers: int = 2,
        length_scale: float = 1.0,
        offset: Tensor | None = None,
        speed_scale: float = 1.0,
        initial: float = 0.0,
    ):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        self.length_scale, self.speed_scale = float(length_scale), float(speed_scale)
        self.register_buffer("offset", torch.zeros(n_particles, dim) if offset is None else torch.as_tensor(offset))
        layers, width = [], 2 * n_particles * dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.log_offset = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps -> log Z (B,)."""
        h = torch.cat([((pos - self.offset.to(pos)) / self.length_scale).flatten(1), (vel / self.speed_scale).flatten(1)], 1)
        out = self.net(h.to(self.net[-1].weight.dtype))[:, 0] + self.log_offset
        return out.to(pos)
