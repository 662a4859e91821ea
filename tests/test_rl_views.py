"""RL views (LatestFrame, DiscreteActions) on one env and many; the registered pixel id through
gymnasium.make, SB3's make_vec_env + CnnPolicy and the cleanrl ppo_atari pattern (tiny model)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

import mg3_env
from mg3_env.env import MatrixGameEnv
from mg3_env.vector import MatrixGameVectorEnv
from mg3_env.wrappers.rl import ACTION_VOCABULARY, DiscreteActions, LatestFrame
from world_model.config import tiny
from world_model.model import random_world_model


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


@pytest.fixture(scope="module")
def model48():
    """Large enough for SB3's NatureCNN (>= 36 px)."""
    return random_world_model(tiny(48, 48))


def test_one_definition_wraps_a_single_env_and_a_vector_env(model):
    single = DiscreteActions(LatestFrame(MatrixGameEnv(model=model, max_chunks=2)))
    vector = DiscreteActions(LatestFrame(MatrixGameVectorEnv(2, model=model, max_chunks=2)))
    assert isinstance(single, DiscreteActions) and isinstance(single.env, LatestFrame)
    assert isinstance(single, gymnasium.Env) and isinstance(vector, gymnasium.vector.VectorEnv)
    assert isinstance(vector, DiscreteActions) and isinstance(vector.env, LatestFrame)
    assert single.observation_space == spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert single.action_space == spaces.Discrete(len(ACTION_VOCABULARY))
    assert vector.single_observation_space == single.observation_space
    assert vector.action_space == spaces.MultiDiscrete([len(ACTION_VOCABULARY)] * 2)
    o1, _ = single.reset(seed=3)
    ov, _ = vector.reset(seed=[3, 4])
    assert o1.shape == (16, 16, 3) and ov.shape == (2, 16, 16, 3)
    forward = list(ACTION_VOCABULARY).index("forward")
    o1, *_, info1 = single.step(forward)
    ov, *_, infov = vector.step(np.array([forward, forward]))
    np.testing.assert_array_equal(info1["keyboard"][0], [1, 0, 0, 0, 0, 0])
    assert np.abs(o1.astype(int) - ov[0].astype(int)).max() <= 1  # same seed, same chunk
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        single.step(11)
    with pytest.raises(ValueError, match="2 integer action indices"):
        vector.step(np.array([0.5, 1.0]))
    single.close()
    vector.close()


def test_pixel_id_through_gymnasium_make_and_check_env(model):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(mg3_env.PIXELS_ENV_ID, model=model, max_chunks=3)
    assert env.observation_space == spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.action_space == spaces.Discrete(11)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    steps = 0
    truncated = False
    while not truncated:
        obs, _, _, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == 3 and env.observation_space.contains(obs)
    env.close()
    vec = gymnasium.make_vec(mg3_env.PIXELS_ENV_ID, num_envs=2, model=model, max_chunks=2)
    assert vec.single_observation_space.shape == (16, 16, 3)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 16, 16, 3)
    vec.close()


def test_vector_view_converts_final_obs(model):
    v = LatestFrame(MatrixGameVectorEnv(2, model=model, max_chunks=1, autoreset_mode=AutoresetMode.SAME_STEP))
    v = DiscreteActions(v, names=("noop", "forward"))
    v.reset(seed=0)
    _, _, _, trunc, info = v.step(np.array([1, 1]))
    assert trunc.all() and info["final_obs"][0].shape == (16, 16, 3)
    v.close()


def test_keys_to_action_for_gymnasium_play(model):
    env = gymnasium.make(mg3_env.PIXELS_ENV_ID, model=model, render_mode="rgb_array")
    keys = env.get_wrapper_attr("get_keys_to_action")()
    names = list(ACTION_VOCABULARY)
    assert keys[("w",)] == names.index("forward") and keys[("q", "w")] == names.index("forward_turn_left")
    assert all(k == tuple(sorted(k)) for k in keys)  # play looks keys up as sorted tuples
    assert len(set(keys.values())) == len(keys)
    env.close()


@pytest.mark.slow
def test_sb3_make_vec_env_and_cnn_policy(model48):
    """SB3 as its users write it: make_vec_env on the registered id, PPO("CnnPolicy", ...)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    steps, chunks = 64, 4  # kept small: every timestep generates a chunk (CI runs this on 2 cores)
    env = make_vec_env(mg3_env.PIXELS_ENV_ID, n_envs=2, seed=0, env_kwargs={"model": model48, "max_chunks": chunks})
    algo = PPO("CnnPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, verbose=0)
    algo.learn(total_timesteps=steps)
    assert algo.num_timesteps >= steps
    assert len(algo.ep_info_buffer) >= 2 * (steps // 2 // chunks) - 2  # Monitor saw the truncated episodes
    env.close()


class _CleanrlAgent(torch.nn.Module):
    """cleanrl ppo_atari.py's Agent (Nature CNN on 4 stacked 84x84 grey frames)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        nn = torch.nn
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
        )
        self.actor = nn.Linear(512, n)
        self.critic = nn.Linear(512, 1)

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x / 255.0)
        probs = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


@pytest.mark.slow
def test_cleanrl_ppo_atari_pattern(model):
    """cleanrl's make_env with the env id changed and the Atari-only wrappers removed:
    gym.make -> RecordEpisodeStatistics -> Resize(84) -> Grayscale -> FrameStack(4) -> SyncVectorEnv."""
    pytest.importorskip("cv2", reason="ResizeObservation needs opencv (in the 'rl' extra)")
    gym = gymnasium

    def make_env(env_id):
        def thunk():
            env = gym.make(env_id, model=model, max_chunks=16)
            env = gym.wrappers.RecordEpisodeStatistics(env)
            env = gym.wrappers.ResizeObservation(env, (84, 84))
            env = gym.wrappers.GrayscaleObservation(env)
            env = gym.wrappers.FrameStackObservation(env, 4)
            return env

        return thunk

    num_envs, num_steps = 2, 100
    envs = gym.vector.SyncVectorEnv([make_env(mg3_env.PIXELS_ENV_ID) for _ in range(num_envs)])
    assert isinstance(envs.single_action_space, gym.spaces.Discrete)
    agent = _CleanrlAgent(envs.single_action_space.n)
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    next_obs, _ = envs.reset(seed=1)
    assert next_obs.shape == (num_envs, 4, 84, 84)
    logprobs, values, returns = [], [], []
    for _ in range(num_steps):
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(torch.Tensor(next_obs))
        next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
        logprobs.append(logprob)
        values.append(value.flatten())
        if "episode" in infos:
            returns.extend(infos["episode"]["r"][infos["_episode"]].tolist())
    assert len(returns) == num_envs * (num_steps // 17)  # 16 chunks, then the next-step autoreset
    _, newlogprob, entropy, _ = agent.get_action_and_value(torch.Tensor(next_obs))
    loss = -(newlogprob.mean() + 0.01 * entropy.mean())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    envs.close()
