"""Symmetries of the equivariant graph network (molscore.nn): rotations, translations, permutations, parity.

The default model (``reflection="odd"``) is SE(3)-invariant (energy) / -equivariant (score) but deliberately
NOT reflection-invariant, so it can tell a chiral molecule from its mirror image; ``reflection="invariant"``
is E(3)-invariant. Rotations are checked with e3nn's own ``assert_equivariant``; parity is checked both ways:
an exact symmetry of the invariant model, broken by a clear margin in the chiral one.

Everything runs in float64 on tiny networks, so "equal" means equal to 1e-10 (rounding is ~1e-15 here) and
"different" means different by more than 1e-3, at least seven orders of magnitude above the equality
tolerance.
"""

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant, equivariance_error

from molscore.models.parameterisation import EnergyScore
from molscore.nn import EquivariantGNN

DTYPE = torch.float64
TOL = 1e-10
"""Equality tolerance in float64 (relative to outputs of order one)."""
VECTOR_TOL = 1e-8
"""e3nn's checker maps the rotation to its Wigner D through Euler angles (acos), which loses precision near the
poles: up to ~1e-10 for l = 1 outputs in float64. Explicit rotation matrices are tested to TOL below."""
MARGIN = 1e-3
"""A broken symmetry must show up by more than this."""
BEAD_TYPES = [0, 1, 0, 2, 1]
"""Beads 0 and 2 share a type, as do 1 and 4: those pairs are exchangeable."""
HIDDEN = {"odd": "8x0e+4x0o+4x1o+4x1e", "invariant": "8x0e+4x1o+2x2e"}
SMALL = dict(n_layers=2, radial_hidden=16, time_embedding_dim=8)
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=DTYPE))
"""Reflection through the yz plane (a true mirror, not the inversion -x)."""


pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")


def make_net(output="energy", reflection="odd", seed=0, **options) -> EquivariantGNN:
    """A small float64 network; the invariant one carries l = 2 features and harmonics (lmax = 2)."""
    torch.manual_seed(seed)
    kwargs = dict(SMALL, bead_types=BEAD_TYPES, hidden_irreps=HIDDEN[reflection], reflection=reflection)
    if reflection == "invariant":
        kwargs["lmax"] = 2
    kwargs.update(options)
    return EquivariantGNN(len(kwargs["bead_types"]), output=output, **kwargs).to(DTYPE)


@pytest.fixture(scope="module")
def nets():
    """``nets(output, reflection)``: one shared network per combination, built on first use."""
    cache = {}

    def get(output="energy", reflection="odd"):
        if (output, reflection) not in cache:
            cache[output, reflection] = make_net(output, reflection)
        return cache[output, reflection]

    return get


