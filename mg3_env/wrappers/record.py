"""Rollout recording: write each episode of a :class:`~mg3_env.env.MatrixGameEnv` as a dataset.

The dataset is the LeRobot v3 layout of :mod:`world_model.data.format` (the Video-Pose-Action-
Prompt quadruplet): H.264 video, per-frame keyboard/mouse action and commanded pose, the prompt as
the task, the seed and the model id in the episode metadata. Every generated frame is recorded,
including the whole first chunk (57 frames for the release) that ``reset`` returns in ``info``.

Crash safety comes from the writer: an episode reaches the dataset only when it ends (truncation,
the next ``reset``, or ``close``); a crash mid-episode leaves the earlier episodes intact, and
re-opening the folder appends after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium

__all__ = ["RecordEpisodes"]


class RecordEpisodes(gymnasium.Wrapper):
    """Record every episode of a Matrix-Game env into the dataset folder ``root``.

    Args:
        env: a :class:`~mg3_env.env.MatrixGameEnv` (possibly wrapped).
        root: dataset folder; created if absent, appended to if present.
        split: the split name stored with each episode.
        crf, preset: H.264 quality and speed (see :class:`world_model.data.format.DatasetWriter`).
    """

    def __init__(
        self, env: gymnasium.Env, root: str | Path, *, split: str = "train", crf: int = 20, preset: str = "veryfast"
    ) -> None:
        super().__init__(env)
        from world_model.data.format import DatasetWriter

        base = env.unwrapped
        model = getattr(base, "model", None)
        if model is None or not hasattr(base, "vector_env"):
            raise TypeError(f"RecordEpisodes records MatrixGameEnv rollouts, got {type(base).__name__}")
        s = model.config.stream
        self.model_meta = model.describe()
        self.split = split
        self.writer = DatasetWriter(
            root,
            fps=s.fps,
            height=s.height,
            width=s.width,
            source=f"mg3_env:{model.name}",
            info_extra={"model": model.name, "random_weights": model.random_weights},
            crf=crf,
            preset=preset,
        )
        self._recording = False
        self.episodes_written: list[int] = []

    @property
    def root(self) -> Path:
        return self.writer.root

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._finish()
        obs, info = self.env.reset(seed=seed, options=options)
        meta = {
            "model": self.model_meta["model"],
            "random_weights": self.model_meta["random_weights"],
            "pose_source": "commanded",
        }
        self.writer.begin_episode(info["prompt"], seed=info["seed"], split=self.split, extra_meta=meta)
        self._recording = True
        self.writer.add_frames(
            info["first_chunk_frames"],
            info["first_chunk_keyboard"],
            info["first_chunk_mouse"],
            info["first_chunk_pose"],
            c2w=info["first_chunk_c2w"],
        )
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._recording:
            self.writer.add_frames(obs["frames"], info["keyboard"], info["mouse"], obs["pose"], c2w=obs["c2w"])
            if terminated or truncated:
                self._finish()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Publish the episode in progress, release the dataset, close the env."""
        try:
            self._finish()
        finally:
            self.writer.close()
            super().close()

    def _finish(self) -> None:
        if self._recording:
            self._recording = False
            self.episodes_written.append(self.writer.end_episode())
