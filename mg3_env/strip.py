"""Labelled strips of frames as PNG (the demo's and the evaluation's pictures)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_strip"]


def save_strip(path: Path, frames: Sequence[np.ndarray], labels: Sequence[str], rows: int = 1) -> None:
    """Frames uint8 [H, W, 3] side by side (``rows`` rows), each with a label above."""
    from PIL import Image, ImageDraw

    h, w = frames[0].shape[:2]
    cols = math.ceil(len(frames) / rows)
    scale = max(1, 128 // h)
    img = Image.new("RGB", (cols * (w * scale + 4), rows * (h * scale + 16)), "white")
    d = ImageDraw.Draw(img)
    for i, (f, label) in enumerate(zip(frames, labels)):
        r, c = divmod(i, cols)
        x, y = c * (w * scale + 4), r * (h * scale + 16)
        img.paste(Image.fromarray(f).resize((w * scale, h * scale), Image.NEAREST), (x, y + 14))
        d.text((x + 2, y + 1), label, fill="black")
    img.save(path)
