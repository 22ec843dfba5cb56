"""Seeded, replayable Gaussian noise: the draw for (seed, step, stream) is a pure function of those numbers.

A resumed simulation, or a replayed trial path in transition-path sampling, therefore sees exactly the
noise of the original run, whatever happened in between.
"""

import hashlib

import numpy as np
import torch
from torch import Tensor

STEP_STREAM = 0
"""Stream of the per-step noise of integrators."""
VELOCITY_STREAM = 1
"""Stream of the Maxwell-Boltzmann velocities drawn by :meth:`BAOAB.init`."""


class SeededNoise:
    """Standard normal draws indexed by (seed, step, stream).

    On CPU (and any non-CUDA device) the numbers come from NumPy's counter-based Philox generator with key
    ``seed`` and counter block ``(0, 0, step, stream)``: every (step, stream) owns a disjoint stretch of
    2^128 counter values, so draws never overlap. They are drawn in float64 and cast, so a float32 and a
    float64 run see the same noise up to rounding. On CUDA a device Philox generator is seeded with a 64-bit
    hash of (seed, step, stream), which avoids a host round trip; CUDA and CPU draws differ.

    Parameters
    ----------
    seed : non-negative int below 2^128
    """

    def __init__(self, seed: int):
        if not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**128:
            raise ValueError(f"seed must be an integer in [0, 2^128), got {seed!r}")
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"SeededNoise(seed={self.seed})"

    def normal(self, step: int, shape, dtype: torch.dtype, device, stream: int = 0) -> Tensor:
        """Standard normal Tensor of ``shape`` for this seed, ``step`` and ``stream``.

        Parameters
        ----------
        step : integrator step the noise belongs to (>= 0)
        shape : output shape, e.g. (B, N, d)
        dtype, device : of the returned tensor
        stream : independent sub-stream (>= 0) for several draws at one step, e.g. per trial path
        """
        step, stream = int(step), int(stream)
        if step < 0 or stream < 0 or step >= 2**64 or stream >= 2**64:
            raise ValueError(f"step and stream must be integers in [0, 2^64), got step={step}, stream={stream}")
        device = torch.device(device)
        shape = tuple(int(s) for s in shape)
        if device.type == "cuda":
            gen = torch.Generator(device=device)
            gen.manual_seed(self._hash(step, stream))
            return torch.randn(shape, generator=gen, dtype=dtype, device=device)
        key = [self.seed & (2**64 - 1), self.seed >> 64]
        rng = np.random.Generator(np.random.Philox(key=key, counter=[0, 0, step, stream]))
        z = torch.from_numpy(rng.standard_normal(shape))
        return z.to(device=device, dtype=dtype)

    def _hash(self, step: int, stream: int) -> int:
        data = f"{self.seed}:{step}:{stream}".encode()
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & (2**63 - 1)
