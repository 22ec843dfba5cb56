"""Networks of the learned path sampler: the control force u(x, v, t) added to BAOAB's O step, and the
log-normaliser log Z(x_0, v_0) of the starts (see :mod:`molscore.paths.learned_sampler`)."""

import torch
from torch import Tensor, nn

from molscore.paths.collective_variables import cv_gradients


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
    grads = cv_gradients(values, pos, create_graph)
    return (grads * vel.to(grads)[:, None]).sum((2, 3))


# controls --------------------------------------------------------------------------------------------------------
class FlatFeatures(nn.Module):
    """Network inputs of a small system's raw coordinates: ``(x - offset) / length_scale`` and optionally
    ``v / speed_scale`` flattened, and the time t/T (B, F).

    Parameters
    ----------
    n_particles, dim : N, d
    length_scale : nm, positions are divided by it;  offset : Tensor broadcastable to (N, d), nm, subtracted first
    speed_scale : nm/ps, velocities are divided by it (e.g. the thermal speed sqrt(kT/m))
    velocity, time : whether the features include the velocities and the time
    """

    def __init__(self, n_particles, dim, length_scale=1.0, offset=None, speed_scale=1.0, velocity=True, time=True):
        super().__init__()
        self.n_particles, self.dim = n_particles, dim
        self.length_scale, self.speed_scale = float(length_scale), float(speed_scale)
        self.velocity, self.time = velocity, time
        self.register_buffer("offset", torch.zeros(n_particles, dim) if offset is None else torch.as_tensor(offset))
        self.size = n_particles * dim * (2 if velocity else 1) + (1 if time else 0)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps; t (B,) in [0, 1] -> features (B, F)."""
        if pos.ndim != 3 or pos.shape[1:] != (self.n_particles, self.dim):
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, {self.n_particles}, {self.dim})")
        features = [((pos - self.offset.to(pos)) / self.length_scale).flatten(1)]
        if self.velocity:
            features.append((vel / self.speed_scale).flatten(1))
        if self.time:
            features.append(t.to(pos).reshape(-1, 1))
        return torch.cat(features, 1)


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
        self.features = FlatFeatures(n_particles, dim, length_scale, offset, speed_scale, velocity, time)
        self.force_scale = float(force_scale)
        self.net = zero_output_mlp(self.features.size, hidden, n_layers, n_particles * dim)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps; t (B,) in [0, 1] -> control force (B, N, d) kJ/(mol nm)."""
        h = self.features(pos, vel, t).to(self.net[-1].weight.dtype)
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


class CVFeatures(nn.Module):
    """Network inputs of collective variables: the CVs (periodic ones as cos, sin; the others divided by
    ``cv_scale``), optionally their time derivatives ``dcv/dt = (grad_x cv) . v`` divided by ``velocity_scale``
    (exact, by autograd: one backward pass per CV) and the time t/T. Invariant under rotations and translations when
    the CVs are (dihedrals, distances, RMSD) and the velocities rotate with the positions.

    Parameters
    ----------
    cvs : callable ``pos (B, N, 3) -> (B, K)`` in torch, differentiable, e.g.
        :class:`~molscore.paths.collective_variables.CollectiveVariables`
    periodic : (K,) bools (default: ``cvs.periodic`` if it has it, else an error)
    cv_scale : units of the non-periodic CVs per network unit
    velocity_scale : CV units/ps per network unit of dcv/dt (e.g. its equilibrium standard deviation), float or (K,)
    velocity, time : whether the features include dcv/dt and t/T
    """

    def __init__(self, cvs, periodic=None, cv_scale: float = 1.0, velocity_scale=1.0, velocity=True, time=True):
        super().__init__()
        self.cvs = cvs
        if periodic is None:
            periodic = getattr(cvs, "periodic", None)
        if periodic is None:
            raise ValueError("give the periodic flags of the CVs (periodic=...), the CV function has none")
        self.register_buffer("periodic", torch.as_tensor(periodic, dtype=torch.bool).flatten())
        k = self.n_cvs = len(self.periodic)
        self.register_buffer("velocity_scale", torch.as_tensor(velocity_scale, dtype=torch.float64).expand(k).clone())
        self.cv_scale, self.velocity, self.time = float(cv_scale), velocity, time
        self.size = k + int(self.periodic.sum()) + (k if velocity else 0) + (1 if time else 0)

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None, gradients: bool = False):
        """Features (B, F) of ``pos`` (B, N, 3) (which must require grad for the rates or the gradients); with
        ``gradients``, also grad_x cv_k (B, K, N, 3), detached."""
        values = self.cvs(pos)
        if values.ndim != 2 or values.shape[1] != self.n_cvs:
            raise ValueError(f"the CVs have shape {tuple(values.shape)}; expected (B, {self.n_cvs})")
        periodic = self.periodic.to(values.device)
        features = [torch.cos(values[:, periodic]), torch.sin(values[:, periodic]), values[:, ~periodic] / self.cv_scale]
        if self.velocity:
            if vel is None:
                raise ValueError("these CV features use dcv/dt: give the velocities")
            features.append(cv_rates(values, pos, vel, create_graph=True) / self.velocity_scale.to(values))
        if self.time:
            if t is None:
                raise ValueError("these CV features use the time t/T: give it")
            features.append(torch.as_tensor(t).to(values).reshape(-1, 1).expand(len(values), 1))
        features = torch.cat(features, 1)
        if not gradients:
            return features
        return features.detach(), cv_gradients(values, pos).detach()


