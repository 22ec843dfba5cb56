"""Force-field diagnostic (Zwanzig free-energy differences along torsion shifts against the MD histogram).

Ground truth: a 5-bead chain with fixed bonds and angles whose (phi, psi) are drawn exactly from
exp(-U), U = a cos(phi - phi0) + b cos(psi - psi0), so every F(b + delta) - F(b) is a ratio of 1-D integrals; and
a centred Gaussian in diffusion coordinates, whose diffused energy is exact at every t.
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from molscore.analysis.forcefield_diagnostic import (
    forcefield_diagnostic,
    forcefield_free_energy_errors,
    moving_beads,
    plot_forcefield_diagnostic,
    rotate_about_bond,
    torsion_free_energy_errors,
)
from molscore.diffusion.sde import VPSDE
from molscore.geometry import dihedral
from molscore.models.analytic import GaussianMixtureScore
from molscore.models.diffusion_model import DiffusionModel
from molscore.models.spec import ModelSpec
from molscore.potentials import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")

BONDS = [(0, 1), (1, 2), (2, 3), (3, 4)]
QUARTETS = {"phi": (0, 1, 2, 3), "psi": (1, 2, 3, 4)}
A, PHI0, B, PSI0 = 1.0, 0.5, 1.5, -2.0  # U = A cos(phi - PHI0) + B cos(psi - PSI0), kT
N_FRAMES = 50000


def chain(phi: np.ndarray, psi: np.ndarray, seed: int = 0, bond: float = 0.15, angle: float = 1.95) -> torch.Tensor:
    """(M, 5, 3) nm: 5-bead chains with all bonds ``bond`` nm, all angles ``angle`` rad and the dihedrals
    phi (0-1-2-3) and psi (1-2-3-4), randomly rotated and translated (NeRF construction)."""
    phi, psi = torch.as_tensor(phi, dtype=torch.float64), torch.as_tensor(psi, dtype=torch.float64)
    m = len(phi)
    x = torch.zeros(m, 5, 3, dtype=torch.float64)
    x[:, 1, 0] = bond
    x[:, 2, 0] = bond - bond * math.cos(angle)
    x[:, 2, 1] = bond * math.sin(angle)
    for n, chi in ((3, phi), (4, psi)):
        a, b, c = x[:, n - 3], x[:, n - 2], x[:, n - 1]
        bc = (c - b) / (c - b).norm(dim=-1, keepdim=True)
        normal = torch.linalg.cross(b - a, bc, dim=-1)
        normal = normal / normal.norm(dim=-1, keepdim=True)
        d = torch.stack(
            [-math.cos(angle) * torch.ones_like(chi), math.sin(angle) * chi.cos(), math.sin(angle) * chi.sin()], -1
        )
        frame = torch.stack([bc, torch.linalg.cross(normal, bc, dim=-1), normal], -1)  # columns
        x[:, n] = c + bond * (frame @ d[..., None])[..., 0]
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(m, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]  # proper rotations: keep the chirality
    return x @ q + torch.randn(m, 1, 3, generator=g, dtype=torch.float64)


def von_mises_angles(kappa: float, mu: float, n: int, rng) -> np.ndarray:
    """Exact draws from p(x) ∝ exp(-kappa cos(x - mu)) on [-pi, pi) by rejection from the uniform density."""
    out = np.empty(0)
    while out.size < n:
        x = rng.uniform(-np.pi, np.pi, 4 * n)
        keep = rng.uniform(size=x.size) < np.exp(-kappa * np.cos(x - mu) - abs(kappa))
        out = np.concatenate([out, x[keep]])
    return out[:n]


def torsion_energy(a: float, b: float):
    """energy_fn(pos) = a cos(phi - PHI0) + b cos(psi - PSI0), kT, from the chain's dihedrals."""

    def energy(pos: torch.Tensor) -> torch.Tensor:
        angles = dihedral(pos, torch.tensor([QUARTETS["phi"], QUARTETS["psi"]]))
        return a * torch.cos(angles[:, 0] - PHI0) + b * torch.cos(angles[:, 1] - PSI0)

    return energy


@pytest.fixture(scope="module")
def md_frames():
    rng = np.random.default_rng(1)
    phi, psi = von_mises_angles(A, PHI0, N_FRAMES, rng), von_mises_angles(B, PSI0, N_FRAMES, rng)
    return chain(phi, psi, seed=2), phi, psi


