"""The streaming loop (spec §6): explicit state in, actions in -> frames, poses and the new state.

A :class:`StreamState` holds a batch of B independent rollouts ("envs"). Every per-env part is
resettable by mask, so one env can start over while the others continue. Each call of
:meth:`StreamingGenerator.step` advances the envs it gets actions for by one chunk:

- chunk 0 (first after a reset): the image latent (clean, t = 0) + ``first_latents - 1`` noisy
  latents -> ``1 + r*(first_latents - 1)`` frames (57 for the release);
- chunk k >= 1: ``num_memory`` retrieved memory latents + ``past_latents`` clean past latents +
  ``new_latents`` noisy latents -> ``r*new_latents`` frames (40).

Envs at chunk 0 and envs at later chunks run as separate DiT calls (the sequences differ); envs
within a group run batched. Each env draws its noise from its own ``torch.Generator``, so a batch
gives the same frames as each env alone. Actions come per pixel frame; the pose of frame i + 1 is
the pose of frame i moved by action i (commanded poses, not estimated from the video).

The model sees bf16-rounded timesteps (1000, 908, 712 for the 3-step schedule); context and
memory frames have timestep 0 and are written back after every sampler step. With
``guidance_scale > 1`` (the base model) a second call per step uses the negative prompt, the null
actions and no memory (spec §6 step 4). With ``action_guidance > 1`` (ours; for a model trained
with action dropout) the second call keeps the prompt, camera code and memory and nulls only the
actions, so the guidance amplifies what the actions add. With ``memory_guidance > 1`` (ours) the second call of a
window with memory keeps the prompt, camera code and actions and leaves out the retrieved memory (the window's own
camera code and positions), so the guidance amplifies what the memory adds. The window's conditioning (camera code, memory,
positions) and the sampling loop are :mod:`world_model.window`'s, the ones training calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from world_model.action import NULL_KEYBOARD, NULL_MOUSE
from world_model.camera import c2w_from_poses, integrate_poses
from world_model.dit import reuse_conditioning
from world_model.sampler import FlowUniPCSampler, cfg_combine
from world_model.vae import to_uint8_frames
from world_model.window import sample_window, window_conditioning

if TYPE_CHECKING:
    from world_model.model import WorldModel
    from world_model.vae import DecodeCache

__all__ = ["ChunkActions", "ChunkOutput", "StreamState", "StreamingGenerator"]


def _explicit(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``: the device that tensors made on ``device`` report."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class ChunkActions(NamedTuple):
    """One env's actions for one chunk, one row per pixel frame: keyboard [T, K], mouse [T, 2].

    ``poses``: optionally float [T, 5] (x, y, z, pitch, yaw), the camera pose after each action in the env's frame
    (the reset pose is zeros), from a pose source of the caller's (a simulator that stops at walls, a learned
    integrator) instead of the actions integrated (:func:`~world_model.camera.integrate_poses`); the actions still
    condition the DiT.
    """

    keyboard: Tensor
    mouse: Tensor
    poses: Tensor | None = None


class ChunkOutput(NamedTuple):
    """One env's result of one chunk (on the CPU).

    ``frames`` uint8 [T, H, W, 3]; ``poses`` float64 [T, 5] (x, y, z, pitch, yaw) and ``c2w``
    float64 [T, 4, 4] of those frames; ``frame_start``: the rollout index of the first frame;
    ``chunk_index``; ``memory_latents`` [M] int64 (empty for chunk 0).
    """

    frames: Tensor
    poses: Tensor
    c2w: Tensor
    frame_start: int
    chunk_index: int
    memory_latents: Tensor


@dataclass
class StreamState:
    """The streaming state of B rollouts. Lists have one entry per env.

    ``latents[i]``: [C, F_i, h, w] every latent produced so far (latent 0 = the encoded image), on
    the model's device; memory is retrieved from it and its last ``past_latents`` are the next
    chunk's clean context. ``poses[i]``: float64 [T_i + 1, 5] on the CPU, the pose of every frame
    so far plus the pose the next frame starts from. ``keyboard[i]`` [T_i, K] / ``mouse[i]``
    [T_i, 2]: the action of every frame so far. ``text``: [B, L, D] prompt embeddings.
    ``rngs[i]``: env i's noise generator. ``chunk[i]``: index of the next chunk (-1: not reset).
    ``decode_cache``: the VAE decoder's streaming cache of all B envs.
    ``memory_latents[i]``: the memory latent indices used by env i's last chunk.
    """

    latents: list[Tensor | None]
    poses: list[Tensor]
    keyboard: list[Tensor]
    mouse: list[Tensor]
    text: Tensor
    rngs: list[torch.Generator]
    chunk: list[int]
    decode_cache: DecodeCache
    seeds: list[int] = field(default_factory=list)
    memory_latents: list[Tensor] = field(default_factory=list)

    @property
    def num_envs(self) -> int:
        return len(self.chunk)

    def num_frames(self, i: int) -> int:
        """Pixel frames env i has produced since its reset."""
        return self.keyboard[i].shape[0]


class StreamingGenerator:
    """Runs the streaming loop of a :class:`~world_model.model.WorldModel` on a batch of envs.

    Its ``reset_`` and ``step`` check their inputs before changing anything, but an error inside the work itself (a
    failed decode, an out-of-memory) can leave the :class:`StreamState` half advanced. The envs make every call
    all-or-nothing on top of it (``MatrixGameVectorEnv`` snapshots what a call may change, ``mg3_env.vector._snapshot``,
    and restores it on failure); a caller of the generator itself does the same where it needs to."""

    def __init__(self, model: WorldModel) -> None:
        self.model = model
        cfg = model.config
        self.cfg = cfg
        self.stream = cfg.stream
        self.r = cfg.vae.temporal_stride
        self.stride = cfg.vae.spatial_stride
        self.latent_hw = cfg.latent_hw
        self.sampler = FlowUniPCSampler.from_config(cfg.sampler)
        self.device = _explicit(torch.device(model.runtime.device))
        self.dtype = model.runtime.dtype
        self._negative_text: Tensor | None = None

    # ---- geometry ----------------------------------------------------------------------------

    @property
    def first_chunk_frames(self) -> int:
        """Frames of chunk 0 (57 for the release)."""
        return self.cfg.vae.num_frames(self.stream.first_latents, first_chunk=True)

    @property
    def chunk_frames(self) -> int:
        """Frames of every later chunk (40 for the release)."""
        return self.cfg.vae.num_frames(self.stream.new_latents, first_chunk=False)

    def frames_needed(self, state: StreamState, i: int) -> int:
        """How many per-frame actions env i's next chunk takes."""
        if state.chunk[i] < 0:
            raise RuntimeError(f"env {i} has not been reset; call reset_ first")
        return self.first_chunk_frames if state.chunk[i] == 0 else self.chunk_frames

    # ---- state -------------------------------------------------------------------------------

    def init_state(self, num_envs: int) -> StreamState:
        """An empty state of ``num_envs`` envs, none of them reset yet."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        kdim = self._keyboard_dim
        text = torch.zeros(num_envs, self.cfg.text.text_len, self.cfg.text.dim, device=self.device, dtype=self.dtype)
        return StreamState(
            latents=[None] * num_envs,
            poses=[torch.zeros(1, 5, dtype=torch.float64) for _ in range(num_envs)],
            keyboard=[torch.zeros(0, kdim) for _ in range(num_envs)],
            mouse=[torch.zeros(0, 2) for _ in range(num_envs)],
            text=text,
            rngs=[torch.Generator(self.device) for _ in range(num_envs)],
            chunk=[-1] * num_envs,
            decode_cache=self.model.vae.new_cache(num_envs),
            seeds=[0] * num_envs,
            memory_latents=[torch.zeros(0, dtype=torch.int64) for _ in range(num_envs)],
        )

    @property
    def _keyboard_dim(self) -> int:
        a = self.cfg.dit.action_config
        return a.keyboard_dim_in if a is not None else 6

    @torch.no_grad()
    def reset_(self, state: StreamState, mask: Sequence[bool], images: Tensor, text: Tensor, seeds: Sequence[int]):
        """Start the masked envs over from an image and a prompt embedding (in place).

        Args:
            mask: [B] bools; ``n`` of them set.
            images: [n, 3, H, W] float in [-1, 1] at the model's resolution (masked envs in order).
            text: [n, L, D] prompt embeddings.
            seeds: n ints seeding each env's noise generator.

        The first chunk is generated by the next :meth:`step` (it needs the first chunk's actions).
        """
        idx = [i for i, m in enumerate(mask) if m]
        if len(mask) != state.num_envs:
            raise ValueError(f"expected a mask of {state.num_envs} entries, got {len(mask)}")
        n, (h, w) = len(idx), (self.stream.height, self.stream.width)
        if tuple(images.shape) != (n, 3, h, w):
            raise ValueError(f"expected images [{n}, 3, {h}, {w}] in [-1, 1], got {tuple(images.shape)}")
        if text.shape[0] != n or text.shape[-1] != self.cfg.text.dim:
            raise ValueError(f"expected text embeddings [{n}, L, {self.cfg.text.dim}], got {tuple(text.shape)}")
        if len(seeds) != n:
            raise ValueError(f"expected {n} seeds, got {len(seeds)}")
        if n == 0:
            return state
        state.decode_cache.reset_(torch.as_tensor(list(mask), dtype=torch.bool))
        video = images.to(self.device, self.dtype)[:, :, None]  # [n, 3, T=1, H, W]
        z = self.model.vae.encode(video)  # [n, C, 1, h, w]
        lt = min(text.shape[1], self.cfg.text.text_len)
        for j, i in enumerate(idx):
            state.latents[i] = z[j].to(self.dtype)
            state.poses[i] = torch.zeros(1, 5, dtype=torch.float64)
            state.keyboard[i] = torch.zeros(0, self._keyboard_dim)
            state.mouse[i] = torch.zeros(0, 2)
            state.text[i].zero_()
            state.text[i, :lt] = text[j, :lt].to(self.device, self.dtype)
            state.rngs[i] = torch.Generator(self.device).manual_seed(int(seeds[j]))
            state.seeds[i] = int(seeds[j])
            state.chunk[i] = 0
            state.memory_latents[i] = torch.zeros(0, dtype=torch.int64)
        return state

    # ---- one chunk ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self, state: StreamState, actions: Sequence[ChunkActions | None]
    ) -> tuple[list[ChunkOutput | None], StreamState]:
        """Advance every env with an action by one chunk (in place; the state is also returned).

        ``actions[i]`` is None for envs that do not advance, else per-frame actions of
        :meth:`frames_needed` rows. Returns one :class:`ChunkOutput` (or None) per env.
        """
        if len(actions) != state.num_envs:
            raise ValueError(f"expected {state.num_envs} action entries (None to skip an env), got {len(actions)}")
        for i, a in enumerate(actions):
            if a is None:
                continue
            t = self.frames_needed(state, i)
            if tuple(a.keyboard.shape) != (t, self._keyboard_dim) or tuple(a.mouse.shape) != (t, 2):
                raise ValueError(
                    f"env {i}: expected keyboard [{t}, {self._keyboard_dim}] and mouse [{t}, 2], got "
                    f"{tuple(a.keyboard.shape)} and {tuple(a.mouse.shape)}"
                )
            if a.poses is not None and (
                tuple(a.poses.shape) != (t, 5) or not a.poses.is_floating_point() or not bool(a.poses.isfinite().all())
            ):
                raise ValueError(
                    f"env {i}: expected finite float poses [{t}, 5], got {a.poses.dtype} {tuple(a.poses.shape)}"
                )
        outputs: list[ChunkOutput | None] = [None] * state.num_envs
        first = [i for i, a in enumerate(actions) if a is not None and state.chunk[i] == 0]
        later = [i for i, a in enumerate(actions) if a is not None and state.chunk[i] > 0]
        for group in (first, later):
            if group:
                for i, out in zip(group, self._chunk(state, group, [actions[i] for i in group])):
                    outputs[i] = out
        return outputs, state

    def _chunk(self, state: StreamState, idx: list[int], actions: list[ChunkActions]) -> list[ChunkOutput]:
        """One chunk for envs ``idx``, all at chunk 0 or all at chunks >= 1."""
        cfg, s = self.cfg, self.stream
        n, (h, w) = len(idx), self.latent_hw
        first = state.chunk[idx[0]] == 0
        chunks = torch.tensor([state.chunk[i] for i in idx])

        # actions and commanded poses (CPU, float64)
        kb = torch.stack([a.keyboard.float().cpu() for a in actions])  # [n, T, K]
        ms = torch.stack([a.mouse.float().cpu() for a in actions])  # [n, T, 2]
        start_pose = torch.stack([state.poses[i][-1] for i in idx])  # [n, 5]
        new_poses = integrate_poses(kb, ms, start_pose, s)  # [n, T + 1, 5]
        for j, a in enumerate(actions):  # the caller's own pose source, where it gave one
            if a.poses is not None:
                new_poses[j, 1:] = a.poses.to(new_poses.dtype).cpu()
        for j, i in enumerate(idx):
            state.keyboard[i] = torch.cat([state.keyboard[i], kb[j]])
            state.mouse[i] = torch.cat([state.mouse[i], ms[j]])
            state.poses[i] = torch.cat([state.poses[i], new_poses[j, 1:]])
        total = max(state.num_frames(i) for i in idx)
        poses = torch.stack([_pad_rows(state.poses[i][:total], total) for i in idx])  # [n, N, 5]

        # window conditioning: bounds, camera code, memory (chunks >= 1), latent positions
        win = window_conditioning(poses, chunks, cfg, memory=s.num_memory > 0, device=self.device, dtype=self.dtype)
        start, end = win.start.tolist(), win.end.tolist()
        win_kb = torch.stack([state.keyboard[i][a:b] for i, a, b in zip(idx, start, end)])  # [n, Nf, K]
        win_ms = torch.stack([state.mouse[i][a:b] for i, a, b in zip(idx, start, end)])  # [n, Nf, 2]
        num_lat, num_cond = win.latents.shape[1], win.num_context  # F, clean context latents
        cond = torch.stack([state.latents[i][:, -num_cond:] for i in idx])  # [n, C, num_cond, h, w]
        mem_lat = win.memory_latents  # [n, M]
        memory = None
        if win.memory is not None:
            memory = torch.stack([state.latents[i][:, mem_lat[j]] for j, i in enumerate(idx)])  # [n, C, M, h, w]

        # sampling; each env's noise covers the whole window (the context part is overwritten)
        noise = torch.cat(
            [
                torch.randn(
                    (1, cfg.dit.in_dim, num_lat, h, w), generator=state.rngs[i], device=self.device, dtype=self.dtype
                )
                for i in idx
            ]
        )  # [n, C, F, h, w]
        text = state.text[idx]
        plucker, positions = win.plucker, win.positions
        kb_dev, ms_dev = win_kb.to(self.device, self.dtype), win_ms.to(self.device, self.dtype)
        guided = cfg.sampler.guidance_scale > 1.0
        action_guided = cfg.sampler.action_guidance > 1.0  # SamplerConfig allows one of the three
        memory_guided = cfg.sampler.memory_guidance > 1.0 and memory is not None  # chunk 0 has no memory
        if guided or action_guided:
            null_kb, null_ms = torch.full_like(kb_dev, NULL_KEYBOARD), torch.full_like(ms_dev, NULL_MOUSE)
        if guided:  # the null branch: negative prompt, null actions, no memory
            neg, null_plucker, null_positions = self._negative(n), win.window_plucker, win.latents

        def velocity(x: Tensor, t_map: Tensor) -> Tensor:
            v = self.model.dit(x, t_map, text, plucker, ms_dev, kb_dev, positions, memory)
            if guided:
                v_null = self.model.dit(x, t_map, neg, null_plucker, null_ms, null_kb, null_positions, None)
                v = cfg_combine(v, v_null, cfg.sampler.guidance_scale)
            elif action_guided:  # the same prompt, camera, positions and memory (one cached conditioning)
                v_null = self.model.dit(x, t_map, text, plucker, null_ms, null_kb, positions, memory)
                v = cfg_combine(v, v_null, cfg.sampler.action_guidance)
            elif memory_guided:  # the same prompt and actions; the window's camera code and positions, no memory
                v_free = self.model.dit(x, t_map, text, win.window_plucker, ms_dev, kb_dev, win.latents, None)
                v = cfg_combine(v, v_free, cfg.sampler.memory_guidance)
            return v

        # the same text, camera code and positions at every step: the DiT computes their part once
        # (and with RuntimeOptions.context_cache the clean frames' tokens once: the context's num_cond latents)
        refresh = self.model.runtime.context_cache_refresh
        with reuse_conditioning(self.model.dit, context_frames=num_cond, context_cache_refresh=refresh):
            x = sample_window(velocity, cond, noise[:, :, num_cond:], self.sampler)  # [n, C, F - num_cond, h, w]

        # history and decode
        new = torch.cat([cond, x], dim=2) if first else x[:, :, -s.new_latents :]  # chunk 0: with the image latent
        for j, i in enumerate(idx):
            state.latents[i] = torch.cat([state.latents[i], new[j]], dim=1) if not first else new[j].clone()
            state.chunk[i] += 1
        video = self._decode(state, idx, new, first)  # [n, 3, T, H, W]
        # no host sync before this point: the host queues the decode and allocates the frames' page-locked
        # buffer while the device still runs the sampler (a buffer of 108 MB took 84 ms to allocate on the
        # H200's host, 36 ms of it with the device idle when the memory latents' copy synced first)
        frames = to_uint8_frames(video)
        for j, i in enumerate(idx):
            state.memory_latents[i] = mem_lat[j].cpu()

        outputs = []
        t_new = frames.shape[1]
        for j, i in enumerate(idx):
            f0 = state.num_frames(i) - t_new
            p = state.poses[i][f0 : f0 + t_new]
            outputs.append(
                ChunkOutput(frames[j], p, c2w_from_poses(p), f0, state.chunk[i] - 1, state.memory_latents[i])
            )
        return outputs

    def _decode(self, state: StreamState, idx: list[int], z: Tensor, first: bool) -> Tensor:
        """Decode new latents [n, C, F, h, w] with each env's decode cache (batched)."""
        video, cache = self.model.vae.decode(
            z, cache=state.decode_cache.index(idx), first_chunk=first, segment=self.model.runtime.decode_segment
        )
        state.decode_cache.update_(idx, cache)
        return video

    def _negative(self, n: int) -> Tensor:
        """Negative-prompt embeddings [n, L, D] for classifier-free guidance (encoded once)."""
        if self._negative_text is None:
            emb = self.model.encode_prompts([self.cfg.sampler.negative_prompt])
            self._negative_text = emb.to(self.device, self.dtype)
        return self._negative_text.expand(n, -1, -1)


def _pad_rows(x: Tensor, n: int) -> Tensor:
    """Pad [T, ...] to [n, ...] by repeating the last row (padding is never read)."""
    if x.shape[0] == n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])
