"""Sharpness: is the generated video as sharp as the world it imitates? From the simulator's first
frame with its true per-frame actions, the mean luma gradient magnitude of the generated frames
against the simulator's same frames, per chunk, beside the VAE's reconstruction of the simulator's
video (how much of the blur is the decoder's alone)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mg3_eval.metrics import grid_share, sharpness, sharpness_ratio
from mg3_eval.rollout import batched, chunk_slices, rollout_episodes, vae_length, vae_roundtrip
from mg3_eval.simulator import SimEpisode
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel
from world_model.train.autoencoder import GRID_PERIODS

__all__ = ["generated_sharpness"]


def generated_sharpness(
    wm: WorldModel, episodes: Sequence[SimEpisode], *, num_chunks: int = 3, seed: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """Sharpness of generated frames (frame 0, the given image, excluded) over the simulator's.

    Returns ``ratio`` (mean sharpness of all generated frames / the simulator's), ``ratio_vae`` (the
    VAE's reconstruction of the simulator's clip / the simulator's: the decoder's ceiling),
    ``model``/``sim`` (mean sharpness, luma units per pixel) and ``ratio_per_chunk``; ``ratio_pooled`` /
    ``ratio_vae_pooled``: the same at half resolution (2x2 mean), where a decoder's pixel-scale grid
    artefacts, which the full-resolution gradient counts as sharpness, cancel out. ``grid_share`` (model),
    ``grid_share_sim``, ``grid_share_vae``: per grid period (2, 4, 8, 16 pixels) the share of the frames' fine
    detail that is one pattern repeated on that fixed grid (:func:`mg3_eval.metrics.grid_share`: a decoder's
    screen door, which sharpness counts as detail); ``grid_share_max`` and ``_sim`` / ``_vae``: the largest.
    """
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    t = first + (num_chunks - 1) * rest
    truth = np.stack([e.frames[:t] for e in episodes])  # [N, T, H, W, 3]
    g = rollout_episodes(wm, episodes, t, seed=seed, batch_size=batch_size)
    slices = chunk_slices(first, rest, num_chunks)
    slices[0] = slice(1, first)
    n = vae_length(t, wm.config.vae.temporal_stride)
    vae = np.concatenate(
        [vae_roundtrip(wm, truth[idx.start : idx.stop, :n]) for idx in batched(len(truth), batch_size)]
    )
    return {
        "episodes": len(episodes),
        "levels": sorted({e.level for e in episodes}),
        "chunks": num_chunks,
        "ratio": sharpness_ratio(g.frames[:, 1:], truth[:, 1:]),
        "ratio_vae": sharpness_ratio(vae[:, 1:], truth[:, 1:n]),
        "ratio_pooled": sharpness_ratio(g.frames[:, 1:], truth[:, 1:], pooled=True),
        "ratio_vae_pooled": sharpness_ratio(vae[:, 1:], truth[:, 1:n], pooled=True),
        "model": float(sharpness(g.frames[:, 1:]).mean()),
        "sim": float(sharpness(truth[:, 1:]).mean()),
        "ratio_per_chunk": [sharpness_ratio(g.frames[:, sl], truth[:, sl]) for sl in slices],
        **_grid(g.frames[:, 1:], truth[:, 1:], vae[:, 1:]),
    }


def _grid(model: np.ndarray, sim: np.ndarray, vae: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, frames in (("", model), ("_sim", sim), ("_vae", vae)):
        shares = {str(p): grid_share(frames, p) for p in GRID_PERIODS}
        out[f"grid_share{name}"] = shares
        out[f"grid_share_max{name}"] = max(shares.values())
    return out
