"""Networks of the learned path sampler: the control force u(x, v, t) added to BAOAB's O step, and the
log-normaliser log Z(x_0, v_0) of the starts (see :mod:`molscore.paths.learned_sampler`)."""

import torch
from torch import Tensor, nn


def zero_output_mlp(n_in: int, hidden: int, n_layers: int, n_out: int) -> nn.Sequential:
    """SiLU MLP ``n_in -> hidden (x n_layers) -> n_out`` whose last layer is zero: it starts as the zero function."""
    layers, width = [], n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def cv_rates(values: Tensor, pos: Tensor, vel: Tensor, create_graph: bool = False) -> Tensor:
    """Time derivatives dcv_k/dt = (grad_x cv_k) . v, (B, K), of CV ``values (B, K)`` computed from ``pos (B, N, d)``
    (which must require grad) along velocities ``vel (B, N, d)``; differentiable in ``pos`` with ``create_graph``."""
    rates = []
    for k in range(values.shape[1]):
        (grad,) = torch.autograd.grad(values[:, k].sum(), pos, create_graph=create_graph, retain_graph=True)
        rates.append((grad * vel.to(grad)).sum((1, 2)))
    return torch.stack(rates, 1)


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
        n_in = n_particles * dim * (2 if velocity else 1) + (1 if time else 0)
        self.net = zero_output_mlp(n_in, hidden, n_layers, n_particles * dim)

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


class CVControl(nn.Module):
    """Control force from a learned potential of collective variables: ``u(x, v, t) = -grad_x U_theta(features)``.

    ``U_theta = force_scale * MLP(features)`` (kJ/mol), features = the CVs (periodic ones as cos, sin; the others
    divided by ``cv_scale``), optionally their time derivatives ``dcv/dt = (grad_x cv) . v`` divided by
    ``velocity_scale`` (exact, by autograd: one extra backward pass per CV) and the time t/T. CVs invariant under
    rotations and translations (dihedrals, distances, RMSD) make the force E(3)-equivariant by construction (with
    dcv/dt: when the velocities rotate with the positions); it costs a few autograd passes per step. The last layer
    starts at zero (U constant, no force), so training starts from the unbiased dynamics.

    The force keeps the graph to the MLP parameters when gradients are enabled (``create_graph``), so a loss of the
    force trains them; it works under ``torch.no_grad()`` too (rollouts), without that graph. Gradients do not flow
    back to ``pos`` or ``vel``.

    Parameters
    ----------
    cvs : callable ``pos (B, N, 3) -> (B, K)`` in torch, differentiable, e.g.
        :class:`~molscore.paths.collective_variables.CollectiveVariables`
    periodic : (K,) bools (default: ``cvs.periodic`` if it has it, else none periodic)
    hidden : width of the hidden layers;  n_layers : number of hidden layers
    force_scale : kJ/mol per unit network output
    cv_scale : units of the non-periodic CVs per network unit
    velocity_scale : CV units/ps per network unit of dcv/dt (e.g. its equilibrium standard deviation), float or (K,)
    velocity, time : whether U sees dcv/dt and t/T
    """

    def __init__(
        self,
        cvs,
        periodic=None,
        hidden: int = 64,
        n_layers: int = 2,
        force_scale: float = 10.0,
        cv_scale: float = 1.0,
        velocity_scale=1.0,
        velocity: bool = True,
        time: bool = True,
    ):
        super().__init__()
        self.cvs = cvs
        if periodic is None:
            periodic = getattr(cvs, "periodic", None)
        if periodic is None:
            raise ValueError("give the periodic flags of the CVs (periodic=...), the CV function has none")
        self.register_buffer("periodic", torch.as_tensor(periodic, dtype=torch.bool).flatten())
        k = len(self.periodic)
        self.register_buffer("velocity_scale", torch.as_tensor(velocity_scale, dtype=torch.float64).expand(k).clone())
        self.force_scale, self.cv_scale = float(force_scale), float(cv_scale)
        self.velocity, self.time = velocity, time
        n_periodic = int(self.periodic.sum())
        self.net = zero_output_mlp(k + n_periodic + (k if velocity else 0) + (1 if time else 0), hidden, n_layers, 1)

    def features(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None, create_graph: bool = False):
        """Network inputs (B, F) of ``pos`` (which must require grad for the velocity features)."""
        values = self.cvs(pos)
        if values.ndim != 2 or values.shape[1] != len(self.periodic):
            raise ValueError(f"the CVs have shape {tuple(values.shape)}; expected (B, {len(self.periodic)})")
        periodic = self.periodic.to(values.device)
        features = [torch.cos(values[:, periodic]), torch.sin(values[:, periodic]), values[:, ~periodic] / self.cv_scale]
        if self.velocity:
            if vel is None:
                raise ValueError("this CVControl uses dcv/dt: give the velocities")
            features.append(cv_rates(values, pos, vel, create_graph=True) / self.velocity_scale.to(values))
        if self.time:
            if t is None:
                raise ValueError("this CVControl uses the time t/T: give it")
            features.append(torch.as_tensor(t).to(values).reshape(-1, 1).expand(len(values), 1))
        return torch.cat(features, 1)

    def potential(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """U_theta (B,), kJ/mol (differentiable in ``pos`` if it requires grad)."""
        h = self.features(pos, vel, t)
        return self.force_scale * self.net(h.to(self.net[-1].weight.dtype))[:, 0].to(pos)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, 3) nm, nm/ps; t (B,) in [0, 1] -> control force -grad_x U (B, N, 3) kJ/(mol nm)."""
        if pos.ndim != 3:
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, N, d)")
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x = pos.detach().requires_grad_(True)
            v = None if vel is None else vel.detach()
            energy = self.potential(x, v, t)
            (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
        return -grad if create_graph else -grad.detach()


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
        self.net = zero_output_mlp(2 * n_particles * dim, hidden, n_layers, 1)
        self.log_offset = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps -> log Z (B,)."""
        h = torch.cat([((pos - self.offset.to(pos)) / self.length_scale).flatten(1), (vel / self.speed_scale).flatten(1)], 1)
        out = self.net(h.to(self.net[-1].weight.dtype))[:, 0] + self.log_offset
        return out.to(pos)


class CVLogNormaliser(nn.Module):
    """Learned log Z_phi(x_0, v_0) of the CVs and their rates dcv/dt (molecules: invariant under rotations and
    translations when the CVs are): the learned function of a :class:`CVControl` (cos/sin of periodic CVs, scaled
    others and rates, no time; see its parameters) plus a scalar offset; it starts constant."""

    def __init__(self, cvs, periodic=None, hidden: int = 64, n_layers: int = 2, cv_scale: float = 1.0, velocity_scale=1.0):
        super().__init__()
        self.function = CVControl(
            cvs, periodic, hidden, n_layers, force_scale=1.0, cv_scale=cv_scale, velocity_scale=velocity_scale, time=False
        )
        self.log_offset = nn.Parameter(torch.tensor(0.0))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, 3) nm, nm/ps -> log Z (B,)."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():  # the rates dcv/dt need grad_x cv
            out = self.function.potential(pos.detach().requires_grad_(True), vel.detach())
        out = out + self.log_offset.to(out)
        return out if keep_graph else out.detach()