class _CVNetwork(nn.Module):
    """A network of :class:`CVFeatures` with ``n_outputs`` outputs (None: one per CV) and a zero last layer; the
    arguments are those of :class:`CVControl`."""

    n_outputs: int | None = 1

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
        self.features = CVFeatures(cvs, periodic, cv_scale, velocity_scale, velocity, time)
        self.force_scale = float(force_scale)
        self.net = zero_output_mlp(self.features.size, hidden, n_layers, self.n_outputs or self.features.n_cvs)


class CVControl(_CVNetwork):
    """Control force from a learned potential of collective variables: ``u(x, v, t) = -grad_x U_theta(features)``.

    ``U_theta = force_scale * MLP(features)`` (kJ/mol), features of :class:`CVFeatures` (the CVs, optionally their
    rates and t/T). E(3)-equivariant when the CVs are invariant; it costs a few autograd passes per step. The last layer
    starts at zero (U constant, no force), so training starts from the unbiased dynamics. With rate features the force
    also has terms (d U / d rate) (Hessian of the CV) v; :class:`CVForceControl` has the form of the Doob drift instead.

    The force keeps the graph to the MLP parameters when gradients are enabled (``create_graph``), so a loss of the
    force trains them; it works under ``torch.no_grad()`` too (rollouts), without that graph. Gradients do not flow
    back to ``pos`` or ``vel``.

    Parameters
    ----------
    cvs, periodic, cv_scale, velocity_scale, velocity, time : of :class:`CVFeatures`
    hidden : width of the hidden layers;  n_layers : number of hidden layers
    force_scale : kJ/mol per unit network output
    """

    n_outputs = 1  # U

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


class CVForceControl(_CVNetwork):
    """Control force along the CV gradients: ``u(x, v, t) = force_scale * sum_k g_k(features) grad_x cv_k``.

    The form of the Doob h-transform drift when P(B | x, v, t) depends on the state through the CVs and their rates
    r_k = grad_x cv_k . v: then grad_v log P = sum_k (d log P / d r_k) grad_x cv_k, and the optimal O-step drift is
    proportional to it. The network ``g (B, K)`` sees the :class:`CVFeatures` (CVs, rates, t/T); the force is
    E(3)-equivariant when the CVs are invariant, and costs K backward passes of the CVs per step (no second-order
    graph: the parameters enter only through g). The last layer starts at zero (no force).

    Parameters
    ----------
    cvs, periodic, cv_scale, velocity_scale, velocity, time : of :class:`CVFeatures`
    hidden : width of the hidden layers;  n_layers : number of hidden layers
    force_scale : kJ/mol per CV unit per unit network output (kJ/(mol rad) for dihedrals)
    """

    n_outputs = None  # g_k: one per CV

    def forward(self, pos: Tensor, vel: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """pos, vel (B, N, 3) nm, nm/ps; t (B,) in [0, 1] -> control force (B, N, 3) kJ/(mol nm)."""
        if pos.ndim != 3:
            raise ValueError(f"positions have shape {tuple(pos.shape)}; expected (B, N, d)")
        with torch.enable_grad():
            x = pos.detach().requires_grad_(True)
            h, grads = self.features(x, None if vel is None else vel.detach(), t, gradients=True)
        g = self.force_scale * self.net(h.to(self.net[-1].weight.dtype)).to(pos)  # (B, K)
        return torch.einsum("bk,bkni->bni", g, grads.to(pos))


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
        self.features = FlatFeatures(n_particles, dim, length_scale, offset, speed_scale, time=False)
        self.net = zero_output_mlp(self.features.size, hidden, n_layers, 1)
        self.log_offset = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, d) nm, nm/ps -> log Z (B,)."""
        out = self.net(self.features(pos, vel).to(self.net[-1].weight.dtype))[:, 0] + self.log_offset
        return out.to(pos)


class CVLogNormaliser(nn.Module):
    """Learned log Z_phi(x_0, v_0) = offset + MLP(features) of the :class:`CVFeatures` without time (the CVs and
    their rates dcv/dt; molecules: invariant under rotations and translations when the CVs are); it starts constant."""

    def __init__(self, cvs, periodic=None, hidden: int = 64, n_layers: int = 2, cv_scale: float = 1.0, velocity_scale=1.0):
        super().__init__()
        self.features = CVFeatures(cvs, periodic, cv_scale, velocity_scale, time=False)
        self.net = zero_output_mlp(self.features.size, hidden, n_layers, 1)
        self.log_offset = nn.Parameter(torch.tensor(0.0))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        """pos, vel (B, N, 3) nm, nm/ps -> log Z (B,)."""
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():  # the rates dcv/dt need grad_x cv
            h = self.features(pos.detach().requires_grad_(True), vel.detach())
        out = self.net(h.to(self.net[-1].weight.dtype))[:, 0].to(pos) + self.log_offset.to(pos)
        return out if keep_graph else out.detach()
