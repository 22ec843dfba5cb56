"""Metastable states as regions in CV space, declared in a system's folder and evaluated in batch in torch.

A state is ``{cv name: centre, ..., radius: r}``: the frames whose CV values lie within ``r`` of the centre,
by the Euclidean norm of the (periodic, for dihedrals) differences over the CVs it names.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from molscore.paths.collective_variables import CollectiveVariables


@dataclass
class Region:
    """One state: a ball of ``radius`` around ``centre`` (one value per CV it uses) in CV space.

    Attributes
    ----------
    name : state name
    cvs : the system's collective variables
    columns : indices (k,) of the CVs the state uses, into ``cvs.names``
    centre : Tensor (k,), in the CVs' units (rad, nm)
    radius : same units
    """

    name: str
    cvs: CollectiveVariables
    columns: Tensor
    centre: Tensor
    radius: float

    @classmethod
    def from_spec(cls, name: str, spec: dict, cvs: CollectiveVariables) -> "Region":
        centres = {k: v for k, v in spec.items() if k != "radius"}
        if "radius" not in spec or not centres:
            raise ValueError(f"state {name!r}: {spec} must give a centre for at least one CV and a 'radius'")
        unknown = [k for k in centres if k not in cvs.names]
        if unknown:
            raise ValueError(f"state {name!r} uses CVs {unknown} that are not declared; declared: {cvs.names}")
        columns = torch.tensor([cvs.names.index(k) for k in centres])
        centre = torch.tensor([float(v) for v in centres.values()], dtype=torch.float64)
        return cls(name, cvs, columns, centre, float(spec["radius"]))

    def distance(self, values: Tensor) -> Tensor:
        """Distance (...,) of CV values ``(..., K)`` to the centre, in units of the CVs."""
        cols = self.columns.to(values.device)
        periodic = self.cvs.periodic.to(values.device)[cols]
        d = values[..., cols] - self.centre.to(values)
        d = torch.where(periodic, torch.atan2(torch.sin(d), torch.cos(d)), d)
        return d.norm(dim=-1)

    def contains(self, values: Tensor) -> Tensor:
        """Bool (...,): which CV values ``(..., K)`` lie inside the state."""
        return self.distance(values) < self.radius


def load_states(system, names: list[str] | None = None) -> tuple[CollectiveVariables, dict[str, Region]]:
    """The CVs and states a system declares (``collective_variables`` and ``states`` in its system.yaml).

    Parameters
    ----------
    system : :class:`molscore.system.System`
    names : the states to return (default: all)
    """
    cvs = CollectiveVariables(system.collective_variables, system.topology, system.folder)
    names = list(system.states) if names is None else list(names)
    missing = [n for n in names if n not in system.states]
    if missing:
        raise ValueError(
            f"system {system.name!r} declares no state(s) {missing}; declared: {sorted(system.states)}. "
            "Add them under 'states' in its system.yaml"
        )
    return cvs, {n: Region.from_spec(n, system.states[n], cvs) for n in names}
