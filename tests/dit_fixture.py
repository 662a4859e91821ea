"""A DiT with random weights everywhere and random window inputs (runtime and parallel tests)."""

from __future__ import annotations

import torch

from world_model.config import DiTConfig
from world_model.dit import MatrixGameDiT


def random_dit(cfg: DiTConfig, seed: int = 0) -> MatrixGameDiT:
    """Random weights everywhere (the training init zeroes the head and several projections)."""
    torch.manual_seed(seed)
    model = MatrixGameDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def dit_inputs(
    cfg: DiTConfig, B: int, M: int, F: int, h: int, w: int, *, first_chunk: bool = False, seed: int = 1
) -> dict:
    """Window inputs: F latents of h x w, M memory latents, actions for 4(F-1)+1 or 4F pixel frames."""
    g = torch.Generator().manual_seed(seed)
    nf = 4 * (F - 1) + 1 if first_chunk else 4 * F
    t = torch.rand(B, F, generator=g) * 1000
    t[:, 0] = 0  # a clean context frame
    return {
        "x": torch.randn(B, cfg.in_dim, F, h, w, generator=g),
        "t": t,
        "context": torch.randn(B, 5, cfg.text_dim, generator=g),
        "plucker": torch.randn(B, cfg.plucker_channels, M + F, h, w, generator=g),
        "mouse": 0.1 * torch.randn(B, nf, 2, generator=g),
        "keyboard": (torch.rand(B, nf, 6, generator=g) > 0.5).float(),
        "positions": torch.stack([torch.randperm(40, generator=g)[: M + F] for _ in range(B)]),
        "memory": torch.randn(B, cfg.in_dim, M, h, w, generator=g) if M else None,
    }
