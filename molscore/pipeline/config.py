"""The schema of a run's YAML config (strict: unknown keys and wrong types are errors naming the key)."""

from dataclasses import dataclass, field
from typing import Literal

from molscore.config import load_config
from molscore.train.estimator import TrainConfig


@dataclass
class DataConfig:
    """Where training data come from.

    source : "exact" (exact Boltzmann samples of an analytic system), a path to a ``.npy`` array of frames
        ``(M, N, d)`` nm (split at random by ``seed``), or an MD folder written by ``workflows/generate_md.py``
        (``topology.pdb`` + ``replica_*/chunk_*.dcd``; split by whole replicas)
    n_train, n_validation, n_test : frames per split ("exact" and ``.npy`` sources)
    resolution : MD folders: "all", "heavy", "backbone" (C-N-CA-C-N beads) or "calpha"
    stride : MD folders: keep every stride-th frame
    n_validation_replicas, n_test_replicas : MD folders: replicas held out for validation and testing
    test_source : optional second MD folder of the same molecule whose replicas are all the test split (then
        ``source`` gives training and validation only and ``n_test_replicas`` is unused): test replicas that
        share no trajectory, start or seed with the training ones
    """

    source: str = "exact"
    n_train: int = 100_000
    n_validation: int = 10_000
    n_test: int = 100_000
    resolution: Literal["all", "heavy", "backbone", "calpha"] = "all"
    stride: int = 1
    n_validation_replicas: int = 1
    n_test_replicas: int = 2
    test_source: str = ""
    seed: int = 0

    def __post_init__(self):
        _positive(self, "data", "n_train", "n_validation", "n_test", "stride", "n_validation_replicas", "n_test_replicas")


@dataclass
class ModelConfig:
    """Architecture (see :class:`molscore.models.ModelSpec`; shape and centring come from the system).

    priors : molecules (runs with a bead topology) get a harmonic bond prior on the bonds of their beads,
        fitted to the training data, and the Gaussian noise prior (:mod:`molscore.models.priors`); the network
        learns everything else
    extra_priors : molecules: "angles" (a Gaussian prior on every bond angle), "repulsion" (a wall on beads more
        than two bonds apart at 0.8 x their closest approach in the data) and/or "dihedrals" (von Mises terms on
        the dihedrals that are narrow in the data: planar peptide groups), fitted to the training data; for
        all-atom force fields that have to keep their geometry in long simulations
    """

    parameterisation: Literal["energy", "score"] = "energy"
    network: str = "mlp"
    network_options: dict = field(default_factory=dict)
    mixture_boundaries: list[float] = field(default_factory=list)
    large_t_parameterisation: Literal["energy", "score"] | None = None
    priors: bool = True
    extra_priors: list[Literal["angles", "repulsion", "dihedrals"]] = field(default_factory=list)


@dataclass
class SampleConfig:
    """Diffusion sampling: ``n_samples`` from the reverse SDE or the probability-flow ODE.

    n_steps : predictor steps from t = 1 to t_min
    time_grid : "uniform" in t, "log_sigma" (uniform in log sigma(t): fine at small t but one long first step)
        "log_snr" (uniform in log sigma/alpha) or "edm" (Karras et al.'s rho = 7 grid in sigma/alpha, between
        uniform and log_snr); see :func:`molscore.sampling.time_grid`
    corrector_steps : Langevin corrector steps after each predictor step (predictor-corrector; "sde" only)
    snr : the corrector's signal-to-noise ratio, which sets its step size
    """

    n_samples: int = 20_000
    method: Literal["sde", "ode"] = "sde"
    n_steps: int = 500
    batch_size: int = 4096
    seed: int = 0
    time_grid: Literal["uniform", "log_sigma", "log_snr", "edm"] = "uniform"
    corrector_steps: int = 0
    snr: float = 0.16

    def __post_init__(self):
        _positive(self, "sample", "n_samples", "n_steps", "batch_size")
        if self.corrector_steps < 0:
            raise ValueError(f"sample.corrector_steps must be >= 0, got {self.corrector_steps}")
        if not self.snr > 0 or self.snr == float("inf"):
            raise ValueError(f"sample.snr must be positive and finite, got {self.snr}")
        if self.method == "ode" and self.corrector_steps > 0:
            raise ValueError(
                f"sample.corrector_steps = {self.corrector_steps} needs method 'sde' (the corrector adds noise to the "
                "deterministic probability flow); set corrector_steps: 0 or method: sde"
            )


