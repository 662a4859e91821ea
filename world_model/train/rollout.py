"""Few-step sampling of one chunk and multi-chunk self-rollouts on training segments.

The sampling loop is the streaming generator's own (:func:`world_model.window.sample_window`: the
same UniPC sampler, context latents written back at timestep 0 before every model call), and the
windows come from :meth:`ClipSampler.build`, i.e. from the generator's window conditioning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from world_model.sampler import FlowUniPCSampler
from world_model.train.clips import ClipBatch, ClipSampler
from world_model.train.flow import dit_forward
from world_model.window import sample_window

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

    def velocity(window: Tensor, t: Tensor) -> Tensor:
        return dit_forward(model, batch, window, t[:, c])  # t [B, F]: 0 on the context, t[:, c] after it

    context = batch.latents[:, :, :c]
    if grad_step is None:
        with torch.no_grad():
            return sample_window(velocity, context, noise, sampler)
    return sample_window(velocity, context, noise, sampler, grad_step=grad_step)


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
        noise = torch.randn(shape, generator=generator).to(lat.device, non_blocking=True)
        x = sample_chunk(model, batch, noise, sampler)  # [B, C, Fn, h, w]
        idx = batch.positions[:, -x.shape[2] :]  # window latent indices of the new frames
        bidx = torch.arange(len(segments), device=lat.device)[:, None]
        lat[bidx, idx] = x.transpose(1, 2).to(lat.dtype)
    return lat
