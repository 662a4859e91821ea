"""The Matrix-Game 3.0 DiT (spec §2.2, §3): checkpoint names/shapes, forward semantics, dtypes, bench smoke."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.bench_loader import load_bench
from world_model.attention import attention_backends, set_attention_backend
from world_model.config import DiTConfig, mg3_5b, tiny
from world_model.dit import MatrixGameDiT, timestep_sinusoid

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Release names and shapes, written out from the spec's tables (§2.2), not from the model code
# --------------------------------------------------------------------------------------------


def _spec_5b_shapes() -> dict[str, tuple[int, ...]]:
    D, FF = 3072, 14336
    s: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (D, 48, 1, 2, 2),
        "patch_embedding.bias": (D,),
        "patch_embedding_wancamctrl.weight": (D, 6144),
        "patch_embedding_wancamctrl.bias": (D,),
        "c2ws_hidden_states_layer1.weight": (D, D),
        "c2ws_hidden_states_layer1.bias": (D,),
        "c2ws_hidden_states_layer2.weight": (D, D),
        "c2ws_hidden_states_layer2.bias": (D,),
        "text_embedding.0.weight": (D, 4096),
        "text_embedding.0.bias": (D,),
        "text_embedding.2.weight": (D, D),
        "text_embedding.2.bias": (D,),
        "time_embedding.0.weight": (D, 256),
        "time_embedding.0.bias": (D,),
        "time_embedding.2.weight": (D, D),
        "time_embedding.2.bias": (D,),
        "time_projection.1.weight": (18432, D),
        "time_projection.1.bias": (18432,),
        "head.head.weight": (192, D),
        "head.head.bias": (192,),
        "head.modulation": (1, 2, D),
    }
    for i in range(30):
        p = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                s[f"{p}{attn}.{lin}.weight"] = (D, D)
                s[f"{p}{attn}.{lin}.bias"] = (D,)
            s[f"{p}{attn}.norm_q.weight"] = (D,)
            s[f"{p}{attn}.norm_k.weight"] = (D,)
        s[p + "norm3.weight"] = (D,)
        s[p + "norm3.bias"] = (D,)
        s[p + "ffn.0.weight"] = (FF, D)
        s[p + "ffn.0.bias"] = (FF,)
        s[p + "ffn.2.weight"] = (D, FF)
        s[p + "ffn.2.bias"] = (D,)
        s[p + "modulation"] = (1, 6, D)
        for cam in ("cam_injector_layer1", "cam_injector_layer2", "cam_scale_layer", "cam_shift_layer"):
            s[f"{p}{cam}.weight"] = (D, D)
            s[f"{p}{cam}.bias"] = (D,)
    for i in range(15):
        p = f"blocks.{i}.action_model."
        s.update(
            {
                p + "keyboard_embed.0.weight": (128, 6),
                p + "keyboard_embed.0.bias": (128,),
                p + "keyboard_embed.2.weight": (128, 128),
                p + "keyboard_embed.2.bias": (128,),
                p + "mouse_mlp.0.weight": (1024, 3096),
                p + "mouse_mlp.0.bias": (1024,),
                p + "mouse_mlp.2.weight": (1024, 1024),
                p + "mouse_mlp.2.bias": (1024,),
                p + "mouse_mlp.3.weight": (1024,),
                p + "mouse_mlp.3.bias": (1024,),
                p + "t_qkv.weight": (3072, 1024),
                p + "img_attn_q_norm.weight": (64,),
                p + "img_attn_k_norm.weight": (64,),
                p + "proj_mouse.weight": (3072, 1024),
                p + "mouse_attn_q.weight": (1024, 3072),
                p + "keyboard_attn_kv.weight": (2048, 1536),
                p + "key_attn_q_norm.weight": (64,),
                p + "key_attn_k_norm.weight": (64,),
                p + "proj_keyboard.weight": (3072, 1024),
            }
        )
    return s


def test_5b_on_meta_has_every_release_key_and_shape():
    with torch.device("meta"):
        model = MatrixGameDiT(mg3_5b().dit)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = _spec_5b_shapes()
    assert len(want) == 1356  # 21 + 30 * 35 + 15 * 19 (spec §1.1)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert len(got) == 1356
    n_params = sum(math.prod(v) for v in got.values())
    assert abs(n_params - 6_469.9e6) <= 0.1e6, n_params
    assert all(p.is_meta for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Tiny model helpers
# --------------------------------------------------------------------------------------------


def _model(cfg: DiTConfig | None = None, seed: int = 0) -> MatrixGameDiT:
    """Tiny model with every parameter random (the training init zeroes the head and camera scale)."""
    torch.manual_seed(seed)
    model = MatrixGameDiT(cfg or tiny().dit).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else 0.0
            p.copy_(base + 0.15 * torch.randn_like(p))
    return model


def _inputs(cfg: DiTConfig, B: int = 2, M: int = 2, F: int = 3, h: int = 4, w: int = 6, seed: int = 1) -> dict:
    """Per-sample different timesteps, positions, memory and actions. Latent grid h x w."""
    g = torch.Generator().manual_seed(seed)
    nf = 4 * F
    t = torch.zeros(B, F)
    t[:, 1:] = torch.tensor([1000.0, 908.0, 712.0, 500.0])[torch.arange(B) % 4, None]
    mem_pos = torch.stack([torch.randperm(20, generator=g)[:M].sort().values for _ in range(B)])  # [B, M]
    win_pos = 20 + 7 * torch.arange(B)[:, None] + torch.arange(F)  # [B, F]
    return {
        "x": torch.randn(B, cfg.in_dim, F, h, w, generator=g),
        "t": t,
        "context": torch.randn(B, 5, cfg.text_dim, generator=g),
        "plucker": torch.randn(B, cfg.plucker_channels, M + F, h, w, generator=g),
        "mouse": 0.3 * torch.randn(B, nf, 2, generator=g),
        "keyboard": (torch.rand(B, nf, 6, generator=g) > 0.5).float(),
        "positions": torch.cat([mem_pos, win_pos], dim=1),
        "memory": torch.randn(B, cfg.in_dim, M, h, w, generator=g) if M else None,
    }


def _no_action(**changes) -> DiTConfig:
    return tiny().dit.replace(action_config=None, **changes)


# --------------------------------------------------------------------------------------------
# Forward semantics
# --------------------------------------------------------------------------------------------


def test_forward_shape_and_dtype():
    cfg = tiny().dit
    model = _model(cfg)
    with torch.no_grad():
        out = model(**_inputs(cfg, B=2, M=2, F=3, h=4, w=6))
        out_nomem = model(**_inputs(cfg, B=1, M=0, F=5, h=6, w=4))
    assert out.shape == (2, cfg.out_dim, 3, 4, 6) and out.dtype == torch.float32
    assert out_nomem.shape == (1, cfg.out_dim, 5, 6, 4)
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-3


def test_batched_equals_unbatched():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=3, M=2, F=3)
    assert not torch.equal(inp["positions"][0], inp["positions"][1])
    with torch.no_grad():
        batched = model(**inp)
        single = [model(**{k: v[b : b + 1] for k, v in inp.items()}) for b in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=1e-5)
    assert (single[0] - single[1]).abs().max() > 1e-2  # samples really differ


def test_attention_backends_agree():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=2)
    outs = {}
    for backend in ("math", "sdpa", "flash", "efficient", "cudnn"):
        set_attention_backend(model, backend)
        assert set(attention_backends(model).values()) == {backend}
        try:
            with torch.no_grad():
                outs[backend] = model(**inp)
        except RuntimeError:  # kernel not available on this machine
            continue
    assert "math" in outs and "sdpa" in outs
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["math"], atol=2e-5, rtol=2e-5, msg=f"backend {backend}")


def test_memory_frames_are_extra_frames_at_timestep_zero():
    cfg = _no_action()
    model = _model(cfg)
    inp = _inputs(cfg, B=2, M=2, F=3)
    mem = inp["memory"]
    with torch.no_grad():
        out = model(**inp)
        as_frames = model(
            **{
                **inp,
                "x": torch.cat([mem, inp["x"]], dim=2),
                "t": torch.cat([torch.zeros(2, 2), inp["t"]], dim=1),
                "memory": None,
            }
        )
        other = model(**{**inp, "memory": torch.randn_like(mem)})
    torch.testing.assert_close(out, as_frames[:, :, 2:], atol=1e-5, rtol=1e-5)
    assert (out - other).abs().max() > 1e-2


def test_memory_changes_output_with_actions():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1, M=2, F=3)
    with torch.no_grad():
        out = model(**inp)
        other = model(**{**inp, "memory": torch.randn_like(inp["memory"])})
        no_mem = model(
            **{**inp, "memory": None, "plucker": inp["plucker"][:, :, 2:], "positions": inp["positions"][:, 2:]}
        )
        empty = inp["memory"][:, :, :0]  # M = 0 memory frames: the same as no memory
        empty_mem = model(
            **{**inp, "memory": empty, "plucker": inp["plucker"][:, :, 2:], "positions": inp["positions"][:, 2:]}
        )
    assert out.shape == other.shape == no_mem.shape == inp["x"].shape
    assert (out - other).abs().max() > 1e-2 and (out - no_mem).abs().max() > 1e-2
    torch.testing.assert_close(empty_mem, no_mem)


def test_conditioning_inputs_all_matter():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1)
    with torch.no_grad():
        base = model(**inp)
        for key, new in [
            ("t", inp["t"] + torch.tensor([[0.0, 50.0, 50.0]])),
            ("context", torch.randn_like(inp["context"])),
            ("plucker", torch.randn_like(inp["plucker"])),
            ("mouse", torch.randn_like(inp["mouse"])),
            ("keyboard", 1 - inp["keyboard"]),
            ("positions", inp["positions"] * torch.tensor([[1, 1, 1, 2, 3]])),
        ]:
            assert (model(**{**inp, key: new}) - base).abs().max() > 1e-3, key


def test_uniform_position_shift_changes_nothing():
    # RoPE is relative and the action module restarts its own positions: only differences matter.
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=2)
    with torch.no_grad():
        out = model(**inp)
        shifted = model(**{**inp, "positions": inp["positions"] + 300})
    torch.testing.assert_close(out, shifted, atol=2e-4, rtol=2e-4)


def test_context_is_zero_padded_to_text_len():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1)
    padded = F.pad(inp["context"], (0, 0, 0, cfg.text_len - inp["context"].shape[1]))
    with torch.no_grad():
        torch.testing.assert_close(model(**inp), model(**{**inp, "context": padded}))


# --------------------------------------------------------------------------------------------
# A hand-written float64 reference of the whole forward (spec §3), one block, no action module
# --------------------------------------------------------------------------------------------


def _reference(model: MatrixGameDiT, inp: dict, norm3_replaces_residual: bool) -> torch.Tensor:
    cfg = model.cfg
    P = {k: v.double() for k, v in model.state_dict().items()}
    eps, D, N = cfg.eps, cfg.dim, cfg.num_heads
    Dh = D // N

    def lin(name, v):
        return v @ P[name + ".weight"].T + P[name + ".bias"]

    def ln(v, name=None):
        v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + eps)
        return v if name is None else v * P[name + ".weight"] + P[name + ".bias"]

    def rms(v, name):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * P[name + ".weight"]

    def attention(q, k, v):  # [B, L, D] each -> [B, Lq, D]
        q, k, v = (a.unflatten(-1, (N, Dh)).transpose(1, 2) for a in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(Dh), dim=-1)
        return (w @ v).transpose(1, 2).flatten(2)

    def patchify(v):  # [B, C, T, 2h, 2w] -> [B, T*h*w, C*2*2] ordered (c, ph, pw)
        B, C, T, H, W = v.shape
        v = v.reshape(B, C, T, H // 2, 2, W // 2, 2).permute(0, 2, 3, 5, 1, 4, 6)
        return v.reshape(B, T * (H // 2) * (W // 2), C * 4)

    x = torch.cat([inp["memory"], inp["x"]], dim=2).double()
    B, _, T, H, W = x.shape
    h, w, S = H // 2, W // 2, (H // 2) * (W // 2)
    M = inp["memory"].shape[2]
    t = torch.cat([torch.zeros(B, M), inp["t"]], dim=1).double().repeat_interleave(S, dim=1)  # [B, L]

    x = patchify(x) @ P["patch_embedding.weight"].reshape(D, -1).T + P["patch_embedding.bias"]
    half = cfg.freq_dim // 2
    ang = t[..., None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    e = lin("time_embedding.2", F.silu(lin("time_embedding.0", torch.cat([ang.cos(), ang.sin()], -1))))
    e0 = lin("time_projection.1", F.silu(e)).unflatten(-1, (6, D))  # [B, L, 6, D]
    ctx = F.pad(inp["context"].double(), (0, 0, 0, cfg.text_len - inp["context"].shape[1]))
    ctx = lin("text_embedding.2", F.gelu(lin("text_embedding.0", ctx), approximate="tanh"))
    cam = lin("patch_embedding_wancamctrl", patchify(inp["plucker"].double()))
    cam = cam + lin("c2ws_hidden_states_layer2", F.silu(lin("c2ws_hidden_states_layer1", cam)))

    # RoPE angles per token, head and pair (bands time / row / column).
    c = Dh // 2
    bands = (c - 2 * (c // 3), c // 3, c // 3)
    tpos = inp["positions"].double().repeat_interleave(S, dim=1)  # [B, L]
    rows = torch.arange(h).double().repeat_interleave(w).repeat(T)  # [L]
    cols = torch.arange(w).double().repeat(T * h)  # [L]
    thetas = 10000.0 * (1 + cfg.sigma_theta * torch.linspace(-1, 1, N, dtype=torch.float64))
    parts = []
    for pos, cp in zip((tpos, rows.expand(B, -1), cols.expand(B, -1)), bands):
        omega = thetas[:, None] ** (-torch.arange(cp, dtype=torch.float64) / cp)  # [N, cp]
        parts.append(pos[:, :, None, None] * omega)
    rot = torch.polar(torch.ones(1, dtype=torch.float64), torch.cat(parts, dim=-1))  # [B, L, N, c]

    def rope(v):
        z = torch.view_as_complex(v.unflatten(-1, (N, c, 2)).contiguous()) * rot
        return torch.view_as_real(z).flatten(2)

    b = "blocks.0."
    sh1, sc1, g1, sh2, sc2, g2 = (P[b + "modulation"][None] + e0).unbind(2)
    y = ln(x) * (1 + sc1) + sh1
    q = rope(rms(lin(b + "self_attn.q", y), b + "self_attn.norm_q"))
    k = rope(rms(lin(b + "self_attn.k", y), b + "self_attn.norm_k"))
    x = x + lin(b + "self_attn.o", attention(q, k, lin(b + "self_attn.v", y))) * g1
    hc = lin(b + "cam_injector_layer2", F.silu(lin(b + "cam_injector_layer1", cam))) + cam
    x = x * (1 + lin(b + "cam_scale_layer", hc)) + lin(b + "cam_shift_layer", hc)

    def cross(v):
        q = rms(lin(b + "cross_attn.q", v), b + "cross_attn.norm_q")
        k = rms(lin(b + "cross_attn.k", ctx), b + "cross_attn.norm_k")
        return lin(b + "cross_attn.o", attention(q, k, lin(b + "cross_attn.v", ctx)))

    if norm3_replaces_residual:
        x = ln(x, b + "norm3")
        x = x + cross(x)
    else:
        x = x + cross(ln(x, b + "norm3"))
    y = ln(x) * (1 + sc2) + sh2
    x = x + lin(b + "ffn.2", F.gelu(lin(b + "ffn.0", y), approximate="tanh")) * g2

    shift, scale = (P["head.modulation"][None] + e[:, :, None]).unbind(2)
    out = lin("head.head", ln(x) * (1 + scale) + shift)  # [B, L, (ph pw c)]
    C = cfg.out_dim
    out = out.reshape(B, T, h, w, 2, 2, C).permute(0, 6, 1, 2, 4, 3, 5).reshape(B, C, T, H, W)
    return out[:, :, M:]


@pytest.mark.parametrize("use_memory", [True, False])
def test_matches_float64_reference_and_norm3_quirk(use_memory):
    cfg = _no_action(num_layers=1, use_memory=use_memory)
    model = _model(cfg)
    inp = _inputs(cfg, B=2, M=2, F=3)
    with torch.no_grad():
        got = model(**inp).double()
    want = _reference(model, inp, norm3_replaces_residual=use_memory)
    wrong = _reference(model, inp, norm3_replaces_residual=not use_memory)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    assert (got - wrong).abs().max() > 1e-2  # the two residual rules really differ here


# --------------------------------------------------------------------------------------------
# Pieces, init, dtypes, errors
# --------------------------------------------------------------------------------------------


def test_timestep_sinusoid_cos_half_first():
    emb = timestep_sinusoid(torch.tensor([0.0, 1.0, 1000.0]), 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    want = torch.cat([(1000.0 * freqs).cos(), (1000.0 * freqs).sin()]).float()
    torch.testing.assert_close(emb[2], want)


def test_init_weights_and_meta_build():
    cfg = tiny().dit
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert torch.count_nonzero(model.head.head.weight) == 0
    for block in model.blocks:
        assert torch.count_nonzero(block.cam_scale_layer.weight) == 0
        assert torch.count_nonzero(block.cam_shift_layer.weight) == 0
        assert torch.equal(block.self_attn.norm_q.weight, torch.ones(cfg.dim))
    assert model.blocks[0].action_model is not None and model.blocks[1].action_model is None
    assert torch.count_nonzero(model.blocks[0].action_model.proj_mouse.weight) == 0
    q = model.blocks[0].self_attn.q.weight
    assert q.abs().max() <= math.sqrt(6 / (2 * cfg.dim)) and q.std() > 0.5 * math.sqrt(2 / (2 * cfg.dim))
    assert 0.015 < model.text_embedding[0].weight.std() < 0.025
    with torch.no_grad():
        out = model(**_inputs(cfg, B=1))
    assert torch.count_nonzero(out) == 0  # zero head: the untrained model predicts v = 0


def test_bf16_weights_close_to_fp32():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1)
    with torch.no_grad():
        ref = model(**inp)
        got = model.to(torch.bfloat16)(**inp)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).norm() / ref.norm() < 0.05


def test_errors_say_what_was_expected():
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1, M=2, F=3)
    bad = {
        "positions": (inp["positions"][:, 1:], r"expected positions \[B=1, M\+F=5\]"),
        "plucker": (inp["plucker"][:, :, 1:], r"expected plucker \[1, 384, 5, 4, 6\]"),
        "t": (inp["t"][:, :2], r"expected t \[B=1, F=3\]"),
        "context": (torch.zeros(1, cfg.text_len + 1, cfg.text_dim), r"expected context"),
        "x": (inp["x"][:, :3], r"expected x \[B, 8, F, h, w\]"),
        "memory": (inp["memory"][..., :2], r"expected memory"),
    }
    for key, (value, msg) in bad.items():
        with pytest.raises(ValueError, match=msg):
            model(**{**inp, key: value})


@pytest.mark.gpu
def test_5b_forward_on_gpu_bf16():
    cfg = mg3_5b().dit
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    model = model.to(torch.bfloat16).to_empty(device="cuda")
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.02)
        for block in model.blocks:
            block.cam_scale_layer.weight.normal_(std=0.01)
    M, Fw, h, w = 2, 3, 8, 16  # 5 frames x 4 x 8 tokens
    g = torch.Generator(device="cuda").manual_seed(0)
    inp = {
        "x": torch.randn(1, 48, Fw, h, w, device="cuda", generator=g),
        "t": torch.tensor([[0.0, 1000.0, 1000.0]], device="cuda"),
        "context": torch.randn(1, 20, 4096, device="cuda", generator=g),
        "plucker": torch.randn(1, 1536, M + Fw, h, w, device="cuda", generator=g),
        "mouse": 0.1 * torch.randn(1, 4 * Fw, 2, device="cuda", generator=g),
        "keyboard": torch.zeros(1, 4 * Fw, 6, device="cuda"),
        "positions": torch.tensor([[1, 4, 10, 11, 12]], device="cuda"),
        "memory": torch.randn(1, 48, M, h, w, device="cuda", generator=g),
    }
    with torch.inference_mode():
        out = model(**inp)
    assert out.shape == (1, 48, Fw, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_bench_tiny_smoke(tmp_path):
    bench = load_bench("dit_5b.py")
    out = tmp_path / "r.json"
    result = bench.main(["--tiny", "--iters", "1", "--warmup", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["config"] == "tiny" and saved["output_finite"] is True
    for key in ("seconds_per_chunk", "frames_per_second", "achieved_tflops", "matmul_ceiling_tflops"):
        assert saved[key] > 0, key
    assert saved["floor_seconds_per_chunk"] > 0 and saved["measured_over_floor"] > 0
    assert result["tokens"] == 19 * 4 * 4


def test_bench_flop_count_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    bench = load_bench("dit_5b.py")
    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1, M=2, F=3, h=4, w=6)
    set_attention_backend(model, "math")  # SDPA's math path is made of bmm calls the counter sees
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inp)
    assert counter.get_total_flops() == bench.count_flops(cfg, 2, 3, 4, 6)["total"]


# --------------------------------------------------------------------------------------------
# Reusing a window's conditioning across sampler steps (world_model.dit.reuse_conditioning)
# --------------------------------------------------------------------------------------------


def _count_camera_branches(model: MatrixGameDiT) -> dict[str, int]:
    """Forward hooks counting the camera-token embedding and every block's camera injector runs."""
    counts = {"tokens": 0, "injector": 0}

    def bump(key):
        def hook(*_):
            counts[key] += 1

        return hook

    model.patch_embedding_wancamctrl.register_forward_hook(bump("tokens"))
    for block in model.blocks:
        block.cam_injector_layer1.register_forward_hook(bump("injector"))
    return counts