@dataclass
class SimulateConfig:
    """Langevin (BAOAB) simulation with the learned force field F = kT s(x, t_eval) / scale.

    timestep, friction : ps and 1/ps; None takes the system's defaults
    t_eval : diffusion time of the force field (None: t_min; > 0 gives the "Two for One" force field)
    start : "data" (replicas start from random training frames), "first" (all from the first frame) or
        "state:NAME" (random training frames inside the system's state NAME, e.g. "state:C7eq", so that
        equilibrium between states must be reached by the dynamics itself); several joined by "+" split the
        replicas in that order (``"state:C7eq+data"``: the first half in C7eq, the second from training frames,
        which tests stationarity; :meth:`start_groups`)
    report_interval : steps between saved frames
    compile : compile the force field with torch.compile first (~30 s per model on CPU, then ~5x faster steps
        for small molecules: :meth:`~molscore.models.DiffusionModel.force_field`)
    max_minutes : wall-clock budget; the run stops early with a checkpoint (rerun to go on towards ``steps``)
    bond_slack : molecules stop (keeping the frames so far) when a bond leaves [1 - slack, 1 + slack] x the
        range of its lengths in the training data
    escape_factor : every run stops (keeping the frames so far) when a coordinate leaves the training data's
        range widened by this factor times the range on each side (molecules: relative to their centroid)
    """

    replicas: int = 500
    steps: int = 4000
    max_minutes: float | None = None
    bond_slack: float = 0.5
    escape_factor: float = 10.0
    timestep: float | None = None
    friction: float | None = None
    t_eval: float | None = None
    start: str = "data"
    report_interval: int = 50
    chunk_frames: int = 100
    checkpoint_interval: int = 1000
    compile: bool = False
    seed: int = 0

    def __post_init__(self):
        _positive(self, "simulate", "replicas", "steps", "report_interval", "chunk_frames", "checkpoint_interval")
        for key in ("timestep", "max_minutes", "bond_slack", "escape_factor"):
            value = getattr(self, key)
            if value is not None and not 0 < value < float("inf"):
                raise ValueError(f"simulate.{key} must be positive and finite, got {value}")
        if self.friction is not None and not 0 <= self.friction < float("inf"):
            raise ValueError(f"simulate.friction must be >= 0 (0: no thermostat, Verlet) and finite, got {self.friction}")
        if self.t_eval is not None and not 0 < self.t_eval <= 1:
            raise ValueError(f"simulate.t_eval must lie in (0, 1] (None: t_min), got {self.t_eval}")
        for part in self.start.split("+"):
            if part not in ("data", "first") and not (part.startswith("state:") and len(part) > 6):
                raise ValueError(f"simulate.start parts must be 'data', 'first' or 'state:NAME' (joined by '+'), "
                                 f"got {self.start!r}")  # fmt: skip
        if len(self.start.split("+")) > self.replicas:
            raise ValueError(f"simulate.start {self.start!r} has more parts than the {self.replicas} replicas")

    def start_groups(self) -> list[tuple[str, range]]:
        """Each part of ``start`` with the replicas it starts: ``[("state:C7eq", range(0, 16)), ("data",
        range(16, 32))]`` for ``"state:C7eq+data"`` and 32 replicas (earlier parts take the remainder)."""
        parts = self.start.split("+")
        sizes = [self.replicas // len(parts) + (k < self.replicas % len(parts)) for k in range(len(parts))]
        bounds = [sum(sizes[:k]) for k in range(len(parts) + 1)]
        return [(part, range(a, b)) for part, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True)]


def _positive(section, name: str, *keys: str) -> None:
    """Raise naming ``name.key`` if one of the integer ``keys`` of ``section`` is below 1."""
    for key in keys:
        if getattr(section, key) < 1:
            raise ValueError(f"{name}.{key} must be >= 1, got {getattr(section, key)}")


@dataclass
class EvaluateConfig:
    """Metrics: JS and PMF error on 2-D histograms against the held-out test split.

    burn_in : fraction of each simulation discarded before computing sim metrics
    """

    bins: int = 64
    burn_in: float = 0.2

    def __post_init__(self):
        _positive(self, "evaluate", "bins")
        if not 0 <= self.burn_in < 1:
            raise ValueError(f"evaluate.burn_in must lie in [0, 1), got {self.burn_in}")


@dataclass
class RunConfig:
    """One run: system, run folder, device, and the settings of each stage."""

    system: str
    run_dir: str
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def load_run_config(source) -> RunConfig:
    """Read a run config from a YAML path or a dict (strictly checked)."""
    return load_config(source, RunConfig)