def exact_df(torsion: str, delta: float, cell: np.ndarray, bins: int = 18) -> np.ndarray:
    """Exact F(b + delta) - F(b), kT, for the separable U: a ratio of 1-D Boltzmann integrals along the shifted
    torsion (the other factor cancels)."""
    kappa, mu, idx = (A, PHI0, cell[:, 0]) if torsion == "phi" else (B, PSI0, cell[:, 1])
    w = 2 * np.pi / bins

    def integral(lo):
        return quad(lambda x: math.exp(-kappa * math.cos(x - mu)), lo, lo + w)[0]

    return np.array([-math.log(integral(-np.pi + i * w + delta) / integral(-np.pi + i * w)) for i in idx])


# (1) the rotation -------------------------------------------------------------------------------------------
def test_moving_beads_picks_the_smaller_side():
    assert moving_beads(BONDS, 5, QUARTETS["psi"]) == [4]
    assert moving_beads(BONDS, 5, QUARTETS["phi"]) == [0]
    # a branched molecule: 0-1-2-3-4 with side chain 5-6 on bead 3 and 7 on bead 1
    branched = [*BONDS, (3, 5), (5, 6), (1, 7)]
    assert moving_beads(branched, 8, (1, 2, 3, 4)) == [4, 5, 6]  # l side {4, 5, 6} vs i side {0, 1, 7}: a tie -> l
    assert moving_beads(branched, 8, (0, 1, 2, 3)) == [0, 7]
    with pytest.raises(ValueError, match="ring"):
        moving_beads([*BONDS, (4, 0)], 5, QUARTETS["psi"])
    with pytest.raises(ValueError, match="not bonded"):
        moving_beads([(0, 1), (2, 3), (3, 4)], 5, QUARTETS["phi"])


@pytest.mark.parametrize("torsion", ["phi", "psi"])
def test_rotate_about_bond_shifts_the_dihedral_and_nothing_else(torsion):
    rng = np.random.default_rng(3)
    pos = chain(rng.uniform(-np.pi, np.pi, 64), rng.uniform(-np.pi, np.pi, 64), seed=4)
    pos = pos + 0.01 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(5), dtype=pos.dtype)  # generic
    quartet = QUARTETS[torsion]
    moving = moving_beads(BONDS, 5, quartet)
    q = torch.tensor([QUARTETS["phi"], QUARTETS["psi"]])
    before = dihedral(pos, q)
    for delta in (1.0, 2.0, 3.0, -2.5, torch.linspace(-3, 3, 64, dtype=torch.float64)):
        out = rotate_about_bond(pos, quartet, moving, delta)
        after = dihedral(out, q)
        shifted, other = (0, 1) if torsion == "phi" else (1, 0)
        change = torch.remainder(after[:, shifted] - before[:, shifted] - delta + math.pi, 2 * math.pi) - math.pi
        assert change.abs().max() < 1e-10
        assert (after[:, other] - before[:, other]).abs().max() < 1e-10
        fixed = [a for a in range(5) if a not in moving]
        assert torch.equal(out[:, fixed], pos[:, fixed])
        lengths = [(out[:, i] - out[:, j]).norm(dim=-1) - (pos[:, i] - pos[:, j]).norm(dim=-1) for i, j in BONDS]
        assert torch.stack(lengths).abs().max() < 1e-12
    with pytest.raises(ValueError, match="exactly one end"):
        rotate_about_bond(pos, quartet, [quartet[0], quartet[3]], 1.0)
    with pytest.raises(ValueError, match="axis bead"):
        rotate_about_bond(pos, QUARTETS["psi"], [3, 4], 1.0)


def test_chain_builder_and_sampler(md_frames):
    pos, phi, psi = md_frames
    angles = dihedral(pos[:500], torch.tensor([QUARTETS["phi"], QUARTETS["psi"]])).numpy()
    wrapped = np.remainder(angles - np.stack([phi[:500], psi[:500]], 1) + np.pi, 2 * np.pi) - np.pi
    assert np.abs(wrapped).max() < 1e-9
    # circular mean of exp(-kappa cos(x - mu)) is at mu + pi, with resultant length I1(kappa) / I0(kappa)
    from scipy.special import i0, i1

    for x, kappa, mu in ((phi, A, PHI0), (psi, B, PSI0)):
        z = np.mean(np.exp(1j * x))
        assert abs(z - i1(kappa) / i0(kappa) * np.exp(1j * (mu + np.pi))) < 0.02


# (2) exact energy: Zwanzig = exact = histogram ----------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_result(md_frames):
    return torsion_free_energy_errors(torsion_energy(A, B), md_frames[0], QUARTETS, BONDS, n_bootstrap=60)


