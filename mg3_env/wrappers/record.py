"""Rollout recording: write each episode of a :class:`~mg3_env.env.MatrixGameEnv` (or of every env
of a :class:`~mg3_env.vector.MatrixGameVectorEnv`) as a dataset.

The dataset is the LeRobot v3 layout of :mod:`world_model.data.format` (the Video-Pose-Action-
Prompt quadruplet): H.264 video, per-frame keyboard/mouse action and commanded pose, the prompt as
the task, the seed and the model id in the episode metadata. Every generated frame is recorded,
including the whole first chunk (57 frames for the release) that ``reset`` returns in ``info``.

Crash safety comes from the writer: an episode reaches the dataset only when it ends (truncation,
the next ``reset``, or ``close``); a crash mid-episode leaves the earlier episodes intact, and
re-opening the folder appends after them. A writer that fails after the env stepped or reset raises
:class:`RecordingError`, which hands back what ``step`` or ``reset`` would have returned (``.result``); a
refused ``reset`` leaves the episode in progress recording.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from world_model.checks import whole_or_none

__all__ = ["RecordEpisodes", "RecordVectorEpisodes", "RecordingError"]


class RecordingError(RuntimeError):
    """The dataset writer failed after the env had stepped or reset (its ``__cause__``: the writer's first error).
    The env's call is done and its return value is handed back in ``result`` (the tuple ``step()`` or ``reset()``
    would have returned); the episodes go on, an episode whose start could not be recorded unrecorded."""

    def __init__(self, message: str, result: tuple) -> None:
        super().__init__(message)
        self.result = result


def _first(errors: list[BaseException | None]) -> BaseException | None:
    """The first error of the shares of a call (None: that share succeeded)."""
    return next((e for e in errors if e is not None), None)


def _raise_first(errors: list[BaseException | None], what: str, result: tuple) -> None:
    """Raise :class:`RecordingError` from the first of ``errors``, if any."""
    if (first := _first(errors)) is not None:
        raise RecordingError(
            f"the {what} was not wholly recorded: {first}; its result is in .result", result
        ) from first


def _check_observations(space: Any, base: Any, who: str) -> None:
    """A recorder reads the chunk's frames, poses and camera from the observations it is handed: refuse wrappers
    between it and the env that change them (e.g. LatestFrame: record first, then wrap)."""
    if space != base:
        raise TypeError(
            f"{who} needs the env's own observations (frames, pose, c2w), got {space}: wrap the recorder instead "
            "(e.g. LatestFrame(RecordEpisodes(env, root)))"
        )


def _episode_meta(model_meta: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What a recorded episode's metadata says of where it came from (both recorders)."""
    return {
        "model": model_meta["model"],
        "random_weights": model_meta["random_weights"],
        "pose_source": "commanded",
        **more,
    }


def _encode(episode: dict[str, Any], frames: np.ndarray) -> None:
    """Encode a chunk of an episode in progress, then count its frames' statistics (not when the write fails)."""
    episode["encoder"].write(frames)
    episode["stats"].add_frames(frames)


def _call(fn, *args, **kwargs) -> BaseException | None:
    """``fn(*args, **kwargs)``; the exception it raised, or None."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - handed back to the caller, raised there
        return e
    return None


def _model_writer(root, model, crf: int, preset: str):
    """A dataset writer for ``model``'s rollouts: its geometry and frame rate, its name as the source."""
    from world_model.data.format import DatasetWriter

    s = model.config.stream
    return DatasetWriter(
        root,
        fps=s.fps,
        height=s.height,
        width=s.width,
        source=f"mg3_env:{model.name}",
        info_extra={"model": model.name, "random_weights": model.random_weights},
        crf=crf,
        preset=preset,
    )


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
        base = env.unwrapped
        model = getattr(base, "model", None)
        if model is None or not hasattr(base, "vector_env"):
            raise TypeError(f"RecordEpisodes records MatrixGameEnv rollouts, got {type(base).__name__}")
        _check_observations(env.observation_space, base.observation_space, "RecordEpisodes")
        self.model_meta = model.describe()
        self.split = split
        self.writer = _model_writer(root, model, crf, preset)
        self._recording = False
        self.episodes_written: list[int] = []

    @property
    def root(self) -> Path:
        return self.writer.root

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)  # a refused reset leaves the episode recording
        # the new episode begins whether or not the last one could be published
        _raise_first([_call(self._finish), _call(self._begin, info)], "reset", (obs, info))
        return obs, info

    def step(self, action: Any):
        result = self.env.step(action)
        obs, reward, terminated, truncated, info = result
        if self._recording:
            errors = [
                _call(
                    self.writer.add_frames, obs["frames"], info["keyboard"], info["mouse"], obs["pose"], c2w=obs["c2w"]
                )
            ]
            if terminated or truncated:
                errors.append(_call(self._finish))
            _raise_first(errors, "step", result)
        return result

    def close(self) -> None:
        """Publish the episode in progress, release the dataset, close the env."""
        try:
            self._finish()
        finally:
            self.writer.close()
            super().close()

    def _begin(self, info: dict[str, Any]) -> None:
        meta = _episode_meta(self.model_meta)
        self.writer.begin_episode(info["prompt"], seed=info["seed"], split=self.split, extra_meta=meta)
        try:
            self.writer.add_frames(
                info["first_chunk_frames"],
                info["first_chunk_keyboard"],
                info["first_chunk_mouse"],
                info["first_chunk_pose"],
                c2w=info["first_chunk_c2w"],
            )
        except BaseException:
            self.writer.discard_episode()  # an episode without its first chunk is not recorded
            raise
        self._recording = True

    def _finish(self) -> None:
        if self._recording:
            self._recording = False
            try:
                self.episodes_written.append(self.writer.end_episode())
            except BaseException:
                self.writer.discard_episode()  # the writer keeps a failed episode for a retry: this one is lost
                raise


