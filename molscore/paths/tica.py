"""TICA components as collective variables: fitted once with deeptime on MD, evaluated in torch in batch.

The features are declared CVs of the system (periodic ones enter as cos and sin); the slowest linear combinations
of them at a lag time (time-lagged independent component analysis, deeptime's ``TICA``) are stored in a small
``.npz`` file in the system's folder, and a CV ``{tica: tica.npz, component: 0}`` projects positions onto one of them:

    tic0 = (f(x) - mean) @ projection[:, 0]
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def feature_function(cvs, names: list[str]):
    """``pos (B, N, d) -> (B, F)``: the CVs ``names`` of ``cvs``, periodic ones as (cos, sin)."""
    columns = [cvs.names.index(n) for n in names]
    periodic = [bool(cvs.periodic[c]) for c in columns]

    def features(pos: Tensor) -> Tensor:
        values = cvs(pos)[:, columns]
        parts = [torch.stack([values[:, k].cos(), values[:, k].sin()], 1) if p else values[:, k : k + 1]
                 for k, p in enumerate(periodic)]  # fmt: skip
        return torch.cat(parts, dim=1)

    return features


def fit_tica(cvs, feature_names: list[str], trajectories: list, lagtime: int, dim: int, path: str | Path) -> Path:
    """Fit TICA on MD and write the projection to ``path`` (.npz, atomically).

    Parameters
    ----------
    cvs : :class:`~molscore.paths.collective_variables.CollectiveVariables` holding the feature CVs
    feature_names : the CVs used as features (periodic ones enter as cos, sin)
    trajectories : list of arrays (T_i, N, d), nm: time-ordered frames (e.g. one per MD replica)
    lagtime : in frames;  dim : components kept
    """
    from deeptime.decomposition import TICA

    from molscore.files import atomic_write

    missing = [n for n in feature_names if n not in cvs.names]
    if missing:
        raise ValueError(f"TICA features {missing} are not declared CVs; declared: {cvs.names}")
    features = feature_function(cvs, feature_names)
    data = [features(torch.as_tensor(np.asarray(t), dtype=torch.float64)).numpy() for t in trajectories]
    if any(len(d) <= lagtime for d in data):
        raise ValueError(f"every trajectory needs more than lagtime = {lagtime} frames")
    model = TICA(lagtime=lagtime, dim=dim).fit(data).fetch_model()
    path = Path(path)
    with atomic_write(path) as tmp:
        np.savez(
            tmp,
            features=np.array(feature_names),
            mean=model.mean_0,
            projection=model.instantaneous_coefficients[:, :dim],
            lagtime=lagtime,
            singular_values=model.singular_values[:dim],
        )
    return path


def tica_evaluator(cvs, entry: dict, folder: Path | None, name: str):
    """The evaluator ``pos -> (B,)`` of a CV ``{tica: file.npz, component: k}`` whose features are CVs of ``cvs``."""
    path = Path(entry["tica"])
    path = path if path.is_absolute() or folder is None else Path(folder) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"collective variable {name!r}: TICA model {path} is missing; fit it with molscore.paths.tica.fit_tica"
        )
    with np.load(path) as model:
        names = [str(n) for n in model["features"]]
        mean = torch.as_tensor(model["mean"], dtype=torch.float64)
        projection = torch.as_tensor(model["projection"], dtype=torch.float64)
    component = int(entry.get("component", 0))
    if not 0 <= component < projection.shape[1]:
        raise ValueError(f"collective variable {name!r}: component {component}, the model has {projection.shape[1]}")
    features = feature_function(cvs, names)
    vector = projection[:, component]
    return lambda pos: (features(pos) - mean.to(pos)) @ vector.to(pos)
