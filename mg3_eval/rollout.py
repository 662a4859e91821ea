"""Rolling out a world model from first frames with per-frame actions, and its VAE's round trip.

:func:`generate_videos` is the one way the protocols make video: B envs of the vector env (the
path users run), reset with the first chunk's actions, then stepped chunk by chunk; frames as uint8.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from mg3_eval.simulator import SimEpisode, SimStart
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel
from world_model.vae import to_uint8_frames

__all__ = [
    "Generated",
    "generate_videos",
    "generate_from_starts",
    "rollout_episodes",
    "without_memory",
    "chunk_slices",
    "batched",
    "sync",
    "vae_roundtrip",
    "vae_length",
]


class Generated(NamedTuple):
    """Generated video: ``frames`` uint8 [B, T, H, W, 3]; ``chunk_seconds`` wall time of each
    chunk (all B envs together); ``finite``: every latent stayed finite."""

    frames: np.ndarray
    chunk_seconds: list[float]
    finite: bool


def without_memory(wm: WorldModel) -> WorldModel:
    """The same model with memory off: chunks k >= 1 see no memory latents (only the past ones)."""
    stream = wm.config.stream.replace(num_memory=0)
    return dataclasses.replace(wm, config=wm.config.replace(stream=stream))


def chunk_slices(first_frames: int, chunk_frames: int, num_chunks: int) -> list[slice]:
    """Frame ranges of chunks 0..num_chunks-1 of a rollout."""
    out = [slice(0, first_frames)]
    for k in range(1, num_chunks):
        a = first_frames + (k - 1) * chunk_frames
        out.append(slice(a, a + chunk_frames))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_videos(
    wm: WorldModel,
    images: np.ndarray,
    prompts: Sequence[str],
    keyboard: np.ndarray,
    mouse: np.ndarray,
    *,
    seeds: Sequence[int],
    use_memory: bool = True,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    keep_frames: bool = True,
) -> Generated:
    """Roll out B envs of :class:`~mg3_env.vector.MatrixGameVectorEnv` (the path users run) from
    first frames with per-frame actions: ``reset`` with each env's image, prompt, seed and the
    first chunk's actions, then one ``step`` per further chunk.

    Args:
        images: uint8 [B, H, W, 3] at the model's resolution.
        keyboard: [B, T, K], mouse: [B, T, 2]; T = first chunk frames + k * chunk frames.
        on_chunk: called with (chunk index, frames uint8 [B, t, H, W, 3]) after every chunk.
        keep_frames: False returns frames [B, 0, H, W, 3] (long rollouts; use ``on_chunk``).

    ``chunk_seconds``: the wall time of the reset (text and image encoding, chunk 0) and of each step.
    """
    from gymnasium.vector import AutoresetMode

    from mg3_env.vector import MatrixGameVectorEnv

    model = wm if use_memory else without_memory(wm)
    s = model.config.stream
    b = len(images)
    if images.ndim != 4 or images.shape[1:] != (s.height, s.width, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected images uint8 [B, {s.height}, {s.width}, 3], got {images.dtype} {images.shape}")
    if keyboard.shape[0] != b or mouse.shape[:2] != keyboard.shape[:2] or len(prompts) != b or len(seeds) != b:
        raise ValueError(
            f"expected {b} prompts, seeds, keyboard [B, T, K] and mouse [B, T, 2], got {len(prompts)}, "
            f"{len(seeds)}, {keyboard.shape}, {mouse.shape}"
        )
    t = keyboard.shape[1]
    gen = StreamingGenerator(model)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    if t < first or (t - first) % rest:
        raise ValueError(f"expected {first} + k * {rest} frames of actions, got {t}")
    num_chunks = 1 + (t - first) // rest
    kb, ms = np.asarray(keyboard, np.float32), np.asarray(mouse, np.float32)
    env = MatrixGameVectorEnv(b, model=model, max_chunks=max(1, num_chunks - 1), autoreset_mode=AutoresetMode.DISABLED)
    dev = torch.device(model.runtime.device)
    frames, seconds = [], []
    try:
        for k, sl in enumerate(chunk_slices(first, rest, num_chunks)):
            action = {"keyboard": kb[:, sl], "mouse": ms[:, sl]}
            t0 = time.perf_counter()
            if k == 0:
                options = {"image": list(images), "prompt": list(prompts), "action": action}
                _, info = env.reset(seed=[int(x) for x in seeds], options=options)
                chunk = info["first_chunk_frames"]  # [B, first, H, W, 3]
            else:
                chunk = env.step(action)[0]["frames"]  # [B, rest, H, W, 3]
            sync(dev)
            seconds.append(time.perf_counter() - t0)
            if on_chunk is not None:
                on_chunk(k, chunk)
            if keep_frames:
                frames.append(chunk)
        finite = all(bool(torch.isfinite(z).all()) for st in env.stream_states for z in st.latents if z is not None)
    finally:
        env.close()
    out = np.concatenate(frames, 1) if frames else np.zeros((b, 0, s.height, s.width, 3), np.uint8)
    return Generated(out, seconds, finite)


def generate_from_starts(
    wm: WorldModel, starts: Sequence[SimStart], keyboard: np.ndarray, mouse: np.ndarray, **kwargs
) -> Generated:
    """:func:`generate_videos` from simulator starts (their frames and prompts), every env with the same per-frame
    actions ``keyboard`` [T, K] and ``mouse`` [T, 2]; ``kwargs`` (``seeds`` among them) as there."""
    n = len(starts)
    return generate_videos(
        wm,
        np.stack([s.frame for s in starts]),
        [s.prompt for s in starts],
        np.broadcast_to(keyboard, (n, *keyboard.shape)),
        np.broadcast_to(mouse, (n, *mouse.shape)),
        **kwargs,
    )


def rollout_episodes(
    wm: WorldModel,
    episodes: Sequence[SimEpisode],
    num_frames: int,
    *,
    seed: int = 0,
    batch_size: int = 8,
    keyboard: np.ndarray | None = None,
    mouse: np.ndarray | None = None,
) -> Generated:
    """Simulator episodes rolled out by the model from their first frames with their prompts and
    their own first ``num_frames`` actions (or ``keyboard`` [N, T, K] and ``mouse`` [N, T, 2] in
    their place), episode i with seed ``seed + i``, ``batch_size`` envs at a time.

    ``frames``: uint8 [N, T, H, W, 3]; ``chunk_seconds``: each batch's chunk times divided by its
    size, batch after batch; ``finite``: every batch's latents stayed finite.
    """
    short = [e.level for e in episodes if len(e.frames) < num_frames]
    if short:
        raise ValueError(f"episodes need {num_frames} frames; shorter ones: {short}")
    kb = np.stack([e.keyboard[:num_frames] for e in episodes]) if keyboard is None else keyboard
    ms = np.stack([e.mouse[:num_frames] for e in episodes]) if mouse is None else mouse
    frames, seconds, finite = [], [], True
    for idx in batched(len(episodes), batch_size):
        g = generate_videos(
            wm,
            np.stack([episodes[i].frames[0] for i in idx]),
            [episodes[i].prompt for i in idx],
            kb[idx.start : idx.stop],
            ms[idx.start : idx.stop],
            seeds=[seed + i for i in idx],
        )
        frames.append(g.frames)
        seconds += [x / len(idx) for x in g.chunk_seconds]
        finite &= g.finite
    return Generated(np.concatenate(frames), seconds, finite)


def batched(n: int, size: int) -> list[range]:
    return [range(a, min(n, a + size)) for a in range(0, n, size)]


@torch.no_grad()
def vae_roundtrip(wm: WorldModel, frames: np.ndarray) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] or [B, T, H, W, 3] encoded and decoded by the model's VAE
    (T = 1 + r*k, the first frame alone as in a first chunk): the simulator's video with the blur
    of the model's decoder and none of its dynamics. Its PSNR is what a perfect model scores."""
    single = frames.ndim == 4
    clips = np.ascontiguousarray(frames[None] if single else frames)
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).to(wm.runtime.device, wm.runtime.dtype) / 127.5 - 1.0
    rec, _ = wm.vae.decode(wm.vae.encode(x), first_chunk=True)
    out = to_uint8_frames(rec).numpy()
    return out[0] if single else out


def vae_length(n: int, r: int) -> int:
    """The longest 1 + r*k <= n."""
    return 1 + r * ((n - 1) // r) if n >= 1 else 0
