"""The streaming generator on the tiny random model (CPU): geometry, batching, per-env reset,
determinism, memory retrieval wiring and guidance."""

from __future__ import annotations

import copy

import pytest
import torch

from world_model.camera import c2w_from_poses
from world_model.config import tiny
from world_model.generator import ChunkActions, StreamingGenerator
from world_model.memory import select_memory
from world_model.model import random_world_model

# The tiny architecture at 32x32 (4x4 latents) keeps a chunk well under a second on 2 CPU cores.
H = W = 32


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(H, W))


@pytest.fixture(scope="module")
def gen(model):
    return StreamingGenerator(model)


def _image(seed: int, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 2 - 1  # [1, 3, H, W] in [-1, 1]


def _actions(t: int, forward: float = 1.0, yaw: float = 0.0) -> ChunkActions:
    kb = torch.zeros(t, 6)
    kb[:, 0] = forward
    ms = torch.zeros(t, 2)
    ms[:, 1] = yaw
    return ChunkActions(kb, ms)


_RUNS: dict = {}


def _cached_run(gen, model, seeds, image_seeds, chunks, **kw):
    """_run with images from ``image_seeds``, memoised across tests (same model and generator)."""
    key = (id(model), tuple(seeds), tuple(image_seeds), chunks, tuple(sorted(kw.items())))
    if key not in _RUNS:
        _RUNS[key] = _run(gen, model, seeds, [_image(i) for i in image_seeds], chunks, **kw)
    return _RUNS[key]


def _run(gen, model, seeds, images, chunks, yaw=0.1, reset_at=None):
    """Reset len(seeds) envs and run ``chunks`` chunks; returns per-env lists of frames."""
    b = len(seeds)
    state = gen.init_state(b)
    text = model.encode_prompts(["a street"] * b)
    gen.reset_(state, [True] * b, torch.cat(images), text, seeds)
    frames = [[] for _ in range(b)]
    for k in range(chunks):
        if reset_at is not None and k == reset_at[0]:
            i = reset_at[1]
            mask = [j == i for j in range(b)]
            gen.reset_(state, mask, images[i], text[i : i + 1], [seeds[i] + 100])
        acts = [_actions(gen.frames_needed(state, i), yaw=yaw) for i in range(b)]
        outs, state = gen.step(state, acts)
        for i, o in enumerate(outs):
            frames[i].append(o.frames)
    return frames, state


def test_chunk_geometry_and_clean_context(gen, model):
    """57 then 40 frames; latent 0 is the encoded image; past latents are carried unchanged."""
    state = gen.init_state(1)
    gen.reset_(state, [True], _image(0), model.encode_prompts(["x"]), [0])
    z0 = state.latents[0].clone()
    frames, past = [[]], []
    for _ in range(3):
        past.append(state.latents[0][:, -4:].clone())
        outs, state = gen.step(state, [_actions(gen.frames_needed(state, 0), yaw=0.1)])
        frames[0].append(outs[0].frames)
    torch.testing.assert_close(state.latents[0][:, :1], z0, rtol=0, atol=0)
    torch.testing.assert_close(state.latents[0][:, 11:15], past[1], rtol=0, atol=0)
    torch.testing.assert_close(state.latents[0][:, 21:25], past[2], rtol=0, atol=0)
    assert [f.shape for f in frames[0]] == [(57, H, W, 3), (40, H, W, 3), (40, H, W, 3)]
    assert frames[0][0].dtype == torch.uint8
    assert state.latents[0].shape == (model.config.vae.z_dim, 15 + 10 + 10, H // 8, W // 8)
    assert state.num_frames(0) == 57 + 40 + 40
    assert state.poses[0].shape == (57 + 40 + 40 + 1, 5)
    assert state.chunk == [3]
    # forward at 12.35 units per frame along +x with yaw rotating by 1.5 degrees per frame
    assert state.poses[0][1, 0].item() == pytest.approx(12.35 * torch.cos(torch.deg2rad(torch.tensor(0.75))).item())


def test_batched_equals_unbatched(gen, model):
    together, _ = _cached_run(gen, model, [5, 6], [1, 2], chunks=2)
    for i in range(2):
        alone, _ = _cached_run(gen, model, [[5, 6][i]], [[1, 2][i]], chunks=2)
        for a, b in zip(alone[0], together[i]):
            assert (a.int() - b.int()).abs().max() <= 1  # same up to float rounding of batched kernels
            assert (a == b).float().mean() > 0.99


def test_reset_of_one_env_leaves_the_other_unchanged(gen, model):
    plain, _ = _cached_run(gen, model, [5, 6], [1, 2], chunks=2)
    mixed, state = _cached_run(gen, model, [5, 6], [1, 2], chunks=2, reset_at=(1, 1))
    for a, b in zip(plain[0], mixed[0]):  # env 0 ran alone at step 1: same up to kernel rounding
        assert (a.int() - b.int()).abs().max() <= 1
        assert (a == b).float().mean() > 0.99
    # env 1 restarted: a first chunk (57 frames) again at step 1, with its new seed
    assert [f.shape[0] for f in mixed[1]] == [57, 57]
    assert state.chunk == [2, 1] and state.seeds == [5, 106]
    assert not torch.equal(mixed[1][1], plain[1][0])


def test_determinism_and_seed_dependence(gen, model):
    a, _ = _cached_run(gen, model, [5], [1], chunks=2)
    b, _ = _run(gen, model, [5], [_image(1)], chunks=2)
    c, _ = _run(gen, model, [8], [_image(1)], chunks=2)
    for x, y in zip(a[0], b[0]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(a[0][1], c[0][1])


def test_actions_change_frames(gen, model):
    a, _ = _cached_run(gen, model, [5], [1], chunks=2)
    b, _ = _run(gen, model, [5], [_image(1)], chunks=2, yaw=0.5)
    assert not torch.equal(a[0][1], b[0][1])


def test_wrong_action_length_is_an_error(gen, model):
    state = gen.init_state(1)
    gen.reset_(state, [True], _image(0), model.encode_prompts(["x"]), [0])
    with pytest.raises(ValueError, match=r"expected keyboard \[57, 6\]"):
        gen.step(state, [_actions(40)])
    with pytest.raises(RuntimeError, match="not been reset"):
        gen.step(gen.init_state(1), [_actions(57)])


def test_memory_retrieval_feeds_the_selected_latents(gen, model):
    """Walk out, turn around, walk back: the generator's memory indices are the retrieval of its
    poses, the sink slot is latent 1, and only the selected latents (plus the past) reach the model."""
    cfg = model.config.stream
    state = gen.init_state(1)
    gen.reset_(state, [True], _image(5), model.encode_prompts(["x"]), [3])
    gen.step(state, [_actions(57, forward=1.0)])
    gen.step(state, [_actions(40, forward=1.0)])
    gen.step(state, [_actions(40, forward=0.0, yaw=1.0)])  # 600 degrees of yaw over the chunk
    gen.step(state, [_actions(40, forward=1.0)])
    # the next chunk (index 4): retrieval from its commanded poses
    nxt = _actions(40, forward=1.0)
    snapshot = _snapshot(state)
    outs, _ = gen.step(state, [nxt])
    used = outs[0].memory_latents
    assert used.shape == (cfg.num_memory,) and used[-1].item() == cfg.sink_latent
    poses = state.poses[0][: state.num_frames(0)]
    expected = select_memory(c2w_from_poses(poses)[None], 4, cfg).latents[0]
    assert used.tolist() == expected.tolist()

    past = set(range(state.latents[0].shape[1] - 10 - 4, state.latents[0].shape[1] - 10))
    unused = [j for j in range(1, 45) if j not in set(used.tolist()) | past]
    assert unused, "the test needs a latent that is neither memory nor past"

    def rerun(perturb: int) -> torch.Tensor:
        st = _snapshot(snapshot)
        st.latents[0][:, perturb] += 3.0
        return gen.step(st, [nxt])[0][0].frames

    base = gen.step(_snapshot(snapshot), [nxt])[0][0].frames
    torch.testing.assert_close(base, outs[0].frames, rtol=0, atol=0)
    assert torch.equal(rerun(unused[0]), base)  # not retrieved: no effect
    assert not torch.equal(rerun(int(used[0])), base)  # retrieved: changes the chunk


def _snapshot(state):
    """An independent copy of a state (the generator mutates states in place)."""

    snap = copy.copy(state)
    snap.text = state.text.clone()
    snap.latents = [x.clone() for x in state.latents]
    snap.poses = [x.clone() for x in state.poses]
    snap.keyboard = [x.clone() for x in state.keyboard]
    snap.mouse = [x.clone() for x in state.mouse]
    snap.chunk = list(state.chunk)
    snap.rngs = [torch.Generator().set_state(g.get_state()) for g in state.rngs]
    snap.decode_cache = state.decode_cache.clone()
    snap.memory_latents = list(state.memory_latents)
    return snap


def test_guidance_path_runs_and_differs():
    cfg = tiny(H, W)
    guided = random_world_model(cfg.replace(sampler=cfg.sampler.replace(guidance_scale=3.0, num_steps=2)))
    plain = random_world_model(cfg.replace(sampler=cfg.sampler.replace(num_steps=2)))
    a, _ = _run(StreamingGenerator(guided), guided, [1], [_image(0)], chunks=2)
    b, _ = _run(StreamingGenerator(plain), plain, [1], [_image(0)], chunks=2)
    assert a[0][1].shape == b[0][1].shape == (40, H, W, 3)
    assert not torch.equal(a[0][1], b[0][1])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_camera_cache_gives_identical_frames_with_one_camera_branch_per_chunk(guidance):
    """RuntimeOptions.camera_cache: the same frames bit for bit; the camera branch once per chunk
    (and per CFG branch) instead of once per sampler step."""
    from world_model.runtime import RuntimeOptions

    cfg = tiny(H, W)
    cfg = cfg.replace(sampler=cfg.sampler.replace(guidance_scale=guidance))
    runs, counts = {}, {}
    for cache in (False, True):
        model = random_world_model(cfg, RuntimeOptions(camera_cache=cache))
        n = counts[cache] = [0]
        model.dit.patch_embedding_wancamctrl.register_forward_hook(lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        runs[cache], _ = _run(StreamingGenerator(model), model, [3, 4], [_image(0), _image(1)], chunks=3)
    for a, b in zip(runs[True], runs[False]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    branches = 2 if guidance > 1 else 1
    chunks, steps = 3, cfg.sampler.num_steps
    assert counts[False][0] == chunks * steps * branches
    assert counts[True][0] == chunks * branches


def test_decode_segment_sets_the_latents_per_decoder_call_with_the_same_frames():
    """RuntimeOptions.decode_segment: chunk 0 (6 latents with the image's) and a later chunk (4) decoded
    one latent per decoder call instead of the release's 4, the frames equal up to rounding."""
    from world_model.runtime import RuntimeOptions

    cfg = tiny(H, W)
    runs, calls = {}, {}
    for segment in (4, 1):
        model = random_world_model(cfg, RuntimeOptions(decode_segment=segment))
        n = calls[segment] = [0]
        model.vae.decoder.register_forward_hook(lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        runs[segment], _ = _run(StreamingGenerator(model), model, [3], [_image(0)], chunks=2)
    s = cfg.stream
    first, later = s.first_latents, s.new_latents
    assert calls[4][0] == -(-first // 4) + -(-later // 4) and calls[1][0] == first + later
    for a, b in zip(runs[4], runs[1]):
        for x, y in zip(a, b):
            assert (x.int() - y.int()).abs().max() <= 1  # uint8 frames: rounding at most


def _action_guided(model, scale: float):
    """The same model (same weights) with ``action_guidance`` set, as ``mg3 eval --action-guidance`` makes it."""
    import dataclasses

    cfg = model.config
    return dataclasses.replace(model, config=cfg.replace(sampler=cfg.sampler.replace(action_guidance=scale)))


def test_action_guidance_two_dit_calls_per_step_with_only_the_actions_nulled(gen, model):
    """action_guidance 1: one DiT call per sampler step, the frames of the unguided model bit for bit;
    > 1: two per step, the second with the null actions and the very same prompt, camera code,
    positions and memory tensors (so the per-window conditioning cache serves both)."""
    from world_model.action import NULL_KEYBOARD, NULL_MOUSE

    steps, chunks = model.config.sampler.num_steps, 2
    plain, _ = _cached_run(gen, model, [5], [1], chunks=chunks)
    calls = []  # the positional arguments of every DiT call: x, t, text, plucker, mouse, keyboard, positions, memory
    hook = model.dit.register_forward_pre_hook(lambda _, args: calls.append(args))
    try:
        one = _action_guided(model, 1.0)
        same, _ = _run(StreamingGenerator(one), one, [5], [_image(1)], chunks=chunks)
        assert len(calls) == chunks * steps
        calls.clear()
        guided = _action_guided(model, 3.0)
        frames, _ = _run(StreamingGenerator(guided), guided, [5], [_image(1)], chunks=chunks)
    finally:
        hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(same[0], plain[0]))
    assert len(calls) == 2 * chunks * steps
    for cond, null in zip(calls[::2], calls[1::2]):
        x, t, text, plucker, mouse, keyboard, positions, memory = cond
        assert null[0] is x and null[1] is t
        assert null[2] is text and null[3] is plucker and null[6] is positions and null[7] is memory
        assert not bool((keyboard == NULL_KEYBOARD).all()) and not bool((mouse == NULL_MOUSE).all())
        assert bool((null[5] == NULL_KEYBOARD).all()) and bool((null[4] == NULL_MOUSE).all())
        assert null[5].shape == keyboard.shape and null[4].shape == mouse.shape
    assert calls[-1][7] is not None  # chunk 1: memory in both branches
    assert not torch.equal(frames[0][1], plain[0][1])


def test_memory_guidance_adds_a_call_without_the_memory_only_where_there_is_memory(gen, model):
    """memory_guidance > 1: chunk 0 (no memory) one DiT call per step, the unguided frames; chunk 1 two, the second
    with the same latents, timestep, prompt and actions, no memory, and the window's own camera code and positions."""
    import dataclasses

    steps = model.config.sampler.num_steps
    plain, _ = _cached_run(gen, model, [5], [1], chunks=2)
    cfg = model.config
    guided = dataclasses.replace(model, config=cfg.replace(sampler=cfg.sampler.replace(memory_guidance=2.0)))
    calls = []
    hook = model.dit.register_forward_pre_hook(lambda _, args: calls.append(args))
    try:
        frames, _ = _run(StreamingGenerator(guided), guided, [5], [_image(1)], chunks=2)
    finally:
        hook.remove()
    assert len(calls) == steps + 2 * steps
    assert all(c[7] is None for c in calls[:steps]) and torch.equal(frames[0][0], plain[0][0])
    for cond, free in zip(calls[steps::2], calls[steps + 1 :: 2]):
        x, t, text, plucker, mouse, keyboard, positions, memory = cond
        assert memory is not None and free[7] is None
        assert free[0] is x and free[1] is t and free[2] is text and free[4] is mouse and free[5] is keyboard
        assert free[6].shape[1] < positions.shape[1]  # the window's positions, without the memory latents'
    assert not torch.equal(frames[0][1], plain[0][1])


class _VelocityProbe(torch.nn.Module):
    """A stand-in DiT with known velocities: ``cond(x)`` for real actions, ``null(x)`` for the null ones;
    with ``combined`` it returns null + s·(cond − null) itself for the real actions."""

    def __init__(self, combined: float | None = None) -> None:
        super().__init__()
        self.combined = combined

    def forward(self, x, t, context, plucker, mouse, keyboard, positions, memory=None):
        from world_model.action import NULL_KEYBOARD

        cond, null = 0.3 * x + 0.1, -0.2 * x + 0.05 * context.mean()
        if bool((keyboard == NULL_KEYBOARD).all()):
            return null
        return cond if self.combined is None else null + self.combined * (cond - null)


def test_action_guidance_combines_the_two_velocities(model):
    """The sampler sees v_null + s·(v − v_null): a guided run equals an unguided one whose DiT returns
    that combination itself, bit for bit, and differs from the run on v alone."""
    import dataclasses

    def run(dit, scale):
        m = _action_guided(dataclasses.replace(model, dit=dit), scale)
        return _run(StreamingGenerator(m), m, [4], [_image(1)], chunks=2)[0][0]

    guided = run(_VelocityProbe(), 2.5)
    by_hand = run(_VelocityProbe(combined=2.5), 1.0)
    cond_only = run(_VelocityProbe(), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(guided, by_hand))
    assert not torch.equal(guided[1], cond_only[1])


def test_caller_poses_replace_the_integrated_ones(gen, model):
    """ChunkActions.poses: the integrated poses given back change nothing; other poses are the chunk's poses and
    change its frames (the camera code); a bad shape or a NaN raises before any env moves."""
    from world_model.camera import integrate_poses

    def two_chunks(poses_fn):
        state = gen.init_state(1)
        gen.reset_(state, [True], _image(3), model.encode_prompts(["a street"]), [5])
        outs = []
        for _ in range(2):
            a = _actions(gen.frames_needed(state, 0), yaw=0.1)
            start = state.poses[0][-1][None]
            own = integrate_poses(a.keyboard[None], a.mouse[None], start, gen.stream)[0, 1:]
            (out,), state = gen.step(state, [a._replace(poses=poses_fn(own))])
            outs.append(out)
        return outs, state

    plain, _ = _cached_run(gen, model, [5], [3], 2)
    same, _ = two_chunks(lambda own: own)
    for k in range(2):
        torch.testing.assert_close(same[k].frames, plain[0][k], atol=0, rtol=0)
    still, state = two_chunks(lambda own: torch.zeros_like(own))  # a camera held still, whatever the keys say
    assert bool((still[1].poses == 0).all()) and bool((state.poses[0] == 0).all())
    assert not torch.equal(still[1].frames, plain[0][1])
    state = gen.init_state(1)
    gen.reset_(state, [True], _image(3), model.encode_prompts(["a street"]), [5])
    a = _actions(gen.frames_needed(state, 0))
    before = [p.clone() for p in state.poses]
    for bad in (torch.zeros(3, 5), torch.full((a.keyboard.shape[0], 5), float("nan"))):
        with pytest.raises(ValueError, match="poses"):
            gen.step(state, [a._replace(poses=bad)])
    assert state.chunk[0] == 0 and torch.equal(state.poses[0], before[0])
