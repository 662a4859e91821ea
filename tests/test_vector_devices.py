"""MatrixGameVectorEnv spread over device groups: two CPU "devices" equal one (issue 8 items 2-3).

torch has one CPU device, so ``devices=["cpu", "cpu"]`` makes two groups on it: each its own batch,
stream state and thread. Same scripted calls on one group and on two; every returned value must
agree (frames within the batched==unbatched tolerance of test_env, everything else exactly).
"""

from __future__ import annotations

import threading

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import mg3_env
from mg3_env.vector import MatrixGameVectorEnv, resolve_devices, split_envs
from world_model.config import tiny
from world_model.model import random_world_model
from world_model.runtime import RuntimeOptions

H = W = 16
N = 4
FRAME_KEYS = ("frames", "first_chunk_frames")  # decoded pixels: batched kernels may round differently


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(H, W))


def _action(n, yaw):
    kb = np.zeros((n, 6), np.int8)
    kb[:, 0] = 1
    ms = np.zeros((n, 2), np.float32)
    ms[:, 1] = np.linspace(-yaw, yaw, n)  # a different action per env
    return {"keyboard": kb, "mouse": ms}


def _script(env, mode):
    """Reset, step, reset env 2 alone, step until the others are truncated and reset (per ``mode``)."""
    out = [env.reset(seed=[11, 12, 13, 14])]
    out.append(env.step(_action(N, 0.2)))
    out.append(env.reset(seed=[0, 0, 99, 0], options={"reset_mask": np.array([False, False, True, False])}))
    out.append(env.step(_action(N, 0.4)))  # envs 0, 1, 3 reach max_chunks=2 (SAME_STEP resets them here)
    if mode == AutoresetMode.DISABLED:
        with pytest.raises(RuntimeError, match=r"envs \[0, 1, 3\] are done"):
            env.step(_action(N, 0.1))
        out.append(env.reset(seed=[5, 6, 0, 8], options={"reset_mask": np.array([True, True, False, True])}))
    out.append(env.step(_action(N, 0.1)))  # NEXT_STEP: envs 0, 1, 3 reset here; env 2 truncated
    return out


def _assert_same(a, b, key=""):
    assert type(a) is type(b), f"{key}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), key
        for j, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{key}[{j}]")
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{key}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, key
        for j, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{key}[{j}]")
    elif isinstance(a, np.ndarray) and key.rsplit(".", 1)[-1].split("[")[0] in FRAME_KEYS:
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, key
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, f"{key}: max diff {diff.max()}"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    else:
        assert a == b, f"{key}: {a!r} vs {b!r}"


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_two_cpu_devices_equal_one(model, mode):
    one = MatrixGameVectorEnv(N, model=model, devices=["cpu"], max_chunks=2, autoreset_mode=mode)
    two = MatrixGameVectorEnv(N, model=model, devices=["cpu", "cpu"], max_chunks=2, autoreset_mode=mode)
    assert two.env_groups == (range(0, 2), range(2, 4)) and len(two.stream_states) == 2
    assert [s.num_envs for s in two.stream_states] == [2, 2]
    a, b = _script(one, mode), _script(two, mode)
    _assert_same(a, b)
    last = b[-1]
    if mode == AutoresetMode.NEXT_STEP:  # the script really crossed groups with its resets
        assert last[4]["_first_chunk_frames"].tolist() == [True, True, False, True]
        assert last[3].tolist() == [False, False, True, False]
    if mode == AutoresetMode.SAME_STEP:
        assert b[3][4]["_final_obs"].tolist() == [True, True, False, True]
        assert b[3][4]["final_obs"][3]["chunk_index"][0] == 2
    # env 2 (second group) restarted with seed 99 and is one chunk behind the others
    assert b[2][1]["seed"][2] == 99 and b[2][1]["_seed"].tolist() == [False, False, True, False]
    if mode != AutoresetMode.SAME_STEP:  # (SAME_STEP has reset env 2 again at its truncation)
        assert two.stream_states[1].seeds[0] == 99 and two.stream_states[1].chunk[0] == 3
    one.close()
    two.close()


def test_groups_step_concurrently_and_uneven_split(model):
    """Three envs on two groups: sizes 2 and 1; both groups' steps run at once, in two threads."""
    env = MatrixGameVectorEnv(3, model=model, devices=["cpu", "cpu"])
    assert env.env_groups == (range(0, 2), range(2, 3)) and env.devices == (torch.device("cpu"),) * 2
    env.reset(seed=0)
    barrier, threads = threading.Barrier(2, timeout=10), set()
    for g in env._groups:  # each group's step must meet the other's: fails if they run one after another
        step = g.generator.step

        def met(state, actions, step=step):
            threads.add(threading.get_ident())
            barrier.wait()
            return step(state, actions)

        g.generator.step = met
    obs, *_ = env.step(_action(3, 0.2))
    assert len(threads) == 2 and obs["frames"].shape == (3, 40, H, W, 3)
    assert obs["chunk_index"][:, 0].tolist() == [1, 1, 1]
    env.close()


