"""Pre-encode latents once: latent statistics, then every segment through the frozen VAE encoder.

Segments are ``1 + r*(Fs - 1)`` frames of one episode (see :mod:`world_model.train.clips`).
Per-channel mean/std of the raw latents are measured on a sample of segments and become the VAE
config's ``latent_mean``/``latent_std`` (the DiT then sees roughly unit-variance latents); prompts
are embedded once with the model's text encoder.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn

from world_model.config import VAEConfig
from world_model.data.levels import split_level_prompt
from world_model.train.clips import LatentStore
from world_model.train.frames import FrameStore, mirrored_actions, segment_starts

__all__ = ["segment_video", "latent_statistics", "encode_store", "latent_depth", "NoSegmentError"]


def segment_video(store: FrameStore, starts: np.ndarray, frames: int, device: torch.device) -> torch.Tensor:
    """Video [B, 3, T, H, W] in [-1, 1] of the segments starting at ``starts``."""
    idx = (starts[:, None] + np.arange(frames)).reshape(-1)
    x = torch.from_numpy(np.ascontiguousarray(store.frames[idx])).to(device)  # [B*T, H, W, 3]
    x = x.view(len(starts), frames, *x.shape[1:]).permute(0, 4, 1, 2, 3)
    return x.float().div_(127.5).sub_(1.0)


def latent_depth(depth: np.ndarray, temporal_stride: int) -> np.ndarray:
    """Per-frame inverse depth [B, 1 + r (F - 1), g_h, g_w] of segments -> per latent [B, F, g_h, g_w] float32, as the
    VAE groups frames: latent 0 is frame 0, latent j >= 1 the mean of frames r (j - 1) + 1 ... r j."""
    r = temporal_stride
    b, t = depth.shape[:2]
    if (t - 1) % r:
        raise ValueError(f"a segment of {t} frames is not 1 + {r} x latents")
    d = np.asarray(depth, np.float32)
    rest = d[:, 1:].reshape(b, (t - 1) // r, r, *d.shape[2:]).mean(axis=2)
    return np.concatenate([d[:, :1], rest], axis=1)


@torch.no_grad()
def latent_statistics(
    vae: nn.Module, store: FrameStore, segment_frames: int, *, max_segments: int = 64, batch_size: int = 4
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the raw encoder means over up to ``max_segments`` segments."""
    device = next(vae.parameters()).device
    starts = segment_starts(store, segment_frames)
    if len(starts) == 0:
        raise ValueError(f"no episode holds a segment of {segment_frames} frames")
    pick = starts[np.linspace(0, len(starts) - 1, min(max_segments, len(starts))).astype(np.int64)]
    s1 = s2 = n = 0
    for i in range(0, len(pick), batch_size):
        mu, _ = vae.encode_moments(segment_video(store, pick[i : i + batch_size], segment_frames, device))
        mu = mu.double().transpose(0, 1).flatten(1)  # [C, N]
        s1, s2, n = s1 + mu.sum(1), s2 + mu.pow(2).sum(1), n + mu.shape[1]
    mean = s1 / n
    std = (s2 / n - mean.pow(2)).clamp_min(1e-8).sqrt()
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist())


