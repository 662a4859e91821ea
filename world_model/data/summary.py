"""A dataset's summary: frames, hours, levels, splits, action histograms, move speed, pose coverage plot.

:func:`action_histogram` sorts every frame into one action class (still, forward, back, strafe, turn
at several rates, pitch up/down, and the combinations of moving with turning or pitching) from the
recorded keyboard and the measured mouse, so that a dataset shows whether it teaches every action.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from world_model.data.format import KEYBOARD_NAMES, DatasetReader

__all__ = [
    "summarize",
    "plot_pose_coverage",
    "format_summary",
    "action_histogram",
    "action_masks",
    "format_action_histogram",
    "ACTION_CLASSES",
    "COVERAGE_CELL",
]

COVERAGE_CELL = 128.0  # map units: the side of the cells summarize counts (bench/spawn_coverage.py's default)
_YAW_BINS = np.array([-np.inf, -6, -3, -1.5, -0.3, 0.3, 1.5, 3, 6, np.inf])  # degrees per frame

DEAD_DEG = 0.3  # the release's mouse deadzone: 0.02 units x 15 deg per unit
TURN_RATE_BINS = (DEAD_DEG, 2.0, 4.0, 8.0)  # deg/frame: turns of 0.3-2, 2-4, 4-8 and >= 8
# one class per frame (they partition the frames); "rotation" = |yaw| or |pitch| >= DEAD_DEG
ACTION_CLASSES = (
    "still",  # no key, no rotation
    "forward",  # W (alone or with A/D: diagonal), no rotation
    "back",  # S, no rotation
    "strafe",  # A or D without W/S, no rotation
    "turn 0.3-2",  # no key, yaw only, |yaw| in deg/frame
    "turn 2-4",
    "turn 4-8",
    "turn >=8",
    "pitch up",  # no key, pitch change < 0 (+ maybe yaw)
    "pitch down",  # no key, pitch change > 0 (+ maybe yaw)
    "forward+turn",  # W + yaw (no pitch)
    "back+turn",  # S + yaw (no pitch)
    "strafe+turn",  # A/D without W/S + yaw (no pitch)
    "move+pitch",  # any key + pitch change
)


def _rotations(mouse: np.ndarray, degrees_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """(pitch change, |yaw| change) in degrees per frame of ``mouse`` [T, 2] in release units."""
    deg = np.asarray(mouse, np.float64).reshape(-1, 2) * degrees_per_unit
    return deg[:, 0], np.abs(deg[:, 1])


def action_masks(mouse: np.ndarray, keyboard: np.ndarray, *, degrees_per_unit: float = 15.0) -> dict[str, np.ndarray]:
    """The frames of each :data:`ACTION_CLASSES` class: boolean [T] per class (at most one true per frame; none for
    combinations the explorer never makes, e.g. W+S together). ``mouse`` [T, 2] (pitch, yaw) in release units,
    ``keyboard`` [T, >=4] W S A D multi-hot."""
    pitch, yaw = _rotations(mouse, degrees_per_unit)
    kb = np.asarray(keyboard).reshape(len(pitch), -1)[:, :4] > 0.5
    fwd, back = kb[:, 0] & ~kb[:, 1], kb[:, 1] & ~kb[:, 0]
    strafe = (kb[:, 2] ^ kb[:, 3]) & ~fwd & ~back
    key = kb.any(1)
    p_live, y_live = np.abs(pitch) >= DEAD_DEG, yaw >= DEAD_DEG
    rot = p_live | y_live
    _, b2, b4, b8 = TURN_RATE_BINS
    turn = ~key & y_live & ~p_live
    return {
        "still": ~key & ~rot,
        "forward": fwd & ~rot,
        "back": back & ~rot,
        "strafe": strafe & ~rot,
        "turn 0.3-2": turn & (yaw < b2),
        "turn 2-4": turn & (yaw >= b2) & (yaw < b4),
        "turn 4-8": turn & (yaw >= b4) & (yaw < b8),
        "turn >=8": turn & (yaw >= b8),
        "pitch up": ~key & p_live & (pitch < 0),
        "pitch down": ~key & p_live & (pitch > 0),
        "forward+turn": fwd & y_live & ~p_live,
        "back+turn": back & y_live & ~p_live,
        "strafe+turn": strafe & y_live & ~p_live,
        "move+pitch": key & p_live,
    }


def action_histogram(
    mouse: np.ndarray, keyboard: np.ndarray, poses: np.ndarray | None = None, *, degrees_per_unit: float = 15.0
) -> dict[str, Any]:
    """Per-frame action classes of recorded actions.

    ``mouse`` [T, 2] (pitch, yaw) in release units, ``keyboard`` [T, >=4] W S A D multi-hot, ``poses``
    [T, 5] optional (for the fraction of frames whose camera is pitched). Returns fractions of T:
    ``classes`` (the :data:`ACTION_CLASSES` partition, :func:`action_masks`), ``yaw_rate`` (|yaw| bins over all
    frames, ``dead`` = under the deadzone), ``pitch`` (frames with pitch motion up / down / any, any of them
    while a key is held, and ``pose |pitch| >= 1 deg``) and ``frames``.
    """
    masks = action_masks(mouse, keyboard, degrees_per_unit=degrees_per_unit)
    pitch, yaw = _rotations(mouse, degrees_per_unit)
    t = len(pitch)
    key = (np.asarray(keyboard).reshape(t, -1)[:, :4] > 0.5).any(1)
    p_live = np.abs(pitch) >= DEAD_DEG
    lo, b2, b4, b8 = TURN_RATE_BINS
    counted = np.zeros(t, np.int64)
    for m in masks.values():
        counted += m
    other = counted == 0  # e.g. W+S together, or A+D without W/S: never made by the explorer
    n = max(t, 1)
    classes = {k: float(m.sum() / n) for k, m in masks.items()}
    if other.any():
        classes["other"] = float(other.sum() / n)
    yaw_rate = {
        "dead": float((yaw < lo).sum() / n),
        "0.3-2": float(((yaw >= lo) & (yaw < b2)).sum() / n),
        "2-4": float(((yaw >= b2) & (yaw < b4)).sum() / n),
        "4-8": float(((yaw >= b4) & (yaw < b8)).sum() / n),
        ">=8": float((yaw >= b8).sum() / n),
    }
    pitch_stats = {
        "up": float((p_live & (pitch < 0)).sum() / n),
        "down": float((p_live & (pitch > 0)).sum() / n),
        "any": float(p_live.sum() / n),
        "while moving": float((p_live & key).sum() / n),
    }
    if poses is not None:
        pitch_stats["pose |pitch| >= 1 deg"] = float((np.abs(np.asarray(poses)[:, 3]) >= 1.0).sum() / n)
    return {"frames": t, "classes": classes, "yaw_rate": yaw_rate, "pitch": pitch_stats}


def format_action_histogram(h: dict[str, Any]) -> str:
    """A plain-text table of :func:`action_histogram` (percent of frames)."""
    lines = [f"action classes ({h['frames']} frames, % of frames; rotations under {DEAD_DEG} deg/frame count as none)"]
    lines += [f"  {k:<14s} {100 * v:5.1f}" for k, v in h["classes"].items()]
    lines.append("  |yaw| deg/frame: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in h["yaw_rate"].items()))
    lines.append("  pitch motion: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in h["pitch"].items()))
    return "\n".join(lines)


def _steady_speed(poses: np.ndarray, keyboard: np.ndarray, key: int, warmup: int = 10) -> list[float]:
    """Per-frame horizontal displacement on frames where only ``key`` has been held for ``warmup`` frames."""
    only = (keyboard[:, :4] > 0.5).sum(1) == 1
    held = only & (keyboard[:, key] > 0.5)
    run = np.zeros(len(held), np.int64)
    for i, h in enumerate(held):
        run[i] = run[i - 1] + 1 if h and i > 0 else int(h)
    step = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1)  # frame i -> i + 1
    return step[(run[:-1] > warmup)].tolist()


def summarize(root: str | Path) -> dict[str, Any]:
    """Statistics of a dataset (reads every data file, no video decoding)."""
    reader = DatasetReader(root)
    keys = np.zeros(6)
    yaw_hist = np.zeros(len(_YAW_BINS) - 1, np.int64)
    pitch_hist = np.zeros(len(_YAW_BINS) - 1, np.int64)
    per_level: dict[str, int] = {}
    per_split: dict[str, int] = {}
    per_spawn: dict[str, int] = {}
    cells: set[tuple[str, int, int]] = set()  # (level, x, y) cells of COVERAGE_CELL map units the camera visited
    fwd, side = [], []
    all_mouse, all_keys, all_poses = [], [], []
    for ep in reader.iter_episodes(frames=False):
        all_mouse.append(ep.mouse)
        all_keys.append(ep.keyboard)
        all_poses.append(ep.poses)
        keys += ep.keyboard.sum(0)
        deg = ep.mouse * float(reader.meta.get("degrees_per_mouse_unit", 15.0))
        yaw_hist += np.histogram(deg[:, 1], _YAW_BINS)[0]
        pitch_hist += np.histogram(deg[:, 0], _YAW_BINS)[0]
        per_level[ep.info.level or "?"] = per_level.get(ep.info.level or "?", 0) + len(ep)
        per_split[ep.info.split] = per_split.get(ep.info.split, 0) + len(ep)
        spawn = ep.info.extra.get("spawn", "start")  # datasets from before the option began at the start spot
        per_spawn[spawn] = per_spawn.get(spawn, 0) + len(ep)
        xy = np.unique(np.floor(ep.poses[:, :2] / COVERAGE_CELL).astype(np.int64), axis=0)
        cells.update((ep.info.level or "?", int(x), int(y)) for x, y in xy)
        fwd += _steady_speed(ep.poses, ep.keyboard, 0)
        side += _steady_speed(ep.poses, ep.keyboard, 3) + _steady_speed(ep.poses, ep.keyboard, 2)
    frames = reader.num_frames
    size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and ".staging" not in p.parts)
    hours = frames / reader.fps / 3600
    bins = [f"[{a:g}, {b:g})" for a, b in zip(_YAW_BINS[:-1], _YAW_BINS[1:])]
    if all_mouse:
        actions = action_histogram(
            np.concatenate(all_mouse), np.concatenate(all_keys), np.concatenate(all_poses),
            degrees_per_unit=float(reader.meta.get("degrees_per_mouse_unit", 15.0)),
        )  # fmt: skip
    else:
        actions = action_histogram(np.zeros((0, 2)), np.zeros((0, 6)), np.zeros((0, 5)))
    return {
        "episodes": len(reader),
        "frames": frames,
        "fps": reader.fps,
        "hours": hours,
        "resolution": [reader.width, reader.height],
        "bytes": size,
        "mb_per_hour": size / 1e6 / hours if hours > 0 else math.nan,
        "levels": dict(sorted(per_level.items())),
        "frames_per_split": per_split,
        "frames_per_spawn": per_spawn,
        "cells_visited": len(cells),
        "key_press_fraction": {n: float(k / max(frames, 1)) for n, k in zip(KEYBOARD_NAMES, keys)},
        "yaw_deg_per_frame_histogram": dict(zip(bins, yaw_hist.tolist())),
        "pitch_deg_per_frame_histogram": dict(zip(bins, pitch_hist.tolist())),
        "move_speed_forward": float(np.median(fwd)) if fwd else math.nan,
        "move_speed_strafe": float(np.median(side)) if side else math.nan,
        "action_histogram": actions,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"episodes {s['episodes']}, frames {s['frames']}, {s['hours']:.3f} h at {s['fps']:g} fps, "
        f"{s['resolution'][0]}x{s['resolution'][1]}, {s['bytes'] / 1e6:.1f} MB ({s['mb_per_hour']:.0f} MB/h)",
        f"levels {len(s['levels'])}; frames per split {s['frames_per_split']}; per spawn {s['frames_per_spawn']}; "
        f"{s['cells_visited']} cells of {COVERAGE_CELL:g} map units visited",
        "key press fraction " + ", ".join(f"{k} {v:.2f}" for k, v in s["key_press_fraction"].items()),
        "yaw deg/frame " + ", ".join(f"{k} {v}" for k, v in s["yaw_deg_per_frame_histogram"].items()),
        "pitch deg/frame " + ", ".join(f"{k} {v}" for k, v in s["pitch_deg_per_frame_histogram"].items()),
        f"steady move speed (map units / frame): forward {s['move_speed_forward']:.2f}, "
        f"strafe {s['move_speed_strafe']:.2f}",
    ]
    if "action_histogram" in s:
        lines.append(format_action_histogram(s["action_histogram"]))
    return "\n".join(lines)


def plot_pose_coverage(root: str | Path, path: str | Path, *, tile: int = 200) -> Path:
    """Top-down camera paths per level (one tile each, episodes in different colours) as a PNG."""
    from PIL import Image, ImageDraw

    reader = DatasetReader(root)
    by_level: dict[str, list[np.ndarray]] = {}
    for ep in reader.iter_episodes(frames=False):
        by_level.setdefault(ep.info.level or "?", []).append(ep.poses[:, :2])
    names = sorted(by_level)
    cols = max(1, math.ceil(math.sqrt(len(names))))
    rows = max(1, math.ceil(len(names) / cols))
    img = Image.new("RGB", (cols * tile, rows * tile), "white")
    draw = ImageDraw.Draw(img)
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for n, name in enumerate(names):
        ox, oy = (n % cols) * tile, (n // cols) * tile
        pts = np.concatenate(by_level[name])
        lo, hi = pts.min(0), pts.max(0)
        scale = (tile - 30) / max(float((hi - lo).max()), 1.0)
        for k, xy in enumerate(by_level[name]):
            # world X forward is drawn upwards, Y right to the right
            p = [(ox + 15 + (y - lo[1]) * scale, oy + tile - 10 - (x - lo[0]) * scale) for x, y in xy]
            if len(p) > 1:
                draw.line(p, fill=palette[k % len(palette)], width=1)
        draw.rectangle([ox, oy, ox + tile - 1, oy + tile - 1], outline=(200, 200, 200))
        draw.text((ox + 4, oy + 2), f"{name} ({sum(len(x) for x in by_level[name])} fr)", fill=(0, 0, 0))
    path = Path(path)
    img.save(path)
    return path
