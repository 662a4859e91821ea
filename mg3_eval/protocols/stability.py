"""Stability: long rollouts with the package's go-and-return explorer; brightness, contrast and
sharpness at the end against the start, beside the simulator's own change along the same actions,
and whether every latent stayed finite.

The explorer's plan repeats (walk, look up and down, turn round, walk back: 8 chunks of 40 frames),
so its views repeat too. The end window is the last one in the same phase of the plan as the start
window: windows in different phases compare different views (a turn against a walk) and measure
the plan, not a drift. The simulator plays the same actions from the same start: its change by the
same instrument is what a perfect model would score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from mg3_eval.metrics import frame_stats, relative_change
from mg3_eval.rollout import chunk_slices, generate_from_starts
from mg3_eval.simulator import SimStart, doom_config_for, iter_commands
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["stability", "edge_windows"]

_STATS = ("brightness", "contrast", "sharpness")


def _explorer_actions(first_frames: int, chunk_frames: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Actions of the package's go-and-return explorer (agents.explorer): walk, look, turn round;
    chunk 0 stands still. Returns keyboard [T, 6], mouse [T, 2] and the plan's period in chunks."""
    from agents.explorer import Explorer

    explorer = Explorer(frames_per_chunk=chunk_frames)
    kb = [np.zeros((first_frames, 6), np.float32)]
    ms = [np.zeros((first_frames, 2), np.float32)]
    for _ in range(num_chunks - 1):
        a = explorer.act()
        kb.append(a["keyboard"].astype(np.float32))
        ms.append(a["mouse"].astype(np.float32))
    return np.concatenate(kb), np.concatenate(ms), len(explorer.plan)


def edge_windows(num_chunks: int, edge_chunks: int, period: int) -> tuple[range, range, bool]:
    """The start window (chunks 1..edge) and the end window: the last ``edge`` chunks that begin a
    whole number of ``period`` chunks after the start window and do not overlap it; where the
    rollout is too short for one, the last ``edge`` chunks. Returns (start, end, phase_aligned)."""
    if edge_chunks < 1 or num_chunks < 2 * edge_chunks + 1 or period < 1:
        raise ValueError(
            f"expected edge_chunks >= 1, period >= 1 and num_chunks >= 2 * edge_chunks + 1, got {edge_chunks}, "
            f"{period} and {num_chunks}"
        )
    start = range(1, 1 + edge_chunks)
    m = (num_chunks - 1 - edge_chunks) // period  # whole periods that fit before the end window
    if m * period >= edge_chunks:
        return start, range(1 + m * period, 1 + m * period + edge_chunks), True
    return start, range(num_chunks - edge_chunks, num_chunks), False


def _changes(per_chunk: dict[str, list[float]], start: range, end: range) -> dict[str, dict[str, float]]:
    s = {k: float(np.mean([v[i] for i in start])) for k, v in per_chunk.items()}
    e = {k: float(np.mean([v[i] for i in end])) for k, v in per_chunk.items()}
    return {"start": s, "end": e, "relative_change": {k: relative_change(s[k], e[k]) for k in per_chunk}}


def _simulator_stats(
    start: SimStart, doom, keyboard: np.ndarray, mouse: np.ndarray, slices: Sequence[slice], marks: set[int]
) -> tuple[dict[str, list[float]] | None, dict[int, np.ndarray]]:
    """Per-chunk statistics of the simulator's frames along the same actions (frame j against the
    model's frame j; frame 0 the start), computed as they come, and the last frame of the chunks in
    ``marks``; the statistics are None if the level ended first."""
    per_chunk: dict[str, list[float]] = {k: [] for k in _STATS}
    thumbs: dict[int, np.ndarray] = {}
    frames: Iterator[np.ndarray] = (f for f, _ in iter_commands(start, doom, keyboard, mouse))
    for k, sl in enumerate(slices):
        chunk = list(islice(frames, sl.stop - sl.start))
        if len(chunk) < sl.stop - sl.start:
            return None, thumbs
        for name, v in frame_stats(np.stack(chunk)).items():
            per_chunk[name].append(float(v.mean()))
        if k in marks:
            thumbs[k] = chunk[-1]
    return per_chunk, thumbs