def test_make_vec_and_single_env_path(model):
    v = gymnasium.make_vec(mg3_env.ENV_ID, num_envs=2, model=model, devices=["cpu", "cpu"])
    assert v.unwrapped.devices == (torch.device("cpu"),) * 2
    assert "devices=['cpu', 'cpu']" in repr(v.unwrapped)
    v.close()
    default = MatrixGameVectorEnv(2, model=model)  # devices=None: one group on the model's device
    assert default.env_groups == (range(0, 2),) and default._state is default.stream_states[0]
    assert default.model is model  # no copy on the model's own device
    default.close()


def test_replicate_copies_weights_and_shares_text_encoder(model):
    r = model.replicate("cpu")
    assert r.dit is not model.dit and r.text_encoder is model.text_encoder and r.runtime.device == "cpu"
    for (k, p), q in zip(model.dit.state_dict().items(), r.dit.state_dict().values()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), k
    for p, q in zip(model.vae.state_dict().values(), r.vae.state_dict().values()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    with torch.no_grad():
        next(r.dit.parameters()).add_(1.0)  # a copy, not a view
    assert not torch.equal(next(r.dit.parameters()), next(model.dit.parameters()))


def test_split_envs():
    assert split_envs(5, 2) == (range(0, 3), range(3, 5))
    assert split_envs(4, 4) == tuple(range(i, i + 1) for i in range(4))
    assert split_envs(7, 3) == (range(0, 3), range(3, 5), range(5, 7))


@pytest.mark.parametrize(
    ("devices", "num_envs", "match"),
    [
        (["cpu", "gpu0"], 4, r"unknown device 'gpu0'.*'cuda:N'"),
        ([], 4, "non-empty list"),
        (3, 4, "non-empty list"),
        (["cpu", "meta"], 4, "device type 'meta'"),
        (["cpu"] * 3, 2, "3 devices for 2 envs"),
        ([f"cuda:{max(torch.cuda.device_count(), 1) + 7}"], 1, "CUDA is not available|CUDA device"),
    ],
)
def test_bad_device_lists(model, devices, num_envs, match):
    with pytest.raises(ValueError, match=match):
        resolve_devices(devices, num_envs)
    with pytest.raises(ValueError, match=match):
        MatrixGameVectorEnv(num_envs, model=model, devices=devices)


def _groups_vs_alone(model, devices, steps=2):
    """One env per device group against each env alone on the first device (same seeds, actions)."""
    n = len(devices)
    seeds = [50 + i for i in range(n)]
    v = MatrixGameVectorEnv(n, model=model, devices=devices, max_chunks=steps)
    together = [v.reset(seed=seeds)[0]] + [v.step(_action(n, 0.2))[0] for _ in range(steps)]
    for k, g in enumerate(v._groups):
        assert v.stream_states[k].latents[0].device == torch.device(devices[k]) == g.generator.device
    v.close()
    alone_model = model.replicate(devices[0])
    for i, seed in enumerate(seeds):
        e = MatrixGameVectorEnv(1, model=alone_model, max_chunks=steps)
        act = {key: x[i : i + 1] for key, x in _action(n, 0.2).items()}
        alone = [e.reset(seed=seed)[0]] + [e.step(act)[0] for _ in range(steps)]
        e.close()
        for a, b in zip(alone, together):
            diff = np.abs(a["frames"][0].astype(int) - b["frames"][i].astype(int))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99
            np.testing.assert_array_equal(a["pose"][0], b["pose"][i])


@pytest.mark.gpu
def test_env_on_the_models_own_gpu_uses_the_model_itself():
    """A model on "cuda" (no index) runs in the env as it is: no second copy of its weights on the
    same GPU (it was copied, "cuda" != "cuda:0", doubling the 5B's GPU memory)."""
    wm = random_world_model(tiny(H, W), RuntimeOptions(device="cuda"))
    env = MatrixGameVectorEnv(1, model=wm)
    assert env.model is wm
    env.close()


@pytest.mark.gpu
def test_cuda_groups_equal_one_device(model):
    """A CPU model copied to two groups on cuda:0 (fp32) equals each env alone there."""
    _groups_vs_alone(model, ["cuda:0", "cuda:0"])


@pytest.mark.gpu
@pytest.mark.multigpu
def test_every_gpu_equals_one_gpu(model):
    _groups_vs_alone(model, [f"cuda:{i}" for i in range(torch.cuda.device_count())])
