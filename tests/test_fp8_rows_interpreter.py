"""The Triton row kernels of world_model.fp8_rows on the CPU, through Triton's interpreter (TRITON_INTERPRET=1),
against their torch references: where Triton is installed (it is not in CPU builds of torch: skipped there), a
kernel is checked before it costs GPU minutes. The interpreter's e4m3 rounding is not the GPU's (triton 3.9: a value
that rounds up to a power of two comes out as half of it, 127.9 -> 64, and ties may differ): the test allows one
e4m3 step, or that lost carry, on under 10 % of the elements, and holds the row scales exact."""

from __future__ import annotations

import textwrap

import pytest
from triton_interpreter import run_interpreted

SCRIPT = textwrap.dedent(
    """
    import torch
    from triton_interpreter import e4m3_agree
    from world_model import fp8_rows as R

    def agree(got, want, rtol=1e-5, slack=0.0):  # row scales within rtol, values as e4m3_agree
        (q, s), (rq, rs) = got, want
        torch.testing.assert_close(s, rs, rtol=rtol, atol=0)
        e4m3_agree(q, rq, s, rs, slack)

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(12, 200, generator=g) * 3 + 1).to(dtype)
        shift, scale = torch.randn(3, 200, generator=g), 0.3 * torch.randn(3, 200, generator=g)
        got = R._launch_modulated(x, shift, scale, 1e-6, 4)
        exact = dtype == torch.float32  # bf16: its own rounding of the normalised row, 2^-6 at |LN(x)| < 4, may differ
        agree(got, R.quantize_modulated_rows_reference(x, shift, scale, 1e-6, 4), *((1e-5, 0.0) if exact else (2**-7, 0.03)))
    x, bias = torch.randn(8, 300, generator=g) * 2, torch.randn(300, generator=g)
    q = torch.empty(8, 300, dtype=R.FP8)
    s = torch.empty(8, 1)
    R._rows_fp8[(8,)](x, bias, q, s, 300, x.stride(0), q.stride(0), HAS_BIAS=True, GELU=True, BLOCK=512, num_warps=4)
    agree((q, s), R.quantize_rows_reference(x, True, bias))
    print("ok")
    """
)


def test_row_kernels_match_their_references_in_the_interpreter():
    run_interpreted(SCRIPT)


def test_modulated_rows_reference_is_the_blocks_modulated_layer_norm():
    """The reference is what a DiT block feeds its FP8 linears: dit._modulate of dit._layer_norm, quantised."""
    import torch

    from world_model.dit import _layer_norm, _modulate
    from world_model.fp8_rows import quantize_modulated_rows, quantize_modulated_rows_reference, quantize_rows_fp8

    g = torch.Generator().manual_seed(1)
    B, T, S, D = 2, 3, 4, 64
    x = torch.randn(B, T * S, D, generator=g) * 2
    shift, scale = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    want = quantize_rows_fp8(_modulate(_layer_norm(x, 1e-6), shift, scale).reshape(-1, D))
    got = quantize_modulated_rows_reference(x.reshape(-1, D), shift.reshape(-1, D), scale.reshape(-1, D), 1e-6, S)
    assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])
    cpu = quantize_modulated_rows(x.reshape(-1, D), shift.reshape(-1, D), scale.reshape(-1, D), 1e-6, S)
    assert torch.equal(cpu[0].float(), want[0].float())  # off CUDA: the reference
    with pytest.raises(ValueError, match="whole groups"):
        quantize_modulated_rows(x.reshape(-1, D), shift.reshape(-1, D), scale.reshape(-1, D), 1e-6, 5)
    with pytest.raises(ValueError, match="shift and scale"):
        quantize_modulated_rows(x.reshape(-1, D), shift.reshape(-1, D)[:-1], scale.reshape(-1, D), 1e-6, S)
