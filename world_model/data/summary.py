"""A dataset's summary: frames, hours, levels, splits, action histograms, move speed, pose coverage plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from world_model.data.format import KEYBOARD_NAMES, DatasetReader

__all__ = ["summarize", "plot_pose_coverage", "format_summary"]

_YAW_BINS = np.array([-np.inf, -6, -3, -1.5, -0.3, 0.3, 1.5, 3, 6, np.inf])  # degrees per frame


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
    fwd, side = [], []
    for ep in reader.iter_episodes(frames=False):
        keys += ep.keyboard.sum(0)
        deg = ep.mouse * float(reader.meta.get("degrees_per_mouse_unit", 15.0))
        yaw_hist += np.histogram(deg[:, 1], _YAW_BINS)[0]
        pitch_hist += np.histogram(deg[:, 0], _YAW_BINS)[0]
        per_level[ep.info.level or "?"] = per_level.get(ep.info.level or "?", 0) + len(ep)
        per_split[ep.info.split] = per_split.get(ep.info.split, 0) + len(ep)
        fwd += _steady_speed(ep.poses, ep.keyboard, 0)
        side += _steady_speed(ep.poses, ep.keyboard, 3) + _steady_speed(ep.poses, ep.keyboard, 2)
    frames = reader.num_frames
    size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and ".staging" not in p.parts)
    hours = frames / reader.fps / 3600
    bins = [f"[{a:g}, {b:g})" for a, b in zip(_YAW_BINS[:-1], _YAW_BINS[1:])]
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
        "key_press_fraction": {n: float(k / max(frames, 1)) for n, k in zip(KEYBOARD_NAMES, keys)},
        "yaw_deg_per_frame_histogram": dict(zip(bins, yaw_hist.tolist())),
        "pitch_deg_per_frame_histogram": dict(zip(bins, pitch_hist.tolist())),
        "move_speed_forward": float(np.median(fwd)) if fwd else math.nan,
        "move_speed_strafe": float(np.median(side)) if side else math.nan,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"episodes {s['episodes']}, frames {s['frames']}, {s['hours']:.3f} h at {s['fps']:g} fps, "
        f"{s['resolution'][0]}x{s['resolution'][1]}, {s['bytes'] / 1e6:.1f} MB ({s['mb_per_hour']:.0f} MB/h)",
        f"levels {len(s['levels'])}; frames per split {s['frames_per_split']}",
        "key press fraction " + ", ".join(f"{k} {v:.2f}" for k, v in s["key_press_fraction"].items()),
        "yaw deg/frame " + ", ".join(f"{k} {v}" for k, v in s["yaw_deg_per_frame_histogram"].items()),
        "pitch deg/frame " + ", ".join(f"{k} {v}" for k, v in s["pitch_deg_per_frame_histogram"].items()),
        f"steady move speed (map units / frame): forward {s['move_speed_forward']:.2f}, "
        f"strafe {s['move_speed_strafe']:.2f}",
    ]
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
