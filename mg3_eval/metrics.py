"""Measures on frames: PSNR, the repeat-first-frame baseline, luma and image statistics.

Every function takes uint8 frames [..., H, W, 3] (or luma [..., H, W]) as numpy arrays and knows
nothing of models or simulators.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PSNR_CAP_DB", "psnr", "repeat_first_psnr", "luma", "frame_stats", "relative_change"]


PSNR_CAP_DB = 100.0  # PSNR of identical frames (an infinite value would poison every mean)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames [..., H, W, 3] (peak 255), capped at :data:`PSNR_CAP_DB`.

    The leading axes broadcast (e.g. [T, 1, H, W, 3] against [1, R, H, W, 3] gives [T, R]).
    """
    if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"expected frames [..., H, W, 3] of one size, got shapes {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP_DB)


def repeat_first_psnr(frames: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """PSNR of "repeat the first frame" against each frame: frames [T, H, W, 3] -> [T].

    ``first`` defaults to ``frames[0]``.
    """
    first = frames[0] if first is None else first
    return psnr(first, frames)


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float64 luma [..., H, W] in [0, 255] (BT.601 weights)."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def frame_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame image statistics of uint8 frames [T, H, W, 3] -> each [T].

    ``brightness``: mean luma; ``contrast``: standard deviation of luma; ``sharpness``: mean
    absolute 4-neighbour Laplacian of luma (inner pixels), which falls when frames blur.
    """
    y = luma(frames)
    lap = 4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]
    return {
        "brightness": y.mean(axis=(-2, -1)),
        "contrast": y.std(axis=(-2, -1)),
        "sharpness": np.abs(lap).mean(axis=(-2, -1)),
    }


def relative_change(start: float, end: float) -> float:
    """|end - start| / |start| (inf when start is 0 and end is not)."""
    if start == 0:
        return 0.0 if end == 0 else math.inf
    return abs(end - start) / abs(start)
