"""Numerics and plumbing of the equivariant graph network (molscore.nn): forces = -grad E, batching, full and
radius graphs and the cutoff, double backward, dE/dt, input validation, and the model spec / DiffusionModel.

Float64 throughout. Finite differences are central with a step h = 1e-5 on inputs of order one: truncation
~ h^2 |f'''| / 6 ~ 1e-9 and rounding ~ 1e-16 |f| / h ~ 1e-10 of the derivative scale, so a relative
tolerance of 1e-6 leaves a wide margin while a real error (a sign, a missing term, a detached path) is of
order one. "Equal" means equal to 1e-10; outputs are of order one.
"""

import contextlib
import copy

import pytest
import torch
from e3nn import o3

import molscore.nn.graph as graph_module
from molscore.diffusion import VPSDE
from molscore.geometry import remove_centroid
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.models.parameterisation import DirectScore, EnergyScore, MixtureOfExperts
from molscore.nn import EquivariantGNN, GraphBuilder, full_graph, radius_graph

DTYPE = torch.float64
TOL = 1e-10
FD_STEP, FD_RTOL = 1e-5, 1e-6
BEAD_TYPES = [0, 1, 0, 2, 1]
CUTOFF = 1.5
OPTIONS = dict(
    bead_types=BEAD_TYPES,
    hidden_irreps="8x0e+4x0o+4x1o+4x1e",
    n_layers=2,
    radial_hidden=16,
    time_embedding_dim=8,
    cutoff=CUTOFF,
)
"""A tiny chiral network; the cutoff is short enough that spread-out frames have pairs beyond it."""


pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")


def make_net(output="energy", seed=0, **options) -> EquivariantGNN:
    torch.manual_seed(seed)
    kwargs = {**OPTIONS, **options}
    return EquivariantGNN(len(kwargs["bead_types"]), output=output, **kwargs).to(DTYPE)


@pytest.fixture(scope="module")
def nets():
    """``nets(output)``: one shared network per output kind (full graph unless switched by ``graph_of``)."""
    cache = {}

    def get(output="energy"):
        if output not in cache:
            cache[output] = make_net(output)
        return cache[output]

    return get


@contextlib.contextmanager
def graph_of(net: EquivariantGNN, kind: str):
    """Temporarily give ``net`` a graph of another kind (the weights do not depend on it)."""
    saved, net.graph = net.graph, GraphBuilder(kind, CUTOFF)
    try:
        yield net
    finally:
        net.graph = saved


def frames(n_frames=3, n_particles=5, spread=1.0, seed=1):
    """Random frames ``(B, N, 3)`` and times ``(B,)``; spread 1 puts some pairs beyond the cutoff."""
    g = torch.Generator().manual_seed(seed)
    x = spread * torch.randn(n_frames, n_particles, 3, generator=g, dtype=DTYPE)
    return x, torch.linspace(0.05, 0.9, n_frames, dtype=DTYPE)


def outputs(net, x, t) -> dict[str, torch.Tensor]:
    """Everything the network produces on a batch: the energy and its forces, or the score."""
    if net.output == "score":
        return {"score": net(x, t).detach()}
    return {"energy": net(x, t).detach(), "forces": EnergyScore(net, centred=False).score(x, t)}


def assert_close(a: dict, b: dict, tol=TOL):
    for key in a:
        err = (a[key] - b[key]).abs().max()
        assert err < tol, f"{key}: max difference {err:.3g}"


def edge_set(edge_index: torch.Tensor) -> set:
    return set(map(tuple, edge_index.T.tolist()))


def fd_gradient(fn, x: torch.Tensor, h: float = FD_STEP) -> torch.Tensor:
    """Central finite-difference gradient of ``fn : (B, N, 3) -> (B,)`` w.r.t. every coordinate."""
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for index in torch.cartesian_prod(*(torch.arange(s) for s in x.shape[1:])).tolist():
            step = torch.zeros_like(x)
            step[(slice(None), *index)] = h
            grad[(slice(None), *index)] = (fn(x + step) - fn(x - step)) / (2 * h)
    return grad


