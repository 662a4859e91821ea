"""Controllability: do the actions matter? Each simulator clip is rolled out twice from its first
frame, with its own actions and with another clip's actions (the clips' action sequences shuffled
across clips, so that both runs see actions of the same kind and amount); the PSNR of each against
the simulator's clip, and their difference (ΔPSNR, higher is better). A model that ignores its
actions scores 0 whatever its image quality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mg3_eval.metrics import psnr
from mg3_eval.rollout import chunk_slices, rollout_episodes
from mg3_eval.simulator import SimEpisode
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["shuffled_actions", "delta_psnr", "controllability"]


def shuffled_actions(keyboard: np.ndarray, mouse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip actions (keyboard [N, T, K], mouse [N, T, 2]) moved one clip on: clip i gets the
    actions of clip (i + 1) % N, so that no clip keeps its own (N >= 2)."""
    if len(keyboard) < 2 or len(mouse) != len(keyboard):
        raise ValueError(
            f"expected actions of N >= 2 clips (keyboard and mouse alike), got {len(keyboard)}, {len(mouse)}"
        )
    return np.roll(keyboard, -1, axis=0), np.roll(mouse, -1, axis=0)


def delta_psnr(
    truth: np.ndarray, with_true: np.ndarray, with_shuffled: np.ndarray, slices: Sequence[slice]
) -> dict[str, Any]:
    """PSNR against ``truth`` of video made with the true and with shuffled actions (all uint8
    [N, T, H, W, 3]), per chunk (``slices``) and over all of them, with the difference ``delta_db``
    (true minus shuffled; per clip the mean over frames, then the mean over clips)."""
    if not truth.shape == with_true.shape == with_shuffled.shape:
        raise ValueError(f"expected videos of one shape, got {truth.shape}, {with_true.shape}, {with_shuffled.shape}")
    frames = np.concatenate([np.arange(sl.start, sl.stop) for sl in slices])
    true_db = psnr(with_true, truth)  # [N, T]
    shuf_db = psnr(with_shuffled, truth)
    return {
        "psnr_true": float(true_db[:, frames].mean()),
        "psnr_shuffled": float(shuf_db[:, frames].mean()),
        "delta_db": float((true_db[:, frames] - shuf_db[:, frames]).mean()),
        "delta_db_per_chunk": [float((true_db[:, sl] - shuf_db[:, sl]).mean()) for sl in slices],
        "delta_db_per_clip": [float(x) for x in (true_db[:, frames] - shuf_db[:, frames]).mean(1)],
    }


def controllability(
    wm: WorldModel, episodes: Sequence[SimEpisode], *, num_chunks: int = 2, seed: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """ΔPSNR of true vs shuffled actions (:func:`shuffled_actions`, :func:`delta_psnr`) on the
    simulator's clips, from their first frames with their prompts and the same seeds; chunk 0 is
    scored from frame 1 (frame 0 is given)."""
    if len(episodes) < 2:
        raise ValueError(f"controllability shuffles actions across clips: expected >= 2 episodes, got {len(episodes)}")
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    t = first + (num_chunks - 1) * rest
    truth = np.stack([e.frames[:t] for e in episodes])  # [N, T, H, W, 3]
    kb, ms = shuffled_actions(np.stack([e.keyboard[:t] for e in episodes]), np.stack([e.mouse[:t] for e in episodes]))
    true = rollout_episodes(wm, episodes, t, seed=seed, batch_size=batch_size)
    shuf = rollout_episodes(wm, episodes, t, seed=seed, batch_size=batch_size, keyboard=kb, mouse=ms)
    slices = chunk_slices(first, rest, num_chunks)
    slices[0] = slice(1, first)
    return {
        "episodes": len(episodes),
        "levels": sorted({e.level for e in episodes}),
        "chunks": num_chunks,
        **delta_psnr(truth, true.frames, shuf.frames, slices),
        "finite": true.finite and shuf.finite,
    }
