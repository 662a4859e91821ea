"""world_model.fp8_attention: the self-attention's FP8 inputs in one pass (RuntimeOptions.fp8_attention_kernel).

On the CPU: the torch reference is the 'fa3_fp8' path of a DiT self-attention to the bit, the swapped module gives
the original's output, the option reaches the model; through Triton's interpreter (where Triton is installed) the
kernel matches the reference. On a GPU: the kernel against the reference, and a DiT with the option against one
without."""

from __future__ import annotations

import textwrap

import pytest
import torch
from dit_fixture import dit_inputs, random_dit
from torch import nn
from triton_interpreter import run_interpreted

from world_model import attention as attention_mod
from world_model import runtime as runtime_mod
from world_model.attention import fp8_heads, head_amax, head_scales, rms_head_bounds
from world_model.config import tiny
from world_model.dit import SelfAttention
from world_model.fp8_attention import (
    FP8SelfAttention,
    fuse_fp8_self_attention,
    quantize_qk_rope,
    quantize_qk_rope_reference,
    unfuse_fp8_self_attention,
)
from world_model.rope import apply_rope
from world_model.runtime import RuntimeOptions, apply_runtime

D, N, B, L = 64, 4, 2, 10


def _attention(seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    m = SelfAttention(D, N, qk_norm=True, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        m.norm_q.weight.uniform_(0.5, 1.5)
        m.norm_k.weight.uniform_(0.2, 2.0)
    return m


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g)
    angle = torch.randn(B, L, N, D // N // 2, generator=g) * 4
    return x, angle.cos(), angle.sin()


def _original_fp8_inputs(m: SelfAttention, x, cos, sin):
    """What SelfAttention.forward hands the 'fa3_fp8' backend with q/k bounds: (q8, qd), (k8, kd), (v8, vd)."""
    xb = x.to(torch.bfloat16)
    q = apply_rope(m._heads(m.norm_q(m.q(xb))), cos, sin).to(torch.bfloat16)
    k = apply_rope(m._heads(m.norm_k(m.k(xb))), cos, sin).to(torch.bfloat16)
    v = m._heads(m.v(xb))
    return (
        fp8_heads(q, rms_head_bounds(m.norm_q.weight, N)),
        fp8_heads(k, rms_head_bounds(m.norm_k.weight, N)),
        fp8_heads(v),
    )


def test_reference_is_the_fa3_fp8_path_to_the_bit():
    m = _attention()
    x, cos, sin = _inputs()
    (q8, qd), (k8, kd), (v8, vd) = _original_fp8_inputs(m, x, cos, sin)
    with torch.no_grad():
        q = m.q(x.to(torch.bfloat16)).reshape(B * L, D)
        k = m.k(x.to(torch.bfloat16)).reshape(B * L, D)
    qs = head_scales(rms_head_bounds(m.norm_q.weight, N), torch.bfloat16)
    ks = head_scales(rms_head_bounds(m.norm_k.weight, N), torch.bfloat16)
    c, s = cos.reshape(B * L, -1), sin.reshape(B * L, -1)
    got_q, got_k = quantize_qk_rope(q, k, m.norm_q.weight, m.norm_k.weight, 1e-6, c, s, qs, ks)  # CPU: reference
    assert torch.equal(got_q.float(), q8.reshape(B * L, D).float())
    assert torch.equal(got_k.float(), k8.reshape(B * L, D).float())
    assert torch.equal(1.0 / qs, qd[0]) and torch.equal(1.0 / ks, kd[1])
    v = m._heads(m.v(x.to(torch.bfloat16)))
    assert torch.equal(head_amax(v), v.float().abs().amax(dim=(1, 3)))
    with pytest.raises(ValueError, match="norm weight"):
        quantize_qk_rope_reference(q, m.norm_q.weight[:-2], 1e-6, c, s, qs)
    with pytest.raises(ValueError, match="cos/sin rows"):
        quantize_qk_rope_reference(q, m.norm_q.weight, 1e-6, c[:-1], s, qs)
    with pytest.raises(ValueError, match="one scale per head"):
        quantize_qk_rope_reference(q, m.norm_q.weight, 1e-6, c, s, qs[:3])


def test_swapped_self_attention_gives_the_original_fp8_output_and_swaps_back():
    m = _attention()
    x, cos, sin = _inputs()
    (q8, qd), (k8, kd), (v8, vd) = _original_fp8_inputs(m, x, cos, sin)
    with torch.no_grad():
        want = m.o(attention_mod.attend_fp8(q8, k8, v8, qd, kd, vd).flatten(2))
        bf16 = m(x, cos, sin)  # the original module, bf16 attention ('auto')
    holder = nn.ModuleDict({"self_attn": m})
    keys = list(holder.state_dict())
    assert fuse_fp8_self_attention(holder) == 1
    fused = holder["self_attn"]
    assert type(fused) is FP8SelfAttention and fused.q is m.q and list(holder.state_dict()) == keys
    with torch.no_grad():
        got = fused(x, cos, sin)
    assert torch.equal(got, want)
    rel = float((got.float() - bf16.float()).norm() / bf16.float().norm())
    assert 1e-4 < rel < 0.1, rel  # FP8 attention's error, not a different function
    with pytest.raises(ValueError, match="no self-attention"):
        fuse_fp8_self_attention(holder)  # fused already
    assert unfuse_fp8_self_attention(holder) == 1 and type(holder["self_attn"]) is SelfAttention
    with torch.no_grad():
        assert torch.equal(holder["self_attn"](x, cos, sin), bf16)


def test_runtime_option_is_checked_and_swaps_the_self_attentions(monkeypatch):
    with pytest.raises(ValueError, match="attention='fa3_fp8' too"):
        RuntimeOptions(fp8_attention_kernel=True)
    with pytest.raises(ValueError, match="True or False"):
        RuntimeOptions(attention="fa3_fp8", fp8_attention_kernel=1)
    with pytest.raises(ValueError, match="sequence_parallel"):
        RuntimeOptions(attention="fa3_fp8", fp8_attention_kernel=True, sequence_parallel=2)
    runtime = RuntimeOptions(dtype=torch.bfloat16, attention="fa3_fp8", fp8_attention_kernel=True)
    with pytest.raises(ValueError):  # on this CPU: FA3 and Triton need a CUDA GPU
        runtime_mod.check_runtime(runtime)
    dit = random_dit(tiny().dit).to(torch.bfloat16)
    monkeypatch.setattr(runtime_mod, "check_runtime", lambda r: None)  # the plumbing alone, on the CPU
    apply_runtime(dit, runtime)
    kinds = {type(b.self_attn) for b in dit.blocks}
    assert kinds == {FP8SelfAttention}, kinds
    apply_runtime(dit2 := random_dit(tiny().dit).to(torch.bfloat16), RuntimeOptions(attention="fa3_fp8"))
    assert {type(b.self_attn) for b in dit2.blocks} == {SelfAttention}


SCRIPT = textwrap.dedent(
    """
    import torch
    from triton_interpreter import e4m3_agree
    from world_model import fp8_attention as F8
    from world_model.attention import head_scales, rms_head_bounds

    g = torch.Generator().manual_seed(0)
    D, N = 256, 4
    # 12 rows: a program per row; 258: four rows a program, the last program's two past the end masked (in fp32,
    # where the interpreter rounds as the GPU but for e4m3 carries: its bf16 truncation makes rare outliers)
    for M, dtype in ((12, torch.float32), (12, torch.bfloat16), (258, torch.float32)):
        x = [(torch.randn(M, D, generator=g) * 3 + 0.5).to(dtype) for _ in range(2)]
        w = [torch.empty(D).uniform_(0.5, 1.5, generator=g).to(dtype) for _ in range(2)]
        angle = torch.randn(M, D // 2, generator=g) * 5
        c, s = angle.cos(), angle.sin()
        scales = [head_scales(rms_head_bounds(wi, N), dtype) for wi in w]
        got = F8._launch_qk(x[0], x[1], w[0], w[1], 1e-6, c, s, scales[0], scales[1])
        for i in range(2):
            want = F8.quantize_qk_rope_reference(x[i], w[i], 1e-6, c, s, scales[i]).float()
            # bf16: the interpreter truncates where the GPU rounds to nearest, one bf16 step in each of the path's
            # four roundings: one e4m3 step, plus a little where a rotation cancels (typical magnitudes here ~20)
            bf16 = dtype == torch.bfloat16
            e4m3_agree(got[i], want, slack=0.25 if bf16 else 0.0, share=0.25 if bf16 else 0.05)
    print("ok")
    """
)


def test_qk_kernel_matches_its_reference_in_the_interpreter():
    run_interpreted(SCRIPT)


def _need_kernel():
    from world_model.fp8_rows import triton_available

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not triton_available():
        pytest.skip("Triton is not installed with this torch")


@pytest.mark.gpu
def test_qk_kernel_matches_the_reference_on_gpu():
    _need_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    for m, d, n in ((1000, 3072, 24), (37, 256, 4)):
        x = [(torch.randn(m, d, device="cuda", generator=g) * 2).bfloat16() for _ in range(2)]
        w = [(torch.rand(d, device="cuda", generator=g) + 0.5).bfloat16() for _ in range(2)]
        angle = torch.rand(m, d // 2, device="cuda", generator=g) * 100
        c, s = angle.cos(), angle.sin()
        scales = [head_scales(rms_head_bounds(wi, n), torch.bfloat16) for wi in w]
        got = quantize_qk_rope(x[0], x[1], w[0], w[1], 1e-6, c, s, scales[0], scales[1])
        for i in range(2):
            want = quantize_qk_rope_reference(x[i], w[i], 1e-6, c, s, scales[i]).float()
            q = got[i].float()
            # rounding order only (fused multiply-adds, the norm's sum): one e4m3 step, on few elements
            step = torch.exp2(torch.floor(torch.log2(want.abs().clamp_min(2.0**-6))) - 3)
            assert bool(((q - want).abs() <= 1.001 * step + 0.02).all())
            assert float((q != want).float().mean()) < 0.02


@pytest.mark.gpu
def test_fused_fp8_attention_dit_matches_the_unfused_one_on_gpu():
    _need_kernel()
    if not attention_mod.fa3_available():
        pytest.skip("the fa3-fwd package is not installed (bench/gpu/extras.sh installs it from .carry/fa3)")
    import dataclasses

    cfg = dataclasses.replace(tiny().dit, dim=128, ffn_dim=256, num_heads=2, action_config=None)
    ref_model = random_dit(cfg).cuda().to(torch.bfloat16)
    fused = random_dit(cfg).cuda().to(torch.bfloat16)  # the same seed: the same weights
    base = dict(device="cuda", dtype=torch.bfloat16, attention="fa3_fp8", quantize="fp8")
    apply_runtime(ref_model, RuntimeOptions(**base))
    apply_runtime(fused, RuntimeOptions(**base, fp8_attention_kernel=True))
    assert all(type(b.self_attn) is FP8SelfAttention for b in fused.blocks)
    inp = {}
    for k, v in dit_inputs(cfg, 1, 1, 3, 8, 8).items():
        if v is not None and k in ("x", "context", "plucker", "memory"):
            v = v.to(torch.bfloat16)
        inp[k] = None if v is None else v.cuda()
    with torch.inference_mode():
        want, got = ref_model(**inp).float(), fused(**inp).float()
    rel = float((got - want).norm() / want.norm())
    assert rel < 1e-2, f"fused vs unfused FP8 self-attention: relative {rel:.3e}"  # rounding order only
