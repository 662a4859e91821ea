"""Row-wise FP8 quantisation of activations in one pass: a Triton kernel (CUDA) and its torch reference.

Where a 5B chunk's device time goes after compilation (session 16's profile on the H200,
``bench/results/env_5b_fa3fp8_profile_session16_h200.json``): the FFN's GELU + per-row FP8 quantisation of
its 14,336-wide hidden activations took 0.85 ms a call, 77 ms a chunk, as inductor fuses it. Those bytes
(a bf16 row in, an e4m3 row and a scale out: 757 MB a call) take ~0.19 ms at the H200's ~4 TB/s when each
row is read once; inductor's looped reduction reads it twice and recomputes the GELU. This kernel holds a
whole row in registers: load once (bf16), GELU (tanh form, fp32), the row's largest magnitude, scale,
store e4m3 and the scale.

``bench/fp8_rows.py`` measures it against the compiled torch reference on the GPU before the DiT uses it
(kept only if it pays, issue 14's method). Off CUDA, or without Triton, :func:`quantize_rows` is the torch
reference (the same arithmetic as :func:`world_model.quant.quantize_rows_fp8` after the GELU).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from world_model.quant import FP8, FP8_MAX, quantize_rows_fp8

__all__ = ["quantize_rows", "quantize_rows_reference", "triton_available"]

# the kernel spells out quantize_rows_fp8's constants: the largest e4m3 (448) and the smallest amax (1e-12)
assert FP8_MAX == 448.0


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports (it ships with CUDA builds of torch; CPU builds have none)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def quantize_rows_reference(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [M, K] -> (q [M, K] e4m3, scale [M, 1] fp32) of ``gelu_tanh(x)`` (``gelu``) or of ``x``, in fp32
    throughout (no bf16 rounding of the GELU's output in between)."""
    xf = x.float()
    if gelu:
        xf = F.gelu(xf, approximate="tanh")
    return quantize_rows_fp8(xf)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rows_fp8(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, GELU: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < K
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi) (x + 0.044715 x^3)
            x = 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))  # tanh(u) = 2 sigmoid(2u) - 1
        amax = tl.max(tl.where(mask, tl.abs(x), 0.0), axis=0)
        scale = tl.maximum(amax, 1e-12) / 448.0
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(q_ptr + row * stride_q + cols, q.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + row, scale)

    return rows_fp8


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8 e4m3 of ``gelu_tanh(x)`` (``gelu``) or ``x`` [M, K]: (q [M, K], scale [M, 1] fp32), x ~ q *
    scale. One Triton pass per row on CUDA (rows up to 32,768 wide), else :func:`quantize_rows_reference`."""
    if x.dim() != 2:
        raise ValueError(f"expected x [M, K], got shape {tuple(x.shape)}")
    if not (x.is_cuda and triton_available()) or x.shape[1] > 32768:
        return quantize_rows_reference(x, gelu)
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=FP8, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    block = 1 << (k - 1).bit_length()
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _kernel()[(m,)](x, q, scale, k, x.stride(0), q.stride(0), GELU=gelu, BLOCK=block, num_warps=warps)
    return q, scale
