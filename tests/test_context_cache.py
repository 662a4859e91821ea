"""RuntimeOptions.context_cache: a window's clean tokens (memory and context frames) through the DiT blocks at the
first sampler step only, their keys and values kept for the later steps (an approximation of the release's
computation), checked on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dit import _inputs, _model

from world_model.config import tiny
from world_model.dit import CleanTokens, reuse_conditioning
from world_model.model import random_world_model
from world_model.runtime import RuntimeOptions


def _block_tokens(model) -> list[int]:
    """Forward hooks recording how many tokens the first block gets at each call."""
    seen: list[int] = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    return seen


def test_kept_clean_tokens_give_the_exact_flow_when_the_noisy_frames_are_unchanged():
    """With the same noisy latents at the second call, the kept clean tokens are exactly what recomputing them would
    give: the noisy frames' flow equals the full forward's (to fp32 rounding), while the blocks see the noisy tokens
    alone; the clean window frame's flow is zeros."""
    cfg = tiny().dit
    model = _model(cfg)
    model.context_cache = True
    inp = _inputs(cfg, B=2, M=2, F=3, h=4, w=4)  # frame 0 of the window clean (t 0), two noisy
    with torch.no_grad():
        ref = model(**inp)
    seen = _block_tokens(model)
    with torch.no_grad(), reuse_conditioning(model, context_frames=1):
        first = model(**inp)
        again = model(**inp)
    assert seen == [5 * 4, 2 * 4]  # (2 memory + 3 window frames) x 2 x 2 tokens, then the 2 noisy frames' tokens
    assert torch.equal(first, ref)  # the first step is the full forward
    torch.testing.assert_close(again[:, :, 1:], ref[:, :, 1:], rtol=1e-5, atol=1e-5)
    assert torch.equal(again[:, :, :1], torch.zeros_like(again[:, :, :1]))
    with torch.no_grad(), reuse_conditioning(model, context_frames=0):  # the memory alone kept
        model(**inp)
        memory_only = model(**inp)
    assert seen[2:] == [5 * 4, 3 * 4]
    torch.testing.assert_close(memory_only, ref, rtol=1e-5, atol=1e-5)


def test_later_steps_differ_only_by_the_clean_tokens_states_and_each_guidance_branch_keeps_its_own():
    cfg = tiny().dit
    model = _model(cfg)
    model.context_cache = True
    inp = _inputs(cfg, B=1, M=2, F=3, h=4, w=4)
    step2 = {**inp, "x": inp["x"].clone(), "t": inp["t"] * 0.7}
    step2["x"][:, :, 1:] += 0.5 * torch.randn_like(step2["x"][:, :, 1:])  # the sampler moved the noisy frames
    null_keyboard = torch.zeros_like(inp["keyboard"])
    with torch.no_grad():
        exact = model(**step2)
        exact_null = model(**{**step2, "keyboard": null_keyboard})
    seen = _block_tokens(model)
    with torch.no_grad(), reuse_conditioning(model, context_frames=1):
        model(**inp)
        model(**{**inp, "keyboard": null_keyboard})  # another branch (other actions): recorded apart
        cached = model(**step2)
        cached_null = model(**{**step2, "keyboard": null_keyboard})
    assert seen == [20, 20, 8, 8]
    err = float((cached[:, :, 1:] - exact[:, :, 1:]).norm() / exact[:, :, 1:].norm())
    err_null = float((cached_null[:, :, 1:] - exact_null[:, :, 1:]).norm() / exact_null[:, :, 1:].norm())
    print(f"relative error of the noisy frames' flow with the clean tokens kept: {err:.3e} / null keys {err_null:.3e}")
    assert 1e-6 < err < 0.5 and 1e-6 < err_null < 0.5  # an approximation, and a close one
    assert not torch.allclose(cached, cached_null)  # the null branch used its own kept tokens


