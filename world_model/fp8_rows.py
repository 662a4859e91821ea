"""Row-wise FP8 quantisation of activations: the torch form, and one pass of a Triton kernel (CUDA).

Where a 5B chunk's device time goes after compilation (session 16's profile on the H200,
``bench/results/env_5b_fa3fp8_profile_session16_h200.json``): the FFN's bias + GELU + per-row FP8 quantisation of
its 14,336-wide hidden activations took 0.85 ms a call, 77 ms a chunk, as inductor fuses it. Those bytes (a
bf16 row in, an e4m3 row and a scale out: 757 MB a call) take ~0.19 ms at the H200's ~4 TB/s when each row is
read once; inductor's looped reduction reads it twice and recomputes the GELU. The kernel holds a whole row in
registers: load once, add the bias, GELU (tanh form), the row's largest magnitude, scale, store e4m3 and the scale.

``bench/fp8_rows.py`` measures it against the compiled torch form on the GPU (session 17, H200: 0.386 ms a call,
1,963 GB/s, against inductor's 0.890 ms; the 5B chunk 1.192 -> 1.173 s, its accuracy unchanged:
``bench/results/fp8_rows_session17_h200.json``, ``env_5b_fa3fp8_ffn_kernel_session17_h200.json``). The kernel is at
half the copy ceiling: a 16,384-wide register block per row (14,336 used) leaves few rows in flight per SM. The DiT
uses it only where
``RuntimeOptions(fp8_ffn_kernel=True)`` says so (:func:`world_model.quant.fuse_ffn_activations`). Off CUDA, or
without Triton, :func:`quantize_rows` computes the same in torch (:func:`quantize_rows_reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FP8",
    "FP8_MAX",
    "quantize_modulated_rows",
    "quantize_modulated_rows_reference",
    "quantize_rows",
    "quantize_rows_fp8",
    "quantize_rows_reference",
    "triton_available",
]

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
_MIN_SCALE = 1e-12  # the smallest row maximum: an all-zero row keeps a finite scale

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric FP8 e4m3 per row: x [M, K] -> (q [M, K] float8_e4m3fn, scale [M, 1] fp32), x ~ q * scale."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=_MIN_SCALE) / FP8_MAX  # [M, 1]
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def triton_available() -> bool:
    """Whether the Triton kernel can run here (Triton imports and torch sees a CUDA GPU). Not cached: torch
    caches the device count, and inside a compiled block dynamo folds this to a constant (a cache wrapper it
    would trace through with a warning)."""
    return triton is not None and torch.cuda.is_available()


def quantize_rows_reference(
    x: torch.Tensor, gelu: bool = False, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_fp8` of ``gelu_tanh(x + bias)`` (each part optional), in fp32 throughout (no bf16
    rounding in between): what the kernel computes."""
    xf = x.float()
    if bias is not None:
        xf = xf + bias.float()
    if gelu:
        xf = F.gelu(xf, approximate="tanh")
    return quantize_rows_fp8(xf)


