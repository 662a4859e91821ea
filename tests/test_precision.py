"""RuntimeOptions.self_attn_projections: the release's fp32 self-attention projections vs the bf16 default
(spec §15.6), checked on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from world_model.attention import attend
from world_model.config import tiny
from world_model.dit import MatrixGameDiT
from world_model.model import random_world_model
from world_model.rope import apply_rope
from world_model.runtime import RuntimeOptions

BF16 = torch.bfloat16


def _model(seed: int = 0) -> MatrixGameDiT:
    """The tiny DiT with every parameter random (the training init zeroes the head)."""
    torch.manual_seed(seed)
    model = MatrixGameDiT(tiny().dit).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else 0.0
            p.copy_(base + 0.15 * torch.randn_like(p))
    return model


def _inputs(B: int = 1, M: int = 2, F_: int = 3, h: int = 4, w: int = 4) -> dict:
    cfg = tiny().dit
    g = torch.Generator().manual_seed(3)
    t = torch.zeros(B, F_)
    t[:, 1:] = 908.0
    return {
        "x": torch.randn(B, cfg.in_dim, F_, h, w, generator=g),
        "t": t,
        "context": torch.randn(B, 5, cfg.text_dim, generator=g),
        "plucker": torch.randn(B, cfg.plucker_channels, M + F_, h, w, generator=g),
        "mouse": 0.3 * torch.randn(B, 4 * F_, 2, generator=g),
        "keyboard": (torch.rand(B, 4 * F_, 6, generator=g) > 0.5).float(),
        "positions": torch.arange(M + F_)[None].expand(B, -1) * 3,
        "memory": torch.randn(B, cfg.in_dim, M, h, w, generator=g),
    }


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def test_fp32_projections_compute_what_the_release_computes():
    """One self-attention module with bf16 weights: fp32 GEMMs on the weights cast up, q/k RMSNorm and
    RoPE in fp32, the attention kernel in bf16, then an fp32 output projection (spec §15.6)."""
    attn = _model().to(BF16).blocks[0].self_attn
    L, N, Dh = 12, 4, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, L, N * Dh, generator=g)  # fp32: the modulated LayerNorm output
    angles = torch.rand(1, L, N, Dh // 2, generator=g) * 6.0
    cos, sin = angles.cos(), angles.sin()

    def linear32(layer, v):
        return F.linear(v.float(), layer.weight.float(), layer.bias.float())

    def rms32(norm, v):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()

    q = apply_rope(rms32(attn.norm_q, linear32(attn.q, x)).unflatten(-1, (N, Dh)), cos, sin)
    k = apply_rope(rms32(attn.norm_k, linear32(attn.k, x)).unflatten(-1, (N, Dh)), cos, sin)
    v = linear32(attn.v, x).unflatten(-1, (N, Dh))
    expected = linear32(attn.o, attend(q.to(BF16), k.to(BF16), v.to(BF16)).flatten(2))

    with torch.no_grad():
        attn.projection_dtype = torch.float32
        got = attn(x, cos, sin)
        attn.projection_dtype = None
        fast = attn(x, cos, sin)
    assert got.dtype == torch.float32 and fast.dtype == BF16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(fast.float(), got)  # the default really is the other (bf16) path


def test_fp32_projections_remove_their_rounding_from_the_self_attention():
    """Against the same (bf16-rounded) weights in fp32: fp32 projections leave only the bf16 attention
    kernel's rounding in a self-attention module, so its error drops; the whole forward keeps the bf16
    cross-attention, FFN and action module, so there both stay at the bf16 level. On an fp32 model
    the option changes nothing."""
    bf16 = _model().to(BF16)
    ref_model = copy.deepcopy(bf16).float()
    L, N, Dh = 64, 4, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, L, N * Dh, generator=g)
    angles = torch.rand(1, L, N, Dh // 2, generator=g) * 6.0
    cos, sin = angles.cos(), angles.sin()
    inputs = _inputs(B=2)
    with torch.no_grad():
        ref_attn, ref = ref_model.blocks[0].self_attn(x, cos, sin), ref_model(**inputs)
        fast_attn, fast = bf16.blocks[0].self_attn(x, cos, sin), bf16(**inputs)
        bf16.set_self_attn_projection_dtype(torch.float32)
        exact_attn, exact = bf16.blocks[0].self_attn(x, cos, sin), bf16(**inputs)
        ref_model.set_self_attn_projection_dtype(torch.float32)
        ref_again = ref_model(**inputs)
    print(
        f"relative error vs fp32, self-attention module: bf16 projections {_rel(fast_attn, ref_attn):.2e}, "
        f"fp32 projections {_rel(exact_attn, ref_attn):.2e}; whole forward: {_rel(fast, ref):.2e}, {_rel(exact, ref):.2e}"
    )
    assert _rel(exact_attn, ref_attn) < 0.7 * _rel(fast_attn, ref_attn)
    assert 0 < _rel(fast, ref) < 0.05 and 0 < _rel(exact, ref) < 0.05
    assert 0 < _rel(exact, fast) < 0.05  # the option reaches the forward
    torch.testing.assert_close(ref_again, ref, rtol=0, atol=0)


def test_runtime_option_is_applied_when_a_model_is_loaded():
    for choice, dtype in (("dtype", None), ("fp32", torch.float32)):
        wm = random_world_model(tiny(16, 16), RuntimeOptions(self_attn_projections=choice))
        assert [b.self_attn.projection_dtype for b in wm.dit.blocks] == [dtype] * len(wm.dit.blocks)
        assert wm.replicate("cpu").dit.blocks[0].self_attn.projection_dtype == dtype
    assert RuntimeOptions().self_attn_projections == "dtype"
    with pytest.raises(ValueError, match=r"self_attn_projections must be one of \('dtype', 'fp32'\)"):
        RuntimeOptions(self_attn_projections="bf16")
    with pytest.raises(ValueError, match="float dtype"):
        _model().set_self_attn_projection_dtype(torch.int8)