class RecordVectorEpisodes(gymnasium.vector.VectorWrapper):
    """Record every env's episodes of a :class:`~mg3_env.vector.MatrixGameVectorEnv` into one dataset.

    One writer for all envs: each env's episode in progress is encoded to its own temporary mp4 as
    its chunks arrive (frames are not kept in memory) and published through the writer when the
    episode ends (truncation, a reset of that env, or ``close``), with the policy's per-frame
    actions, the commanded poses, the prompt and the seed. Crash-safe as the single-env recorder:
    a crash loses only episodes in progress (their temporary files are removed when the folder is
    re-opened). ``max_episodes`` stops publishing after that many (episodes in progress then are
    dropped). Autoreset modes ``NEXT_STEP`` (the default) and ``DISABLED``.

    ``encode_threads``: threads that H.264-encode the envs' chunks of one step in parallel, one env
    per task (None: the CPU count with the model on a GPU, where x264, which releases the GIL, would
    otherwise bound the rollout: at 128x128 one core encodes ~1,300 frames/s and two ~2,600, while 64
    envs of the embedded model on an H100 generate ~5,900; 1 with the model on the CPU, whose own
    threads hold the cores: 2-core CPU, 4 envs, 24.2 frames/s written sequentially, 22.2 in parallel).
    """

    def __init__(
        self,
        env: gymnasium.vector.VectorEnv,
        root: str | Path,
        *,
        split: str = "train",
        max_episodes: int | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        encode_threads: int | None = None,
    ) -> None:
        super().__init__(env)
        from gymnasium.vector import AutoresetMode

        whole_or_none(encode_threads, "encode_threads", 1, note="None: auto")
        whole_or_none(max_episodes, "max_episodes", 1, note="None: no limit")

        base = env.unwrapped
        model = getattr(base, "model", None)
        if model is None or not hasattr(base, "stream_states"):
            raise TypeError(f"RecordVectorEpisodes records MatrixGameVectorEnv rollouts, got {type(base).__name__}")
        _check_observations(env.single_observation_space, base.single_observation_space, "RecordVectorEpisodes")
        if base.autoreset_mode == AutoresetMode.SAME_STEP:
            raise ValueError("RecordVectorEpisodes needs autoreset_mode NEXT_STEP or DISABLED, got SAME_STEP")
        self.model_meta = model.describe()
        self.split, self.max_episodes = split, max_episodes
        self.crf, self.preset = crf, preset
        self.writer = _model_writer(root, model, crf, preset)
        self._open: list[dict[str, Any] | None] = [None] * self.num_envs
        self.episodes_written: list[int] = []
        self.episode_envs: list[int] = []  # the env each written episode came from
        if encode_threads is None:
            on_gpu = torch.device(model.runtime.device).type == "cuda"
            encode_threads = min(self.num_envs, os.cpu_count() or 1) if on_gpu else 1
        workers = min(self.num_envs, encode_threads)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mg3-record") if workers > 1 else None

    @property
    def root(self) -> Path:
        return self.writer.root

    @property
    def done(self) -> bool:
        """Whether ``max_episodes`` episodes were written."""
        return self.max_episodes is not None and len(self.episodes_written) >= self.max_episodes

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        _raise_first([_call(self._begin_from, infos)], "reset", (obs, infos))
        return obs, infos

    def step(self, actions: Any):
        result = self.env.step(actions)
        obs, rewards, terminated, truncated, infos = result
        new = infos.get("_first_chunk_frames", np.zeros(self.num_envs, bool))
        going = [i for i in range(self.num_envs) if self._open[i] is not None and not new[i]]
        # every env's share is done before an error is raised: one env's failure loses no other env's episode
        errors = [
            _call(
                self._add_all,
                [
                    (i, obs["frames"][i], infos["keyboard"][i], infos["mouse"][i], obs["pose"][i], obs["c2w"][i])
                    for i in going
                ],
            )
        ]
        errors += [_call(self._finish, i) for i in going if terminated[i] or truncated[i]]
        errors.append(_call(self._begin_from, infos))
        _raise_first(errors, "step", result)
        return result

    def close(self, **kwargs: Any) -> None:
        """Publish the episodes in progress (up to ``max_episodes``; each env's, whichever fails), release the
        dataset, close the env."""
        try:
            errors = [_call(self._finish, i) for i in range(self.num_envs)]
            if (first := _first(errors)) is not None:
                raise first
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            self.writer.close()
            super().close(**kwargs)

    def _begin_from(self, infos: dict[str, Any]) -> None:
        from world_model.data.format import VideoStats
        from world_model.data.video import VideoEncoder

        new = infos.get("_first_chunk_frames", np.zeros(self.num_envs, bool))
        started = [int(i) for i in np.flatnonzero(new)]
        for i in started:
            self._finish(i)
            tmp = self.writer.root / "videos" / f"pending-env{i}.mp4.tmp-{os.getpid()}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._open[i] = {
                "encoder": VideoEncoder(
                    tmp,
                    fps=self.writer.fps,
                    height=self.writer.height,
                    width=self.writer.width,
                    crf=self.crf,
                    preset=self.preset,
                ),  # fmt: skip
                "arrays": {"keyboard": [], "mouse": [], "poses": [], "c2w": []},
                "stats": VideoStats(),  # the frames' statistics, gathered as they are encoded
                "prompt": str(infos["prompt"][i]),
                "seed": int(infos["seed"][i]),
            }
        self._add_all(
            [
                (
                    i,
                    infos["first_chunk_frames"][i],
                    infos["first_chunk_keyboard"][i],
                    infos["first_chunk_mouse"][i],
                    infos["first_chunk_pose"][i],
                    infos["first_chunk_c2w"][i],
                )
                for i in started
            ]
        )

    def _add_all(self, chunks: list[tuple]) -> None:
        """Append ``(i, frames, keyboard, mouse, poses, c2w)`` to each env i's episode in progress: the
        frames encoded in parallel (each env its own encoder, so order within an env is kept). An env
        whose encoding failed gets neither the frames nor the arrays (its video and its table stay in
        step); the first error is raised once every other env has its chunk."""
        if self._pool is None or len(chunks) < 2:
            errors = [_call(_encode, self._open[i], frames) for i, frames, *_ in chunks]
        else:
            futures = [self._pool.submit(_call, _encode, self._open[i], frames) for i, frames, *_ in chunks]
            errors = [f.result() for f in futures]
        for (i, _, keyboard, mouse, poses, c2w), error in zip(chunks, errors):
            if error is None:
                arrays = self._open[i]["arrays"]  # type: ignore[index]
                for key, value in (("keyboard", keyboard), ("mouse", mouse), ("poses", poses), ("c2w", c2w)):
                    arrays[key].append(np.asarray(value, np.float32))
        if (first := _first(errors)) is not None:
            raise first

    def _finish(self, i: int) -> None:
        ep, self._open[i] = self._open[i], None
        if ep is None:
            return
        if self.done:
            ep["encoder"].abort()
            return
        try:
            ep["encoder"].close()
            arrays = {k: np.concatenate(v) for k, v in ep["arrays"].items()}
            meta = _episode_meta(self.model_meta, env=int(i))
            index = self.writer.add_encoded_episode(
                ep["encoder"].path, arrays["keyboard"], arrays["mouse"], arrays["poses"], ep["prompt"],
                c2w=arrays["c2w"], seed=ep["seed"], split=self.split, extra_meta=meta, video_stats=ep["stats"],
            )  # fmt: skip
        except BaseException:
            ep["encoder"].abort()  # no temporary video left behind by an episode that could not be published
            raise
        self.episodes_written.append(index)
        self.episode_envs.append(int(i))