def test_off_outside_a_scope_without_context_frames_or_with_the_switch_off():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1, M=1, F=3, h=4, w=4)
    seen = _block_tokens(model)
    with torch.no_grad(), reuse_conditioning(model, context_frames=1):  # the DiT's switch off (the default)
        model(**inp)
        model(**inp)
    model.context_cache = True
    with torch.no_grad(), reuse_conditioning(model):  # no context_frames
        model(**inp)
        model(**inp)
    with torch.no_grad():  # no scope
        model(**inp)
        model(**inp)
    assert seen == [16] * 6
    with (
        pytest.raises(ValueError, match="no noisy frame left"),
        torch.no_grad(),
        reuse_conditioning(model, context_frames=3),
    ):
        model(**inp)
    with (
        pytest.raises(ValueError, match="context_frames must be an int >= 0"),
        reuse_conditioning(model, context_frames=-1),
    ):
        pass


def test_the_env_with_the_context_cache_runs_its_blocks_on_fewer_tokens_and_stays_close():
    """Through the env: chunk 0 (the image latent clean) and later chunks (memory and context clean) run their
    later sampler steps on the noisy tokens alone; the frames move away from the exact ones, not far."""
    from mg3_env import MatrixGameEnv

    cfg = tiny(16, 16)
    act = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}
    frames, seen = [], []
    for cache in (False, True):
        model = random_world_model(cfg, RuntimeOptions(context_cache=cache))
        assert model.dit.context_cache is cache
        seen.append(_block_tokens(model.dit))
        env = MatrixGameEnv(model=model, max_chunks=3)
        obs, _ = env.reset(seed=0)
        out = [obs["frames"]] + [env.step(act)[0]["frames"] for _ in range(2)]
        env.close()
        frames.append(np.concatenate(out).astype(np.float64))
    steps = cfg.sampler.num_steps
    exact, cached = seen
    assert len(exact) == len(cached) == 3 * steps
    for k in range(3):  # per chunk: the same first step, fewer tokens after it
        assert cached[k * steps] == exact[k * steps]
        assert all(n < exact[k * steps] for n in cached[k * steps + 1 : (k + 1) * steps])
    mse = float(((frames[0] - frames[1]) ** 2).mean())
    print(f"frames with the context cache against without: {10 * np.log10(255.0**2 / max(mse, 1e-12)):.1f} dB")
    assert mse > 0  # the option reaches the frames


def test_runtime_option_refuses_what_it_cannot_combine_with():
    assert RuntimeOptions().context_cache is False
    with pytest.raises(ValueError, match="context_cache must be True, False or 'auto'"):
        RuntimeOptions(context_cache=1)
    with pytest.raises(ValueError, match="leave camera_cache on"):
        RuntimeOptions(context_cache=True, camera_cache=False)
    with pytest.raises(ValueError, match="sequence_parallel > 1 is not supported"):
        RuntimeOptions(context_cache=True, camera_cache=True, sequence_parallel=2)
    with pytest.raises(ValueError, match="does not attend to kept tokens"):
        RuntimeOptions(
            context_cache=True, dtype=torch.bfloat16, attention="fa3_fp8", fp8_attention_kernel=True, device="cuda"
        )


def test_compact_gives_kept_views_storage_of_their_own_and_leaves_owned_ones():
    """What a compiled block records (a view of the whole window's keys and values: inductor drops
    the clone of a leading slice) gets storage of its own after the block, so that the window's buffers are freed;
    what eager code recorded (its own storage already) stays the same tensor."""
    record = CleanTokens(3)
    k, v, mk = torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4)
    record.k, record.v, record.mouse_k = k[:, :3], v[:, :3], mk[:, :3]  # as the compiled graph returns them
    record.compact()
    for kept, whole in ((record.k, k), (record.v, v), (record.mouse_k, mk)):
        assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size()
        assert kept.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr()
        assert torch.equal(kept, whole[:, :3])
    owned = record.k
    record.compact()
    assert record.k is owned  # already its own: not copied again
    record.begin_step(0)
    record.end_step()
    record.begin_step(0)  # a later step (not recording) keeps what it has
    record.k = k[:, :3]
    record.compact()
    assert record.k.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()


