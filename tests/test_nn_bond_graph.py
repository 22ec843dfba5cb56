"""The bond-graph networks (molscore.nn.bond_graph): symmetries, chirality, torsion features, collinear inputs.

Both networks are checked in float64: rotations and translations to rounding (e3nn's ``assert_equivariant`` on
energy and score with ``do_parity=False``: a chiral score is not parity-equivariant), a mirror image changes the
energy by a clear margin, exchanging beads of equal type leaves the graph network's energy unchanged, and
configurations with three collinear beads (reached by noised samples at large t) give finite energies, forces and
Fokker-Planck residuals.
"""

import math

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from molscore.diffusion import VPSDE
from molscore.geometry import dihedral
from molscore.models import DiffusionModel, ModelSpec, build_score_model
from molscore.models.parameterisation import EnergyScore
from molscore.nn import BondGraphMLP, BondGraphNet
from molscore.nn.bond_graph import angle_cosines, torsion_features
from molscore.topology import proper_dihedrals
from molscore.train.losses import loss_terms

pytestmark = pytest.mark.usefixtures("one_thread", "float64_default")

DTYPE = torch.float64
TOL, VECTOR_TOL, MARGIN = 1e-10, 1e-8, 1e-3
CHAIN = [[0, 1], [1, 2], [2, 3], [3, 4]]
"""The 5-bead backbone C-N-CA-C-N."""
BRANCHED = [[0, 1], [1, 2], [1, 3], [3, 4], [3, 5]]
"""A branched molecule: beads 2 and 0 hang off bead 1, beads 4 and 5 off bead 3."""
BRANCHED_TYPES = [0, 1, 0, 1, 2, 2]
"""Beads 4 and 5 are equivalent (same type, same bonds), and so are 0 and 2."""
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=DTYPE))


def networks():
    torch.manual_seed(0)
    graph = BondGraphNet(6, bonds=BRANCHED, bead_types=BRANCHED_TYPES, hidden=16, n_layers=2, n_radial=8).to(DTYPE)
    mlp = BondGraphMLP(6, bonds=BRANCHED, hidden=(32, 32)).to(DTYPE)
    return {"graph": graph, "mlp": mlp}


NETS = networks()


