"""The plot helpers write real PNG files, atomically, without touching pyplot."""

import numpy as np
import pytest
import torch

from molscore.analysis.plots import density_panels, line_plot, ramachandran_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_density_panels_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 2))
    sim = rng.normal(size=(500, 2)) * 1.5
    sim[:5] = np.nan  # a blown-up frame must not stop the figure
    panels = {"reference": (ref[:, 0], ref[:, 1]), "samples": torch.tensor(ref[:500]).T, "sim": sim.T}
    box = ((-4.0, 4.0), (-4.0, 4.0))
    out = density_panels(
        panels,
        tmp_path / "sub" / "fes.png",
        bins=32,
        range=box,
        potential_contours=lambda x, y: 0.5 * (x**2 + y**2),
        title="harmonic",
        xlabel="x (nm)",
        ylabel="y (nm)",
    )
    assert out == tmp_path / "sub" / "fes.png" and _is_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["fes.png"]  # no temporary left behind

    gx, gy = np.meshgrid(np.linspace(-4, 4, 20), np.linspace(-4, 4, 20), indexing="ij")
    out2 = density_panels({"ref": ref.T}, tmp_path / "p.png", bins=16, potential_contours=(gx, gy, gx * gy))
    assert _is_png(out2)
    assert _is_png(density_panels({"ref": ref.T}, tmp_path / "lin.png", bins=16, log=False))


def test_density_panels_bad_input(tmp_path):
    with pytest.raises(ValueError, match="panels is empty"):
        density_panels({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png"):
        density_panels({"a": (np.zeros(3), np.ones(3))}, tmp_path / "x.pdf", range=((0, 1), (0, 1)))


def test_line_plot_writes_png(tmp_path):
    steps = np.arange(1, 101)
    out = line_plot(
        {"train": (steps, 1.0 / steps), "val": (steps, 1.2 / steps)},
        tmp_path / "loss.png",
        xlabel="step",
        ylabel="loss",
        title="loss",
        logx=True,
        logy=True,
    )
    assert _is_png(out)
    with pytest.raises(ValueError, match="lengths differ"):
        line_plot({"a": ([1, 2], [1])}, tmp_path / "bad.png", "x", "y")


def test_line_plot_error_bands_and_nan_gaps(tmp_path):
    x = np.linspace(-np.pi, np.pi, 64)
    f = 1 - np.cos(x)
    f[10:12] = np.nan  # empty bins of a free-energy profile
    out = line_plot(
        {"MD": (x, f), "model": (x, f + 0.1)},
        tmp_path / "profile.png",
        "phi (rad)",
        "F (kT)",
        errors={"MD": np.full(64, 0.05)},
    )
    assert _is_png(out)
    with pytest.raises(ValueError, match="do not exist"):
        line_plot({"a": (x, f)}, tmp_path / "e.png", "x", "y", errors={"b": f})


def test_ramachandran_rows_writes_png(tmp_path):
    rng = np.random.default_rng(0)

    def angles(n, shift=0.0):
        return (rng.vonmises(-1.4 + shift, 4.0, n), rng.vonmises(1.2, 4.0, n))

    rows = {
        "no FP": {"MD": angles(5000), "samples": angles(2000, 0.2), "simulation": angles(2000, 0.5)},
        "FP": {"MD": angles(5000), "samples": torch.tensor(np.stack(angles(2000)))},  # no simulation: n/a panel
    }
    out = ramachandran_rows(rows, tmp_path / "rama" / "ramachandran.png", bins=32, title="alanine dipeptide")
    assert _is_png(out) and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["ramachandran.png"]
    with pytest.raises(ValueError, match="non-empty"):
        ramachandran_rows({"a": {}}, tmp_path / "x.png")
