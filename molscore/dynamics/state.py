"""The state of a batch of replicas: positions, velocities, clock and step counter."""

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class State:
    """Where B replicas are at one instant.

    Attributes
    ----------
    pos : Tensor (B, N, d), nm
    vel : Tensor (B, N, d), nm/ps, or None (overdamped dynamics, samplers)
    t : clock, ps for physical dynamics or diffusion time for samplers
    step : number of integrator steps taken; the noise of step ``k`` is drawn from (seed, k), so the step
        counter is what makes a resumed run replay the same noise.
    cache : quantities an integrator computed at ``pos`` (e.g. BAOAB's force) keyed by name, with the
        entry ``"pos"`` holding the tensor they belong to. Replacing ``pos`` by a new tensor invalidates them
        (see :meth:`cached`); editing ``pos`` in place does not, so build a new State instead.
    """

    pos: Tensor
    vel: Tensor | None = None
    t: float = 0.0
    step: int = 0
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.pos, Tensor):
            raise TypeError(f"State.pos must be a torch.Tensor (B, N, d) in nm, got {type(self.pos).__name__}")
        if self.pos.ndim != 3:
            hint = "; add a replica dimension with pos[None]" if self.pos.ndim == 2 else ""
            raise ValueError(
                f"State.pos has shape {tuple(self.pos.shape)}; expected (B, N, d) = (replicas, particles, dimension){hint}"
            )
        if not self.pos.is_floating_point():
            raise TypeError(f"State.pos must be a floating-point tensor, got dtype {self.pos.dtype}")
        if self.vel is not None:
            if not isinstance(self.vel, Tensor) or self.vel.shape != self.pos.shape:
                shape = tuple(self.vel.shape) if isinstance(self.vel, Tensor) else type(self.vel).__name__
                raise ValueError(f"State.vel has shape {shape}; it must match pos {tuple(self.pos.shape)} (B, N, d), nm/ps")
            if self.vel.dtype != self.pos.dtype or self.vel.device != self.pos.device:
                raise ValueError(
                    f"State.vel is {self.vel.dtype} on {self.vel.device} but pos is {self.pos.dtype} on "
                    f"{self.pos.device}; move both to the same dtype and device"
                )
        self.t = float(self.t)
        self.step = int(self.step)

    @property
    def n_replicas(self) -> int:
        return self.pos.shape[0]

    def cached(self, name: str) -> Tensor | None:
        """A quantity cached for the current ``pos`` tensor, or None if absent or ``pos`` was replaced."""
        if self.cache.get("pos") is self.pos:
            return self.cache.get(name)
        return None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "State":
        """A copy on another device and/or floating dtype (the cache is dropped)."""
        vel = None if self.vel is None else self.vel.to(device=device, dtype=dtype)
        return State(self.pos.to(device=device, dtype=dtype), vel, self.t, self.step)