def test_exact_energy_matches_exact_differences_and_histogram(md_frames, exact_result):
    res = exact_result
    _, phi, psi = md_frames
    hist = np.histogram2d(phi, psi, bins=18, range=[[-np.pi, np.pi], [-np.pi, np.pi]])[0] / len(phi)
    assert res.bins == (18, 18) and set(res.shifts) == {(n, d) for n in ("phi", "psi") for d in (1.0, 2.0, 3.0)}
    z_model, z_md = [], []
    for (name, delta), s in res.shifts.items():
        assert s.n_bins >= 40, (name, delta, s.n_bins)  # not vacuous
        assert (s.err_model < 0.2).all() and (s.err_md < 0.2).all()
        exact = exact_df(name, delta, s.bins)
        np.testing.assert_allclose(s.weight, hist[s.bins[:, 0], s.bins[:, 1]])  # p(b) of MD
        assert s.mae == pytest.approx(np.sum(s.weight * np.abs(s.df_model - s.df_md)) / s.weight.sum())
        z_model.append((s.df_model - exact) / s.err_model)
        z_md.append((s.df_md - exact) / s.err_md)
        assert np.sum(s.weight * np.abs(s.df_model - exact)) / s.weight.sum() < 0.08
        assert abs(s.mean_error) < 0.05
        assert s.mae < 1.4 * s.noise_floor  # what is left is the noise of the two estimates
    w, d = (np.concatenate([getattr(s, a) for s in res.shifts.values()]) for a in ("weight", "df_model"))
    d = d - np.concatenate([s.df_md for s in res.shifts.values()])
    assert res.mae == pytest.approx(np.sum(w * np.abs(d)) / w.sum())  # pooled over torsions, shifts and bins
    z_model, z_md = np.concatenate(z_model), np.concatenate(z_md)
    for z in (z_model, z_md):  # unbiased, and the bootstrap errors are the right size
        assert np.abs(z).max() < 6  # ~2000 values, bootstrap errors from 60 resamples
        assert 0.5 < np.mean(z**2) < 1.6
    assert res.mae < 0.15 and res.mae < 1.25 * res.noise_floor
    assert res.n_bins > 400
    # the estimates span real free-energy differences (the test would be weak if they were all ~0)
    assert max(np.abs(s.df_md).max() for s in res.shifts.values()) > 2.0


# (3) a wrong energy is caught ---------------------------------------------------------------------------------
def test_wrong_energy_gives_large_errors(md_frames, exact_result):
    res = torsion_free_energy_errors(torsion_energy(A, 2 * B), md_frames[0], QUARTETS, BONDS, n_bootstrap=60)
    for delta in (1.0, 2.0, 3.0):
        assert res.shifts["psi", delta].mae > 0.5
        assert res.shifts["phi", delta].mae < 0.15  # phi is right and stays right
    assert res.mae > 0.3 > 2 * exact_result.mae
    flat = torsion_free_energy_errors(torsion_energy(A, 0.0), md_frames[0], QUARTETS, BONDS, n_bootstrap=60)
    assert all(flat.shifts["psi", d].mae > 0.5 for d in (1.0, 2.0, 3.0))