# forces = -grad E ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["full", "radius"])
def test_forces_are_minus_energy_gradient(nets, graph):
    x, t = frames()
    with graph_of(nets("energy"), graph) as net:
        assert radius_graph(x, CUTOFF).shape[1] < len(x) * 5 * 4  # some pairs are beyond the cutoff
        model = EnergyScore(net, centred=True)
        score = model.score(x, t)
        expected = -fd_gradient(lambda y: model.energy(y, t), x)
    scale = expected.abs().max()
    assert scale > 0.1
    assert (score - expected).abs().max() < FD_RTOL * scale
    # the centred model's score lies in the zero-centroid subspace
    assert score.sum(1).abs().max() < TOL


# batches ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["energy", "score"])
@pytest.mark.parametrize("graph", ["full", "radius", "vesin"])
def test_a_batch_equals_its_frames_alone(nets, output, graph, monkeypatch):
    """Frames are separate graphs: batching changes nothing, and editing one frame leaves the others alone."""
    if graph == "vesin":
        monkeypatch.setattr(graph_module, "BRUTE_FORCE_MAX_PAIRS", 0)
    x, t = frames(n_frames=4)
    with graph_of(nets(output), "full" if graph == "full" else "radius") as net:
        batch = outputs(net, x, t)
        for b in range(len(x)):
            alone = outputs(net, x[b : b + 1], t[b : b + 1])
            assert_close({k: v[b : b + 1] for k, v in batch.items()}, alone)
        moved = x.clone()
        moved[0] = 0.5 * torch.randn(5, 3, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
        t_moved = t.clone()
        t_moved[0] = 0.01
        after = outputs(net, moved, t_moved)
    assert_close({k: v[1:] for k, v in after.items()}, {k: v[1:] for k, v in batch.items()}, tol=1e-12)
    key = next(iter(batch))
    assert (after[key][0] - batch[key][0]).abs().max() > 1e-3  # frame 0 did change


def test_a_scalar_time_is_broadcast_to_the_batch(nets):
    net = nets("energy")
    x, _ = frames()
    t = torch.full((3,), 0.3, dtype=DTYPE)
    expected = net(x, t).detach()
    assert (net(x, torch.tensor(0.3, dtype=DTYPE)).detach() - expected).abs().max() < TOL
    assert (net(x, torch.tensor([0.3], dtype=DTYPE)).detach() - expected).abs().max() < TOL


# graphs and the cutoff -------------------------------------------------------------------------------------


def test_full_graph_holds_every_ordered_pair_within_each_frame():
    edges = full_graph(3, 4)
    expected = {(b * 4 + j, b * 4 + i) for b in range(3) for i in range(4) for j in range(4) if i != j}
    assert edges.dtype == torch.long and edges.shape == (2, 36) and edge_set(edges) == expected
    assert full_graph(2, 1).shape == (2, 0)


def test_radius_graph_holds_exactly_the_pairs_within_the_cutoff():
    x, _ = frames(n_frames=3, n_particles=7)
    edges = radius_graph(x, CUTOFF)
    d = torch.cdist(x, x)
    expected = {(b * 7 + j, b * 7 + i) for b, i, j in (d < CUTOFF).nonzero().tolist() if i != j}
    assert 0 < len(expected) < 3 * 7 * 6 and edge_set(edges) == expected


def test_vesin_radius_graph_equals_the_dense_one(monkeypatch):
    """Forcing the neighbour-list path (BRUTE_FORCE_MAX_PAIRS = 0) gives the same edge set, frame by frame."""
    g = torch.Generator().manual_seed(3)
    x = 4.0 * torch.rand(5, 40, 3, generator=g, dtype=DTYPE)  # 40 beads in a box of side 4, cutoff 1.5
    dense = radius_graph(x, CUTOFF)
    monkeypatch.setattr(graph_module, "BRUTE_FORCE_MAX_PAIRS", 0)
    sparse = radius_graph(x, CUTOFF)
    assert sparse.dtype == torch.long
    assert 0 < dense.shape[1] < 5 * 40 * 39
    assert sparse.shape == dense.shape and edge_set(sparse) == edge_set(dense)
    frame_of = dense[0] // 40
    assert frame_of.unique().tolist() == list(range(5))  # every frame has edges
    assert torch.equal(frame_of, dense[1] // 40)  # and none crosses frames


@pytest.mark.parametrize("output", ["energy", "score"])
def test_radius_graph_equals_full_graph_within_the_cutoff(nets, output):
    """All pairs closer than the cutoff: the two graphs hold the same edges and give the same outputs."""
    x, t = frames(spread=0.2)
    assert torch.cdist(x, x).max() < CUTOFF
    net = nets(output)
    with graph_of(net, "full"):
        full = outputs(net, x, t)
        assert edge_set(net.graph(x)) == edge_set(radius_graph(x, CUTOFF))
    with graph_of(net, "radius"):
        assert_close(outputs(net, x, t), full)


@pytest.mark.parametrize("output", ["energy", "score"])
def test_radius_graph_equals_full_graph_beyond_the_cutoff(nets, output):
    """Pairs beyond the cutoff: the full graph holds them, but the envelope zeroes their messages exactly."""
    x, t = frames(spread=1.0)
    net = nets(output)
    n_full, n_radius = full_graph(len(x), 5).shape[1], radius_graph(x, CUTOFF).shape[1]
    assert 0 < n_radius < n_full
    with graph_of(net, "full"):
        full = outputs(net, x, t)
    with graph_of(net, "radius"):
        assert_close(outputs(net, x, t), full)


def test_energy_and_forces_are_continuous_as_a_pair_crosses_the_cutoff(nets):
    """Beads 0 and 1 at distance r, the others far away, radius graph. The envelope u and its first two
    derivatives vanish at the cutoff, so the energy approaches its far value as (c - r)^3 and the force as
    (c - r)^2; beyond the cutoff the pair is not in the graph and the force is exactly zero."""
    far = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], dtype=DTYPE)
    direction = torch.tensor([1.0, 2.0, 2.0], dtype=DTYPE) / 3
    r = torch.tensor([0.3, 0.5, 0.8, 1.0, 1.0, 1.0, 2.0], dtype=DTYPE) * CUTOFF
    r[3:6] += torch.tensor([-1e-2, -1e-3, 1e-3], dtype=DTYPE)
    x = torch.stack([torch.cat([torch.zeros(1, 3, dtype=DTYPE), d * direction[None], far]) for d in r])
    t = torch.full((len(r),), 0.2, dtype=DTYPE)
    with graph_of(nets("energy"), "radius") as net:
        assert net.graph(x).shape[1] == 5 * 2  # the pair, both directions, in the five frames with r < cutoff
        energy = net(x, t).detach() - net(x[-1:], t[-1:]).detach()  # relative to the non-interacting pair
        force = EnergyScore(net, centred=False).score(x, t).abs().amax(dim=(1, 2))
    assert energy[:3].abs().max() > 1e-2  # the pair does interact inside the cutoff
    assert energy[5].abs() < 1e-15 and force[5] == 0 and force[6] == 0
    # crossing at delta = 1e-3: jumps ~1e-9 in the energy and ~1e-6 in the force (both of order 0.1 inside)
    assert energy[4].abs() < 1e-7 * energy[:3].abs().max() and force[4] < 1e-4 * force[:3].max()
    # and the orders: ten times closer to the cutoff, the energy is 10^3 and the force 10^2 times smaller
    assert 500 < energy[3] / energy[4] < 2000, (energy[3], energy[4])
    assert 50 < force[3] / force[4] < 200, (force[3], force[4])


