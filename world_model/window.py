"""One chunk's window: its conditioning and its few-step sampling, shared by inference and training.

The streaming generator (:mod:`world_model.generator`), the training clips
(:mod:`world_model.train.clips`) and the training rollouts (:mod:`world_model.train.rollout`) all
call these two functions, so a training window is the window inference builds for the same
trajectory (``tests/test_window.py`` pins that):

- :func:`window_conditioning`: for B rollouts at chunk indices k, from the poses of their pixel
  frames: window bounds -> pose frames -> window latent indices -> Plücker rays -> memory
  selection (chunks >= 1, when used) -> RoPE positions (spec §5.3-5.5, §6; geometry in
  :mod:`world_model.camera`, retrieval in :mod:`world_model.memory`).
- :func:`sample_window`: the few-step UniPC loop on a window whose first latents are clean context,
  written back (timestep 0, unchanged values) before every model call (spec §6 step 2).

Index arithmetic (chunks, bounds, pose frames, latent indices) runs on the host; only the pose
gathers, the rays and the retrieval run on the device, and host tensors reach it by non-blocking
copies: building a window never waits for the device. Poses are composed in float64 (the rays and
the retrieval scores too), and the camera code is rounded once to the caller's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from world_model.camera import c2w_from_poses, window_bounds, window_plucker, window_pose_frames
from world_model.config import WorldModelConfig
from world_model.memory import MemorySelection, memory_plucker, select_memory
from world_model.sampler import FlowUniPCSampler

__all__ = ["WindowConditioning", "frame_latents", "window_conditioning", "sample_window"]


def frame_latents(frames: Tensor, temporal_stride: int = 4) -> Tensor:
    """Latent index of pixel frames (int64, any shape): 0 for frame 0, else (frame - 1) // r + 1."""
    return torch.where(frames == 0, 0, torch.div(frames - 1, temporal_stride, rounding_mode="floor") + 1)


class WindowConditioning(NamedTuple):
    """The conditioning of one window for B rollouts (see :func:`window_conditioning`).

    Host tensors: ``chunk`` [B], ``start`` / ``end`` [B] (pixel frames [start, end) of the window,
    counted from the rollout's first frame), ``pose_frames`` [B, F] (each window latent's last
    pixel frame). Device tensors: ``latents`` [B, F] window latent indices (their RoPE positions),
    ``window_plucker`` [B, 6 s^2, F, h, w], and with memory ``memory`` (the
    :class:`~world_model.memory.MemorySelection`, [B, M] each) and ``memory_plucker``
    [B, 6 s^2, M, h, w]. ``num_context``: the clean context latents at the head of the window
    (1 image latent for chunk 0, ``past_latents`` later).
    """

    chunk: Tensor
    start: Tensor
    end: Tensor
    pose_frames: Tensor
    num_context: int
    latents: Tensor
    window_plucker: Tensor
    memory: MemorySelection | None
    memory_plucker: Tensor | None

    @property
    def num_frames(self) -> int:
        """Pixel frames (and per-frame actions) of the window: 57 for chunk 0, 56 later (release)."""
        return int((self.end - self.start)[0])

    @property
    def frames(self) -> Tensor:
        """[B, Nf] host: the window's pixel frames; the rows of its per-frame actions."""
        return self.start[:, None] + torch.arange(self.num_frames)

    @property
    def memory_latents(self) -> Tensor:
        """[B, M] int64 on the device: the retrieved memory latents (M = 0 without memory)."""
        if self.memory is None:
            return self.latents.new_zeros(self.latents.shape[0], 0)
        return self.memory.latents

    @property
    def plucker(self) -> Tensor:
        """[B, 6 s^2, M + F, h, w]: the DiT's camera code, memory frames first."""
        if self.memory_plucker is None:
            return self.window_plucker
        return torch.cat([self.memory_plucker, self.window_plucker], dim=2)

    @property
    def positions(self) -> Tensor:
        """[B, M + F] int64: the DiT's RoPE positions, absolute latent indices, memory first."""
        if self.memory is None:
            return self.latents
        return torch.cat([self.memory.latents, self.latents], dim=1)