@pytest.mark.gpu
def test_compiled_blocks_keep_their_graphs_across_chunks_with_the_context_cache():
    """The compiled blocks (CUDA, bf16) take the kept tokens as inputs: after the first chunks compiled them (chunk 0's
    and a later window's shapes, recording and reusing), later chunks compile nothing new; the frames stay close to
    the eager ones with the same option."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from mg3_env import MatrixGameEnv

    cfg = tiny(32, 32)
    act = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}
    frames, graphs = [], []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        runtime = RuntimeOptions(device="cuda", dtype=torch.bfloat16, compile=compiled, context_cache=True)
        env = MatrixGameEnv(model=random_world_model(cfg, runtime), max_chunks=6)
        obs, _ = env.reset(seed=0)
        out = [obs["frames"]]
        for k in range(5):
            out.append(env.step(act)[0]["frames"])
            if k == 1:
                graphs.append(counters["stats"]["unique_graphs"])
        graphs.append(counters["stats"]["unique_graphs"])
        env.close()
        frames.append(np.concatenate(out).astype(np.float64))
    assert graphs[2] == graphs[3] > 0  # compiled: nothing new after chunk 2
    mse = float(((frames[0] - frames[1]) ** 2).mean())
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) > 30  # compiled against eager, both with the context cache


@pytest.fixture
def dynamo_recompile_limit():
    """Dynamo's recompile limit, restored after the test."""
    import torch._dynamo.config as dynamo_config

    before = dynamo_config.recompile_limit
    yield dynamo_config
    dynamo_config.recompile_limit = before


def test_compiling_the_blocks_makes_room_for_each_kind_of_block(dynamo_recompile_limit):
    """The blocks share one compiled code object: compile_blocks raises dynamo's recompile limit to
    GRAPHS_PER_BLOCK_KIND per kind of block (tiny: block 0 with an action module, block 1 without), never lowers it."""
    from world_model.runtime import GRAPHS_PER_BLOCK_KIND, compile_blocks

    dynamo_recompile_limit.recompile_limit = 3
    compile_blocks(random_world_model(tiny(16, 16), RuntimeOptions()).dit)
    assert dynamo_recompile_limit.recompile_limit == 2 * GRAPHS_PER_BLOCK_KIND
    dynamo_recompile_limit.recompile_limit = 500
    compile_blocks(random_world_model(tiny(16, 16), RuntimeOptions()).dit)
    assert dynamo_recompile_limit.recompile_limit == 500


