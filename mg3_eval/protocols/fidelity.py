"""Fidelity: from the simulator's first frame and its true per-frame actions, PSNR of every generated
chunk against the simulator's frames, beside the repeat-the-first-frame baseline and the VAE's own
reconstruction of chunk 0 (the ceiling of any latent model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mg3_eval.metrics import PSNR_CAP_DB, psnr, psnr_pooled, repeat_first_psnr, sharpness_ratio
from mg3_eval.report import save_strip
from mg3_eval.rollout import batched, chunk_slices, generate_videos, rollout_episodes, vae_roundtrip
from mg3_eval.simulator import SimEpisode
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["fidelity", "save_fidelity_strip"]


def fidelity(
    wm: WorldModel, episodes: Sequence[SimEpisode], *, num_chunks: int = 10, seed: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """PSNR of generated chunks against the simulator, from its first frame with its actions.

    Chunk 0 is scored on frames 1.. (frame 0 is given); chunk k >= 1 on its new frames. Returns
    per-chunk means over episodes (``psnr_model``, ``psnr_repeat``), each chunk's sharpness over the simulator's
    (``sharpness_ratio``: all episodes' frames of the chunk pooled; 1 as sharp, below 1 blurrier: a rollout that
    dissolves as it goes shows it chunk by chunk), chunk 0's summary
    (``chunk0``: model, repeat, gain (mean and median over episodes), VAE ceiling, per episode; ``pooled``: the
    same from each episode's pooled error, :func:`~mg3_eval.metrics.psnr_pooled`; ``identical_frames``: how many
    simulator frames equal frame 0, each of which gives repeat-first the cap, 100 dB, in the per-frame mean) and
    the time per chunk and env.
    """
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    t = first + (num_chunks - 1) * rest
    short = [e.level for e in episodes if len(e.frames) < t]
    if short:
        raise ValueError(f"episodes need {t} frames for {num_chunks} chunks; shorter ones: {short}")
    slices = chunk_slices(first, rest, num_chunks)
    slices[0] = slice(1, first)
    truth = np.stack([e.frames[:t] for e in episodes])  # [N, T, H, W, 3]
    g = rollout_episodes(wm, episodes, t, seed=seed, batch_size=batch_size)
    model_db = np.zeros((len(episodes), num_chunks))
    repeat_db = np.zeros_like(model_db)
    for i in range(len(episodes)):
        for k, sl in enumerate(slices):
            model_db[i, k] = psnr(g.frames[i, sl], truth[i, sl]).mean()
            repeat_db[i, k] = repeat_first_psnr(truth[i, sl], truth[i, 0]).mean()
    vae_frames = np.concatenate(  # [N, first - 1]: the VAE's round trip of chunk 0, per frame
        [
            psnr(vae_roundtrip(wm, truth[idx, :first]), truth[idx, :first])[:, 1:]
            for idx in batched(len(truth), batch_size)
        ]
    )
    vae_db = vae_frames.mean(1)
    seconds, finite = g.chunk_seconds, g.finite
    gains = model_db[:, 0] - repeat_db[:, 0]
    repeat0 = np.stack([repeat_first_psnr(truth[i, 1:first], truth[i, 0]) for i in range(len(truth))])  # [N, first - 1]
    pooled_model = psnr_pooled(g.frames[:, 1:first], truth[:, 1:first])  # [N]
    pooled_repeat = psnr_pooled(np.broadcast_to(truth[:, :1], truth[:, 1:first].shape), truth[:, 1:first])
    chunk0 = {
        "psnr_model": float(model_db[:, 0].mean()),
        "psnr_repeat": float(repeat_db[:, 0].mean()),
        "gain_db": float(gains.mean()),
        "gain_median_db": float(np.median(gains)),
        "psnr_vae": float(vae_db.mean()),
        "per_episode": [float(x) for x in model_db[:, 0]],
        "gain_per_episode": [float(x) for x in gains],
        # the same from each episode's pooled error (metrics.psnr_pooled: no frame scores the identical-frame cap)
        "pooled": {
            "psnr_model": float(pooled_model.mean()),
            "psnr_repeat": float(pooled_repeat.mean()),
            "gain_db": float((pooled_model - pooled_repeat).mean()),
            "per_episode": [float(x) for x in pooled_model],
            "repeat_per_episode": [float(x) for x in pooled_repeat],
        },
        # the simulator's frames 1.. equal to frame 0 (repeat-first scores the cap on each), over all episodes
        "identical_frames": int((repeat0 >= PSNR_CAP_DB).sum()),
        # chunk 0 per generated latent (the 4 frames each decodes: 1-4, 5-8, ...), mean over episodes:
        # where the model falls from the VAE's ceiling towards repeat-first
        "per_latent": _per_latent(
            psnr(g.frames[:, 1:first], truth[:, 1:first]),
            repeat0,
            vae_frames,
            wm.config.vae.temporal_stride,
        ),
    }
    return {
        "episodes": len(episodes),
        "levels": sorted({e.level for e in episodes}),
        "chunks": num_chunks,
        "psnr_model": [float(x) for x in model_db.mean(0)],
        "psnr_repeat": [float(x) for x in repeat_db.mean(0)],
        "sharpness_ratio": [sharpness_ratio(g.frames[:, sl], truth[:, sl]) for sl in slices],
        "chunk0": chunk0,
        "seconds_first_chunk": float(np.mean(seconds[::num_chunks])),
        "seconds_per_chunk": float(np.mean([s for k, s in enumerate(seconds) if k % num_chunks]))
        if num_chunks > 1
        else None,
        "finite": finite,
    }


def latent_means(db: np.ndarray, r: int) -> list[float]:
    """Per-frame PSNR [N, T] of generated frames (frame 0 left out) -> the mean over episodes of each
    latent's ``r`` frames; a tail shorter than ``r`` is dropped."""
    t = db.shape[1] // r * r
    return [float(x) for x in db[:, :t].reshape(len(db), -1, r).mean(axis=(0, 2))]


def _per_latent(model: np.ndarray, repeat: np.ndarray, vae: np.ndarray, r: int) -> dict[str, list[float]]:
    """Chunk 0's per-latent means (:func:`latent_means`) for the model, repeat-first and the VAE."""
    return {"model": latent_means(model, r), "repeat": latent_means(repeat, r), "vae": latent_means(vae, r)}


def save_fidelity_strip(wm: WorldModel, ep: SimEpisode, path: Path, seed: int) -> None:
    """Simulator (top) and model (bottom) frames of the first chunk of one episode."""
    gen = StreamingGenerator(wm)
    t = gen.first_chunk_frames
    g = generate_videos(wm, ep.frames[:1], [ep.prompt], ep.keyboard[None, :t], ep.mouse[None, :t], seeds=[seed])
    picks = np.linspace(0, t - 1, 6).round().astype(int)
    frames = [ep.frames[i] for i in picks] + [g.frames[0, i] for i in picks]
    labels = [f"sim {i}" for i in picks] + [f"model {i}" for i in picks]
    save_strip(path, frames, labels, rows=2)