# (4) bad input --------------------------------------------------------------------------------------------------
def test_bad_input_is_rejected(md_frames):
    pos = md_frames[0][:200].clone()
    energy = torsion_energy(A, B)
    bad = pos.clone()
    bad[7, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        torsion_free_energy_errors(energy, bad, QUARTETS, BONDS)
    with pytest.raises(ValueError, match="shape"):
        torsion_free_energy_errors(energy, pos[..., :2], QUARTETS, BONDS)
    with pytest.raises(ValueError, match="shape"):
        torsion_free_energy_errors(energy, pos[0], QUARTETS, BONDS)
    with pytest.raises(ValueError, match="out of range"):
        torsion_free_energy_errors(energy, pos, {"phi": (0, 1, 2, 3), "psi": (1, 2, 3, 5)}, BONDS)
    with pytest.raises(ValueError, match="out of range"):
        torsion_free_energy_errors(energy, pos, QUARTETS, [*BONDS, (4, 9)])
    with pytest.raises(ValueError, match="two torsions"):
        torsion_free_energy_errors(energy, pos, {"phi": QUARTETS["phi"]}, BONDS)
    with pytest.raises(ValueError, match="changes the torsion"):  # two torsions about one bond, bead 4 on bead 2
        torsion_free_energy_errors(energy, pos, {"a": (0, 1, 2, 3), "b": (0, 1, 2, 4)}, [(0, 1), (1, 2), (2, 3), (2, 4)])
    with pytest.raises(ValueError, match="deltas"):
        torsion_free_energy_errors(energy, pos, QUARTETS, BONDS, deltas=(2 * math.pi,))
    with pytest.raises(ValueError, match="energy_fn"):
        torsion_free_energy_errors(lambda x: energy(x)[:, None], pos, QUARTETS, BONDS)
    with pytest.raises(ValueError, match="NaN"):
        torsion_free_energy_errors(lambda x: energy(x) * float("nan"), pos, QUARTETS, BONDS)


# with a diffusion model: an exact centred Gaussian at every t ---------------------------------------------------
SCALE, KT, STD = 0.4, 2.5, 0.45


def gaussian_model(score_sde: VPSDE | None = None) -> tuple[DiffusionModel, torch.Tensor]:
    """An exact energy model of N(mu, STD^2 P) (diffusion coordinates, P the centring projector) of 5 beads,
    scale 0.4 nm, kT 2.5 kJ/mol; and its mean. ``score_sde`` differing from the model's SDE makes E(x, t) wrong
    at t > 0 only."""
    mu = chain(np.array([-1.2]), np.array([2.0]), seed=6)[0] / SCALE
    mu = (mu - mu.mean(0))[None]
    sde = VPSDE()
    mix = GaussianMixture([1.0], mu, [STD])
    spec = ModelSpec(5, 3, centred=True, network="exact_gaussian_mixture")
    return DiffusionModel(spec, GaussianMixtureScore(mix, score_sde or sde), sde, scale=SCALE, kT=KT), mu


def gaussian_frames(mu: torch.Tensor, n: int) -> torch.Tensor:
    eps = torch.randn(n, 5, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return (mu + STD * (eps - eps.mean(1, keepdim=True))) * SCALE + 1.0  # nm, translated (the model centres)


def test_forcefield_diagnostic_exact_gaussian_at_every_time(tmp_path):
    # shifts of up to 1 rad: larger ones leave this broad Gaussian's Zwanzig averages biased (module docstring)
    model, mu = gaussian_model()
    frames = gaussian_frames(mu, 40000)
    times, deltas = (None, 0.05, 0.3), (0.5, 1.0)
    results = forcefield_free_energy_errors(model, frames, QUARTETS, BONDS, times, deltas=deltas, n_bootstrap=40)
    assert list(results) == ["t_min", "t=0.05", "t=0.3"]
    assert [r.t for r in results.values()] == [model.sde.t_min, 0.05, 0.3]
    for res in results.values():
        assert res.n_bins > 600
        assert res.mae < 0.15 and res.mae < 1.25 * res.noise_floor and abs(res.mean_error) < 0.04
    # an energy that is right at t_min but wrong at t > 0 (its own noise schedule is slower) is caught at t = 0.3
    wrong_t, _ = gaussian_model(VPSDE(beta_max=5.0))
    wrong = forcefield_free_energy_errors(wrong_t, frames, QUARTETS, BONDS, (None, 0.3), deltas=deltas, n_bootstrap=40)
    assert wrong["t_min"].mae == pytest.approx(results["t_min"].mae, abs=1e-6)
    assert wrong["t=0.3"].mean_error < -0.08 and wrong["t=0.3"].mae > 1.6 * wrong["t=0.3"].noise_floor

    summary = forcefield_diagnostic(model, frames[:3000], QUARTETS, BONDS, (None, 0.3), plot_path=tmp_path / "ff.png",
                                    n_bootstrap=20)  # fmt: skip
    text = json.dumps(summary, allow_nan=False)
    assert set(json.loads(text)) == {"t_min", "t=0.3"}
    entry = summary["t_min"]
    assert set(entry["shifts"]) == {"phi", "psi"} and set(entry["shifts"]["psi"]) == {"1", "2", "3"}
    assert entry["n_bins"] == sum(s["n_bins"] for d in entry["shifts"].values() for s in d.values())
    assert (tmp_path / "ff.png").stat().st_size > 10_000
    assert plot_forcefield_diagnostic(results["t_min"], tmp_path / "one.png").stat().st_size > 10_000


class _DirectScore(torch.nn.Module):
    parameterisation = "score"

    def score(self, x, t):
        return -x


def test_forcefield_diagnostic_rejects_a_score_model():
    spec = ModelSpec(5, 3, centred=True, parameterisation="score", network="direct")
    model = DiffusionModel(spec, _DirectScore(), VPSDE(), scale=SCALE, kT=KT)
    with pytest.raises(TypeError, match="energy model"):
        forcefield_diagnostic(model, gaussian_frames(gaussian_model()[1], 100), QUARTETS, BONDS)
