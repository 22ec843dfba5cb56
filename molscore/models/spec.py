"""Model architecture as data: a ``ModelSpec`` builds the network and is saved beside the weights."""

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from molscore.models.mlp import MLP
from molscore.models.parameterisation import DirectScore, EnergyScore, MixtureOfExperts
from molscore.models.priors import AnglePrior, BondPrior, DihedralPrior, NoisePrior, PriorSum, RepulsionPrior
from molscore.nn import BondGraphMLP, BondGraphNet, EquivariantGNN

NETWORKS = {"mlp": MLP, "gnn": EquivariantGNN, "bondgraph": BondGraphNet, "bondgraph_mlp": BondGraphMLP}
"""Network constructors by name; each takes (n_particles, dim, output=..., **network_options)."""


@dataclass
class ModelSpec:
    """Everything needed to rebuild a score model.

    Attributes
    ----------
    n_particles, dim : shape of one configuration
    centred : whether the density lives on the zero-centroid subspace
    parameterisation : "energy" (s = -grad E) or "score" (direct)
    network : a key of ``NETWORKS``
    network_options : keyword arguments of the network (e.g. hidden widths)
    mixture_boundaries : interior diffusion-time boundaries of a mixture of experts, e.g. [0.1, 0.6];
        empty for one model on all t
    large_t_parameterisation : parameterisation of the experts above the first boundary (only the
        small-t expert needs to be an energy model); defaults to ``parameterisation``
    bonds : bead index pairs of a harmonic bond prior (:class:`~molscore.models.priors.BondPrior`, fitted
        to the training data) added to every expert; empty for none
    noise_prior : add sigma(t)^2 |x|^2 / 2 (:class:`~molscore.models.priors.NoisePrior`) to every expert
    angle_prior : add a Gaussian prior on every angle between two ``bonds`` (:class:`~molscore.models.priors.AnglePrior`)
    repulsion_prior : add a wall on beads more than two ``bonds`` apart (:class:`~molscore.models.priors.RepulsionPrior`)
    dihedral_prior : add von Mises terms on the dihedrals of ``bonds`` that are narrow in the data (planar groups;
        :class:`~molscore.models.priors.DihedralPrior`)
    """

    n_particles: int
    dim: int
    centred: bool = True
    parameterisation: Literal["energy", "score"] = "energy"
    network: str = "mlp"
    network_options: dict = field(default_factory=dict)
    mixture_boundaries: list[float] = field(default_factory=list)
    large_t_parameterisation: Literal["energy", "score"] | None = None
    bonds: list[list[int]] = field(default_factory=list)
    noise_prior: bool = False
    angle_prior: bool = False
    repulsion_prior: bool = False
    dihedral_prior: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _check_network_options(network: str, options: dict) -> None:
    """Unknown keyword options of a network are a ConfigError naming them, the allowed ones and a close match."""
    import difflib
    import inspect

    from molscore.config import ConfigError

    fixed = ("self", "n_particles", "dim", "output")
    allowed = [p for p in inspect.signature(NETWORKS[network]).parameters if p not in fixed]
    for key in options:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(
                f"unknown config key 'model.network_options.{key}' for network {network!r}; allowed: "
                f"{', '.join(allowed)}{extra}"
            )


def _single(spec: ModelSpec, parameterisation: str) -> nn.Module:
    if spec.network not in NETWORKS:
        raise ValueError(f"network {spec.network!r} unknown; choose from {sorted(NETWORKS)}")
    _check_network_options(spec.network, spec.network_options)
    net = NETWORKS[spec.network](spec.n_particles, spec.dim, output=parameterisation, **spec.network_options)
    wrapper = EnergyScore if parameterisation == "energy" else DirectScore
    if (spec.angle_prior or spec.repulsion_prior or spec.dihedral_prior) and not spec.bonds:
        raise ValueError("angle, repulsion and dihedral priors are defined by the bonds: give the spec's bonds too")
    if spec.dihedral_prior and spec.dim != 3:
        raise ValueError(f"a dihedral prior needs 3-D coordinates, got dim = {spec.dim}; drop dihedral_prior")
    priors = [BondPrior(spec.bonds)] if spec.bonds else []
    priors += [AnglePrior(spec.bonds, spec.n_particles)] if spec.angle_prior else []
    priors += [RepulsionPrior(spec.bonds, spec.n_particles)] if spec.repulsion_prior else []
    priors += [DihedralPrior(spec.bonds, spec.n_particles)] if spec.dihedral_prior else []
    priors += [NoisePrior()] if spec.noise_prior else []
    return wrapper(net, spec.centred, PriorSum(priors) if priors else None)


def build_score_model(spec: ModelSpec, dtype: torch.dtype | None = None) -> nn.Module:
    """Build the (untrained) score model a spec describes, with parameters and constants in ``dtype``.

    The network is constructed with ``dtype`` as torch's default dtype: e3nn computes some constants (change
    of basis, normalisations) at construction, and casting a float32-built network to float64 afterwards would
    keep them rounded to float32.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        return _build(spec).to(dtype or previous)
    finally:
        torch.set_default_dtype(previous)


def _build(spec: ModelSpec) -> nn.Module:
    if not spec.mixture_boundaries:
        return _single(spec, spec.parameterisation)
    upper = spec.large_t_parameterisation or spec.parameterisation
    experts = [_single(spec, spec.parameterisation)]
    experts += [_single(spec, upper) for _ in spec.mixture_boundaries]
    return MixtureOfExperts(experts, spec.mixture_boundaries)


def load_weights(score_model: nn.Module, state: dict, source: str) -> None:
    """``score_model.load_state_dict(state)`` with an error that names ``source`` and the way out when the weights
    were written by another version of the network (the same spec, but e.g. a network that gained inputs)."""
    try:
        score_model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(
            f"{source} holds weights of a different network than this molscore builds from the same spec ({first}); "
            "it was written by an older version: train again in a fresh folder (or delete the old run folder), or, "
            "for a bond-graph MLP saved before the shape volumes, add shape_chirality: false to network_options"
        ) from err
