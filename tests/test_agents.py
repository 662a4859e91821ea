"""Agents: the random agent and the scripted explorer produce valid actions; PPO smoke test."""

from __future__ import annotations

import numpy as np
import pytest

from agents.explorer import Explorer
from agents.random_agent import RandomAgent
from mg3_env.env import MatrixGameEnv
from mg3_env.spaces import make_action_space, validate_action
from world_model.config import tiny
from world_model.model import random_world_model


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


@pytest.mark.parametrize("mode", ["vocabulary", "uniform"])
def test_random_agent_actions_are_valid_and_seeded(mode):
    space = make_action_space()
    a, b = RandomAgent(mode=mode, seed=1), RandomAgent(mode=mode, seed=1)
    draws = [a.act() for _ in range(20)]
    for d, e in zip(draws, (b.act() for _ in range(20))):
        assert space.contains(d)
        np.testing.assert_array_equal(d["mouse"], e["mouse"])
    if mode == "vocabulary":
        assert all(np.isclose(abs(x), 0.0) or np.isclose(abs(x), 0.1) for d in draws for x in d["mouse"])
        assert len({tuple(d["keyboard"]) + tuple(d["mouse"]) for d in draws}) > 3
    held = RandomAgent(mode=mode, hold=3, seed=2)
    h = [held.act() for _ in range(3)]
    assert all(np.array_equal(h[0]["mouse"], x["mouse"]) for x in h)


def test_explorer_goes_and_returns(model):
    """The commanded poses of one explorer round trip end where they started, facing back."""
    ex = Explorer(frames_per_chunk=40, walk_chunks=2)
    env = MatrixGameEnv(model=model, max_chunks=len(ex.plan))
    obs, _ = env.reset(seed=0)
    far = 0.0
    for _ in range(len(ex.plan)):
        action = ex.act(obs)
        validate_action(action, 40)
        obs, *_ = env.step(action)
        far = max(far, float(np.hypot(*obs["pose"][-1, :2])))
    env.close()
    # the pose after the last frame = last pose + its action; check the last frame is close to home
    assert far > 900  # walked out 2 chunks x 40 frames x 12.35 units
    assert np.hypot(*obs["pose"][-1, :2]) < 13  # within one frame's step of the start
    assert abs(obs["pose"][-1, 3]) < 1e-4  # pitch back to level
    assert abs(abs(obs["pose"][-1, 4]) - 180) < 1e-3  # facing the way it came


def test_ppo_smoke_through_the_sb3_adapter(model):
    from agents.ppo import train

    algo = train(model, num_envs=4, steps=128, n_steps=16, policy="MlpPolicy", max_chunks=3)
    assert algo.num_timesteps >= 128


def test_sb3_adapter_terminal_observation(model):
    from agents.ppo import make_sb3_env

    env = make_sb3_env(model, num_envs=2, max_chunks=1)
    obs = env.reset()
    assert obs.shape == (2, 16, 16, 3)
    obs, rewards, dones, infos = env.step(np.array([1, 1]))
    assert dones.tolist() == [True, True] and rewards[0] > 0
    assert infos[0]["terminal_observation"].shape == (16, 16, 3) and infos[0]["TimeLimit.truncated"]
    env.close()


def test_sb3_adapter_passes_reset_options_and_refuses_per_env_attributes(model, monkeypatch):
    from gymnasium.wrappers.vector import NormalizeReward

    from agents.ppo import make_sb3_env
    from mg3_env.wrappers.rl import DiscreteActions

    env = make_sb3_env(model, num_envs=2, max_chunks=2)
    seen, reset = [], env.env.reset
    monkeypatch.setattr(env.env, "reset", lambda **kw: seen.append(kw["options"]) or reset(**kw))
    env.set_options({"prompt": "a dark corridor"})  # SB3: one dict for every env
    env.reset()
    env.set_options([{"prompt": "a"}, {"prompt": "b"}])
    env.reset()
    env.reset()  # SB3 forgets the options after a reset
    assert seen == [{"prompt": ["a dark corridor"] * 2}, {"prompt": ["a", "b"]}, None]
    env.set_options([{"prompt": "a"}, {}])
    with pytest.raises(ValueError, match="same option keys"):
        env.reset()
    # one vector env: its attributes and methods are the batch's, for all envs or none
    with pytest.raises(ValueError, match="indices must name all 2 envs"):
        env.set_attr("reward_fn", None, indices=[0])
    env.set_attr("max_chunks", 2, indices=[1, 0])
    assert env.get_attr("max_chunks", indices=[1]) == [2]
    assert env.env_is_wrapped(DiscreteActions) == [True, True]
    assert env.env_is_wrapped(NormalizeReward) == [False, False]
    env.close()
