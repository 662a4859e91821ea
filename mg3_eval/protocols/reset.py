"""Reset: what a person sees first. The env is reset with a held-out simulator frame as its image and
stands still for the first chunk; frame 0 of that chunk (the model's rendering of the input image)
is compared with the image: PSNR and sharpness ratio, beside the VAE's own reconstruction of the
image (the ceiling of any latent model), and the same for the last frame of the still chunk (how
far the picture drifts while nothing moves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mg3_eval.metrics import psnr, sharpness_ratio
from mg3_eval.rollout import batched, generate_videos, vae_roundtrip
from mg3_eval.simulator import SimStart
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["reset_frames"]


def reset_frames(wm: WorldModel, starts: Sequence[SimStart], *, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Reset from each start's frame and prompt with the no-op action; score the first chunk.

    Returns means over starts: ``psnr_reset_frame`` and ``sharpness_reset_frame`` (frame 0 against
    the input image: PSNR in dB, sharpness ratio), ``psnr_vae`` and ``sharpness_vae`` (the VAE's
    encode-decode of the image alone), ``psnr_still_end`` and ``sharpness_still_end`` (the chunk's
    last frame against the image), and the per-start PSNR of frame 0. ``thumbnails``: the input
    images, the reset frames and the last still frames (uint8 [3N, H, W, 3]).
    """
    t = StreamingGenerator(wm).first_chunk_frames
    k = wm.config.dit.action_config.keyboard_dim_in if wm.config.dit.action_config is not None else 6
    images = np.stack([s.frame for s in starts])  # [N, H, W, 3]
    first, last = [], []
    for idx in batched(len(starts), batch_size):
        n = len(idx)
        g = generate_videos(
            wm,
            images[idx.start : idx.stop],
            [starts[i].prompt for i in idx],
            np.zeros((n, t, k), np.float32),
            np.zeros((n, t, 2), np.float32),
            seeds=[seed + i for i in idx],
        )
        first.append(g.frames[:, 0])
        last.append(g.frames[:, -1])
    first_a, last_a = np.concatenate(first), np.concatenate(last)
    vae = np.concatenate(
        [vae_roundtrip(wm, images[idx.start : idx.stop, None])[:, 0] for idx in batched(len(starts), batch_size)]
    )
    per_start = psnr(first_a, images)
    return {
        "starts": len(starts),
        "levels": sorted({s.level for s in starts}),
        "psnr_reset_frame": float(per_start.mean()),
        "sharpness_reset_frame": sharpness_ratio(first_a, images),
        "psnr_vae": float(psnr(vae, images).mean()),
        "sharpness_vae": sharpness_ratio(vae, images),
        "psnr_still_end": float(psnr(last_a, images).mean()),
        "sharpness_still_end": sharpness_ratio(last_a, images),
        "per_start": [float(x) for x in per_start],
        "thumbnails": np.concatenate([images, first_a, last_a]),
    }