def frames(n_frames=3, n_particles=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 0.8 * torch.randn(n_frames, n_particles, 3, generator=g, dtype=DTYPE)
    t = torch.linspace(0.05, 0.9, n_frames, dtype=DTYPE)
    return x, t


def energy_fn(net):
    """(x, t) -> (B, 1): e3nn's checker wants the scalar as a trailing irreps axis of length 1."""
    return lambda x, t: net(x, t)[:, None]


def forces_fn(net):
    """(x, t) -> score -grad E (B, N, 3) of the energy network, through molscore's EnergyScore."""
    model = EnergyScore(net, centred=False)
    return lambda x, t: model.score(x, t)


def assert_nondegenerate(out: torch.Tensor):
    """Guard against vacuous symmetry checks: the output must vary between frames / beads."""
    out = out.detach()
    assert out.std() > MARGIN, f"output is (nearly) constant: {out}"


# rotations (e3nn's checker) --------------------------------------------------------------------------------


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_energy_is_invariant_under_rotations_and_translations(nets, reflection):
    """assert_equivariant rotates x (and, for the invariant model, also applies parity) and translates it."""
    torch.manual_seed(2)
    net = nets("energy", reflection)
    x, t = frames()
    assert_nondegenerate(net(x, t))
    errors = assert_equivariant(
        energy_fn(net),
        [x, t],
        irreps_in=["cartesian_points", None],
        irreps_out=["0e"],
        tolerance=TOL,
        do_parity=reflection == "invariant",
        ntrials=3,
    )
    assert (0, True) in errors  # translations were tested too
    if reflection == "invariant":
        assert (1, False) in errors


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
@pytest.mark.parametrize("output", ["score", "forces"])
def test_score_head_and_forces_rotate_with_the_input(nets, reflection, output):
    """The direct score head and the energy model's forces -grad E are vectors (1o)."""
    torch.manual_seed(3 if output == "score" else 4)
    vector = (lambda net: lambda x, t: net(x, t)) if output == "score" else forces_fn
    fn = vector(nets("score" if output == "score" else "energy", reflection))
    x, t = frames()
    assert_nondegenerate(fn(x, t))
    assert_equivariant(
        fn,
        [x, t],
        irreps_in=["cartesian_points", None],
        irreps_out=["1o"],
        tolerance=VECTOR_TOL,
        do_parity=reflection == "invariant",
        ntrials=3,
    )


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_vectors_rotate_exactly_with_explicit_rotations(nets, reflection):
    """s(R x + c) = R s(x) and -grad E(R x + c) = -R grad E(x) to rounding, R from random quaternions."""
    x, t = frames()
    score, force = nets("score", reflection), forces_fn(nets("energy", reflection))
    s, f = score(x, t).detach(), force(x, t)
    torch.manual_seed(8)
    for _ in range(3):
        rotation, shift = o3.rand_matrix(dtype=DTYPE), torch.randn(3, dtype=DTYPE)
        moved = x @ rotation.T + shift
        assert (score(moved, t).detach() - s @ rotation.T).abs().max() < TOL
        assert (force(moved, t) - f @ rotation.T).abs().max() < TOL


def test_the_checker_catches_a_broken_symmetry(nets):
    """Sanity check of the tolerance: a 1 % anisotropic stretch of the input is reported as not equivariant."""
    torch.manual_seed(5)
    net = nets("energy", "odd")
    x, t = frames()
    stretch = torch.tensor([1.0, 1.0, 1.01], dtype=DTYPE)
    with pytest.raises(AssertionError, match="equivariance error"):
        assert_equivariant(
            lambda x, t: net(x * stretch, t)[:, None],
            [x, t],
            irreps_in=["cartesian_points", None],
            irreps_out=["0e"],
            tolerance=TOL,
            do_parity=False,
        )


# parity: a symmetry of the invariant model only ------------------------------------------------------------


def test_chiral_energy_is_not_parity_invariant(nets):
    net = nets("energy", "odd")
    x, t = frames()
    e = net(x, t).detach()
    for mirrored in (-x, x @ MIRROR):
        assert (net(mirrored, t).detach() - e).abs().max() > MARGIN
    # e3nn's checker agrees: rotations are fine, improper rotations are not
    torch.manual_seed(6)
    errors = equivariance_error(
        energy_fn(net), [x, t], irreps_in=["cartesian_points", None], irreps_out=["0e"], do_translation=False
    )
    assert errors[(0, False)].max() < TOL
    assert errors[(1, False)].max() > MARGIN


def test_invariant_energy_is_parity_invariant(nets):
    net = nets("energy", "invariant")
    x, t = frames()
    e = net(x, t).detach()
    for mirrored in (-x, x @ MIRROR):
        assert (net(mirrored, t).detach() - e).abs().max() < TOL


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_score_of_the_mirror_image(nets, reflection):
    """Invariant model: s(M x) = M s(x) for a mirror M. Chiral model: not so, by a clear margin."""
    net = nets("score", reflection)
    x, t = frames()
    mirrored_score = net(x, t).detach() @ MIRROR
    error = (net(x @ MIRROR, t).detach() - mirrored_score).abs().max()
    if reflection == "invariant":
        assert error < TOL
    else:
        assert error > MARGIN


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_forces_of_the_mirror_image(nets, reflection):
    net = nets("energy", reflection)
    force = forces_fn(net)
    x, t = frames()
    error = (force(x @ MIRROR, t) - force(x, t) @ MIRROR).abs().max()
    if reflection == "invariant":
        assert error < TOL
    else:
        assert error > MARGIN


# translations and permutations -----------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["energy", "score"])
@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_translation_invariance(nets, output, reflection):
    net = nets(output, reflection)
    x, t = frames()
    shift = torch.tensor([3.0, -7.0, 11.0], dtype=DTYPE)
    out = net(x, t).detach()
    assert_nondegenerate(out)
    assert (net(x + shift, t).detach() - out).abs().max() < TOL
    # and per frame: a different shift for each frame
    shifts = 10 * torch.randn(len(x), 1, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    assert (net(x + shifts, t).detach() - out).abs().max() < TOL


EQUAL_TYPE_PERMUTATIONS = [[2, 1, 0, 3, 4], [0, 4, 2, 3, 1], [2, 4, 0, 3, 1]]
"""Swaps of beads of equal type (0 <-> 2, 1 <-> 4, both)."""
MIXED_TYPE_PERMUTATIONS = [[1, 0, 2, 3, 4], [0, 1, 3, 2, 4], [3, 1, 2, 0, 4]]
"""Swaps of beads of different types (0 <-> 1, 2 <-> 3, 0 <-> 3)."""


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_energy_is_invariant_under_swaps_of_equal_beads(nets, reflection):
    net = nets("energy", reflection)
    x, t = frames()
    e = net(x, t).detach()
    for perm in EQUAL_TYPE_PERMUTATIONS:
        assert (net(x[:, perm], t).detach() - e).abs().max() < TOL, perm
    for perm in MIXED_TYPE_PERMUTATIONS:
        assert (net(x[:, perm], t).detach() - e).abs().min() > MARGIN, perm


@pytest.mark.parametrize("reflection", ["odd", "invariant"])
def test_score_is_equivariant_under_swaps_of_equal_beads(nets, reflection):
    """s(P x) = P s(x) when P only exchanges beads of the same type; not so for beads of different types."""
    net = nets("score", reflection)
    x, t = frames()
    s = net(x, t).detach()
    for perm in EQUAL_TYPE_PERMUTATIONS:
        assert (net(x[:, perm], t).detach() - s[:, perm]).abs().max() < TOL, perm
    for perm in MIXED_TYPE_PERMUTATIONS:
        assert (net(x[:, perm], t).detach() - s[:, perm]).abs().max() > MARGIN, perm


def test_same_types_make_every_bead_exchangeable():
    """With the default bead_types (all 0) every permutation leaves the energy unchanged."""
    net = make_net(bead_types=[0, 0, 0, 0])
    x, t = frames(n_particles=4)
    e = net(x, t).detach()
    assert_nondegenerate(e)
    for perm in ([1, 0, 2, 3], [3, 2, 1, 0], [1, 2, 3, 0]):
        assert (net(x[:, perm], t).detach() - e).abs().max() < TOL


# chirality can be learned ----------------------------------------------------------------------------------

TETRAHEDRON = 0.8 * torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=DTYPE)
"""Four beads of four distinct types on a tetrahedron: a chiral centre (its mirror image is no rotation of it)."""


def fit_chirality(reflection: str, steps: int) -> tuple[EquivariantGNN, float, float]:
    """Fit E(x) = -1, E(mirror x) = +1 with Adam; returns the net, the initial and the final loss."""
    net = make_net("energy", reflection, seed=7, bead_types=[0, 1, 2, 3], avg_neighbours=3.0)
    x = torch.stack([TETRAHEDRON, TETRAHEDRON @ MIRROR])
    t = torch.full((2,), 0.05, dtype=DTYPE)
    target = torch.tensor([-1.0, 1.0], dtype=DTYPE)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = ((net(x, t) - target) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return net, losses[0], ((net(x, t) - target) ** 2).mean().item()


def rotated_pair(seed: int) -> torch.Tensor:
    """The tetrahedron and its mirror image, each rotated and translated at random: (2, 4, 3)."""
    torch.manual_seed(seed)
    out = []
    for x in (TETRAHEDRON, TETRAHEDRON @ MIRROR):
        out.append(x @ o3.rand_matrix(dtype=DTYPE).T + torch.randn(3, dtype=DTYPE))
    return torch.stack(out)


def test_chiral_model_learns_to_tell_mirror_images_apart():
    net, initial, final = fit_chirality("odd", steps=80)
    assert initial > 0.5 and final < 1e-2, (initial, final)
    t = torch.full((2,), 0.05, dtype=DTYPE)
    for seed in range(3):  # the learned energies hold in any pose (SE(3) invariance)
        e_x, e_mirror = net(rotated_pair(seed), t).detach()
        assert e_mirror - e_x > 1.5, (e_x, e_mirror)


def test_invariant_model_cannot_tell_mirror_images_apart():
    """With E(x) = E(mirror x) for every parameter value, the loss cannot go below 1 (both energies 0)."""
    net, _, final = fit_chirality("invariant", steps=40)
    assert final > 1 - 1e-9
    t = torch.full((2,), 0.05, dtype=DTYPE)
    for seed in range(3):
        e_x, e_mirror = net(rotated_pair(seed), t).detach()
        assert abs(e_mirror - e_x) < TOL


def test_float64_models_built_from_float32_default_keep_full_precision():
    """e3nn computes constants at construction: build_score_model(dtype=float64) must build in float64 even
    when torch's default is float32 (as when a saved model is loaded for a float64 run)."""
    from molscore.models.spec import ModelSpec, build_score_model

    spec = ModelSpec(n_particles=5, dim=3, network="gnn", network_options={
        "hidden_irreps": "8x0e+4x1o+2x2e", "lmax": 2, "n_layers": 2, "reflection": "invariant"})  # fmt: skip
    torch.set_default_dtype(torch.float32)
    model = build_score_model(spec, torch.float64)
    assert torch.get_default_dtype() == torch.float32  # restored
    torch.set_default_dtype(torch.float64)
    x, t = frames()
    torch.manual_seed(3)
    rotation = o3.rand_matrix()
    energy, rotated = model.energy(x, t), model.energy(x @ rotation.T, t)
    assert energy.dtype == torch.float64 and (energy - rotated).abs().max() < 1e-12 * energy.abs().max().clamp_min(1)