def stability(
    wm: WorldModel,
    starts: Sequence[SimStart],
    *,
    num_chunks: int = 121,
    edge_chunks: int = 8,
    seed: int = 0,
    simulator: bool = True,
) -> dict[str, Any]:
    """Long rollouts from ``starts`` (one env each, batched) with the go-and-return explorer.

    Per episode: per-chunk means of brightness, contrast and sharpness; ``start``/``end``: their
    means over the start and end windows of :func:`edge_windows`; ``relative_change``:
    |end - start| / start. Top level: ``relative_change`` averaged over the episodes (each also in
    ``episodes``), the simulator's (``simulator.relative_change``, same windows, same actions; None
    where a level ended on the way) unless ``simulator`` is False, ``finite``: every latent of every
    episode stayed finite. ``thumbnails``: the last frame of chunks 0, C/4, C/2, 3C/4 and C-1 of the
    first episode (uint8 [5, H, W, 3]); ``simulator_thumbnails``: the simulator's at the same chunks,
    where it got that far.
    """
    if not starts:
        raise ValueError("expected at least one start")
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    kb, ms, period = _explorer_actions(first, rest, num_chunks)
    start_w, end_w, aligned = edge_windows(num_chunks, edge_chunks, period)
    b = len(starts)
    per_chunk: list[dict[str, list[float]]] = [{k: [] for k in _STATS} for _ in range(b)]
    marks = {0, num_chunks // 4, num_chunks // 2, 3 * num_chunks // 4, num_chunks - 1}
    thumbs: dict[int, np.ndarray] = {}

    def on_chunk(k: int, frames: np.ndarray) -> None:
        for i in range(b):
            for name, v in frame_stats(frames[i]).items():
                per_chunk[i][name].append(float(v.mean()))
        if k in marks:
            thumbs[k] = frames[0, -1]

    g = generate_from_starts(
        wm, starts, kb, ms, seeds=[seed + i for i in range(b)], on_chunk=on_chunk, keep_frames=False
    )
    episodes, sim_thumbs = [], {}
    slices, doom = chunk_slices(first, rest, num_chunks), doom_config_for(wm.config)
    for i, (s, pc) in enumerate(zip(starts, per_chunk)):
        ep = {"level": s.level, "seed": s.seed, "per_chunk": pc, **_changes(pc, start_w, end_w)}
        if simulator:
            sim, th = _simulator_stats(s, doom, kb, ms, slices, marks if i == 0 else set())
            ep["simulator"] = None if sim is None else {"per_chunk": sim, **_changes(sim, start_w, end_w)}
            if i == 0:  # the strip's second row: the first episode's
                sim_thumbs = th
        episodes.append(ep)

    def mean_change(eps: list[dict[str, Any]]) -> dict[str, float] | None:
        if not eps:
            return None
        return {k: float(np.mean([e["relative_change"][k] for e in eps])) for k in _STATS}

    out: dict[str, Any] = {
        "chunks": num_chunks,
        "episodes_count": b,
        "levels": [s.level for s in starts],
        "windows": {"start": [start_w[0], start_w[-1]], "end": [end_w[0], end_w[-1]], "period": period},
        "phase_aligned": aligned,
        "finite": g.finite,
        "relative_change": mean_change(episodes),
        "episodes": episodes,
        # the first episode's curves and windows, as before several episodes were run
        "level": starts[0].level,
        "per_chunk": per_chunk[0],
        "start": episodes[0]["start"],
        "end": episodes[0]["end"],
    }
    if simulator:
        sims = [e["simulator"] for e in episodes if e["simulator"] is not None]
        out["simulator"] = {"relative_change": mean_change(sims), "episodes": len(sims)}
    out["all_values_finite"] = bool(all(np.isfinite(v).all() for pc in per_chunk for v in pc.values()))
    out["seconds_per_chunk"] = float(np.mean(g.chunk_seconds[1:]))  # one step of all the episodes
    out["thumbnails"] = np.stack([thumbs[k] for k in sorted(thumbs)])
    out["thumbnail_chunks"] = sorted(thumbs)
    if len(sim_thumbs) == len(thumbs):
        out["simulator_thumbnails"] = np.stack([sim_thumbs[k] for k in sorted(sim_thumbs)])
    return out
