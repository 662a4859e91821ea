"""Stand-ins for the frame recorder's worker (world_model.train.engine_frames), importable by its spawned processes."""

from __future__ import annotations

import time

import numpy as np

from world_model.train.frames import FrameStore


def hang_on_odd_seeds(args: tuple) -> FrameStore:
    """A tiny episode, or (for an odd seed) an engine that never returns."""
    level, seed, length, width, height, _spawn, _explorer, _depth_stride = args
    if seed % 2:
        time.sleep(3600)
    t = min(length, 8)
    return FrameStore(
        frames=np.zeros((t, height, width, 3), np.uint8),
        mouse=np.zeros((t, 2), np.float32),
        keyboard=np.zeros((t, 6), np.float32),
        poses=np.zeros((t, 5), np.float32),
        starts=np.array([0, t], np.int64),
        prompts=["p"],
        levels=[level],
        fps=17.5,
    )
