"""TICA components as CVs: fitted with deeptime, evaluated in torch."""

import mdtraj
import numpy as np
import pytest
import torch
from deeptime.decomposition import TICA

from molscore.paths.collective_variables import CollectiveVariables
from molscore.paths.tica import feature_function, fit_tica
from molscore.system import load_system


@pytest.fixture(scope="module")
def backbone_md():
    system = load_system("alanine_dipeptide")
    folder = system.folder / "reference_md"
    top = str(folder / "topology.pdb")
    trajs = [mdtraj.load(str(folder / f"replica_{r:03d}" / "chunk_000000.xtc"), top=top) for r in range(4)]
    return system, trajs


def _autocorrelation(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).mean() / (x * x).mean())


def test_tica_component_matches_deeptime_and_is_the_slowest(backbone_md, tmp_path):
    system, trajs = backbone_md
    spec = dict(system.collective_variables)  # phi, psi on the heavy-atom topology
    cvs = CollectiveVariables(spec, trajs[0].topology)
    path = fit_tica(cvs, ["phi", "psi"], [t.xyz for t in trajs], lagtime=2, dim=2, path=tmp_path / "tica.npz")
    spec |= {"tic0": {"tica": "tica.npz", "component": 0}, "tic1": {"tica": str(path), "component": 1}}
    with_tica = CollectiveVariables(spec, trajs[0].topology, tmp_path)
    assert with_tica.names == ["phi", "psi", "tic0", "tic1"] and not with_tica.periodic[2:].any()
    pos = torch.as_tensor(np.concatenate([t.xyz for t in trajs]), dtype=torch.float64)
    values = with_tica(pos).numpy()
    # the same projection by deeptime itself
    features = feature_function(cvs, ["phi", "psi"])
    data = [features(torch.as_tensor(t.xyz, dtype=torch.float64)).numpy() for t in trajs]
    model = TICA(lagtime=2, dim=2).fit(data).fetch_model()
    reference = model.transform(np.concatenate(data))
    assert np.allclose(values[:, 2:], reference, atol=1e-8)
    # the first component is at least as slow as any feature
    lagged = _autocorrelation(values[:, 2], 2)
    assert all(lagged >= _autocorrelation(f, 2) - 1e-6 for f in np.concatenate(data).T)


def test_tica_declarations_fail_clearly(backbone_md, tmp_path):
    system, trajs = backbone_md
    cvs = CollectiveVariables(system.collective_variables, trajs[0].topology)
    with pytest.raises(ValueError, match="not declared"):
        fit_tica(cvs, ["chi"], [t.xyz for t in trajs], 2, 1, tmp_path / "t.npz")
    with pytest.raises(FileNotFoundError, match="fit_tica"):
        CollectiveVariables({**system.collective_variables, "tic0": {"tica": "none.npz"}}, trajs[0].topology, tmp_path)
