"""Few-step sampling of one chunk and multi-chunk self-rollouts on training segments.

The same UniPC sampler as inference (:class:`world_model.sampler.FlowUniPCSampler`); context
frames are re-written after every step, as the streaming loop does (spec §6).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from world_model.sampler import FlowUniPCSampler
from world_model.train.clips import ClipBatch, ClipSampler
from world_model.train.flow import dit_forward

__all__ = ["sample_chunk", "self_rollout"]


def sample_chunk(
    model: nn.Module,
    batch: ClipBatch,
    noise: Tensor,
    sampler: FlowUniPCSampler,
    *,
    grad_step: int | None = None,
) -> Tensor:
    """Sample the noisy frames of ``batch`` from ``noise`` [B, C, Fn, h, w]; returns [B, C, Fn, h, w].

    ``grad_step`` = i: steps before i run without gradients and the result is the clean estimate
    x̂0 = x − σ_i·v of step i, with gradients (DMD's random exit step). None: all steps, no grad.
    """
    c = batch.num_context
    ctx = batch.latents[:, :, :c]
    x, state = noise, sampler.init_state()
    timesteps = sampler.model_timesteps()
    last = sampler.num_steps if grad_step is None else grad_step
    with torch.no_grad():
        for i in range(last):
            v = dit_forward(model, batch, torch.cat([ctx, x], dim=2), timesteps[i].expand(len(x)))[:, :, c:]
            x, state = sampler.step(x, v, state)
    if grad_step is None:
        return x
    v = dit_forward(model, batch, torch.cat([ctx, x], dim=2), timesteps[grad_step].expand(len(x)))[:, :, c:]
    return x - float(sampler.sigmas[grad_step]) * v


@torch.no_grad()
def self_rollout(
    model: nn.Module,
    clips: ClipSampler,
    segments: Tensor,
    num_chunks: int,
    sampler: FlowUniPCSampler,
    generator: torch.Generator,
) -> Tensor:
    """Generate chunks 0 .. num_chunks-1 of ``segments`` [B] from their first frame with the model.

    Returns the segments' latents [B, Fs, C, h, w] with every generated latent replaced (latent 0
    stays the true image latent; latents after the last chunk keep their stored values, unused).
    """
    store = clips.store
    lat = store.latents[segments.to(store.latents.device)].float().clone()  # [B, Fs, C, h, w]
    for k in range(num_chunks):
        batch = clips.build(segments, torch.full((len(segments),), k, dtype=torch.int64), latents=lat)
        c = batch.num_context
        shape = batch.latents[:, :, c:].shape
        noise = torch.randn(shape, generator=generator).to(lat.device)
        x = sample_chunk(model, batch, noise, sampler)  # [B, C, Fn, h, w]
        idx = batch.positions[:, -x.shape[2] :]  # window latent indices of the new frames
        bidx = torch.arange(len(segments), device=lat.device)[:, None]
        lat[bidx, idx] = x.transpose(1, 2).to(lat.dtype)
    return lat