def titled_episodes(store: FrameStore, share: float) -> np.ndarray:
    """Which episodes of ``store`` keep the level's name in their prompt: bool [E], about ``share`` of them. Each
    episode's lot is drawn from its first frame's index and its prompt (a hash), so that it does not depend on how a
    recording is cut into shards or on the order they are encoded in."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"title_share must be in [0, 1], got {share}")
    lots = [
        zlib.crc32(f"{int(start)}:{prompt}".encode()) / 2**32
        for start, prompt in zip(store.starts[:-1], store.prompts, strict=True)
    ]
    return np.asarray(lots) < share


class NoSegmentError(ValueError):
    """No episode of a store is long enough for one segment."""


@torch.no_grad()
def encode_store(
    vae: nn.Module,
    store: FrameStore,
    segment_latents: int,
    text_encoder,
    *,
    batch_size: int = 4,
    stride_latents: int | None = None,
    progress: bool = True,
    amp: bool | None = None,
    mirror: bool = False,
    title_share: float = 1.0,
) -> LatentStore:
    """Encode every segment of ``store`` with ``vae`` (its config's statistics) into a LatentStore.

    ``stride_latents``: segment start spacing in latents (default: disjoint segments).
    ``amp``: encode under bf16 autocast, as the VAE stage trains the encoder (None: on a GPU). The
    latents are stored in bf16 either way; session 8's fp32 encode of 468k frames took 145 s of the
    H200's half-hour.
    ``mirror``: every segment a second time, its frames flipped left-right, with the mirrored actions and poses
    (:func:`~world_model.train.frames.mirrored_actions`): segments ``S..2S-1`` are the mirrors of ``0..S-1``, and
    the per-frame arrays hold the mirrored frames' after the recorded ones (frame ``i``'s mirror is ``N + i``).
    ``title_share``: the share of episodes whose segments keep the prompt that names their level
    (:meth:`~world_model.data.levels.Level.prompt`); the rest carry its look sentence alone, so that the DiT cannot
    recall a level from its name instead of reading the first frame (:func:`titled_episodes`; the prompts must be
    level prompts when it is below 1).
    Where ``store`` has depth maps (:attr:`FrameStore.depth`, at the latent grid), the LatentStore gets each latent's
    (:func:`latent_depth`; mirrored with the frames).
    """
    from tqdm.auto import tqdm

    cfg: VAEConfig = vae.cfg
    r = cfg.temporal_stride
    frames = 1 + r * (segment_latents - 1)
    starts = segment_starts(store, frames, r * stride_latents if stride_latents else frames)
    if len(starts) == 0:
        raise NoSegmentError(f"no episode holds a segment of {frames} frames ({segment_latents} latents)")
    device = next(vae.parameters()).device
    keep = titled_episodes(store, title_share)
    episode_prompts = [p if k else split_level_prompt(p)[1] for p, k in zip(store.prompts, keep, strict=True)]
    prompts = sorted(set(episode_prompts))
    text = torch.cat([text_encoder.encode(prompts[i : i + 64]).float().cpu() for i in range(0, len(prompts), 64)])
    episode_of = np.searchsorted(store.starts, starts, side="right") - 1
    seg_prompt = torch.tensor([prompts.index(episode_prompts[e]) for e in episode_of], dtype=torch.int64)
    amp = device.type == "cuda" if amp is None else amp
    arrays = [tuple(np.asarray(a, np.float32) for a in (store.mouse, store.keyboard, store.poses))]
    if mirror:
        arrays.append(mirrored_actions(*arrays[0]))
    out: list[list[torch.Tensor]] = [[] for _ in arrays]  # [recorded, mirrored] latents, batch by batch
    depths: list[list[torch.Tensor]] = [[] for _ in arrays]  # the same for the depth maps, where the store has them
    with tqdm(total=len(starts) * len(arrays), desc="encode", disable=not progress) as bar:
        for i in range(0, len(starts), batch_size):
            batch = starts[i : i + batch_size]
            x = segment_video(store, batch, frames, device)  # read once, encoded as each view
            depth = None
            if store.depth is not None:
                depth = torch.from_numpy(latent_depth(store.depth[batch[:, None] + np.arange(frames)], r))
            for flip, latents in enumerate(out):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    z = vae.encode(x.flip(-1) if flip else x)  # [b, C, Fs, h, w]
                latents.append(z.transpose(1, 2).to(torch.bfloat16).cpu())
                if depth is not None:
                    if depth.shape[-2:] != z.shape[-2:]:
                        raise ValueError(
                            f"the depth maps' grid {tuple(depth.shape[-2:])} is not the latents' {tuple(z.shape[-2:])}"
                        )
                    depths[flip].append((depth.flip(-1) if flip else depth).to(torch.bfloat16))
                bar.update(len(x))
    n = len(store.frames)
    return LatentStore(
        latents=torch.cat([z for latents in out for z in latents]),
        seg_start=torch.as_tensor(np.concatenate([starts + k * n for k in range(len(arrays))])),
        mouse=torch.as_tensor(np.concatenate([a[0] for a in arrays])),
        keyboard=torch.as_tensor(np.concatenate([a[1] for a in arrays])),
        poses=torch.as_tensor(np.concatenate([a[2] for a in arrays])),
        text=text,
        seg_prompt=seg_prompt.repeat(len(arrays)),
        depth=torch.cat([d for ds in depths for d in ds]) if store.depth is not None else None,
    )