def frames(n=4, n_particles=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.8 * torch.randn(n, n_particles, 3, generator=g, dtype=DTYPE), torch.linspace(0.01, 0.9, n, dtype=DTYPE)


@pytest.mark.parametrize("name", ["graph", "mlp"])
def test_energy_and_score_are_rotation_and_translation_equivariant(name):
    net = NETS[name]
    x, t = frames()
    assert net(x, t).std() > MARGIN  # not a constant: the checks below are not vacuous
    errors = assert_equivariant(
        lambda x, t: net(x, t)[:, None], [x, t], irreps_in=["cartesian_points", None], irreps_out=["0e"],
        tolerance=TOL, do_parity=False, ntrials=3,
    )  # fmt: skip
    assert (0, True) in errors  # translations too
    model = EnergyScore(net, centred=False)
    assert_equivariant(
        lambda x, t: model.score(x, t), [x, t], irreps_in=["cartesian_points", None], irreps_out=["1o"],
        tolerance=VECTOR_TOL, do_parity=False, ntrials=3,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["graph", "mlp"])
def test_explicit_rotations_to_rounding_and_mirror_images_differ(name):
    net = NETS[name]
    x, t = frames()
    e = net(x, t)
    rotation = o3.rand_matrix(dtype=DTYPE)
    assert torch.allclose(net(x @ rotation.T + torch.randn(3, dtype=DTYPE), t), e, atol=TOL, rtol=0)
    # chiral: E(mirror x) != E(x) for every frame, by far more than rounding (untrained weights give a small,
    # but five orders of magnitude clear, difference)
    assert (net(x @ MIRROR, t) - e).abs().min() > 1e-5


def test_graph_network_exchanges_beads_of_equal_type():
    net = NETS["graph"]
    x, t = frames()
    e = net(x, t)
    for perm in ([0, 1, 2, 3, 5, 4], [2, 1, 0, 3, 4, 5]):
        assert torch.allclose(net(x[:, perm], t), e, atol=TOL, rtol=0)
    assert (net(x[:, [0, 1, 2, 4, 3, 5]], t) - e).abs().max() > MARGIN  # beads 3 and 4 differ in type and bonds


def test_torsion_features_are_the_enveloped_dihedral_harmonics():
    """z = sin(theta1) sin(theta2) e^{i phi}; z^m its powers; phi as mdtraj / molscore.geometry.dihedral."""
    x, _ = frames(n=20, n_particles=5)
    quartets = proper_dihedrals(CHAIN, 5)
    z = torsion_features(x.transpose(0, 1), quartets, harmonics=3)  # (Q, B, 6)
    phi = dihedral(x, quartets).T  # (Q, B)
    triples = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    sin = (1 - angle_cosines(x.transpose(0, 1), triples) ** 2).sqrt()  # sin of the angles at beads 1, 2, 3
    envelope = torch.stack([sin[0] * sin[1], sin[1] * sin[2]])
    for m in (1, 2, 3):
        assert torch.allclose(z[..., 2 * m - 2], envelope**m * torch.cos(m * phi), atol=1e-12)
        assert torch.allclose(z[..., 2 * m - 1], envelope**m * torch.sin(m * phi), atol=1e-12)


@pytest.mark.parametrize("name", ["graph", "mlp"])
def test_collinear_beads_give_finite_energies_forces_and_fp_residuals(name):
    """Three collinear beads (a bond angle of pi, where the dihedral is undefined) and two coincident-free
    near-collinear ones, at t = 1: the energy, the score and the FP residual stay finite."""
    net = NETS[name]
    x, _ = frames(n=3)
    x[0, 0], x[0, 2] = x[0, 1] + torch.tensor([1.0, 0, 0], dtype=DTYPE), x[0, 1] - torch.tensor([1.0, 0, 0], dtype=DTYPE)
    x[1, 4] = x[1, 3] + 0.7 * (x[1, 3] - x[1, 1])  # 1-3-4 exactly collinear
    x[2, 4] = x[2, 3] + 0.7 * (x[2, 3] - x[2, 1]) + 1e-9  # and nearly so
    model = EnergyScore(net, centred=True)
    t = torch.ones(3, dtype=DTYPE)
    assert torch.isfinite(model.energy(x, t)).all()
    assert torch.isfinite(model.score(x, t)).all()
    terms = loss_terms(model, VPSDE(), x, t, torch.randn_like(x), 15, True, fp_count=3)
    assert torch.isfinite(terms.dsm).all() and torch.isfinite(terms.fp).all()
    (terms.dsm.mean() + terms.fp.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", [BondGraphNet, BondGraphMLP])
def test_bad_options_name_the_problem(cls):
    with pytest.raises(ValueError, match="need the molecule's bonds"):
        cls(5)
    with pytest.raises(ValueError, match="distinct bead indices"):
        cls(5, bonds=[[0, 5]])
    with pytest.raises(ValueError, match="expects \\(B, 5, 3\\)"):
        cls(5, bonds=CHAIN)(torch.zeros(2, 4, 3), torch.zeros(2))


def test_saved_model_round_trips_and_reports_its_float_dtype():
    """The index buffers are integers: the model's dtype and device come from its floating-point tensors."""
    spec = ModelSpec(5, 3, True, "energy", "bondgraph", {"bonds": CHAIN, "hidden": 8, "n_radial": 4}, bonds=CHAIN)
    model = DiffusionModel(spec, build_score_model(spec, DTYPE), VPSDE(), 0.2, 2.5)
    assert model.dtype == DTYPE
    x = torch.randn(3, 5, 3, dtype=DTYPE) * 0.2
    assert math.isfinite(float(model.energy(x).sum().detach()))


def test_a_network_with_a_persistent_integer_buffer_has_a_float_dtype():
    """The dtype bug of the issue: the first state-dict tensor used to decide (an int64 buffer broke sampling)."""
    net = BondGraphMLP(5, bonds=CHAIN, hidden=(8,)).to(DTYPE)
    wrapped = EnergyScore(net, centred=True)
    wrapped.register_buffer("a_long_buffer", torch.arange(3))  # a persistent int64 buffer ahead of the weights
    spec = ModelSpec(5, 3, True, "energy", "bondgraph_mlp", {"bonds": CHAIN})
    model = DiffusionModel(spec, wrapped, VPSDE(), 0.2, 2.5)
    assert next(iter(model.state_dict().values())).dtype == torch.long
    assert model.dtype == DTYPE


def test_noise_level_features_are_flat_below_the_floor_and_resolve_t_above_it():
    """Below sigma_floor the features (hence the network's t-dependence) barely move, so the force field at t_min
    is the one learned near the floor; above it they separate noise levels."""
    from molscore.nn.embedding import noise_level_features

    t = torch.tensor([1e-5, 1e-3, 1e-2, 0.1, 0.5], dtype=DTYPE)
    f = noise_level_features(t, 16, sigma_floor=0.1)
    assert (f[1] - f[0]).abs().max() < 1e-3 and (f[2] - f[0]).abs().max() < 0.1
    assert (f[3] - f[0]).abs().max() > 0.3 and (f[4] - f[3]).abs().max() > 0.3
    t.requires_grad_(True)
    (grad,) = torch.autograd.grad(noise_level_features(t, 16, sigma_floor=0.1).sum(), t)
    assert grad[0].abs() < 10  # dE/dt stays bounded as t -> 0 (log-t features: ~1/t = 1e5)


def test_radius_graph_gives_the_full_graph_energy_and_forces_with_linear_pairs():
    """A 40-bead random-walk chain whose cutoff excludes most pairs: the radius-graph layout (flat nodes, pairs
    closer than the cutoff) and the full graph give one energy and one force field with the same weights, and a
    chiral one (the mirror image differs)."""
    n, cutoff = 40, 1.2
    bonds = [[i, i + 1] for i in range(n - 1)]
    types = [i % 3 for i in range(n)]
    torch.manual_seed(0)
    full = BondGraphNet(n, bonds=bonds, bead_types=types, hidden=16, n_layers=2, n_radial=8, cutoff=cutoff).to(DTYPE)
    radius = BondGraphNet(n, bonds=bonds, bead_types=types, hidden=16, n_layers=2, n_radial=8, cutoff=cutoff,
                          graph="radius").to(DTYPE)  # fmt: skip
    radius.load_state_dict(full.state_dict())
    g = torch.Generator().manual_seed(3)
    steps = torch.randn(3, n, 3, generator=g, dtype=DTYPE)
    x = (0.5 * steps / steps.norm(dim=-1, keepdim=True)).cumsum(1).requires_grad_(True)  # bonds of 0.5
    t = torch.tensor([0.01, 0.3, 0.9], dtype=DTYPE)
    close = (torch.cdist(x, x) < cutoff).triu(1).sum().item()
    assert close < 0.5 * 3 * n * (n - 1) / 2  # the cutoff removes most pairs
    e_full, e_radius = full(x, t), radius(x, t)
    torch.testing.assert_close(e_radius, e_full, rtol=1e-12, atol=1e-12)
    (f_full,), (f_radius,) = (torch.autograd.grad(e.sum(), x) for e in (e_full, e_radius))
    torch.testing.assert_close(f_radius, f_full, rtol=1e-10, atol=1e-12)
    assert (radius(x @ MIRROR, t) - e_radius).abs().max() > MARGIN
    with pytest.raises(ValueError, match="graph must be 'full' or 'radius'"):
        BondGraphNet(n, bonds=bonds, graph="knn")


def test_signed_volumes_see_a_stereocentre_and_its_mirror_image():
    from molscore.nn.bond_graph import signed_volumes
    from molscore.topology import branch_centres

    centres = branch_centres([[0, 1], [0, 2], [0, 3], [0, 4], [4, 5]], 6)  # bead 0: four neighbours; bead 4: two
    assert centres.tolist() == [[0, 1, 2, 3]]
    tetra = torch.tensor([[0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [-2, -2, 2]], dtype=DTYPE)
    planar = tetra.clone()
    planar[1:4, 2] = 0.0  # beads 1-3 in the plane of the centre
    x = torch.stack([tetra, tetra @ MIRROR, planar], dim=1)  # node-major (N, B, 3)
    v = signed_volumes(x, centres)[0]
    assert v[0] == pytest.approx(-v[1]) and abs(v[0]) > 0.5 and v[2] == pytest.approx(0.0, abs=1e-12)


def test_shape_volumes_flip_under_a_mirror_and_stay_bounded_and_smooth():
    """The shape chirality of the bond-graph MLP: signed volumes of bead triples about the centroid change sign
    under a reflection, keep their value under rotations and translations, lie in [-1, 1] even for the noise-sized
    inputs of t = 1 and beyond, and have finite gradients where beads coincide with the centroid."""
    from molscore.nn.bond_graph import shape_volumes
    from molscore.topology import chirality_triples

    triples = chirality_triples(BRANCHED, 6)
    assert len(triples) == 20  # every triple of six beads
    x, _ = frames(n=5)
    x = x.transpose(0, 1)  # node-major
    v = shape_volumes(x, triples)
    rotation = o3.rand_matrix(dtype=DTYPE)
    torch.testing.assert_close(shape_volumes(x @ rotation.T + 3.0, triples), v, rtol=0, atol=1e-12)
    torch.testing.assert_close(shape_volumes(x @ MIRROR, triples), -v, rtol=0, atol=1e-12)
    assert v.abs().max() > 0.05
    big = 30 * torch.randn(6, 4, 3, dtype=DTYPE)
    assert shape_volumes(big, triples).abs().max() <= 1
    zero = torch.zeros(6, 1, 3, dtype=DTYPE, requires_grad=True)
    (grad,) = torch.autograd.grad(shape_volumes(zero, triples).sum(), zero)
    assert torch.isfinite(grad).all()


def test_chirality_triples_use_the_skeleton_of_larger_molecules():
    """Up to 12 beads every triple; beyond, the triples of beads with two or more bonds (hydrogens and carbonyl
    oxygens left out): 56 for the 8-bead skeleton of all-atom alanine dipeptide; a longer skeleton (a protein
    chain) 12 of its beads evenly spread."""
    from molscore.topology import chirality_triples

    chain = [[i, i + 1] for i in range(13)]  # 14 beads, 12 of them inner
    triples = chirality_triples(chain, 14)
    assert len(triples) == math.comb(12, 3) and not set(triples.flatten().tolist()) & {0, 13}
    assert len(chirality_triples(CHAIN, 5)) == math.comb(5, 3)
    protein = chirality_triples([[i, i + 1] for i in range(47)], 48)  # a 48-bead C-alpha chain: 12 spread beads
    beads = sorted(set(protein.flatten().tolist()))
    assert len(protein) == math.comb(12, 3) and beads[0] == 1 and beads[-1] == 46
    assert max(b - a for a, b in zip(beads[:-1], beads[1:], strict=True)) <= 5  # spread along the whole chain


def test_bond_graph_mlp_without_shape_volumes_has_the_older_inputs():
    """shape_chirality=False builds the network of models saved before the shape volumes (one input per triple
    fewer), and loading weights of the other kind names the way out."""
    from molscore.models.spec import load_weights

    new, old = (
        BondGraphMLP(6, bonds=BRANCHED, hidden=(8,)),
        BondGraphMLP(6, bonds=BRANCHED, hidden=(8,), shape_chirality=False),
    )
    assert new.mlp[0].in_features - old.mlp[0].in_features == 20
    with pytest.raises(ValueError, match="shape_chirality: false"):
        load_weights(new, old.state_dict(), "model.safetensors")
