"""The protein workflow end to end on a few picoseconds of Go-model MD of the T4 lysozyme subdomain, with a few
training steps: every output exists, the table's numbers are bounded, the exact-Go control simulation keeps the
native fold and its chirality, and a resumed run recomputes nothing."""

import hashlib
import json

import numpy as np
import pytest
from safetensors import safe_open


@pytest.fixture(scope="module")
def protein_run(tmp_path_factory, workflow_script):
    workflow = workflow_script("protein.py")
    out = tmp_path_factory.mktemp("protein") / "run"
    argv = ["--md-replicas", "4", "--md-ns", "0.05", "--equilibration-ps", "10", "--held-out", "1", "1",
            "--tica-lag-ps", "10", "--steps", "20", "--samples", "64", "--sample-steps", "10", "--sim-ns", "0.01",
            "--sim-replicas", "4", "--processes", "1", "--out", str(out)]  # fmt: skip
    return workflow, argv, out, workflow.main(argv)


def test_protein_workflow_writes_every_output_with_bounded_metrics(protein_run):
    _, _, out, result = protein_run
    for name in ("table.md", "table.csv", "metrics.json", "tica.png", "contact_maps.png", "free_energy_q.png"):
        assert (out / name).is_file(), name
    rows = result["rows"]
    assert set(rows) >= {"MD floor (validation replicas)", "iid floor (training frames, N = samples)",
                         "diffusion samples (energy + FP)", "simulation, learned forces",
                         "simulation, exact Go forces (control)", "MD test split"}  # fmt: skip
    for name, m in rows.items():
        for key in ("tica_js", "pseudo_dihedral_js", "pair_distance_js"):
            assert 0 <= m[key] <= np.log(2) + 1e-9, (name, key, m[key])
        assert 0 <= m["folded"]["p"] <= 1
    assert rows["diffusion samples (energy + FP)"]["frames"] == 64
    assert rows["MD test split"]["tica_js"] == pytest.approx(0.0)  # the test split against itself
    # exact Go forces through molscore's Langevin stay native, on the native's side of the mirror, like MD
    control, md = rows["simulation, exact Go forces (control)"], rows["MD floor (validation replicas)"]
    assert control["rmsd_native_nm"] < 0.6 * control["rmsd_mirror_nm"] and md["rmsd_native_nm"] < 0.6 * md["rmsd_mirror_nm"]
    assert control["q"]["w1"] < 0.2 and md["q"]["w1"] < 0.2  # Q near the test MD's (native start, 10-50 ps)
    assert np.isfinite(result["energy"]["force_correlation"]) and result["energy"]["energy_rmse_kJ_per_mol"] >= 0
    text = (out / "table.md").read_text()
    assert "NOT converged" in text  # 4 x 50 ps hold no folding transitions, and the table says so
    assert json.loads((out / "metrics.json").read_text())["rows"].keys() == rows.keys()


def _content(path) -> str:
    """A digest of what a file holds (a safetensors file's header may list the same tensors in another order)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    with safe_open(path, "pt") as f:
        parts = [f"{k}:{f.get_tensor(k).numpy().tobytes().hex()}" for k in sorted(f.keys())]
        return hashlib.sha256((str(sorted(f.metadata().items())) + "".join(parts)).encode()).hexdigest()


def test_protein_workflow_resumes_without_recomputing(protein_run):
    workflow, argv, out, _ = protein_run
    before = {p: _content(p) for p in out.rglob("*") if p.suffix in (".safetensors", ".npy", ".npz")}
    samples_written = (out / "energy_fp" / "samples_sde.npy").stat().st_mtime_ns
    workflow.main(argv)
    changed = [p.relative_to(out) for p, digest in before.items() if _content(p) != digest]
    assert len(before) >= 10 and not changed, changed
    assert (out / "energy_fp" / "samples_sde.npy").stat().st_mtime_ns == samples_written  # not drawn again