@pytest.mark.slow
def test_compiled_blocks_with_the_context_cache_compile_every_variant(dynamo_recompile_limit, monkeypatch):
    """With the context cache a tiny env's block forward compiles 8 graphs (2 kinds of block x chunk 0, the growing
    window, its recording and its cached steps); where the process's limit is below that, compile_blocks' raise keeps
    them all compiled instead of running the later ones eagerly (session 44: the 5B's later steps ran so). What the
    compiled recordings keep has storage of its own (CleanTokens.compact)."""
    import torch._dynamo
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from mg3_env import MatrixGameEnv
    from world_model.dit import DiTBlock

    torch._dynamo.reset()
    dynamo_recompile_limit.recompile_limit = 4
    kept: list[tuple[int, int]] = []  # (storage bytes, tensor bytes) of each kept tensor after its block
    compact = CleanTokens.compact

    def checked_compact(record: CleanTokens) -> None:
        compact(record)
        if record.recording:
            kept.extend((t.untyped_storage().nbytes(), t.numel() * t.element_size()) for t in (record.k, record.v))

    monkeypatch.setattr(CleanTokens, "compact", checked_compact)
    env = MatrixGameEnv(model=random_world_model(tiny(16, 16), RuntimeOptions(compile=True, context_cache=True)))
    act = {"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)}
    env.reset(seed=0)
    for _ in range(3):
        env.step(act)
    env.close()
    graphs = len(_debug_get_cache_entry_list(DiTBlock.forward.__code__))
    torch._dynamo.reset()
    assert graphs > 4
    # the compiled recordings were views of the whole window (2.1x their bytes on the 5B, session 48): compacted
    assert kept and all(s == n for s, n in kept)


def test_refresh_recomputes_the_clean_tokens_every_r_th_step():
    """context_cache_refresh=2: steps 0 and 2 run the whole window (the second one exactly the full forward on its
    inputs), steps 1 and 3 the noisy tokens alone."""
    cfg = tiny().dit
    model = _model(cfg)
    model.context_cache = True
    inp = _inputs(cfg, B=1, M=2, F=3, h=4, w=4)
    step = {**inp, "x": inp["x"].clone(), "t": inp["t"] * 0.5}
    step["x"][:, :, 1:] += 0.5 * torch.randn_like(step["x"][:, :, 1:])
    with torch.no_grad():
        exact = model(**step)
    seen = _block_tokens(model)
    with torch.no_grad(), reuse_conditioning(model, context_frames=1, context_cache_refresh=2):
        model(**inp)
        model(**inp)
        refreshed = model(**step)
        model(**step)
    assert seen == [20, 8, 20, 8]
    assert torch.equal(refreshed, exact)  # a refresh step is the full forward


def _full_window_steps(model, steps: int) -> list[int]:
    """The sampler steps of an env's second chunk at which the first block sees the whole window."""
    from mg3_env import MatrixGameEnv

    seen = _block_tokens(model.dit)
    env = MatrixGameEnv(model=model, max_chunks=2)
    env.reset(seed=0)
    env.step({"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1], np.float32)})
    env.close()
    chunk = seen[steps:]
    assert len(chunk) == steps
    return [i for i, n in enumerate(chunk) if n == max(chunk)]


def test_runtime_refresh_option_is_checked_and_reaches_the_sampling():
    """RuntimeOptions.context_cache_refresh r: the env's windows run the whole window at every r-th sampler step;
    WorldModel.with_sampler(context_cache_refresh=r) changes it on a loaded model that runs the cache."""
    assert RuntimeOptions().context_cache_refresh == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="context_cache_refresh must be an int >= 0"):
            RuntimeOptions(context_cache=True, context_cache_refresh=bad)
        with (
            pytest.raises(ValueError, match="context_cache_refresh must be an int >= 0"),
            reuse_conditioning(_model(tiny().dit), context_frames=1, context_cache_refresh=bad),
        ):
            pass
    with pytest.raises(ValueError, match="set context_cache=True too"):
        RuntimeOptions(context_cache_refresh=2)
    cfg = tiny(16, 16)
    cfg = cfg.replace(sampler=cfg.sampler.replace(num_steps=6))
    assert _full_window_steps(random_world_model(cfg, RuntimeOptions(context_cache=True)), 6) == [0]
    model = random_world_model(cfg, RuntimeOptions(context_cache=True, context_cache_refresh=3))
    assert _full_window_steps(model, 6) == [0, 3]
    changed = model.with_sampler(context_cache_refresh=2)
    assert changed.runtime.context_cache_refresh == 2 and changed.config.sampler.context_cache_refresh == 2
    assert _full_window_steps(changed, 6) == [0, 2, 4]
    assert _full_window_steps(model, 6) == [0, 3]  # the model it came from (the same weights) as it was
    off = random_world_model(cfg, RuntimeOptions()).with_sampler(context_cache_refresh=2)
    assert off.runtime.context_cache is False and off.config.sampler.context_cache_refresh == 2  # recorded only


def test_eval_refuses_a_refresh_without_the_cache(tmp_path, capsys):
    from mg3_env.cli import main

    with pytest.raises(SystemExit) as e:
        main(
            [
                "eval",
                "--model",
                "tiny-random",
                "--out",
                str(tmp_path),
                "--context-cache-refresh",
                "2",
                "--context-cache",
                "off",
            ]
        )
    assert e.value.code == 2 and "set context_cache=True too" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_auto_is_the_cpus_default_and_follows_the_models_sampler_config():
    """for_device on a CPU asks for "auto": on, with its refresh, for a model whose sampler config names the refresh
    it was measured with; off for the others, on CUDA, and where the options could not run it."""
    assert RuntimeOptions.for_device("cpu").context_cache == "auto"
    assert RuntimeOptions.for_device("cuda").context_cache is False
    assert RuntimeOptions().context_cache is False  # the release's computation unless asked
    auto = RuntimeOptions.for_device("cpu")
    assert (auto.resolve_context_cache(2).context_cache, auto.resolve_context_cache(2).context_cache_refresh) == (
        True,
        2,
    )
    assert auto.resolve_context_cache(None).context_cache is False
    assert RuntimeOptions(device="cuda", context_cache="auto").resolve_context_cache(2).context_cache is False
    assert RuntimeOptions(context_cache="auto", camera_cache=False).resolve_context_cache(2).context_cache is False
    assert RuntimeOptions(context_cache=True).resolve_context_cache(2).context_cache_refresh == 0  # asked: as asked
    measured = tiny(16, 16)
    measured = measured.replace(sampler=measured.sampler.replace(context_cache_refresh=2))
    on = random_world_model(measured, RuntimeOptions.for_device("cpu"))
    assert on.runtime.context_cache is True and on.dit.context_cache and on.runtime.context_cache_refresh == 2
    off = random_world_model(tiny(16, 16), RuntimeOptions.for_device("cpu"))
    assert off.runtime.context_cache is False and not off.dit.context_cache
    assert not random_world_model(measured, RuntimeOptions.for_device("cpu", context_cache=False)).dit.context_cache
    with pytest.raises(ValueError, match="must be None or an int >= 0"):
        measured.sampler.replace(context_cache_refresh=-1)


def test_the_5b_keeps_its_clean_tokens_keys_and_values_alone_in_bf16():
    """The release's shapes on the meta device (no memory used): a chunk's window (5 memory, 4 context, 10 new latents
    of 44x80) keeps per block its 7,920 clean tokens' keys and values, and per action block the mouse branch's, all in
    bf16 and nothing else: 3.17 GiB for one env (session 48 measured 23.8 GiB of peak where hidden states in fp32 and
    whole-window views were kept; the peak's budget is 24 GB)."""
    from world_model import dit as dit_module
    from world_model.config import mg3_5b
    from world_model.dit import MatrixGameDiT

    cfg = mg3_5b()
    d, s = cfg.dit, cfg.stream
    with torch.device("meta"):
        model = MatrixGameDiT(d).to(torch.bfloat16)
    model.context_cache = True
    M, F, h, w = 5, s.past_latents + s.new_latents, s.height // 16, s.width // 16
    with torch.device("meta"):
        inp = {
            "x": torch.empty(1, d.in_dim, F, h, w),
            "t": torch.zeros(1, F),
            "context": torch.empty(1, 10, d.text_dim),
            "plucker": torch.empty(1, d.plucker_channels, M + F, h, w),
            "mouse": torch.empty(1, 4 * F, 2),
            "keyboard": torch.empty(1, 4 * F, 6),
            "positions": torch.arange(M + F)[None],
            "memory": torch.empty(1, d.in_dim, M, h, w),
        }
    seen = _block_tokens(model)
    with torch.no_grad(), reuse_conditioning(model, context_frames=s.past_latents):
        model(**inp)
        model(**inp)  # a cached step
        (conditioning,) = dit_module._scope.caches[id(model)]  # the scope's one conditioning
        ((_, records),) = conditioning.clean
    n = (M + s.past_latents) * (h // 2) * (w // 2)
    assert n == 7920 and seen == [n + s.new_latents * (h // 2) * (w // 2), s.new_latents * (h // 2) * (w // 2)]
    kept = {name: [getattr(r, name) for r in records] for name in ("k", "v", "mouse_k", "mouse_v")}
    action_blocks = sum(b.action_model is not None for b in model.blocks)
    assert action_blocks == 15 and len(records) == d.num_layers == 30
    assert all(t.dtype == torch.bfloat16 for ts in kept.values() for t in ts if t is not None)
    nbytes = {name: sum(t.numel() * t.element_size() for t in ts if t is not None) for name, ts in kept.items()}
    assert nbytes["k"] == nbytes["v"] == d.num_layers * n * d.dim * 2
    assert nbytes["mouse_k"] == nbytes["mouse_v"] == action_blocks * n * d.action_config.mouse_hidden_dim * 2
    assert round(sum(nbytes.values()) / 2**30, 2) == 3.17