def quantize_modulated_rows_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, group_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_fp8` of a DiT block's modulated LayerNorm ``LN(x) * (1 + scale[g]) + shift[g]`` for
    x [M, D] (the LayerNorm without affine, in fp32, rounded to x's dtype as the block's is) and per-group
    modulation shift, scale [G, D], row r in group r // ``group_rows`` (a frame's tokens share their frame's
    modulation: rows of [B, T, S, D] flattened, groups of [B, T]): what :func:`quantize_modulated_rows`' kernel
    computes."""
    _check_modulated(x, shift, scale, group_rows)
    y = F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype).float()
    g = torch.arange(x.shape[0], device=x.device) // group_rows
    return quantize_rows_fp8(y * (1 + scale.float()[g]) + shift.float()[g])


def _check_modulated(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, group_rows: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected x [M, D], got shape {tuple(x.shape)}")
    if group_rows < 1 or x.shape[0] % group_rows:
        raise ValueError(f"{x.shape[0]} rows are not whole groups of {group_rows}")
    want = (x.shape[0] // group_rows, x.shape[1])
    if shift.shape != want or scale.shape != want:
        raise ValueError(f"expected shift and scale {want}, got {tuple(shift.shape)} and {tuple(scale.shape)}")


def quantize_modulated_rows(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, group_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8 e4m3 of ``LN(x) * (1 + scale[g]) + shift[g]`` (see :func:`quantize_modulated_rows_reference`):
    (q [M, D], scale [M, 1] fp32). One Triton pass per row on CUDA (a row read once: the norm's statistics, the
    modulation, the row's largest magnitude, e4m3), else the reference.

    Where it would go (not yet wired into the DiT): a 5B chunk's self-attention and FFN inputs, the fp32 residual
    stream's rows normalised, modulated and quantised, which inductor's fused kernels took 0.15-0.26 ms a call for
    (session 17's profile, ~62 ms a chunk: ``bench/results/env_5b_fa3fp8_ffn_kernel_profile_session17_h200.json``)
    against ~0.06 ms for the bytes (17,600 fp32 rows of 3,072 in, e4m3 out). ``bench/fp8_rows.py`` times it."""
    _check_modulated(x, shift, scale, group_rows)
    if not _kernel_runs(x):
        return quantize_modulated_rows_reference(x, shift, scale, eps, group_rows)
    return _launch_modulated(x, shift, scale, eps, group_rows)


def _kernel_runs(x: torch.Tensor) -> bool:
    """Whether the row kernels take ``x`` [M, K]: on CUDA with Triton, a row of at most 32,768 in registers."""
    return x.is_cuda and triton_available() and x.shape[1] <= 32768


def _row_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """For a row kernel over x [M, K]: the e4m3 rows and fp32 scales to write, the block (K rounded up to a power
    of two: a whole row in registers) and the warps for it."""
    m, k = x.shape
    block = 1 << (k - 1).bit_length()
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    q = torch.empty(m, k, dtype=FP8, device=x.device)
    return q, torch.empty(m, 1, dtype=torch.float32, device=x.device), block, warps


def _launch_modulated(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, group_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's launch (on CUDA; Triton's interpreter runs it on the CPU: TRITON_INTERPRET=1)."""
    x, shift, scale = x.contiguous(), shift.float().contiguous(), scale.float().contiguous()
    q, row_scale, block, warps = _row_outputs(x)
    _modulated_rows_fp8[(x.shape[0],)](
        x,
        shift,
        scale,
        q,
        row_scale,
        x.shape[1],
        group_rows,
        eps,
        ROUND_BF16=x.dtype == torch.bfloat16,
        BLOCK=block,
        num_warps=warps,
    )
    return q, row_scale


if triton is not None:

    @triton.jit
    def _store_fp8_row(y, mask, q_ptrs, s_ptr):
        """A row ``y`` (fp32, lanes past ``mask`` ignored) as e4m3 at ``q_ptrs`` and its scale at ``s_ptr``: the
        row's largest magnitude maps to 448 (:func:`quantize_rows_fp8`)."""
        amax = tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0)
        scale = tl.maximum(amax, 1e-12) / 448.0  # _MIN_SCALE, FP8_MAX
        q = tl.minimum(tl.maximum(y / scale, -448.0), 448.0)
        tl.store(q_ptrs, q.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr, scale)

    @triton.jit
    def _modulated_rows_fp8(
        x_ptr,
        shift_ptr,
        scale_ptr,
        q_ptr,
        s_ptr,
        D,
        GROUP_ROWS,
        eps,
        ROUND_BF16: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
        y = xc * (1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps))
        if ROUND_BF16:  # the block's LayerNorm returns its input's dtype
            y = y.to(tl.bfloat16).to(tl.float32)
        g = row // GROUP_ROWS
        mod_scale = tl.load(scale_ptr + g * D + cols, mask=mask, other=0.0)
        mod_shift = tl.load(shift_ptr + g * D + cols, mask=mask, other=0.0)
        y = y * (1.0 + mod_scale) + mod_shift
        _store_fp8_row(y, mask, q_ptr + row * D + cols, s_ptr + row)

    @triton.jit
    def _rows_fp8(
        x_ptr,
        b_ptr,
        q_ptr,
        s_ptr,
        K,
        stride_x,
        stride_q,
        HAS_BIAS: tl.constexpr,
        GELU: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < K
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi) (x + 0.044715 x^3)
            x = 0.5 * x * (2.0 / (1.0 + tl.exp(-2.0 * inner)))  # 1 + tanh(u) = 2 sigmoid(2u)
        _store_fp8_row(x, mask, q_ptr + row * stride_q + cols, s_ptr + row)


def quantize_rows(
    x: torch.Tensor, gelu: bool = False, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8 e4m3 of ``gelu_tanh(x + bias)`` (each part optional) for x [M, K]: (q [M, K], scale [M, 1]
    fp32). One Triton pass per row on CUDA (rows up to 32,768 wide), else :func:`quantize_rows_reference`."""
    if x.dim() != 2:
        raise ValueError(f"expected x [M, K], got shape {tuple(x.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"expected a bias of shape ({x.shape[1]},), got {tuple(bias.shape)}")
    if not _kernel_runs(x):
        return quantize_rows_reference(x, gelu, bias)
    x = x.contiguous()
    q, scale, block, warps = _row_outputs(x)
    b = x if bias is None else bias.contiguous()  # a pointer the kernel never reads without HAS_BIAS
    m, k = x.shape
    _rows_fp8[(m,)](
        x, b, q, scale, k, x.stride(0), q.stride(0), HAS_BIAS=bias is not None, GELU=gelu, BLOCK=block, num_warps=warps
    )
    return q, scale