def window_conditioning(
    poses: Tensor,
    chunks: Tensor,
    cfg: WorldModelConfig,
    *,
    memory: bool,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_elements: int | None = None,
) -> WindowConditioning:
    """The conditioning of chunk ``chunks`` [B] of B rollouts.

    Args:
        poses: [B, N, 5] (x, y, z, pitch, yaw) of pixel frames 0 ... N-1 of each rollout (frame 0:
            the reset image), N >= the window end; rows past a rollout's window end are padding
            and never read. Camera matrices are made where ``poses`` lives, in float64.
        chunks: [B] int64 on the host, all 0 or all >= 1 (the two windows differ in length).
        cfg: the model's config (stream geometry, VAE strides).
        memory: retrieve memory for chunks >= 1 (only when ``cfg.stream.num_memory > 0``).
        device: where the camera code and the indices go (default: ``poses``' device).
        dtype: dtype of the camera code (default float64).
        max_elements: block size of the retrieval (:func:`~world_model.memory.select_memory`; None:
            its default).
    """
    s, r, stride = cfg.stream, cfg.vae.temporal_stride, cfg.vae.spatial_stride
    if poses.ndim != 3 or poses.shape[-1] != 5:
        raise ValueError(f"expected poses [B, N, 5] (x, y, z, pitch, yaw), got {tuple(poses.shape)}")
    chunks = torch.as_tensor(chunks, dtype=torch.int64)
    if chunks.device.type != "cpu":
        raise ValueError("expected the chunk indices on the host (window index arithmetic never syncs the device)")
    if chunks.shape != (poses.shape[0],):
        raise ValueError(f"expected chunks [{poses.shape[0]}], got {tuple(chunks.shape)}")
    device = torch.device(device) if device is not None else poses.device
    start, end = window_bounds(chunks, s, r)  # [B] host
    if poses.shape[1] < int(end.max()):
        raise ValueError(f"expected poses of at least {int(end.max())} frames (the window end), got {poses.shape[1]}")
    pose_frames = window_pose_frames(chunks, s, r)  # [B, F] host (raises on a mix of chunk 0 and later)
    first = bool((chunks == 0).all())
    latents = frame_latents(pose_frames, r).to(device, non_blocking=True)  # [B, F]

    c2w = c2w_from_poses(poses.to(torch.float64)).to(device)  # [B, N, 4, 4]
    bidx = torch.arange(len(chunks), device=device)[:, None]
    win_c2w = c2w[bidx, pose_frames.to(device, non_blocking=True)]  # [B, F, 4, 4]
    plucker = window_plucker(win_c2w, s.height, s.width, stride, s.fov_deg)  # [B, 6s², F, h, w] float64
    sel, mem_plucker = None, None
    if memory and not first and s.num_memory > 0:
        block = {} if max_elements is None else {"max_elements": max_elements}
        sel = select_memory(c2w, chunks, s, r, **block)  # [B, M] each
        mem_plucker = memory_plucker(c2w, sel, s.height, s.width, stride, s.fov_deg, r)  # [B, 6s², M, h, w]
    if dtype is not None:
        plucker = plucker.to(dtype)
        mem_plucker = None if mem_plucker is None else mem_plucker.to(dtype)
    return WindowConditioning(
        chunk=chunks,
        start=start,
        end=end,
        pose_frames=pose_frames,
        num_context=1 if first else s.past_latents,
        latents=latents,
        window_plucker=plucker,
        memory=sel,
        memory_plucker=mem_plucker,
    )


Velocity = Callable[[Tensor, Tensor], Tensor]
"""``velocity(window, t)``: window [B, C, F, h, w] (context first), timestep map t [B, F] float32
(0 on the context) -> v [B, C, F, h, w]."""


def sample_window(
    velocity: Velocity,
    context: Tensor,
    noise: Tensor,
    sampler: FlowUniPCSampler,
    *,
    grad_step: int | None = None,
    backprop: bool = False,
) -> Tensor:
    """Sample a window's noisy latents from ``noise`` [B, C, Fn, h, w] after ``context`` [B, C, c, h, w].

    Every model call sees the clean context written back at timestep 0 and the noisy latents at the
    sampler's (bf16-rounded) timestep; the sampler steps the noisy latents only (its update is
    elementwise, so this equals stepping the whole window and overwriting the context). Returns
    [B, C, Fn, h, w] in ``noise``'s dtype.

    ``grad_step`` = i: steps before i run without gradients and the result is the clean estimate
    x̂0 = x − σ_i·v of step i, with gradients (DMD's random exit step). None: all steps, without gradients unless
    ``backprop`` (the final sample with gradients through every step: regression of the whole chain's output).
    """
    b, c = context.shape[0], context.shape[2]
    if noise.shape[0] != b or noise.shape[1] != context.shape[1] or noise.shape[3:] != context.shape[3:]:
        raise ValueError(f"expected noise [B={b}, C, Fn, h, w] to match context {tuple(context.shape)}")
    num_lat = c + noise.shape[2]
    timesteps = sampler.model_timesteps()  # [n] float32 on the host

    def v_noisy(x: Tensor, i: int) -> Tensor:
        t = torch.full((b, num_lat), float(timesteps[i]), device=x.device)
        t[:, :c] = 0.0
        return velocity(torch.cat([context, x], dim=2), t)[:, :, c:]

    if backprop and grad_step is not None:
        raise ValueError("backprop runs every step with gradients: give no grad_step")
    x, state = noise, sampler.init_state()
    last = sampler.num_steps if grad_step is None else grad_step
    with contextlib.nullcontext() if backprop else torch.no_grad():
        for i in range(last):
            x, state = sampler.step(x, v_noisy(x, i), state)
    if grad_step is None:
        return x
    return x - float(sampler.sigmas[grad_step]) * v_noisy(x, grad_step)
