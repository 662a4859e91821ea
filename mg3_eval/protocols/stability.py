"""Stability: a long rollout with the package's go-and-return explorer; brightness, contrast and
sharpness at the end against the start, and whether every latent stayed finite."""

from __future__ import annotations

from typing import Any

import numpy as np

from mg3_eval.metrics import frame_stats, relative_change
from mg3_eval.rollout import generate_videos
from mg3_eval.simulator import SimStart
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["stability"]


def _explorer_actions(first_frames: int, chunk_frames: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions of the package's go-and-return explorer (agents.explorer): walk, look, turn round."""
    from agents.explorer import Explorer

    explorer = Explorer(frames_per_chunk=chunk_frames)
    kb = [np.zeros((first_frames, 6), np.float32)]
    ms = [np.zeros((first_frames, 2), np.float32)]
    for _ in range(num_chunks - 1):
        a = explorer.act()
        kb.append(a["keyboard"].astype(np.float32))
        ms.append(a["mouse"].astype(np.float32))
    return np.concatenate(kb), np.concatenate(ms)


def stability(
    wm: WorldModel, start: SimStart, *, num_chunks: int = 121, edge_chunks: int = 5, seed: int = 0
) -> dict[str, Any]:
    """A long rollout with the go-and-return explorer; per-chunk image statistics.

    ``start``/``end``: statistics over chunks 1..edge_chunks and the last ``edge_chunks`` chunks;
    ``relative_change``: |end - start| / start of each; ``finite``: every latent stayed finite.
    ``thumbnails``: the last frame of chunks 0, C/4, C/2, 3C/4 and C-1 (uint8 [5, H, W, 3]).
    """
    if num_chunks < 2 * edge_chunks + 1:
        raise ValueError(f"num_chunks ({num_chunks}) must be at least 2 * edge_chunks + 1 ({2 * edge_chunks + 1})")
    gen = StreamingGenerator(wm)
    kb, ms = _explorer_actions(gen.first_chunk_frames, gen.chunk_frames, num_chunks)
    per_chunk: dict[str, list[float]] = {"brightness": [], "contrast": [], "sharpness": []}
    marks = {0, num_chunks // 4, num_chunks // 2, 3 * num_chunks // 4, num_chunks - 1}
    thumbs: dict[int, np.ndarray] = {}

    def on_chunk(k: int, frames: np.ndarray) -> None:
        for name, v in frame_stats(frames[0]).items():
            per_chunk[name].append(float(v.mean()))
        if k in marks:
            thumbs[k] = frames[0, -1]

    g = generate_videos(
        wm, start.frame[None], [start.prompt], kb[None], ms[None], seeds=[seed], on_chunk=on_chunk, keep_frames=False
    )
    out: dict[str, Any] = {"chunks": num_chunks, "level": start.level, "finite": g.finite, "per_chunk": per_chunk}
    out["start"] = {k: float(np.mean(v[1 : 1 + edge_chunks])) for k, v in per_chunk.items()}
    out["end"] = {k: float(np.mean(v[-edge_chunks:])) for k, v in per_chunk.items()}
    out["relative_change"] = {k: relative_change(out["start"][k], out["end"][k]) for k in per_chunk}
    out["all_values_finite"] = bool(all(np.isfinite(v).all() for v in per_chunk.values()))
    out["seconds_per_chunk"] = float(np.mean(g.chunk_seconds[1:]))
    out["thumbnails"] = np.stack([thumbs[k] for k in sorted(thumbs)])
    out["thumbnail_chunks"] = sorted(thumbs)
    return out