# second derivatives and time -------------------------------------------------------------------------------


def test_double_backward_parameter_gradient_matches_finite_difference(nets):
    """Training an energy model differentiates a loss of s = -grad E w.r.t. the weights (create_graph=True)."""
    net = nets("energy")
    model = EnergyScore(net, centred=True)
    x, t = frames()
    target = remove_centroid(torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=DTYPE))

    def loss():
        return ((model.score(x, t, create_graph=True) - target) ** 2).sum()

    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(), params, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    assert len(used) > 0.8 * len(params)
    assert all(torch.isfinite(g).all() for _, g in used)
    # directional derivative along a random direction v: g . v vs (L(p + h v) - L(p - h v)) / 2h
    g = torch.Generator().manual_seed(5)
    directions = [torch.randn(p.shape, generator=g, dtype=DTYPE) for p, _ in used]
    analytic = sum((grad * v).sum() for (_, grad), v in zip(used, directions, strict=True))
    saved = [p.detach().clone() for p, _ in used]
    values = []
    try:
        for sign in (1, -1):
            with torch.no_grad():
                for (p, _), v, p0 in zip(used, directions, saved, strict=True):
                    p.copy_(p0 + sign * FD_STEP * v)
            values.append(loss().item())
    finally:
        with torch.no_grad():
            for (p, _), p0 in zip(used, saved, strict=True):
                p.copy_(p0)
    numeric = (values[0] - values[1]) / (2 * FD_STEP)
    assert abs(analytic) > 1e-2
    assert abs(analytic - numeric) < FD_RTOL * abs(analytic)


