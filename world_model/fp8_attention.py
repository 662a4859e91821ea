"""The DiT self-attention's inputs in FP8 from one pass each: q and k normalised, rotated and quantised by one
Triton kernel, v's per-head scales from an inner reduction; applied from outside (``RuntimeOptions``).

Where a 5B chunk's device time went (session 17's profile on the H200,
``bench/results/env_5b_fa3fp8_ffn_kernel_profile_session17_h200.json``): between the q/k projections and the FP8
attention kernel, inductor's code for q and k (RMSNorm over all 3,072 features, RoPE in fp32 from the [B, L, N, 64]
fp32 cos/sin tables, bf16, the head's bound scale, e4m3) took ~46 ms a chunk in four kernels, and v's per-head
largest magnitude (a reduction over tokens and features, strided) 17 ms at ~0.4 TB/s. The bytes are far fewer: a
token's q and k rows in bf16 (12 KB), its cos/sin rows (24 KB, read once for both), its e4m3 rows out (6 KB).

:func:`quantize_qk_rope` computes, per token row (four rows a program), exactly the eager path's sequence of roundings
(the norm in fp32 rounded to bf16, times its bf16 weight; the rotation in fp32 rounded to bf16; times the head's
bf16 scale, rounded; e4m3), for q and k together. :func:`world_model.attention.head_amax` (what ``fp8_heads`` uses) is v's per-(batch, head) bound as a reduction
over each head's contiguous features first. :class:`FP8SelfAttention` is a DiT ``SelfAttention`` whose forward uses
both and hands the e4m3 tensors and their descales to the FlashAttention-3 kernel
(``world_model.attention.attend_fp8``); :func:`fuse_fp8_self_attention` swaps it in (parameters and their names
unchanged) and :func:`unfuse_fp8_self_attention` back. Off CUDA (tests), the references run and the attention is
the dequantised product.

Measured (session 19, H200, ``bench/results/fp8_rows_session19_h200.json``, ``env_5b_fa3fp8_qk_kernel_session19_h200.json``):
the first form of the kernel (a program per row, even and odd features read and written at a stride of 2) took
0.703 ms a call at the 5B shape against 0.363 ms for inductor's fused code (which skips the eager path's roundings:
5.4 % of its e4m3 values differ), and the chunk 1.166 s against 1.163 s without it: the option is off by default.
This form reads and writes each row contiguously and splits the pairs in registers, four rows a program: measured in
session 20 (``*_session20_h200.json``) at 0.789 ms a call against inductor's 0.417, the chunk 1.172 s against 1.179
without it (within the runs' spread). A whole 3,072-feature row per program pair-split in registers (a 4,096-wide
block, a quarter masked) holds few rows in flight; the fp32 cos/sin rows (12 KB a token) are most of its bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from world_model.attention import attend_fp8, fp8_heads, head_scales, rms_head_bounds
from world_model.dit import RMSNorm, SelfAttention
from world_model.fp8_rows import FP8, FP8_MAX, triton, triton_available
from world_model.rope import apply_rope

__all__ = [
    "FP8SelfAttention",
    "fuse_fp8_self_attention",
    "quantize_qk_rope",
    "quantize_qk_rope_reference",
    "unfuse_fp8_self_attention",
]

if triton is not None:
    import triton.language as tl


def _check_qk(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, scale: torch.Tensor) -> int:
    """The head count of a [M, N * Dh] row block against its norm weight [N * Dh], cos/sin [M, N * Dh / 2] and
    head scales [N]."""
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"expected x [M, D] with an even D, got shape {tuple(x.shape)}")
    m, d = x.shape
    if weight.shape != (d,):
        raise ValueError(f"expected a norm weight of shape ({d},), got {tuple(weight.shape)}")
    if cos.shape != (m, d // 2):
        raise ValueError(f"expected cos/sin rows [{m}, {d // 2}], got {tuple(cos.shape)}")
    n = scale.numel()
    if scale.dim() != 1 or d % (2 * n):
        raise ValueError(f"expected one scale per head, dividing {d} features in pairs; got {tuple(scale.shape)}")
    return n


def quantize_qk_rope_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """e4m3 [M, D] of one projection's rows x [M, D] as the eager self-attention feeds them to the FP8 attention:
    ``dit.RMSNorm`` (fp32, rounded to x's dtype, times ``weight``), ``rope.apply_rope`` by cos/sin [M, D / 2] (fp32,
    rounded to x's dtype), times the head's ``scale`` [N] (``attention.head_scales``) in x's dtype, clamped to +-448."""
    n = _check_qk(x, weight, cos, scale)
    m, d = x.shape
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight.to(x.dtype)
    y = apply_rope(y.view(1, m, n, d // n), cos.view(1, m, n, -1), sin.view(1, m, n, -1)).to(x.dtype)
    y = y * scale.to(x.dtype)[None, :, None]
    return y.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(m, d)


def quantize_qk_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q8, k8) e4m3 [M, D] of the projections' rows q, k [M, D] (see :func:`quantize_qk_rope_reference`): one
    Triton program per four tokens on CUDA (bf16 rows of up to 16,384 features), reading the token's cos/sin once for
    both; else the reference twice."""
    _check_qk(q, q_weight, cos, q_scale)
    _check_qk(k, k_weight, sin, k_scale)
    if q.shape != k.shape:
        raise ValueError(f"expected q and k of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not (q.is_cuda and q.dtype == torch.bfloat16 and triton_available() and q.shape[1] <= 16384):
        return (
            quantize_qk_rope_reference(q, q_weight, eps, cos, sin, q_scale),
            quantize_qk_rope_reference(k, k_weight, eps, cos, sin, k_scale),
        )
    return _launch_qk(q, k, q_weight, k_weight, eps, cos, sin, q_scale, k_scale)


def _launch_qk(q, k, q_weight, k_weight, eps, cos, sin, q_scale, k_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's launch (CUDA; Triton's interpreter runs it on the CPU: TRITON_INTERPRET=1)."""
    m, d = q.shape
    q, k, cos, sin = (t.contiguous() for t in (q, k, cos, sin))
    q8 = torch.empty(m, d, dtype=FP8, device=q.device)
    k8 = torch.empty(m, d, dtype=FP8, device=q.device)
    half = d // 2
    block = 1 << (half - 1).bit_length()
    rows = _QK_ROWS if m >= 64 * _QK_ROWS else 1  # small inputs: a program per row keeps the SMs busy
    _qk_rope_fp8[(triton.cdiv(m, rows),)](
        q,
        k,
        q_weight.contiguous(),
        k_weight.contiguous(),
        cos,
        sin,
        q_scale.float().contiguous(),
        k_scale.float().contiguous(),
        q8,
        k8,
        m,
        half,
        half // q_scale.numel(),
        eps,
        ROUND_BF16=q.dtype == torch.bfloat16,
        BLOCK=block,
        ROWS=rows,
        num_warps=4 if block <= 1024 else 8,
    )
    return q8, k8


# Rows per program: the norm weights and head scales (two 6 KB vectors per projection at the 5B width) are read and
# split once for these rows instead of once per row. The kernel's first form (session 18: one row per program, even
# and odd features read and e4m3 written at a stride of 2) ran 0.703 ms a call at the 5B shape against inductor's 0.363
# (measured in session 19).
_QK_ROWS = 4

if triton is not None:

    @triton.jit
    def _round(x, ROUND_BF16: tl.constexpr):
        """x (fp32) rounded to bf16 and back where the eager path holds it in bf16."""
        if ROUND_BF16:
            x = x.to(tl.bfloat16).to(tl.float32)
        return x

    @triton.jit
    def _pairs(ptr, feats, mask2, BLOCK: tl.constexpr):
        """A contiguous row of 2 * BLOCK features (fp32) as its (even, odd) halves, each [BLOCK]."""
        x = tl.load(ptr + feats, mask=mask2, other=0.0).to(tl.float32)
        return tl.split(tl.reshape(x, (BLOCK, 2)))

    @triton.jit
    def _qk_row(
        x_ptr, out_ptr, wa, wb, scale, c, s, feats, mask2, D, eps, ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr
    ):
        """One token's row of q or k: RMSNorm (weight halves wa, wb), rotation by (c, s), its heads' scale, e4m3."""
        a, b = _pairs(x_ptr, feats, mask2, BLOCK)
        r = 1.0 / tl.sqrt((tl.sum(a * a, axis=0) + tl.sum(b * b, axis=0)) / D + eps)
        a = _round(_round(a * r, ROUND_BF16) * wa, ROUND_BF16)
        b = _round(_round(b * r, ROUND_BF16) * wb, ROUND_BF16)
        ra = _round(a * c - b * s, ROUND_BF16)
        rb = _round(a * s + b * c, ROUND_BF16)
        ra = tl.minimum(tl.maximum(_round(ra * scale, ROUND_BF16), -448.0), 448.0)
        rb = tl.minimum(tl.maximum(_round(rb * scale, ROUND_BF16), -448.0), 448.0)
        out = tl.reshape(tl.join(ra, rb), (2 * BLOCK,))  # the pairs interleaved back: a contiguous store
        tl.store(out_ptr + feats, out.to(tl.float8e4nv), mask=mask2)

    @triton.jit
    def _qk_rope_fp8(
        q_ptr,
        k_ptr,
        qw_ptr,
        kw_ptr,
        cos_ptr,
        sin_ptr,
        qs_ptr,
        ks_ptr,
        q8_ptr,
        k8_ptr,
        M,
        HALF,
        HALF_HEAD,
        eps,
        ROUND_BF16: tl.constexpr,
        BLOCK: tl.constexpr,
        ROWS: tl.constexpr,
    ):
        pairs = tl.arange(0, BLOCK)
        feats = tl.arange(0, 2 * BLOCK)
        D = 2 * HALF
        mask2 = feats < D
        qwa, qwb = _pairs(qw_ptr, feats, mask2, BLOCK)
        kwa, kwb = _pairs(kw_ptr, feats, mask2, BLOCK)
        qs = tl.load(qs_ptr + pairs // HALF_HEAD, mask=pairs < HALF, other=1.0)
        ks = tl.load(ks_ptr + pairs // HALF_HEAD, mask=pairs < HALF, other=1.0)
        for i in range(ROWS):
            row = tl.program_id(0) * ROWS + i
            m2 = mask2 & (feats * 0 + row < M)  # a tensor mask (a scalar one is not a mask to the interpreter)
            m1 = (pairs < HALF) & (pairs * 0 + row < M)
            c = tl.load(cos_ptr + row * HALF + pairs, mask=m1, other=0.0)
            s = tl.load(sin_ptr + row * HALF + pairs, mask=m1, other=0.0)
            _qk_row(q_ptr + row * D, q8_ptr + row * D, qwa, qwb, qs, c, s, feats, m2, D, eps, ROUND_BF16, BLOCK)
            _qk_row(k_ptr + row * D, k8_ptr + row * D, kwa, kwb, ks, c, s, feats, m2, D, eps, ROUND_BF16, BLOCK)


class FP8SelfAttention(SelfAttention):
    """A DiT block's self-attention with FP8 inputs made in one pass (see the module docstring). Built by
    :func:`fuse_fp8_self_attention` from a ``dit.SelfAttention`` whose q/k norms are RMSNorms: the same parameters
    under the same names, and ``forward(x, cos, sin)`` as the original's, its output within FP8 attention's error of
    the original's with backend 'fa3_fp8'."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, clean=None) -> torch.Tensor:
        if clean is not None:  # RuntimeOptions refuses the pair; a model put together by hand gets this
            raise ValueError("the fused FP8 self-attention does not attend to kept clean tokens (context_cache)")
        B, L, D = x.shape
        n = self.num_heads
        dtype = self.q.weight.dtype
        x = x.to(dtype)
        q, k, v = self.q(x), self.k(x), self.v(x)  # [B, L, D]
        q_scale = head_scales(rms_head_bounds(self.norm_q.weight, n), dtype)
        k_scale = head_scales(rms_head_bounds(self.norm_k.weight, n), dtype)
        q8, k8 = quantize_qk_rope(
            q.reshape(B * L, D),
            k.reshape(B * L, D),
            self.norm_q.weight,
            self.norm_k.weight,
            self.norm_q.eps,
            cos.reshape(B * L, D // 2),
            sin.reshape(B * L, D // 2),
            q_scale,
            k_scale,
        )
        v8, v_descale = fp8_heads(v.unflatten(-1, (n, -1)))  # [B, L, N, Dh], [B, N]: its amax heads first
        out = attend_fp8(
            q8.view(B, L, n, -1),
            k8.view(B, L, n, -1),
            v8,
            (1.0 / q_scale)[None].expand(B, -1).contiguous(),  # [B, N]: the kernel takes dense descales
            (1.0 / k_scale)[None].expand(B, -1).contiguous(),
            v_descale,
            out_dtype=dtype,
        )
        return self.o(out.flatten(2))


def _fusable(m: nn.Module) -> bool:
    return type(m) is SelfAttention and isinstance(m.norm_q, RMSNorm) and isinstance(m.norm_k, RMSNorm)


def _swap(model: nn.Module, pick, cls) -> int:
    """Replace every submodule ``pick`` chooses by an instance of ``cls`` holding its state (same parameters,
    buffers, submodules and names); returns how many."""
    chosen = [(name, m) for name, m in model.named_modules() if pick(m)]
    for name, m in chosen:
        parent_name, _, child = name.rpartition(".")
        swapped = cls.__new__(cls)
        swapped.__dict__.update(m.__dict__)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, swapped)
    return len(chosen)


def fuse_fp8_self_attention(model: nn.Module) -> int:
    """Swap every DiT self-attention of ``model`` with RMS-normalised q and k for an :class:`FP8SelfAttention`
    (in place; its projections may be ``Float8Linear`` already, or not); returns how many (raises if none)."""
    fused = _swap(model, _fusable, FP8SelfAttention)
    if not fused:
        raise ValueError(f"{type(model).__name__} has no self-attention with RMS-normalised q and k to fuse")
    return fused


def unfuse_fp8_self_attention(model: nn.Module) -> int:
    """Undo :func:`fuse_fp8_self_attention`; returns how many self-attentions went back."""
    return _swap(model, lambda m: type(m) is FP8SelfAttention, SelfAttention)
