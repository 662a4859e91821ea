"""One window conditioning and one sampling loop for inference and training (world_model.window).

The training clips cut from a rollout of the streaming generator must be the windows the generator
built for that rollout: same camera code, RoPE positions, memory latents, actions and context, and
the training sampler run on such a clip with the generator's noise must give the generator's chunk.
"""

from __future__ import annotations

import pytest
import torch

from world_model.config import tiny
from world_model.generator import ChunkActions, StreamingGenerator
from world_model.model import random_world_model
from world_model.train.clips import ClipSampler, LatentStore
from world_model.train.rollout import sample_chunk
from world_model.window import frame_latents, window_conditioning

H = W = 32
CHUNKS = 3
SEED = 7


def _actions(frame0: int, t: int) -> ChunkActions:
    """A fixed action sequence of frames [frame0, frame0 + t): walk, strafe, turn both ways, look down and up."""
    f = torch.arange(frame0, frame0 + t)
    kb = torch.zeros(t, 6)
    kb[:, 0] = ((f // 9) % 3 != 2).float()  # forward, with pauses
    kb[:, 3] = ((f // 13) % 2 == 1).float()  # strafe right now and then
    ms = torch.zeros(t, 2)
    ms[:, 0] = torch.where((f // 20) % 2 == 0, 0.05, -0.04)  # pitch down, then up
    ms[:, 1] = torch.where((f // 31) % 3 == 0, 0.3, -0.1)  # yaw: fast right, slow left
    return ChunkActions(kb, ms)


def _config(memory: bool):
    cfg = tiny(H, W)
    return cfg if memory else cfg.replace(stream=cfg.stream.replace(num_memory=0))


_STREAMS: dict = {}


def _stream(memory: bool):
    """Stream CHUNKS chunks of one env; returns (cfg, model, generator, state, the first DiT call of each chunk)."""
    if memory in _STREAMS:
        return _STREAMS[memory]
    cfg = _config(memory)
    model = random_world_model(cfg)
    gen = StreamingGenerator(model)
    calls: list[tuple] = []
    hook = model.dit.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args)))
    state = gen.init_state(1)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen.reset_(state, [True], image, model.encode_prompts(["a corridor"]), [SEED])
    first_calls, outputs = [], []
    try:
        for _ in range(CHUNKS):
            n = len(calls)
            outs, state = gen.step(state, [_actions(state.num_frames(0), gen.frames_needed(state, 0))])
            first_calls.append(calls[n])
            outputs.append(outs[0])
    finally:
        hook.remove()
    _STREAMS[memory] = cfg, model, gen, state, first_calls, outputs
    return _STREAMS[memory]


def _clips_of(cfg, state, memory: bool) -> ClipSampler:
    """The generator's rollout as a one-segment training store (poses stored in float32, as recorded data)."""
    n = state.num_frames(0)
    store = LatentStore(
        latents=state.latents[0].transpose(0, 1)[None].float(),  # [1, Fs, C, h, w]
        seg_start=torch.zeros(1, dtype=torch.int64),
        mouse=state.mouse[0],
        keyboard=state.keyboard[0],
        poses=state.poses[0][:n].float(),
        text=state.text[:1].float(),
        seg_prompt=torch.zeros(1, dtype=torch.int64),
    )
    return ClipSampler(store, cfg, 1, use_memory=memory)


@pytest.mark.parametrize("memory", [True, False], ids=["memory", "no-memory"])
def test_training_windows_equal_the_generators_windows(memory):
    cfg, _, _, state, calls, outputs = _stream(memory)
    clips = _clips_of(cfg, state, memory)
    assert clips.k_max == CHUNKS - 1
    m = cfg.stream.num_memory
    for k in range(CHUNKS):
        x, t_map, text, plucker, mouse, keyboard, positions, mem = calls[k]
        batch = clips.build(torch.tensor([0]), torch.tensor([k]))
        c = batch.num_context
        assert c == (1 if k == 0 else cfg.stream.past_latents)
        assert torch.equal(batch.plucker, plucker), f"chunk {k}: camera code differs"
        assert torch.equal(batch.positions, positions), f"chunk {k}: RoPE positions differ"
        assert torch.equal(batch.mouse, mouse) and torch.equal(batch.keyboard, keyboard), f"chunk {k}: actions differ"
        assert torch.equal(batch.context, text)
        assert torch.equal(batch.latents[:, :, :c], x[:, :, :c]), f"chunk {k}: clean context differs"
        assert bool((t_map[:, :c] == 0).all()) and bool((t_map[:, c:] > 0).all())
        if memory and k > 0:
            assert batch.memory is not None and torch.equal(batch.memory, mem), f"chunk {k}: memory latents differ"
            assert torch.equal(batch.positions[0, :m], outputs[k].memory_latents)  # the indices the env reports
            assert batch.plucker.shape[2] == m + batch.latents.shape[2]
        else:
            assert batch.memory is None and mem is None and outputs[k].memory_latents.numel() == 0
        start = 0 if k == 0 else 40 * k + 1  # the window's pixel frames (tiny: 15 first, 4 past + 10 new latents)
        assert batch.frames[0].tolist() == list(range(start, 40 * k + 57))
    if memory:  # memory actually changes between chunks (not one fixed answer)
        assert not torch.equal(calls[1][6][:, :m], calls[2][6][:, :m])


@pytest.mark.parametrize("memory", [True, False], ids=["memory", "no-memory"])
def test_training_sampler_on_a_clip_reproduces_the_generators_chunk(memory):
    """Same window, same noise: the training rollout's sampling loop gives the streamed latents."""
    cfg, model, gen, state, _, _ = _stream(memory)
    clips = _clips_of(cfg, state, memory)
    rng = torch.Generator().manual_seed(SEED)  # the env's noise generator, replayed
    (h, w), cdim = cfg.latent_hw, cfg.dit.in_dim
    for k in range(CHUNKS):
        batch = clips.build(torch.tensor([0]), torch.tensor([k]))
        f, c = batch.latents.shape[2], batch.num_context
        noise = torch.randn((1, cdim, f, h, w), generator=rng)  # the generator draws the whole window
        x = sample_chunk(model.dit, batch, noise[:, :, c:], gen.sampler)
        assert torch.equal(x, batch.latents[:, :, c:]), f"chunk {k}: sampled latents differ from the stream"


def test_window_conditioning_batched_equals_each_rollout():
    """Rollouts at different chunks (poses padded past their window) in one call = each alone."""
    cfg = tiny(H, W)
    g = torch.Generator().manual_seed(1)
    n = 137  # end of chunk 2
    poses = torch.zeros(2, n, 5, dtype=torch.float64)
    steps = torch.randn(2, n - 1, 5, generator=g, dtype=torch.float64) * torch.tensor([8.0, 8.0, 0.0, 0.5, 3.0])
    poses[:, 1:] = steps.cumsum(1)
    both = window_conditioning(poses, torch.tensor([1, 2]), cfg, memory=True, dtype=torch.float32)
    for i, k in enumerate((1, 2)):
        end = 57 + 40 * k
        one = window_conditioning(poses[i : i + 1, :end], torch.tensor([k]), cfg, memory=True, dtype=torch.float32)
        assert torch.equal(both.positions[i], one.positions[0]) and torch.equal(both.frames[i], one.frames[0])
        assert torch.allclose(both.plucker[i], one.plucker[0], atol=1e-6)
        assert one.latents[0].tolist() == list(range(10 * k + 1, 10 * k + 15))
        assert bool((one.memory_latents < 10 * k + 1).all())  # memory only from before the window
        assert int(one.memory_latents[0, -1]) == cfg.stream.sink_latent
    assert both.num_context == cfg.stream.past_latents and both.frames.shape == (2, 56)
    first = window_conditioning(poses[:, :57], torch.tensor([0, 0]), cfg, memory=True)
    assert first.memory is None and first.num_context == 1 and first.positions[0].tolist() == list(range(15))
    assert first.plucker.dtype == torch.float64
    with pytest.raises(ValueError, match="mix"):
        window_conditioning(poses, torch.tensor([0, 1]), cfg, memory=False)
    with pytest.raises(ValueError, match="window end"):
        window_conditioning(poses[:, :96], torch.tensor([1, 1]), cfg, memory=False)


def test_frame_latents():
    assert frame_latents(torch.tensor([0, 1, 4, 5, 8, 56, 57])).tolist() == [0, 1, 1, 2, 2, 14, 15]
