"""Memory: go-and-return trajectories from held-out first frames; the generated view after the return
against the view at the start, with memory on and off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from mg3_eval.metrics import psnr
from mg3_eval.rollout import batched, chunk_slices, generate_from_starts
from mg3_eval.simulator import SimStart
from world_model.config import StreamConfig
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["go_and_return_actions", "go_and_return", "memory"]


def go_and_return_actions(
    first_frames: int, chunk_frames: int, *, away_chunks: int = 3, walk_chunks: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-frame actions of a go-and-return trajectory: keyboard [T, 6], mouse [T, 2], and the
    number of chunks C (T = first_frames + (C - 1) * chunk_frames).

    Chunk 0 and the last chunk stand still at the start pose. In between, ``away_chunks`` chunks:
    with ``walk_chunks = 0`` a full 360-degree turn in place at a constant rate; otherwise walk
    forward ``walk_chunks`` chunks, turn 180 degrees, walk back, turn 180 degrees (the turns share
    the remaining chunks equally, at least one each). Integrated with the package's constant step
    (:func:`world_model.camera.integrate_poses`) the pose after the last move equals the start.
    """
    if away_chunks < 1 or walk_chunks < 0:
        raise ValueError(f"expected away_chunks >= 1 and walk_chunks >= 0, got {away_chunks}, {walk_chunks}")
    unit = StreamConfig().degrees_per_mouse_unit
    parts: list[tuple[np.ndarray, np.ndarray]] = []

    def still(n: int):
        parts.append((np.zeros((n, 6), np.float32), np.zeros((n, 2), np.float32)))

    def turn(degrees: float, chunks: int):
        n = chunks * chunk_frames
        ms = np.zeros((n, 2), np.float32)
        ms[:, 1] = degrees / n / unit
        parts.append((np.zeros((n, 6), np.float32), ms))

    def walk(chunks: int):
        kb = np.zeros((chunks * chunk_frames, 6), np.float32)
        kb[:, 0] = 1.0
        parts.append((kb, np.zeros((len(kb), 2), np.float32)))

    still(first_frames)
    if walk_chunks == 0:
        turn(360.0, away_chunks)
    else:
        turn_chunks = away_chunks - 2 * walk_chunks
        if turn_chunks < 2:
            raise ValueError(f"away_chunks ({away_chunks}) must leave >= 2 turn chunks after 2 x {walk_chunks} walks")
        walk(walk_chunks)
        turn(180.0, turn_chunks // 2)
        walk(walk_chunks)
        turn(180.0, turn_chunks - turn_chunks // 2)
    still(chunk_frames)
    kb = np.concatenate([p[0] for p in parts])
    ms = np.concatenate([p[1] for p in parts])
    return kb, ms, away_chunks + 2


class GoAndReturn(NamedTuple):
    """A go-and-return rollout: ``frames`` uint8 [B, T, H, W, 3]; ``start``: the frames of chunk 0 (standing at the
    start pose); ``back``: those of the last chunk (back there, standing still); ``half``: the frame half-way through
    the moves (the farthest view)."""

    frames: np.ndarray
    start: slice
    back: slice
    half: int


def go_and_return(
    wm: WorldModel,
    starts: Sequence[SimStart],
    seeds: Sequence[int],
    *,
    away_chunks: int = 3,
    walk_chunks: int = 0,
    use_memory: bool = True,
) -> GoAndReturn:
    """Roll out the go-and-return trajectory (:func:`go_and_return_actions`) from each start, with its seed."""
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    kb, ms, num_chunks = go_and_return_actions(first, rest, away_chunks=away_chunks, walk_chunks=walk_chunks)
    g = generate_from_starts(wm, starts, kb, ms, seeds=seeds, use_memory=use_memory)
    slices = chunk_slices(first, rest, num_chunks)
    return GoAndReturn(g.frames, slices[0], slices[-1], first + (away_chunks * rest) // 2)


def memory(
    wm: WorldModel,
    starts: Sequence[SimStart],
    *,
    away_chunks: int = 3,
    walk_chunks: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    reference_frames: int = 8,
) -> dict[str, Any]:
    """Go-and-return from held-out first frames, with memory on and off (same seeds and actions).

    Score: PSNR of every frame of the last chunk (back at the start pose, standing still) against
    each of the last ``reference_frames`` frames of chunk 0 (standing at the start pose), averaged.
    Also the PSNR of the view half-way (farthest from the start) against the same reference, which
    shows that the views in between really differ.
    """
    scores: dict[str, list[float]] = {"on": [], "off": [], "away": []}
    for idx in batched(len(starts), batch_size):
        for on in (True, False):
            r = go_and_return(
                wm,
                [starts[i] for i in idx],
                [seed + i for i in idx],
                away_chunks=away_chunks,
                walk_chunks=walk_chunks,
                use_memory=on,
            )
            for j in range(len(idx)):
                ref = r.frames[j, r.start.stop - reference_frames : r.start.stop]  # [R, H, W, 3]
                ret = r.frames[j, r.back]  # [t, H, W, 3]
                db = psnr(ret[:, None], ref[None]).mean()  # [t, R] -> mean
                scores["on" if on else "off"].append(float(db))
                if on:
                    scores["away"].append(float(psnr(r.frames[j, r.half], ref).mean()))
    on, off = np.mean(scores["on"]), np.mean(scores["off"])
    return {
        "episodes": len(starts),
        "away_chunks": away_chunks,
        "walk_chunks": walk_chunks,
        "psnr_return_memory_on": float(on),
        "psnr_return_memory_off": float(off),
        "gain_db": float(on - off),
        "psnr_away_vs_start": float(np.mean(scores["away"])),
        "per_episode_on": scores["on"],
        "per_episode_off": scores["off"],
    }
