"""Action module (spec §4.3): names/shapes, frame grouping, memory nulls, RoPE, batching, reference."""

from __future__ import annotations

import math

import pytest
import torch

from world_model.action import (
    NULL_KEYBOARD,
    NULL_MOUSE,
    ActionModule,
    _apply_rope,
    _rope_cos_sin,
    group_frames,
    num_action_latents,
)
from world_model.config import mg3_5b, tiny

CFG = tiny().dit.action_config  # dim 64, 2 heads x 16, rope (4, 6, 6), 12-frame windows


def _frames(n_latents: int, first_clip: bool) -> int:
    return 4 * (n_latents - 1) + 1 if first_clip else 4 * n_latents


def _randomize(mod: ActionModule, seed: int = 0) -> ActionModule:
    """Non-trivial weights everywhere: zero-init projections and unit norm weights get random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if "norm" in name or name.startswith("mouse_mlp.3"):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return mod


def _inputs(B, M, N, h, w, first_clip, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = M + N
    nf = _frames(N, first_clip)
    x = torch.randn(B, T * h * w, CFG.img_hidden_size, generator=g, dtype=dtype)
    mouse = 0.3 * torch.randn(B, nf, CFG.mouse_dim_in, generator=g, dtype=dtype)
    keyboard = (torch.rand(B, nf, CFG.keyboard_dim_in, generator=g) > 0.5).to(dtype)
    return x, (T, h, w), mouse, keyboard


# ---------------------------------------------------------------------------------------------
# Names, shapes, init
# ---------------------------------------------------------------------------------------------


def test_release_parameter_names_and_shapes():
    with torch.device("meta"):
        mod = ActionModule(mg3_5b().dit.action_config)
    shapes = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    expected = {
        "keyboard_embed.0.weight": (128, 6),
        "keyboard_embed.0.bias": (128,),
        "keyboard_embed.2.weight": (128, 128),
        "keyboard_embed.2.bias": (128,),
        "mouse_mlp.0.weight": (1024, 3096),
        "mouse_mlp.0.bias": (1024,),
        "mouse_mlp.2.weight": (1024, 1024),
        "mouse_mlp.2.bias": (1024,),
        "mouse_mlp.3.weight": (1024,),
        "mouse_mlp.3.bias": (1024,),
        "t_qkv.weight": (3072, 1024),
        "img_attn_q_norm.weight": (64,),
        "img_attn_k_norm.weight": (64,),
        "proj_mouse.weight": (3072, 1024),
        "mouse_attn_q.weight": (1024, 3072),
        "keyboard_attn_kv.weight": (2048, 1536),
        "key_attn_q_norm.weight": (64,),
        "key_attn_k_norm.weight": (64,),
        "proj_keyboard.weight": (3072, 1024),
    }
    assert shapes == expected


def test_identity_at_init_and_not_after_training_projections():
    mod = ActionModule(CFG)
    x, grid, mouse, keyboard = _inputs(2, 1, 3, 2, 3, first_clip=True)
    assert torch.equal(mod(x, grid, mouse, keyboard, 1), x)
    with torch.no_grad():
        mod.proj_keyboard.weight.normal_()
    assert not torch.allclose(mod(x, grid, mouse, keyboard, 1), x)


def test_disabled_branch_has_no_parameters_and_ignores_its_input():
    mod = ActionModule(CFG.replace(enable_mouse=False))
    assert not any(k.startswith(("mouse_mlp", "t_qkv", "img_attn", "proj_mouse")) for k in mod.state_dict())
    assert "mouse_attn_q.weight" in mod.state_dict()  # the keyboard query keeps its release name
    _randomize(mod)
    x, grid, _, keyboard = _inputs(1, 0, 2, 2, 2, first_clip=False)
    out = mod(x, grid, None, keyboard, 0)
    assert out.shape == x.shape and not torch.allclose(out, x)


# ---------------------------------------------------------------------------------------------
# Temporal grouping
# ---------------------------------------------------------------------------------------------


def _distinct_frames(nf: int) -> torch.Tensor:
    """[1, nf, 2]: frame j holds (100 + j, -j)."""
    j = torch.arange(nf, dtype=torch.float64)
    return torch.stack([100 + j, -j], dim=-1)[None]


@pytest.mark.parametrize("nf, n, first_offset", [(57, 15, -12), (56, 14, -8), (1, 1, -12), (4, 1, -8), (9, 3, -12)])
def test_group_frames_ranges(nf, n, first_offset):
    """4k+1 frames: latent i sees frames 4i-12 ... 4i-1; 4k frames: 4i-8 ... 4i+3; frame 0 repeats."""
    assert num_action_latents(nf) == n
    windows = group_frames(_distinct_frames(nf))
    assert windows.shape == (1, n, 12, 2)
    for i in range(n):
        frames = [max(0, 4 * i + first_offset + f) for f in range(12)]
        assert windows[0, i, :, 0].tolist() == [100.0 + j for j in frames], f"latent {i}"
        assert windows[0, i, :, 1].tolist() == [-float(j) for j in frames], f"latent {i}"


def test_group_frames_release_examples():
    w57 = group_frames(_distinct_frames(57))[0, :, :, 0] - 100
    assert w57[1].tolist() == [0] * 9 + [1, 2, 3]  # latent 1: frames -8..3
    assert w57[14].tolist() == list(range(44, 56))  # last latent: frames 44..55 (not 56)
    w56 = group_frames(_distinct_frames(56))[0, :, :, 0] - 100
    assert w56[0].tolist() == [0] * 9 + [1, 2, 3]  # own frames 0..3 plus 8 repeats of frame 0
    assert w56[13].tolist() == list(range(44, 56))


@pytest.mark.parametrize("nf", [0, 2, 3, 58])
def test_bad_frame_counts_are_rejected(nf):
    with pytest.raises(ValueError, match=r"4k\+1 \(first clip\) or a multiple of 4"):
        num_action_latents(nf)


def test_forward_rejects_inconsistent_inputs():
    mod = ActionModule(CFG)
    x, grid, mouse, keyboard = _inputs(2, 1, 3, 2, 2, first_clip=True)
    with pytest.raises(ValueError, match="cover 3 latent frames .* has 2 window latents"):
        mod(x, grid, mouse, keyboard, 2)
    with pytest.raises(ValueError, match="expected x"):
        mod(x, (grid[0], 2, 3), mouse, keyboard, 1)
    with pytest.raises(ValueError, match=r"expected mouse actions \[B=2, Nf, 2\]"):
        mod(x, grid, mouse[..., :1], keyboard, 1)
    with pytest.raises(ValueError, match="keyboard actions are required"):
        mod(x, grid, mouse, None, 1)
    with pytest.raises(ValueError, match="num_memory"):
        mod(x, grid, mouse, keyboard, 4)


# ---------------------------------------------------------------------------------------------
# Memory nulls and RoPE positions
# ---------------------------------------------------------------------------------------------


def _hand_windows(actions: torch.Tensor, M: int, null: float) -> torch.Tensor:
    """[B, M + N, 12, C] built by explicit indexing: M null windows, then the frame windows."""
    B, nf, C = actions.shape
    offset = -12 if nf % 4 == 1 else -8
    n = num_action_latents(nf)
    rows = [torch.full((B, 12, C), null, dtype=actions.dtype) for _ in range(M)]
    for i in range(n):
        rows.append(actions[:, [max(0, 4 * i + offset + f) for f in range(12)]])
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("first_clip", [True, False])
def test_memory_latents_get_null_actions_and_restarting_positions(first_clip):
    torch.manual_seed(0)
    mod = _randomize(ActionModule(CFG)).double()
    M, N = 2, 3
    x, grid, mouse, keyboard = _inputs(2, M, N, 2, 2, first_clip, dtype=torch.float64)
    out = mod(x, grid, mouse, keyboard, M)
    mw, kw = _hand_windows(mouse, M, 1.0), _hand_windows(keyboard, M, -1.0)
    restart = torch.tensor([0, 1, 0, 1, 2])
    torch.testing.assert_close(out, mod.forward_windows(x, grid, mw, kw, restart), rtol=0, atol=1e-12)
    assert (NULL_MOUSE, NULL_KEYBOARD) == (1.0, -1.0)
    # The memory windows and the position scheme do matter (so the check above can fail):
    zeros_m, zeros_k = _hand_windows(mouse, M, 0.0), _hand_windows(keyboard, M, 0.0)
    assert not torch.allclose(out, mod.forward_windows(x, grid, zeros_m, kw, restart))
    assert not torch.allclose(out, mod.forward_windows(x, grid, mw, zeros_k, restart))
    assert not torch.allclose(out, mod.forward_windows(x, grid, mw, kw, torch.arange(M + N)))


def test_rope_rotates_time_dims_by_relative_position_only():
    torch.manual_seed(0)
    r, theta = 4, 256.0
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    cos, sin = _rope_cos_sin(torch.arange(12), r, theta, torch.float64)  # [12, 4]
    assert torch.equal(cos[0], torch.ones(4)) and torch.equal(sin[0], torch.zeros(4))

    def rot(v, p):
        return _apply_rope(v[None], cos[p : p + 1], sin[p : p + 1])[0]

    torch.testing.assert_close(rot(q, 0), q, rtol=0, atol=0)
    assert torch.equal(rot(q, 5)[r:], q[r:])  # height/width dims see position 0
    # pair j rotates by angle p * 256^(-2j/4)
    a = 3 * 256.0 ** (-2 / 4)
    expected = torch.tensor([q[2] * math.cos(a) - q[3] * math.sin(a), q[3] * math.cos(a) + q[2] * math.sin(a)])
    torch.testing.assert_close(rot(q, 3)[2:4], expected.double())
    torch.testing.assert_close(rot(q, 7) @ rot(k, 4), rot(q, 3) @ rot(k, 0))
    assert not torch.allclose(rot(q, 7) @ rot(k, 4), rot(q, 7) @ rot(k, 5))


# ---------------------------------------------------------------------------------------------
# Batching, norm weights, dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_clip, M", [(True, 0), (False, 2)])
def test_batch_equals_separate_calls(first_clip, M):
    mod = _randomize(ActionModule(CFG))
    x, grid, mouse, keyboard = _inputs(3, M, 3, 2, 3, first_clip)
    out = mod(x, grid, mouse, keyboard, M)
    for b in range(3):
        single = mod(x[b : b + 1], grid, mouse[b : b + 1], keyboard[b : b + 1], M)
        torch.testing.assert_close(out[b : b + 1], single, rtol=1e-5, atol=1e-5)
    # items differ only through their own inputs: different keyboards give different outputs
    assert not torch.allclose(out[0], mod(x[:1], grid, mouse[:1], keyboard[1:2], M)[0])


@pytest.mark.parametrize("first_clip, M", [(True, 1), (False, 2)])
def test_context_cache_runs_the_noisy_frames_alone_with_the_kept_mouse_keys(first_clip, M):
    """The DiT's context cache: the recording call is the plain forward and keeps the mouse branch's keys and values
    of the clean frames (memory + 1 context frame) alone; a later call on the noisy frames' tokens gives their rows of
    the plain forward (to fp32 rounding), computing nothing for the clean ones."""
    from world_model.dit import CleanTokens

    mod = _randomize(ActionModule(CFG))
    x, grid, mouse, keyboard = _inputs(2, M, 3, 2, 3, first_clip)
    S = grid[1] * grid[2]
    n = (M + 1) * S  # memory and one context frame clean
    plain = mod(x, grid, mouse, keyboard, M)
    record = CleanTokens(n)
    record.begin_step(0)
    torch.testing.assert_close(mod(x, grid, mouse, keyboard, M, record), plain, rtol=0, atol=0)
    assert record.mouse_k.shape[:2] == (2 * S, M + 1) and record.mouse_v.shape == record.mouse_k.shape
    record.end_step()
    record.begin_step(0)
    cached = mod(x[:, n:], grid, mouse, keyboard, M, record)
    torch.testing.assert_close(cached, plain[:, n:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="with 3 frames kept" if M == 2 else "with 2 frames kept"):
        mod(x, grid, mouse, keyboard, M, record)  # a later step given the whole window


def test_norm_weight_flag_matters_only_when_weights_differ_from_one():
    release = ActionModule(CFG)
    fixed = ActionModule(CFG.replace(apply_qk_norm_weight=True))
    _randomize(release)
    x, grid, mouse, keyboard = _inputs(1, 1, 2, 2, 2, first_clip=True)
    names = ("img_attn_q_norm", "img_attn_k_norm", "key_attn_q_norm", "key_attn_k_norm")
    with torch.no_grad():
        for n in names:
            getattr(release, n).weight.fill_(1.0)
    fixed.load_state_dict(release.state_dict())
    torch.testing.assert_close(release(x, grid, mouse, keyboard, 1), fixed(x, grid, mouse, keyboard, 1))
    with torch.no_grad():
        for n in names:
            getattr(release, n).weight.uniform_(0.2, 3.0)
    fixed.load_state_dict(release.state_dict())
    a, b = release(x, grid, mouse, keyboard, 1), fixed(x, grid, mouse, keyboard, 1)
    assert (a - b).abs().max() > 1e-3


def test_bf16_weights_keep_the_residual_stream_dtype():
    mod = _randomize(ActionModule(CFG))
    x, grid, mouse, keyboard = _inputs(2, 1, 3, 2, 2, first_clip=False)
    ref = mod(x, grid, mouse, keyboard, 1)
    out = mod.to(torch.bfloat16)(x, grid, mouse, keyboard, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.1)


# ---------------------------------------------------------------------------------------------
# Slow float64 reference (loops, written from the spec)
# ---------------------------------------------------------------------------------------------


def _reference(mod: ActionModule, x, grid, mouse, keyboard, M, apply_weight):
    cfg = mod.cfg
    p = {k: v.double() for k, v in mod.state_dict().items()}
    T, h, w = grid
    S, N, heads = h * w, T - M, cfg.heads_num
    hd = cfg.mouse_hidden_dim // heads
    positions = list(range(M)) + list(range(N))
    x = x.double().clone()

    def lin(name, v):
        out = v @ p[name + ".weight"].T
        return out + p[name + ".bias"] if name + ".bias" in p else out

    def gelu_tanh(v):
        return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))

    def layer_norm(v, name):
        mu, var = v.mean(), ((v - v.mean()) ** 2).mean()
        return (v - mu) / math.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]

    def rms(v, name):  # v [heads, hd]
        out = v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-6)
        return out * p[name + ".weight"] if apply_weight else out

    def rope(v, pos):  # v [heads, hd]; only the first rope_dim_list[0] dims rotate
        out = v.clone()
        r = cfg.rope_dim_list[0]
        for j in range(r // 2):
            a = pos * cfg.rope_theta ** (-2 * j / r)
            x0, x1 = v[:, 2 * j], v[:, 2 * j + 1]
            out[:, 2 * j] = x0 * math.cos(a) - x1 * math.sin(a)
            out[:, 2 * j + 1] = x1 * math.cos(a) + x0 * math.sin(a)
        return out

    def attention(qs, ks, vs):  # lists of [heads, hd] -> list of [heads * hd]
        outs = []
        for qt in qs:
            head_out = []
            for n in range(heads):
                scores = torch.stack([qt[n] @ kt[n] for kt in ks]) / math.sqrt(hd)
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                head_out.append(sum(wt * vt[n] for wt, vt in zip(weights, vs)))
            outs.append(torch.cat(head_out))
        return outs

    def window(actions, t, null):  # actions [Nf, C] -> [12 * C] for token frame t
        if t < M:
            return torch.full((12 * actions.shape[1],), null, dtype=torch.float64)
        i, nf = t - M, actions.shape[0]
        start = 4 * i - (12 if nf % 4 == 1 else 8)
        return torch.cat([actions[max(0, start + f)].double() for f in range(12)])

    for b in range(x.shape[0]):
        # mouse branch: per spatial location, self-attention over time
        res = torch.zeros_like(x[b])
        for s in range(S):
            qs, ks, vs = [], [], []
            for t in range(T):
                inp = torch.cat([x[b, t * S + s], window(mouse[b], t, 1.0)])
                hid = layer_norm(lin("mouse_mlp.2", gelu_tanh(lin("mouse_mlp.0", inp))), "mouse_mlp.3")
                q, k, v = lin("t_qkv", hid).view(3, heads, hd)
                qs.append(rope(rms(q, "img_attn_q_norm"), positions[t]))
                ks.append(rope(rms(k, "img_attn_k_norm"), positions[t]))
                vs.append(v)
            for t, o in enumerate(attention(qs, ks, vs)):
                res[t * S + s] = lin("proj_mouse", o)
        x[b] += res
        # keyboard branch: queries from x after the mouse residual, shared keyboard keys
        ks, vs = [], []
        for t in range(T):
            frames = window(keyboard[b], t, -1.0).view(12, -1)
            emb = torch.cat(
                [lin("keyboard_embed.2", torch.nn.functional.silu(lin("keyboard_embed.0", f))) for f in frames]
            )
            k, v = lin("keyboard_attn_kv", emb).view(2, heads, hd)
            ks.append(rope(rms(k, "key_attn_k_norm"), positions[t]))
            vs.append(v)
        res = torch.zeros_like(x[b])
        for s in range(S):
            qs = [
                rope(rms(lin("mouse_attn_q", x[b, t * S + s]).view(heads, hd), "key_attn_q_norm"), positions[t])
                for t in range(T)
            ]
            for t, o in enumerate(attention(qs, ks, vs)):
                res[t * S + s] = lin("proj_keyboard", o)
        x[b] += res
    return x


@pytest.mark.parametrize(
    "first_clip, M, apply_weight", [(True, 0, False), (False, 2, False), (True, 1, True), (False, 1, True)]
)
def test_matches_slow_reference(first_clip, M, apply_weight):
    mod = _randomize(ActionModule(CFG.replace(apply_qk_norm_weight=apply_weight)), seed=3).double()
    x, grid, mouse, keyboard = _inputs(2, M, 3, 2, 2, first_clip, dtype=torch.float64, seed=4)
    out = mod(x, grid, mouse, keyboard, M)
    ref = _reference(mod, x, grid, mouse, keyboard, M, apply_weight)
    assert (out - x).abs().max() > 0.1  # the residuals are substantial
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# GPU (skips itself without CUDA)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_bf16_close_to_cpu_fp32_and_batch_consistent():
    mod = _randomize(ActionModule(CFG))
    x, grid, mouse, keyboard = _inputs(3, 2, 3, 4, 4, first_clip=False)
    ref = mod(x, grid, mouse, keyboard, 2)
    gpu = mod.to("cuda", torch.bfloat16)
    xc, mc, kc = x.cuda(), mouse.cuda(), keyboard.cuda()
    out = gpu(xc, grid, mc, kc, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, rtol=0.05, atol=0.1)
    for b in range(3):
        single = gpu(xc[b : b + 1], grid, mc[b : b + 1], kc[b : b + 1], 2)
        torch.testing.assert_close(out[b : b + 1], single, rtol=0.02, atol=0.02)
