"""All-or-nothing steps and resets: a fault anywhere in a call leaves every env as it was, and
calling again gives the chunk an unfaulted env gives (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from mg3_env.env import MatrixGameEnv
from mg3_env.vector import MatrixGameVectorEnv
from world_model.config import tiny
from world_model.model import random_world_model

FWD = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


def _act(n):
    return {"keyboard": np.tile(FWD["keyboard"], (n, 1)), "mouse": np.tile(FWD["mouse"], (n, 1))}


class FailingReward:
    """Raises on the calls listed in ``fail_on`` (0-based), else returns the chunk index."""

    def __init__(self, fail_on=()):
        self.calls, self.fail_on = 0, set(fail_on)

    def __call__(self, obs, action, info):
        self.calls += 1
        if self.calls - 1 in self.fail_on:
            raise ZeroDivisionError("reward function failed")
        return float(info["chunk_index"])


def _summary(v):
    """Everything a step may change, per group state and env."""
    out = []
    for st in v.stream_states:
        out.append(
            (
                list(st.chunk),
                [x.shape for x in st.latents],
                [p.clone() for p in st.poses],
                [g.get_state().clone() for g in st.rngs],
            )
        )
    return out, [o["frames"].copy() for o in v._obs], v.needs_reset.tolist()


def _assert_same(a, b):
    (sa, oa, da), (sb, ob, db) = a, b
    assert da == db
    for x, y in zip(oa, ob):
        np.testing.assert_array_equal(x, y)
    for (ca, la, pa, ra), (cb, lb, pb, rb) in zip(sa, sb):
        assert ca == cb and la == lb
        assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(pa, pb))
        assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(ra, rb))


def test_reward_raising_undoes_the_step_and_retry_repeats_it(model):
    ref = MatrixGameVectorEnv(2, model=model, reward_fn=FailingReward())
    ref.reset(seed=5)
    ref.step(_act(2))
    want = ref.step(_act(2))

    reward = FailingReward(fail_on={3})  # env 1 of the second step
    v = MatrixGameVectorEnv(2, model=model, reward_fn=reward, render_mode="rgb_array_list")
    v.reset(seed=5)
    v.step(_act(2))
    unrendered = [len(f) for f in v._unrendered]
    before = _summary(v)
    with pytest.raises(ZeroDivisionError) as err:
        v.step(_act(2))
    assert "undone" in "".join(getattr(err.value, "__notes__", ["undone"]))
    _assert_same(before, _summary(v))
    assert [len(f) for f in v._unrendered] == unrendered  # no frame handed out twice or lost
    got = v.step(_act(2))  # the retry gives the chunk an unfaulted env gives
    np.testing.assert_array_equal(got[0]["frames"], want[0]["frames"])
    np.testing.assert_array_equal(got[1], want[1])
    assert [len(f) for f in v.render()] == [57 + 80, 57 + 80]
    v.close()
    ref.close()


def test_reward_raising_undoes_the_autoresets_of_both_modes(model):
    # NEXT_STEP: env 0 autoresets at the start of the step, env 1's reward then fails
    reward = FailingReward()
    v = MatrixGameVectorEnv(2, model=model, reward_fn=reward, max_chunks=2)
    v.reset(seed=0)
    v.step(_act(2))
    v.reset(seed=[0, 4], options={"reset_mask": np.array([False, True])})
    *_, trunc, _ = v.step(_act(2))
    assert trunc.tolist() == [True, False]
    before = _summary(v)
    reward.fail_on = {reward.calls}
    with pytest.raises(ZeroDivisionError):
        v.step(_act(2))
    _assert_same(before, _summary(v))  # env 0 still ended, not reset
    obs, *_ = v.step(_act(2))
    assert obs["chunk_index"][:, 0].tolist() == [0, 2]
    v.close()

    # SAME_STEP: the failure is in the step that ends both episodes (before their autoreset)
    reward = FailingReward()
    s = MatrixGameVectorEnv(2, model=model, reward_fn=reward, max_chunks=2, autoreset_mode=AutoresetMode.SAME_STEP)
    s.reset(seed=0)
    s.step(_act(2))
    before = _summary(s)
    reward.fail_on = {reward.calls + 1}
    with pytest.raises(ZeroDivisionError):
        s.step(_act(2))
    _assert_same(before, _summary(s))
    obs, _, _, trunc, info = s.step(_act(2))
    assert trunc.all() and obs["chunk_index"][:, 0].tolist() == [0, 0] and info["final_obs"][1]["chunk_index"][0] == 2
    s.close()


def test_a_failing_device_group_leaves_every_group_in_step(model, monkeypatch):
    ref = MatrixGameVectorEnv(4, model=model, devices=["cpu", "cpu"])
    ref.reset(seed=1)
    want = ref.step(_act(4))[0]
    ref.close()

    v = MatrixGameVectorEnv(4, model=model, devices=["cpu", "cpu"])
    v.reset(seed=1)
    before = _summary(v)
    gen = v._groups[1].generator
    real = gen.step

    def broken(state, actions):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")

    monkeypatch.setattr(gen, "step", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        v.step(_act(4))
    _assert_same(before, _summary(v))  # group 0 had generated its chunk: undone
    assert [c for st in v.stream_states for c in st.chunk] == [1, 1, 1, 1]
    monkeypatch.setattr(gen, "step", real)
    obs = v.step(_act(4))[0]
    assert obs["chunk_index"][:, 0].tolist() == [1, 1, 1, 1]
    np.testing.assert_array_equal(obs["frames"], want["frames"])
    v.close()


@pytest.mark.parametrize(
    "seed",
    [2**63, -1, [0, 2**63], 2**63 - 1],  # the last: env 1 would get 2**63
)
def test_out_of_range_seeds_are_refused_before_any_work(model, seed):
    v = MatrixGameVectorEnv(2, model=model)
    v.reset(seed=3)
    before = _summary(v)
    calls = []
    v._groups[0].generator.reset_ = lambda *a, **k: calls.append(a)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63 - 1\]"):
        v.reset(seed=seed)
    assert calls == []
    _assert_same(before, _summary(v))
    v.close()


def test_largest_seed_works(model):
    e = MatrixGameEnv(model=model)
    _, info = e.reset(seed=2**63 - 1)
    assert info["seed"] == 2**63 - 1
    e.close()


def test_reset_failing_in_the_prompt_encoder_changes_nothing(model, monkeypatch):
    v = MatrixGameVectorEnv(2, model=model)
    v.reset(seed=3)
    v.step(_act(2))
    before = _summary(v)
    prompts = list(v._prompts)

    def broken(prompts):
        raise OSError("text encoder failed (simulated)")

    monkeypatch.setattr(v.model, "encode_prompts", broken)
    with pytest.raises(OSError):
        v.reset(seed=9, options={"prompt": "a new place"})
    _assert_same(before, _summary(v))
    assert v._prompts == prompts
    monkeypatch.undo()
    v.close()


def test_single_env_reward_raising_records_nothing_twice(model, tmp_path):
    from mg3_env.wrappers.record import RecordEpisodes
    from world_model.data.format import DatasetReader

    reward = FailingReward(fail_on={1})
    e = RecordEpisodes(MatrixGameEnv(model=model, reward_fn=reward, max_chunks=2), tmp_path / "ds")
    e.reset(seed=0)
    e.step(FWD)
    with pytest.raises(ZeroDivisionError):
        e.step(FWD)
    assert e.unwrapped.vector_env.stream_states[0].chunk == [2]  # chunk 1 done, chunk 2 undone
    _, _, _, truncated, _ = e.step(FWD)
    assert truncated
    e.close()
    ds = DatasetReader(tmp_path / "ds")
    assert len(ds) == 1 and ds.num_frames == 57 + 2 * 40


def test_an_interrupt_while_the_device_groups_run_is_undone_after_they_finish(model, monkeypatch):
    """Ctrl-C arrives in the main thread while the groups' threads generate: the undo waits for them, so no group
    writes its state after it was restored (the groups stayed out of step: chunks [1, 1] then [1, 2])."""
    import mg3_env.vector as vector

    v = MatrixGameVectorEnv(4, model=model, devices=["cpu", "cpu"])
    v.reset(seed=1)
    before = _summary(v)
    real_wait, calls = vector.wait, []

    def interrupted(futures, *args, **kwargs):
        calls.append(len(futures))
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the threads run
        return real_wait(futures, *args, **kwargs)

    monkeypatch.setattr(vector, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        v.step(_act(4))
    _assert_same(before, _summary(v))
    assert [c for st in v.stream_states for c in st.chunk] == [1, 1, 1, 1]  # and it stays so: no thread is left
    obs = v.step(_act(4))[0]
    assert obs["chunk_index"][:, 0].tolist() == [1, 1, 1, 1]
    v.close()
