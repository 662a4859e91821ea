"""Rollout recording into the LeRobot v3 dataset layout: read-back and crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mg3_env.env import MatrixGameEnv
from mg3_env.wrappers.record import RecordEpisodes
from world_model.config import tiny
from world_model.data.format import DatasetReader
from world_model.model import random_world_model

H = W = 16


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(H, W))


def _episode(env, seed, prompt, turn):
    """Reset + one step; returns everything stepped, frame by frame."""
    obs, info = env.reset(seed=seed, options={"prompt": prompt})
    frames, kb, ms, poses = [info["first_chunk_frames"]], [info["first_chunk_keyboard"]], [], [info["first_chunk_pose"]]
    ms.append(info["first_chunk_mouse"])
    action = {"keyboard": np.array([1, 0, 0, 0, 0, 0]), "mouse": np.array([0.0, turn], np.float32)}
    obs, _, _, truncated, info = env.step(action)
    assert truncated
    frames.append(obs["frames"])
    kb.append(info["keyboard"])
    ms.append(info["mouse"])
    poses.append(obs["pose"])
    return [np.concatenate(x) for x in (frames, kb, ms, poses)]


def test_recorded_episodes_read_back(model, tmp_path):
    env = RecordEpisodes(MatrixGameEnv(model=model, max_chunks=1), tmp_path / "ds", crf=0)
    stepped = [_episode(env, 3, "a red room", 0.1), _episode(env, 4, "a blue room", -0.2)]
    env.close()
    reader = DatasetReader(tmp_path / "ds")
    assert len(reader) == 2
    for i, (frames, kb, ms, poses) in enumerate(stepped):
        ep = reader.load_episode(i)
        assert len(ep) == 57 + 40 == frames.shape[0]
        assert ep.prompt == ("a red room", "a blue room")[i] and ep.info.seed == (3, 4)[i]
        assert ep.info.extra["model"] == "tiny-random" and ep.info.extra["random_weights"] is True
        np.testing.assert_array_equal(ep.keyboard, kb)
        np.testing.assert_array_equal(ep.mouse, ms)
        np.testing.assert_array_equal(ep.poses, poses)
        # H.264 yuv420p halves the colour resolution; at crf 0 the luma survives almost exactly
        assert ep.frames.shape == frames.shape
        err = np.abs(_luma(ep.frames) - _luma(frames))
        assert err.mean() < 2.0 and err.max() < 16


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from mg3_env.env import MatrixGameEnv
    from mg3_env.wrappers.record import RecordEpisodes
    from world_model.config import tiny
    from world_model.model import random_world_model

    env = RecordEpisodes(MatrixGameEnv(model=random_world_model(tiny(16, 16)), max_chunks=2), sys.argv[1])
    action = {"keyboard": np.array([1, 0, 0, 0, 0, 0]), "mouse": np.zeros(2, np.float32)}
    env.reset(seed=1, options={"prompt": "first"})
    env.step(action)
    env.step(action)  # truncated: episode 0 is published
    env.reset(seed=2, options={"prompt": "second"})
    env.step(action)  # episode 1 in progress
    print("READY", flush=True)
    time.sleep(120)
    """
)


def test_sigkill_mid_episode_keeps_earlier_episodes(model, tmp_path):
    root = tmp_path / "ds"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", f"child did not get ready: {line!r}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    reader = DatasetReader(root)
    assert len(reader) == 1
    ep = reader.load_episode(0)
    assert ep.prompt == "first" and len(ep) == 57 + 40 + 40

    env = RecordEpisodes(MatrixGameEnv(model=model, max_chunks=1), root)  # re-open and append
    _episode(env, 5, "third", 0.0)
    env.close()
    reader = DatasetReader(root)
    assert len(reader) == 2 and reader.load_episode(1).prompt == "third"
    assert reader.load_episode(0, frames=True).frames.shape == (137, H, W, 3)


def test_a_refused_reset_leaves_the_episode_recording_and_the_seed_as_they_were(model, tmp_path):
    env = RecordEpisodes(MatrixGameEnv(model=model, max_chunks=4), tmp_path / "ds", crf=0)
    env.reset(seed=1, options={"prompt": "a red room"})
    env.step({"keyboard": [1, 0, 0, 0, 0, 0], "mouse": [0.0, 0.1]})
    with pytest.raises(ValueError):
        env.reset(seed=7, options={"prompt": ""})  # refused: an empty prompt
    assert env.unwrapped.np_random_seed == 1  # was 7 while the env stayed in episode 1
    env.step({"keyboard": [1, 0, 0, 0, 0, 0], "mouse": [0.0, 0.1]})  # the episode goes on, recorded
    env.close()
    reader = DatasetReader(tmp_path / "ds")
    assert len(reader) == 1 and len(reader.load_episode(0)) == 57 + 40 + 40  # was 57 + 40: recording had stopped


def test_a_writer_failing_at_reset_hands_the_reset_back_and_records_the_next_episode(model, tmp_path, monkeypatch):
    from mg3_env.wrappers.record import RecordingError
    from world_model.data.format import DatasetWriter

    env = RecordEpisodes(MatrixGameEnv(model=model, max_chunks=4), tmp_path / "ds", crf=0)
    action = {"keyboard": [1, 0, 0, 0, 0, 0], "mouse": [0.0, 0.1]}
    env.reset(seed=1, options={"prompt": "a red room"})
    env.step(action)
    commit = DatasetWriter._commit

    def full(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(DatasetWriter, "_commit", full)
    with pytest.raises(RecordingError, match="disk full") as failed:
        env.reset(seed=2, options={"prompt": "a blue room"})  # the red room cannot be published
    obs, info = failed.value.result  # the reset is done: handed back
    assert info["prompt"] == "a blue room" and info["seed"] == 2 and obs["frames"].shape[1:] == (H, W, 3)
    monkeypatch.setattr(DatasetWriter, "_commit", commit)
    env.step(action)  # the blue room records (the failed reset used to leave it unrecorded)
    env.close()
    reader = DatasetReader(tmp_path / "ds")
    assert len(reader) == 1 and reader.load_episode(0).prompt == "a blue room"
    assert len(reader.load_episode(0)) == 57 + 40
    assert not [p for p in (tmp_path / "ds").rglob("*") if ".tmp" in p.name]  # the red room's video removed
