"""Real-time videos of Matrix-Game episodes with Gymnasium's ``RecordVideo``.

One step of the env is one chunk of video (40 frames, 57 at ``reset``). Gymnasium's
``RecordVideo`` captures one frame per step, even from a ``render_mode="rgb_array_list"`` env
(it keeps the list's last frame), so its videos of a 3-chunk episode hold 4 frames and play ~40x
too fast. :class:`RecordChunkVideo` is ``RecordVideo`` with the same arguments that keeps every
frame of the list: 57 + 40k frames per episode, written at ``metadata["render_fps"]`` (the
model's fps), so the video plays in real time. Gymnasium's ``save_video(env.render(), ...)`` on an
``rgb_array_list`` env gives the same frames without a wrapper.
"""

from __future__ import annotations

from typing import Any

import gymnasium
from gymnasium.wrappers import RecordVideo

__all__ = ["RecordChunkVideo"]


class RecordChunkVideo(RecordVideo):
    """``gymnasium.wrappers.RecordVideo`` that records every frame of each step (needs
    ``render_mode="rgb_array_list"``); ``video_length`` counts frames, as in ``RecordVideo``."""

    def __init__(self, env: gymnasium.Env, *args: Any, **kwargs: Any) -> None:
        if env.render_mode != "rgb_array_list":
            raise ValueError(
                f"RecordChunkVideo needs an env made with render_mode='rgb_array_list', got {env.render_mode!r}"
            )
        super().__init__(env, *args, **kwargs)

    def _capture_frame(self) -> None:
        assert self.recording, "Cannot capture a frame, recording wasn't started."
        frames = self.env.render()
        if not isinstance(frames, list):
            raise TypeError(f"expected render() to return a list of frames, got {type(frames).__name__}")
        self.render_history += frames
        self.recorded_frames.extend(frames)
