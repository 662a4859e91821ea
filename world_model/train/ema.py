"""Exponential moving average of a model's weights (used for evaluation and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after each optimizer step.

    The shadow is a full copy of the model (``self.model``), kept in fp32, in eval mode and
    without gradients; buffers are copied, not averaged. With ``ramp`` (the default) ``decay`` ramps up as
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the initial weights; without,
    the initial weights keep their share ``decay ** n`` (a model fine-tuned from them, averaged).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, ramp: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.ramp = ramp
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates)) if self.ramp else self.decay
        src = dict(model.named_parameters())
        names = [name for name, _ in self.model.named_parameters()]
        mine = [p for _, p in self.model.named_parameters()]
        theirs = [src[name].detach().float() for name in names]
        torch._foreach_lerp_(mine, theirs, 1.0 - d)  # one fused launch per dtype/device group
        bufs = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(bufs[name])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
