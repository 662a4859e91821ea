"""A scripted go-and-return explorer: walk out, look around, turn back and walk home.

The plan, in chunks of ``frames_per_chunk`` frames with per-frame actions (mouse step 0.1 = 1.5
degrees per frame): walk forward ``walk_chunks`` chunks; look up then down (net pitch 0); turn
180 degrees in place; walk forward ``walk_chunks`` chunks, which brings the commanded pose back
to the start. The plan then repeats. Commanded poses return to the start exactly (up to float
rounding), which makes the explorer a memory test: the last chunks revisit the first views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Explorer"]


class Explorer:
    """``act(obs)`` returns the next chunk's per-frame action (keyboard [T, 6], mouse [T, 2])."""

    def __init__(self, frames_per_chunk: int = 40, walk_chunks: int = 2, mouse_step: float = 0.1) -> None:
        if frames_per_chunk < 2 or walk_chunks < 1 or not 0.02 <= mouse_step <= 1.0:
            raise ValueError(
                f"expected frames_per_chunk >= 2, walk_chunks >= 1 and mouse_step in [0.02, 1], got "
                f"{frames_per_chunk}, {walk_chunks}, {mouse_step}"
            )
        self.t = frames_per_chunk
        self.walk_chunks = walk_chunks
        self.mouse_step = mouse_step
        self.plan = self._plan()
        self.step_index = 0

    def _chunk(self, keys: tuple[int, ...], mouse: np.ndarray) -> dict[str, np.ndarray]:
        return {"keyboard": np.tile(np.array(keys, np.int8), (self.t, 1)), "mouse": mouse.astype(np.float32)}

    def _plan(self) -> list[dict[str, np.ndarray]]:
        t, m = self.t, self.mouse_step
        forward = (1, 0, 0, 0, 0, 0)
        still = (0, 0, 0, 0, 0, 0)
        walk = self._chunk(forward, np.zeros((t, 2)))
        look = np.zeros((t, 2))
        look[: t // 2, 0], look[t // 2 : 2 * (t // 2), 0] = m, -m  # up, then down by as much
        # turn 180 degrees: frames of yaw +m until the total reaches 180 / (15 * m) frames
        turn_frames = int(round(180.0 / (15.0 * m)))
        turn_chunks = []
        while turn_frames > 0:
            n = min(t, turn_frames)
            yaw = np.zeros((t, 2))
            yaw[:n, 1] = m
            turn_chunks.append(self._chunk(still, yaw))
            turn_frames -= n
        return [
            *[walk] * self.walk_chunks,
            self._chunk(still, look),
            *turn_chunks,
            *[walk] * self.walk_chunks,
        ]

    def act(self, obs: Any = None) -> dict[str, np.ndarray]:
        action = self.plan[self.step_index % len(self.plan)]
        self.step_index += 1
        return {k: v.copy() for k, v in action.items()}

    def reset(self) -> None:
        self.step_index = 0
