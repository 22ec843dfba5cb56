"""Exponential moving average of model weights (with the usual warm-up of the decay)."""

import torch
from torch import nn


class EMA:
    """shadow <- d shadow + (1 - d) weights, with d = min(decay, (1 + n) / (10 + n)) after n updates.

    The update is one fused ``torch._foreach_lerp_`` over all floating-point tensors (a Python loop over ~50 small
    tensors cost as much as a small network's training step on a CPU)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._tensors = None  # (model, its float tensors, their shadows, other tensors, their shadows)

    def _pairs(self, model: nn.Module):
        if self._tensors is None or self._tensors[0] is not model:
            state = model.state_dict()  # detached aliases of the parameters and buffers
            floats = [k for k, v in state.items() if v.dtype.is_floating_point]
            others = [k for k in state if k not in floats]
            self._tensors = (model, [state[k] for k in floats], [self.shadow[k] for k in floats],
                             [state[k] for k in others], [self.shadow[k] for k in others])  # fmt: skip
        return self._tensors[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        weights, shadows, other_weights, other_shadows = self._pairs(model)
        if weights:
            torch._foreach_lerp_(shadows, weights, 1.0 - d)
        for shadow, value in zip(other_shadows, other_weights, strict=True):
            shadow.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self._tensors = None
