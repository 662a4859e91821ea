"""RuntimeOptions.residual: the DiT's residual stream stored in bf16 between a block's steps (fewer bytes for the
memory-bound passes on a GPU) against the release's fp32 stream, checked on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from test_precision import BF16, _inputs, _model, _rel

from world_model.config import tiny
from world_model.model import random_world_model
from world_model.runtime import RuntimeOptions


def _block_output_dtypes(model, inputs: dict) -> tuple[torch.Tensor, list[torch.dtype]]:
    dtypes: list[torch.dtype] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype)) for b in model.blocks]
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, dtypes


def test_bf16_residual_stream_is_stored_in_bf16_within_the_bf16_model_s_error():
    """Every block hands on a bf16 stream instead of fp32; the whole forward moves away from the fp32-stream one
    (the option reaches it), by less than bf16's own error against an fp32 model."""
    ref_model = _model()
    bf16 = copy.deepcopy(ref_model).to(BF16)
    inputs = _inputs()
    with torch.no_grad():
        ref = ref_model(**inputs)
    fp32_stream, fp32_dtypes = _block_output_dtypes(bf16, inputs)
    bf16.set_residual_dtype(BF16)
    bf16_stream, bf16_dtypes = _block_output_dtypes(bf16, inputs)
    print(
        f"relative error vs the fp32 model: fp32 stream {_rel(fp32_stream, ref):.2e}, bf16 stream "
        f"{_rel(bf16_stream, ref):.2e}; between the two {_rel(bf16_stream, fp32_stream):.2e}"
    )
    assert fp32_dtypes == [torch.float32] * len(bf16.blocks)
    assert bf16_dtypes == [BF16] * len(bf16.blocks)
    assert 0 < _rel(bf16_stream, fp32_stream) < _rel(fp32_stream, ref)
    assert _rel(bf16_stream, ref) < 1.5 * _rel(fp32_stream, ref) < 0.05
    bf16.set_residual_dtype(None)
    again, _ = _block_output_dtypes(bf16, inputs)
    torch.testing.assert_close(again, fp32_stream, rtol=0, atol=0)


def test_runtime_option_is_applied_when_a_model_is_loaded_and_refused_where_it_would_do_nothing():
    for choice, dtype in (("fp32", None), ("dtype", BF16)):
        wm = random_world_model(tiny(16, 16), RuntimeOptions(dtype=BF16, residual=choice))
        assert [b.residual_dtype for b in wm.dit.blocks] == [dtype] * len(wm.dit.blocks)
        assert wm.replicate("cpu").dit.blocks[0].residual_dtype == dtype
    assert RuntimeOptions().residual == "fp32"
    with pytest.raises(ValueError, match=r"residual must be one of \('fp32', 'dtype'\)"):
        RuntimeOptions(dtype=BF16, residual="bf16")
    with pytest.raises(ValueError, match="float32 here"):
        RuntimeOptions(residual="dtype")  # the CPU default dtype: the same stream as 'fp32'
    with pytest.raises(ValueError, match="16-bit float dtype"):
        _model().set_residual_dtype(torch.float32)