def test_time_derivative_matches_finite_difference(nets):
    model = EnergyScore(nets("energy"), centred=True)
    x, _ = frames(n_frames=4)
    t = torch.tensor([1e-4, 1e-2, 0.3, 0.9], dtype=DTYPE)
    _, dedt = model.score_and_time_derivative(x, t, create_graph=False)
    h = 1e-4 * t  # relative steps: the log-t features vary on the scale of t itself
    with torch.no_grad():
        numeric = (model.energy(x, t + h) - model.energy(x, t - h)) / (2 * h)
    assert dedt.shape == (4,) and (dedt.abs() > 1e-3).all()
    assert ((dedt - numeric).abs() < FD_RTOL * dedt.abs()).all(), (dedt, numeric)


# bad input -------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(dim=2), "3-D space"),
    (dict(bead_types=[0, 1, 0, 2]), "bead_types has 4 entries"),
    (dict(n_types=2), r"bead_types must be a list of ints in \[0, 2\)"),
    (dict(reflection="even"), "reflection must be one of"),
    (dict(hidden_irreps="8x0e+4x1o+4x1e+2x3o"), "l > 2"),
    (dict(hidden_irreps="8x0e+4x0o+4x1o"), r"lack pseudovectors \(1e\)"),
    (dict(hidden_irreps="8x0e+4x0o+4x1e"), r"lack vectors \(1o\)"),
    (dict(hidden_irreps="8x0e", reflection="invariant", output="score"), r"lack vectors \(1o\)"),
    (dict(hidden_irreps="8x0e+4x1o+4x1e", reflection="invariant"), "unnatural-parity"),
    (dict(hidden_irreps="4x0o+4x1o+4x1e"), r"need even scalars \(0e\)"),
    (dict(n_layers=1), "n_layers >= 2"),
    (dict(graph="knn"), "graph must be 'full' or 'radius'"),
    (dict(output="forces"), "output must be 'energy' or 'score'"),
    (dict(cutoff=-1.0), "cutoff > 0"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_options_raise_value_error(options, message):
    kwargs = {**OPTIONS, **options}
    dim = kwargs.pop("dim", 3)
    with pytest.raises(ValueError, match=message):
        EquivariantGNN(5, dim, **kwargs)


def test_valid_neighbours_of_the_bad_options_build():
    """One layer and vectors-only features are fine for an E(3)-invariant model (no pseudovectors needed)."""
    options = {**OPTIONS, "hidden_irreps": "8x0e+4x1o", "reflection": "invariant", "n_layers": 1}
    for output in ("energy", "score"):
        net = EquivariantGNN(5, output=output, **options)
        x, t = frames()
        assert net(x, t).detach().abs().max() > 1e-3 and len(net.layers) == 1


def test_bad_inputs_raise_value_error(nets):
    net = nets("energy")
    x, t = frames()
    for bad in (x[..., :2], x[:, :4], x[0], torch.cat([x, x[:, :1]], 1)):
        with pytest.raises(ValueError, match=r"expects \(B, 5, 3\)"):
            net(bad, t)
    for bad in (t[:2], t[:, None].expand(3, 2)):
        with pytest.raises(ValueError, match="t has shape"):
            net(x, bad)


# plugging into the models ----------------------------------------------------------------------------------


def spec(parameterisation="energy", **kwargs) -> ModelSpec:
    return ModelSpec(
        n_particles=5, dim=3, network="gnn", network_options=dict(OPTIONS), parameterisation=parameterisation, **kwargs
    )


@pytest.fixture(scope="module")
def spec_models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(11)
            cache[name] = {
                "energy": lambda: build_score_model(spec("energy")),
                "score": lambda: build_score_model(spec("score")),
                "mixture": lambda: build_score_model(spec(mixture_boundaries=[0.3])),
                "mixed": lambda: build_score_model(spec(mixture_boundaries=[0.3], large_t_parameterisation="score")),
            }[name]().to(DTYPE)
        return cache[name]

    return get


@pytest.mark.parametrize("parameterisation", ["energy", "score"])
def test_build_score_model_with_the_gnn(spec_models, parameterisation):
    model = spec_models(parameterisation)
    assert isinstance(model, EnergyScore if parameterisation == "energy" else DirectScore)
    assert isinstance(model.net, EquivariantGNN) and model.net.output == parameterisation
    assert model.net.embedding.types.tolist() == BEAD_TYPES
    x, t = frames()
    s = model.score(x, t)
    assert s.shape == (3, 5, 3) and torch.isfinite(s).all() and s.abs().max() > 1e-3
    assert s.sum(1).abs().max() < TOL  # centred
    torch.manual_seed(0)
    rotation = o3.rand_matrix(dtype=DTYPE)
    assert (model.score(x @ rotation.T + 1.0, t) - s @ rotation.T).abs().max() < TOL
    if parameterisation == "energy":
        assert model.energy(x, t).shape == (3,)


@pytest.mark.parametrize("name", ["mixture", "mixed"])
def test_mixture_of_gnn_experts_routes_by_time(spec_models, name):
    """Two experts split at t = 0.3: both energy models, or ("mixed") a direct score model above 0.3."""
    model = spec_models(name)
    assert isinstance(model, MixtureOfExperts) and model.boundaries == (0.3,)
    small, large = model.experts
    assert isinstance(small, EnergyScore) and isinstance(large, EnergyScore if name == "mixture" else DirectScore)
    x, _ = frames(n_frames=4)
    t = torch.tensor([0.1, 0.5, 0.2, 0.9], dtype=DTYPE)
    s = model.score(x, t)
    assert torch.equal(s[[0, 2]], small.score(x[[0, 2]], t[[0, 2]]))
    assert torch.equal(s[[1, 3]], large.score(x[[1, 3]], t[[1, 3]]))
    assert (small.score(x, t) - large.score(x, t)).abs().max() > 1e-3  # the experts are different networks
    assert model.energy(x[[0, 2]], t[[0, 2]]).shape == (2,)
    if name == "mixture":
        assert torch.equal(model.energy(x, t)[[1, 3]], large.energy(x[[1, 3]], t[[1, 3]]))
    else:
        with pytest.raises(TypeError, match="direct score model"):
            model.energy(x, t)


def test_diffusion_model_save_load_round_trip_is_bit_identical(spec_models, tmp_path):
    score_model = copy.deepcopy(spec_models("energy")).to(torch.float32)
    model = DiffusionModel(spec("energy"), score_model, VPSDE(), scale=0.25, kT=2.49)
    assert model.dtype == torch.float32
    path = model.save(tmp_path / "gnn.safetensors")
    loaded = DiffusionModel.load(path, dtype=torch.float32)
    assert loaded.spec == model.spec and loaded.dtype == torch.float32
    assert loaded.score_model.net.embedding.types.tolist() == BEAD_TYPES
    pos = 0.25 * torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(6)).to(torch.float32)
    for t in (None, 0.05, 0.7):
        assert torch.equal(loaded.energy(pos, t), model.energy(pos, t))
        assert torch.equal(loaded.forces(pos, t), model.forces(pos, t))
