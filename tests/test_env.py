"""MatrixGameEnv / MatrixGameVectorEnv on the tiny random model (CPU, 32x32 frames)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import mg3_env
from mg3_env.env import MatrixGameEnv
from mg3_env.rewards import distance_travelled
from mg3_env.vector import MatrixGameVectorEnv
from world_model.config import tiny
from world_model.model import load_world_model, random_world_model

H = W = 16  # the tiny architecture at 16x16 (2x2 latents): API tests need no detail
T = 40


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(H, W))


@pytest.fixture
def env(model):
    e = MatrixGameEnv(model=model, render_mode="rgb_array", max_chunks=2)
    yield e
    e.close()


@pytest.fixture(scope="module")
def ready_env(model):
    """One env, reset once, shared by the tests that only check input validation."""
    e = MatrixGameEnv(model=model, max_chunks=2)
    e.reset(seed=0)
    yield e
    e.close()


FWD = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}


def test_spaces_obs_and_info(env):
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs["frames"].shape == (T, H, W, 3) and obs["frames"].dtype == np.uint8
    assert obs["chunk_index"] == 0
    assert info["first_chunk_frames"].shape == (57, H, W, 3)
    np.testing.assert_array_equal(info["first_chunk_frames"][-T:], obs["frames"])
    assert info["pose_source"] == "commanded" and info["random_weights"] is True
    assert info["model"] == "tiny-random" and info["seed"] == 1
    np.testing.assert_array_equal(env.render(), obs["frames"][-1])
    obs, reward, terminated, truncated, info = env.step(FWD)
    assert env.observation_space.contains(obs) and obs["chunk_index"] == 1
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["memory_latents"].shape == (5,) and info["memory_latents"][-1] == 1
    # poses: commanded, 12.35 units per frame forward; c2w translation = position * 0.01
    assert np.linalg.norm(np.diff(obs["pose"][:, :2], axis=0), axis=1) == pytest.approx(12.35, abs=1e-3)
    np.testing.assert_allclose(obs["c2w"][:, :3, 3], obs["pose"][:, :3] * 0.01, rtol=1e-5)
    _, _, _, truncated, _ = env.step(FWD)
    assert truncated  # max_chunks=2
    with pytest.raises(RuntimeError, match="reset"):
        env.step(FWD)


def test_gymnasium_and_sb3_check_env(model):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    e = MatrixGameEnv(model=model, render_mode="rgb_array", max_chunks=3)
    gym_check(e, skip_render_check=False)
    with pytest.warns(UserWarning):  # SB3 warns that Dict actions need a wrapper for its algorithms
        sb3_check(e, warn=True)
    e.close()


def test_registered_ids(model):
    e = gymnasium.make(mg3_env.ENV_ID, model=model, max_chunks=1)
    assert isinstance(e.unwrapped, MatrixGameEnv)
    e.close()
    v = gymnasium.make_vec(mg3_env.ENV_ID, num_envs=2, model=model)
    assert isinstance(v.unwrapped, MatrixGameVectorEnv) and v.num_envs == 2
    assert v.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    v.close()


def test_per_frame_actions_equal_broadcast_and_determinism(env):
    env.reset(seed=3)
    a = env.step(FWD)[0]
    env.reset(seed=3)
    per_frame = {k: np.repeat(v[None], T, axis=0) for k, v in FWD.items()}
    b = env.step(per_frame)[0]
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["pose"], b["pose"])
    env.reset(seed=4)
    c = env.step(FWD)[0]
    assert not np.array_equal(a["frames"], c["frames"])


def test_image_and_prompt_options(env, tmp_path):
    from PIL import Image

    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = 255
    Image.fromarray(img).save(tmp_path / "x.png")
    _, i1 = env.reset(seed=0, options={"image": img, "prompt": "a white wall"})
    _, i2 = env.reset(seed=0, options={"image": str(tmp_path / "x.png"), "prompt": "a white wall"})
    _, i3 = env.reset(seed=0, options={"image": Image.fromarray(img), "prompt": "a white wall"})
    np.testing.assert_array_equal(i1["first_chunk_frames"], i2["first_chunk_frames"])
    np.testing.assert_array_equal(i1["first_chunk_frames"], i3["first_chunk_frames"])
    assert i1["prompt"] == "a white wall"
    _, i4 = env.reset(seed=0, options={"image": img, "prompt": "a dark cave"})
    assert not np.array_equal(i1["first_chunk_frames"], i4["first_chunk_frames"])


@pytest.mark.parametrize(
    ("options", "err", "match"),
    [
        ({"image": np.zeros((8, 8), np.uint8)}, ValueError, r"shape \(H, W, 3\)"),
        ({"image": np.zeros((8, 8, 4), np.uint8)}, ValueError, "transparent pixels"),
        ({"image": np.zeros((8, 8, 2), np.uint8)}, ValueError, r"shape \(H, W, 3\)"),
        ({"image": np.full((8, 8, 3), 2.0, np.float32)}, ValueError, r"float images must lie in \[0, 1\]"),
        ({"image": np.full((8, 8, 3), 300, np.int32)}, ValueError, r"\[0, 255\]"),
        ({"image": np.zeros((8, 8, 3), np.complex64)}, TypeError, "dtype"),
        ({"image": "/no/such/image.png"}, FileNotFoundError, "does not exist"),
        ({"image": 5}, TypeError, "PIL image or a path"),
        ({"prompt": ""}, ValueError, "prompt is empty"),
        ({"prompt": "   "}, ValueError, "prompt is empty"),
        ({"prompt": "x" * 2001}, ValueError, "at most 2000"),
        ({"prompt": 3}, TypeError, "prompt must be a str"),
        ({"colour": "red"}, ValueError, "unknown reset options"),
    ],
)
def test_bad_reset_input(env, options, err, match):
    with pytest.raises(err, match=match):
        env.reset(seed=0, options=options)


@pytest.mark.parametrize(
    ("action", "err", "match"),
    [
        ([1, 0, 0, 0, 0, 0], TypeError, "dict with keys"),
        ({"keyboard": np.zeros(6)}, ValueError, "missing"),
        ({"keyboard": np.zeros(6), "mouse": np.zeros(2), "jump": 1}, ValueError, "unknown"),
        ({"keyboard": np.zeros(5), "mouse": np.zeros(2)}, ValueError, r"shape \(6,\)"),
        ({"keyboard": np.zeros((39, 6)), "mouse": np.zeros(2)}, ValueError, r"\(40, 6\)"),
        ({"keyboard": np.zeros(6), "mouse": np.zeros(3)}, ValueError, r"shape \(2,\)"),
        ({"keyboard": np.full(6, 0.5), "mouse": np.zeros(2)}, ValueError, "0 or 1"),
        ({"keyboard": np.zeros(6), "mouse": np.array([0.0, 1.5])}, ValueError, r"\[-1, 1\].*1.5"),
        ({"keyboard": np.zeros(6), "mouse": np.array([np.nan, 0.0])}, ValueError, "NaN"),
        ({"keyboard": np.array([np.nan, 0, 0, 0, 0, 0]), "mouse": np.zeros(2)}, ValueError, "NaN"),
        ({"keyboard": "w", "mouse": np.zeros(2)}, TypeError, "array of numbers"),
        ({"keyboard": np.zeros(6), "mouse": ["a", "b"]}, TypeError, "numbers"),
    ],
)
def test_bad_action(ready_env, action, err, match):
    with pytest.raises(err, match=match):
        ready_env.step(action)
    assert ready_env.unwrapped.vector_env._state.chunk == [1]  # rejected before any generation


def test_step_before_reset_and_after_close(model):
    e = MatrixGameEnv(model=model)
    with pytest.raises(RuntimeError, match=r"reset\(\) before step"):
        e.step(FWD)
    e.reset(seed=0)
    e.close()
    with pytest.raises(RuntimeError, match="closed"):
        e.step(FWD)
    with pytest.raises(RuntimeError, match="closed"):
        e.reset()


def test_unknown_model_and_bad_construction(model):
    with pytest.raises(ValueError, match="unknown model 'nope'.*tiny-random"):
        load_world_model("nope")
    with pytest.raises(ValueError, match="max_chunks"):
        MatrixGameEnv(model=model, max_chunks=10_000)
    with pytest.raises(ValueError, match="render_mode"):
        MatrixGameEnv(model=model, render_mode="human")


def test_reward_function_and_record_episode_statistics(model):
    e = gymnasium.wrappers.RecordEpisodeStatistics(
        MatrixGameEnv(model=model, reward_fn=distance_travelled, max_chunks=2)
    )
    e.reset(seed=0)
    _, r1, *_ = e.step(FWD)
    _, r2, _, truncated, info = e.step(FWD)
    assert r1 == pytest.approx(39 * 12.35 * 0.01, rel=1e-4)  # 39 steps between the chunk's 40 frames
    assert truncated and info["episode"]["l"] == 2 and info["episode"]["r"] == pytest.approx(r1 + r2)
    e.close()


def test_record_video(model, tmp_path):
    e = MatrixGameEnv(model=model, render_mode="rgb_array", max_chunks=2)
    e = gymnasium.wrappers.RecordVideo(e, str(tmp_path), episode_trigger=lambda i: True, disable_logger=True)
    e.reset(seed=0)
    e.step(FWD)
    e.step(FWD)
    e.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


# ---- vector env -----------------------------------------------------------------------------


def _vec_action(n, keys=(1, 0, 0, 0, 0, 0), yaw=0.1):
    return {
        "keyboard": np.tile(np.array(keys, np.int8), (n, 1)),
        "mouse": np.tile([0.0, yaw], (n, 1)).astype(np.float32),
    }


def test_vector_batched_equals_unbatched(model):
    v = MatrixGameVectorEnv(2, model=model)
    obs, _ = v.reset(seed=[10, 20])
    obs1 = v.step(_vec_action(2))[0]
    v.close()
    for i, seed in enumerate((10, 20)):
        e = MatrixGameEnv(model=model)
        o0, _ = e.reset(seed=seed)
        o1 = e.step(FWD)[0]
        for a, b in ((o0, obs), (o1, obs1)):
            diff = np.abs(a["frames"].astype(int) - b["frames"][i].astype(int))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # batched kernels round differently
            np.testing.assert_array_equal(a["pose"], b["pose"][i])
        e.close()


def test_vector_reset_mask_leaves_others_unchanged(model):
    ref = MatrixGameVectorEnv(2, model=model, autoreset_mode=AutoresetMode.DISABLED)
    ref.reset(seed=[1, 2])
    ref_obs = ref.step(_vec_action(2))[0]
    v = MatrixGameVectorEnv(2, model=model, autoreset_mode="Disabled")
    v.reset(seed=[1, 2])
    obs, info = v.reset(seed=[1, 7], options={"reset_mask": np.array([False, True])})
    assert info["_first_chunk_frames"].tolist() == [False, True]
    assert obs["chunk_index"][:, 0].tolist() == [0, 0]
    obs = v.step(_vec_action(2))[0]
    assert obs["chunk_index"][:, 0].tolist() == [1, 1]
    diff = np.abs(obs["frames"][0].astype(int) - ref_obs["frames"][0].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert not np.array_equal(obs["frames"][1], ref_obs["frames"][1])  # env 1 has a new seed
    v.close()
    ref.close()


def test_vector_autoreset_modes(model):
    v = MatrixGameVectorEnv(2, model=model, max_chunks=1)
    v.reset(seed=0)
    _, _, _, trunc, _ = v.step(_vec_action(2))
    assert trunc.tolist() == [True, True]
    obs, rew, term, trunc, info = v.step(_vec_action(2))  # NEXT_STEP: this step resets
    assert obs["chunk_index"][:, 0].tolist() == [0, 0] and not trunc.any() and rew.tolist() == [0.0, 0.0]
    assert info["_first_chunk_frames"].all()
    v.close()

    s = MatrixGameVectorEnv(2, model=model, max_chunks=1, autoreset_mode=AutoresetMode.SAME_STEP)
    s.reset(seed=0)
    obs, _, _, trunc, info = s.step(_vec_action(2))
    assert trunc.all() and obs["chunk_index"][:, 0].tolist() == [0, 0]
    assert info["final_obs"][0]["chunk_index"][0] == 1 and info["_final_obs"].all()
    s.close()


def test_vector_record_episode_statistics(model):
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    v = RecordEpisodeStatistics(MatrixGameVectorEnv(2, model=model, max_chunks=1))
    v.reset(seed=0)
    *_, info = v.step(_vec_action(2))
    assert info["_episode"].all() and info["episode"]["l"].tolist() == [1, 1]
    v.close()


def test_vector_bad_action_and_seed(model):
    v = MatrixGameVectorEnv(2, model=model)
    with pytest.raises(RuntimeError, match="reset"):
        v.step(_vec_action(2))
    with pytest.raises(ValueError, match="seed"):
        v.reset(seed=[1, 2, 3])
    v.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        v.step({"keyboard": np.zeros(6), "mouse": np.zeros(2)})
    v.close()


def test_first_chunk_action_option(ready_env):
    _, info = ready_env.reset(seed=0, options={"action": FWD})
    steps = np.linalg.norm(np.diff(info["first_chunk_pose"][:, :2], axis=0), axis=1)
    assert steps == pytest.approx(12.35, abs=1e-3)  # walked through all 57 frames
    np.testing.assert_array_equal(info["first_chunk_keyboard"][:, 0], np.ones(57))
    with pytest.raises(ValueError, match=r"\(57, 6\)"):
        ready_env.reset(seed=0, options={"action": {"keyboard": np.zeros((40, 6)), "mouse": np.zeros(2)}})
