"""The error buffer (spec §12, SVI-style): the model's own prediction residuals, re-injected into
the clean context (past and memory latents) during training so that it learns to work from
imperfect, self-generated history — the train/test gap of autoregressive rollouts.

Residual per latent frame: δ = x̂0 − x0, where x̂0 = x_σ − σ·v̂ is the clean estimate implied by
the predicted flow. Context perturbation: x̃ = x + γ·δ with δ drawn uniformly from the buffer,
separately for history (γ_h) and memory (γ_m). The release does not publish γ, the buffer size or
which noise levels feed it; our choices are in :class:`ErrorBufferOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ErrorBufferOptions", "ErrorBuffer"]


@dataclass(frozen=True)
class ErrorBufferOptions:
    """Our choices for the release's unknowns.

    ``sigma_max``: only residuals of samples with σ <= sigma_max enter the buffer. At σ near 1 the
    clean estimate is close to the data mean and says nothing about rollout errors; the 3-step
    sampler's last prediction is made at σ ≈ 0.71, so residuals up to 0.75 cover the errors a
    deployed model actually commits. ``gamma_history``/``gamma_memory``: scale of the injected
    residual (γ_h, γ_m); ``prob``: chance that one context frame is perturbed at all, so the model
    also sees clean context (the first chunk's image latent is never perturbed).
    """

    size: int = 2048  # residual frames kept (ring buffer)
    sigma_max: float = 0.75
    gamma_history: float = 0.5
    gamma_memory: float = 0.7
    prob: float = 0.5
    min_fill: int = 16  # no perturbation until this many residuals are stored

    def __post_init__(self) -> None:
        if self.size < 1 or not 0.0 <= self.prob <= 1.0 or self.gamma_history < 0 or self.gamma_memory < 0:
            raise ValueError(f"invalid error buffer options: {self}")


class ErrorBuffer:
    """A ring buffer of residual latent frames [size, C, h, w] on one device."""

    def __init__(self, opts: ErrorBufferOptions = ErrorBufferOptions()) -> None:
        self.opts = opts
        self.data: Tensor | None = None  # [size, C, h, w], allocated on first push
        self.count = 0  # residuals ever pushed
        self.pos = 0

    def __len__(self) -> int:
        return min(self.count, self.opts.size)

    @torch.no_grad()
    def push(self, residual: Tensor, sigma: Tensor) -> int:
        """Store residual frames. residual [B, C, F, h, w], sigma [B]; returns how many were stored.

        The selection by σ runs where ``sigma`` is: pass it on the host to keep a GPU run sync-free.
        """
        if residual.ndim != 5 or sigma.shape != residual.shape[:1]:
            raise ValueError(f"expected residual [B, C, F, h, w] and sigma [B], got {residual.shape}, {sigma.shape}")
        keep_idx = torch.nonzero(sigma <= self.opts.sigma_max).view(-1)  # host-side when sigma is
        keep = residual[keep_idx.to(residual.device, non_blocking=True)]  # [b, C, F, h, w]
        frames = keep.transpose(1, 2).flatten(0, 1).float()  # [b*F, C, h, w]
        if frames.numel() == 0:
            return 0
        if self.data is None:
            self.data = frames.new_zeros((self.opts.size, *frames.shape[1:]))
        if frames.shape[1:] != self.data.shape[1:]:
            raise ValueError(f"residual frame shape {tuple(frames.shape[1:])} != buffer {tuple(self.data.shape[1:])}")
        frames = frames[-self.opts.size :]
        idx = (self.pos + torch.arange(len(frames))) % self.opts.size
        self.data[idx.to(self.data.device, non_blocking=True)] = frames.to(self.data.device)
        self.pos = (self.pos + len(frames)) % self.opts.size
        self.count += len(frames)
        return len(frames)

    @torch.no_grad()
    def perturb(self, x: Tensor, gamma: float, *, generator: torch.Generator | None = None) -> Tensor:
        """x [B, C, F, h, w] -> x + γ·δ per frame (each frame perturbed with probability ``prob``)."""
        if self.data is None or len(self) < self.opts.min_fill or gamma == 0.0 or x.shape[2] == 0:
            return x
        b, _, f = x.shape[:3]
        n = len(self)
        pick = torch.randint(0, n, (b * f,), generator=generator, device=self.data.device)
        delta = self.data[pick].reshape(b, f, *self.data.shape[1:]).transpose(1, 2)  # [B, C, F, h, w]
        on = torch.rand(b, 1, f, 1, 1, generator=generator, device=self.data.device) < self.opts.prob
        return x + (gamma * on * delta).to(device=x.device, dtype=x.dtype)

    def state_dict(self) -> dict:
        data = self.data[: len(self)] if self.data is not None else torch.zeros(0)
        return {"data": data.to(torch.bfloat16), "count": self.count, "pos": self.pos}

    def load_state_dict(self, state: dict, device: str | torch.device = "cpu") -> None:
        data = state["data"]
        self.count, self.pos = int(state["count"]), int(state["pos"])
        if data.numel() == 0:
            self.data = None
            return
        self.data = torch.zeros((self.opts.size, *data.shape[1:]), device=device)
        n = min(len(data), self.opts.size)
        self.data[:n] = data[:n].float().to(device)
        self.pos %= self.opts.size