def test_reused_conditioning_is_exact_and_computes_the_camera_branch_once():
    from world_model.dit import reuse_conditioning

    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=2, M=1, F=3, h=4, w=4)
    with torch.no_grad():
        ref = [model(**{**inp, "t": inp["t"] * s}) for s in (1.0, 0.9, 0.7)]  # three sampler steps
    counts = _count_camera_branches(model)
    with torch.no_grad(), reuse_conditioning(model):
        out = [model(**{**inp, "t": inp["t"] * s}) for s in (1.0, 0.9, 0.7)]
    for a, b in zip(out, ref):
        assert torch.equal(a, b)  # the same operations on the same inputs: bit-identical
    assert counts == {"tokens": 1, "injector": cfg.num_layers}  # once per window, not per step

    # another camera (a new tensor, or the same one written in place) is computed anew
    with torch.no_grad(), reuse_conditioning(model):
        model(**inp)
        other = {**inp, "plucker": inp["plucker"] + 1}
        changed = model(**other)
        inp["plucker"].add_(1.0)  # in place: same object, new version
        in_place = model(**inp)
    assert counts["tokens"] == 4 and counts["injector"] == 4 * cfg.num_layers
    assert torch.equal(changed, in_place)
    inp["plucker"].sub_(1.0)


def test_conditioning_is_not_reused_with_gradients_off_switch_or_outside_a_scope():
    from world_model.dit import reuse_conditioning

    cfg = tiny().dit
    model = _model(cfg)
    inp = _inputs(cfg, B=1, M=0, F=2, h=4, w=4)
    counts = _count_camera_branches(model)
    with reuse_conditioning(model):  # gradients on (training): every forward has its own graph
        model(**inp).sum().backward()
        model(**inp).sum().backward()
    assert counts["tokens"] == 2
    assert model.blocks[0].cam_scale_layer.weight.grad is not None
    model.camera_cache = False
    with torch.no_grad(), reuse_conditioning(model):
        model(**inp)
        model(**inp)
    assert counts["tokens"] == 4
    model.camera_cache = True
    with torch.no_grad():
        model(**inp)
        model(**inp)
    assert counts["tokens"] == 6
    with reuse_conditioning(model), pytest.raises(RuntimeError, match="do not nest"), reuse_conditioning(model):
        pass
    with torch.no_grad():  # dropped on exit, also after an error
        model(**inp)
    assert counts["tokens"] == 7


def test_conditioning_scopes_belong_to_their_thread():
    """Two threads sampling with one model (device groups sharing it) keep separate caches."""
    import threading

    from world_model.dit import reuse_conditioning

    cfg = tiny().dit
    model = _model(cfg)
    inputs = [_inputs(cfg, B=1, M=1, F=2, h=4, w=4, seed=s) for s in (1, 2)]
    with torch.no_grad():
        refs = [model(**inp) for inp in inputs]
    outs, errors, barrier = [None, None], [], threading.Barrier(2)

    def sample(i):
        try:
            with torch.no_grad(), reuse_conditioning(model):
                barrier.wait()  # both scopes open at once
                outs[i] = [model(**inputs[i]) for _ in range(2)]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=sample, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out, ref in zip(outs, refs):
        assert all(torch.equal(o, ref) for o in out)
