"""Real-time videos: rgb_array_list gives every frame (57 at reset, 40 per step); RecordChunkVideo
and Gymnasium's save_video write them at the model's fps; SB3 adapter infos and render_mode."""

from __future__ import annotations

import logging

import av
import gymnasium
import numpy as np
import pytest

import mg3_env
from mg3_env.env import MatrixGameEnv
from mg3_env.vector import MatrixGameVectorEnv
from mg3_env.wrappers import RecordChunkVideo
from world_model.config import tiny
from world_model.model import random_world_model

FWD = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


def _video(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, float(s.average_rate)


def test_rgb_array_list_returns_every_frame_once(model):
    e = MatrixGameEnv(model=model, max_chunks=3, render_mode="rgb_array_list")
    obs, info = e.reset(seed=0)
    first = e.render()
    assert isinstance(first, list) and len(first) == 57
    np.testing.assert_array_equal(np.stack(first), info["first_chunk_frames"])
    assert e.render() == []  # frames are handed out once
    obs, *_ = e.step(FWD)
    obs, *_ = e.step(FWD)
    frames = e.render()
    assert len(frames) == 80
    np.testing.assert_array_equal(np.stack(frames[40:]), obs["frames"])
    e.close()


def test_vector_rgb_array_list_across_autoreset(model):
    v = MatrixGameVectorEnv(2, model=model, max_chunks=1, render_mode="rgb_array_list")
    v.reset(seed=0)
    assert [len(f) for f in v.render()] == [57, 57]
    act = {"keyboard": np.zeros((2, 6)), "mouse": np.zeros((2, 2))}
    v.step(act)  # truncated
    v.step(act)  # NEXT_STEP autoreset: a new first chunk
    assert [len(f) for f in v.render()] == [40 + 57, 40 + 57]
    v.close()


def test_record_chunk_video_writes_every_frame_in_real_time(model, tmp_path):
    e = MatrixGameEnv(model=model, max_chunks=3, render_mode="rgb_array_list")
    assert e.metadata["render_fps"] == model.config.stream.fps
    e = RecordChunkVideo(e, str(tmp_path / "chunk"), episode_trigger=lambda i: True, disable_logger=True)
    e.reset(seed=0)
    truncated = False
    while not truncated:
        *_, truncated, _ = e.step(FWD)
    e.close()
    (path,) = (tmp_path / "chunk").glob("*.mp4")
    frames, fps = _video(path)
    assert len(frames) == 57 + 3 * 40 and fps == pytest.approx(model.config.stream.fps)

    # Gymnasium's own RecordVideo keeps one frame per step (the list's last): documented, not ours
    stock = gymnasium.wrappers.RecordVideo(
        MatrixGameEnv(model=model, max_chunks=3, render_mode="rgb_array_list"),
        str(tmp_path / "stock"),
        episode_trigger=lambda i: True,
        disable_logger=True,
    )
    stock.reset(seed=0)
    for _ in range(3):
        stock.step(FWD)
    stock.close()
    (path,) = (tmp_path / "stock").glob("*.mp4")
    assert len(_video(path)[0]) == 4
    with pytest.raises(ValueError, match="rgb_array_list"):
        RecordChunkVideo(MatrixGameEnv(model=model, render_mode="rgb_array"), str(tmp_path / "x"))


def test_save_video_of_the_pixel_id(model, tmp_path):
    from gymnasium.utils.save_video import save_video

    env = gymnasium.make(mg3_env.PIXELS_ENV_ID, model=model, max_chunks=2, render_mode="rgb_array_list")
    env.reset(seed=0)
    env.step(1)
    env.step(1)
    save_video(env.render(), str(tmp_path), fps=env.metadata["render_fps"], name_prefix="ep")
    (path,) = tmp_path.glob("*.mp4")
    assert len(_video(path)[0]) == 57 + 2 * 40
    env.close()


def test_sb3_env_render_mode_and_episode_infos(model):
    from agents.ppo import make_sb3_env

    env = make_sb3_env(model, num_envs=2, max_chunks=2, render_mode="rgb_array")
    env.reset()
    assert env.reset_infos[0]["chunk_index"] == 0 and env.reset_infos[0]["first_chunk_frames"].shape[0] == 57
    images = env.get_images()
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    _, _, dones, infos = env.step(np.array([1, 1]))
    assert not dones.any() and "episode" not in infos[0] and infos[0]["chunk_index"] == 1
    assert infos[1]["keyboard"].shape == (40, 6) and infos[1]["prompt"]
    _, rewards, dones, infos = env.step(np.array([1, 1]))
    assert dones.all()
    for i in range(2):
        assert infos[i]["episode"]["l"] == 2 and infos[i]["episode"]["r"] == pytest.approx(2 * rewards[i], rel=0.2)
        assert infos[i]["terminal_observation"].shape == (16, 16, 3) and infos[i]["TimeLimit.truncated"]
    env.close()


def test_ppo_logs_progress(model, caplog):
    from agents.ppo import train

    with caplog.at_level(logging.INFO, logger="agents.ppo"):
        algo = train(model, num_envs=2, steps=16, n_steps=4, policy="MlpPolicy", max_chunks=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "agents.ppo"]
    assert lines[0].startswith("PPO: 16 steps")
    assert "8/16 steps" in lines[1] and "16/16 steps" in lines[-1]
    assert any("mean episode return" in ln and "over" in ln for ln in lines[2:])
    assert algo.num_timesteps == 16


def test_sb3_vec_chunk_video_recorder_writes_every_frame(model, tmp_path):
    from stable_baselines3.common.vec_env import VecVideoRecorder

    from agents.ppo import make_sb3_env
    from mg3_env.sb3 import VecChunkVideoRecorder

    env = make_sb3_env(model, num_envs=2, max_chunks=3, render_mode="rgb_array_list")
    assert env.render_mode == "rgb_array" and env.metadata["render_fps"] == model.config.stream.fps
    rec = VecChunkVideoRecorder(env, str(tmp_path), record_video_trigger=lambda step: step == 0, video_length=57 + 40)
    rec.reset()
    assert rec.render().shape == (32, 16, 3)  # SB3's own render: the latest frames, tiled (2 rows)
    rec.step(np.array([1, 1]))
    rec.step(np.array([1, 1]))  # 57 + 80 frames > video_length: the video is written
    (path,) = tmp_path.glob("*.mp4")
    frames, fps = _video(path)
    assert len(frames) == 57 + 80 and frames[0].shape == (32, 16, 3)
    assert fps == pytest.approx(model.config.stream.fps)
    rec.close()
    # SB3's VecVideoRecorder on the same env keeps one frame per step (documented, not ours)
    stock = VecVideoRecorder(
        make_sb3_env(model, num_envs=2, max_chunks=3, render_mode="rgb_array_list"),
        str(tmp_path / "stock"),
        record_video_trigger=lambda step: step == 0,
        video_length=2,
    )
    stock.reset()
    stock.step(np.array([1, 1]))
    stock.step(np.array([1, 1]))
    (path,) = (tmp_path / "stock").glob("*.mp4")
    assert len(_video(path)[0]) == 3
    stock.close()
    with pytest.raises(ValueError, match="rgb_array_list"):
        VecChunkVideoRecorder(
            make_sb3_env(model, num_envs=1, render_mode="rgb_array"), str(tmp_path / "x"), lambda s: True
        )
