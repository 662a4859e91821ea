"""Gymnasium's semantics where the envs broke them (session 51's audit): SAME_STEP's final_info, the list render
mode across resets, seeds, render after close, copies of the RL views, recorders behind observation wrappers."""

from __future__ import annotations

import copy
import pickle

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import mg3_env  # noqa: F401  (registers the env ids)
from mg3_env.env import MatrixGameEnv
from mg3_env.vector import MatrixGameVectorEnv
from mg3_env.wrappers.record import RecordEpisodes, RecordVectorEpisodes
from mg3_env.wrappers.rl import LatestFrame
from world_model.config import tiny
from world_model.model import random_world_model


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


FORWARD = {"keyboard": np.eye(6, dtype=np.int8)[0], "mouse": np.zeros(2, np.float32)}  # one env's action


def _actions(n: int) -> dict[str, np.ndarray]:
    return {k: np.stack([v] * n) for k, v in FORWARD.items()}


def test_same_step_final_info_holds_the_finished_episodes_last_step_alone(model):
    """final_info was a shallow copy of the step's infos that the autoreset then overwrote: it held the new
    episodes' chunk_index and seed, and masked envs that had not finished."""
    v = MatrixGameVectorEnv(2, model=model, max_chunks=2, autoreset_mode=AutoresetMode.SAME_STEP)
    v.reset(seed=[3, 4])
    v.step(_actions(2))
    v.reset(options={"reset_mask": np.array([True, False])})  # out of phase: env 1 finishes at the next step
    _, _, _, truncated, info = v.step(_actions(2))
    assert truncated.tolist() == [False, True]
    final = info["final_info"]
    assert info["_final_info"].tolist() == [False, True] and final["_chunk_index"].tolist() == [False, True]
    assert final["chunk_index"][1] == 2 and final["seed"][1] == 4  # the finished episode's, not the new one's
    assert info["chunk_index"].tolist() == [1, 0] and info["seed"][1] != 4  # env 1's new episode
    assert info["_keyboard"].tolist() == [True, False]  # env 1's top-level info: its reset info alone
    assert final["_keyboard"].tolist() == [False, True]
    v.close()


def test_sb3_gets_a_finished_envs_last_step_info(model):
    from mg3_env.sb3 import SB3VecEnv

    venv = SB3VecEnv(MatrixGameVectorEnv(2, model=model, max_chunks=1, autoreset_mode="SameStep"))
    venv.reset()
    venv.step_async(_actions(2))
    _, _, dones, infos = venv.step_wait()
    assert dones.all() and all(i["chunk_index"] == 1 and "keyboard" in i for i in infos)
    assert all(i["terminal_observation"]["chunk_index"][0] == 1 and i["TimeLimit.truncated"] for i in infos)
    assert not any(k.startswith("first_chunk_") for i in infos for k in i)
    assert all(r["chunk_index"] == 0 and r["first_chunk_frames"].shape[0] == 57 for r in venv.reset_infos)
    venv.close()


def test_a_reset_drops_the_frames_not_rendered(model):
    """rgb_array_list kept every frame across episodes until render(): 194 after a reset where 57 are new, and a
    video of one episode got the ones before it."""
    env = MatrixGameEnv(model=model, max_chunks=2, render_mode="rgb_array_list")
    env.reset(seed=0)
    env.step(FORWARD)
    env.reset(seed=1)
    assert len(env.render()) == 57
    env.close()
    v = MatrixGameVectorEnv(2, model=model, render_mode="rgb_array_list")
    v.reset(seed=0)
    v.step(_actions(2))
    v.reset(options={"reset_mask": np.array([False, True])})
    assert [len(f) for f in v.render()] == [57 + 40, 57]
    v.close()


def test_a_single_env_checks_its_seed_before_resetting(model):
    env = MatrixGameEnv(model=model, max_chunks=1)
    env.reset(seed=np.int64(7))  # numpy ints are ints here
    assert env.np_random_seed == 7
    env.step(FORWARD)  # truncated
    with pytest.raises(ValueError, match="seed must be"):
        env.reset(seed=[9])  # refused before anything reset: the episode is still over
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(FORWARD)
    env.close()


def test_vector_seeds_may_leave_envs_to_the_rng(model):
    v = MatrixGameVectorEnv(2, model=model)
    obs, info = v.reset(seed=[None, 5])
    ref, ref_info = MatrixGameVectorEnv(2, model=model).reset(seed=[1, 5])
    assert info["seed"][1] == 5 and np.array_equal(obs["frames"][1], ref["frames"][1])
    v.close()


def test_render_after_close_says_so(model):
    env = MatrixGameEnv(model=model, render_mode="rgb_array")
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.render()


def test_the_rl_views_copy_and_pickle(model):
    view = LatestFrame(MatrixGameEnv(model=model))
    assert type(pickle.loads(pickle.dumps(view))) is type(view)
    pixels = copy.deepcopy(gymnasium.make("mg3/MatrixGamePixels-v0", model=model))
    obs, _ = pixels.reset(seed=0)
    assert obs.shape == (16, 16, 3)
    with pytest.raises(TypeError, match="env to wrap"):
        LatestFrame()


def test_a_recorder_refuses_a_view_between_it_and_the_env(model, tmp_path):
    with pytest.raises(TypeError, match="wrap the recorder instead"):
        RecordEpisodes(LatestFrame(MatrixGameEnv(model=model)), tmp_path / "a")
    with pytest.raises(TypeError, match="wrap the recorder instead"):
        RecordVectorEpisodes(LatestFrame(MatrixGameVectorEnv(2, model=model)), tmp_path / "b")
    env = LatestFrame(RecordEpisodes(MatrixGameEnv(model=model, max_chunks=2), tmp_path / "c"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 3)
    env.close()
