"""Runtime options are applied from outside, in one place (world_model.runtime.apply_runtime, issue 14):
each option changes what runs, or raises saying what to do; defaults leave the numbers bit-identical."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from dit_fixture import dit_inputs, random_dit
from torch import nn

import world_model.attention as attention_mod
from world_model.attention import AttentionKernel, attention_backends, set_attention_backend
from world_model.config import DiTConfig, tiny
from world_model.dit import MatrixGameDiT
from world_model.model import load_world_model, random_world_model
from world_model.quant import (
    Float8Linear,
    Int8Linear,
    default_fp8_layers,
    fp8_supported,
    int8_rows,
    quantize_linears,
    quantize_rows_fp8,
)
from world_model.runtime import RuntimeOptions, apply_runtime, begins_graph_steps, compile_blocks


def _model(cfg: DiTConfig | None = None, seed: int = 0) -> MatrixGameDiT:
    return random_dit(cfg or tiny().dit, seed)


def _inputs(cfg: DiTConfig, B: int = 1, M: int = 1, F: int = 3, h: int = 4, w: int = 4, device="cpu", dtype=None):
    """dit_inputs (seed 1, a later chunk), the latents, text and camera code in ``dtype``, all on ``device``."""
    out = {}
    for k, v in dit_inputs(cfg, B, M, F, h, w).items():
        if v is not None and dtype is not None and k in ("x", "context", "plucker", "memory"):
            v = v.to(dtype)
        out[k] = None if v is None else v.to(device)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------
# Options validated; options that cannot work here raise with what to do
# --------------------------------------------------------------------------------------------


def test_int8_is_refused_on_a_gpu_with_the_fp8_alternative():
    from world_model.runtime import check_runtime

    with pytest.raises(ValueError, match="quantize='int8': INT8 GEMMs are offered on the CPU only.*quantize='fp8'"):
        check_runtime(RuntimeOptions(device="cuda", dtype=torch.bfloat16, quantize="int8"))
    check_runtime(RuntimeOptions(device="cpu", quantize="int8"))  # the CPU: fine


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantize": "fp8"}, "set dtype=torch.bfloat16"),
        ({"quantize": "fp8", "dtype": torch.bfloat16, "self_attn_projections": "fp32"}, "choose one"),
        ({"quantize": "fp4"}, "None, 'fp8' \\(CUDA\\), 'int8' \\(CPU\\) or 'auto'"),
        ({"quantize": "int8", "self_attn_projections": "fp32"}, "choose one"),
        ({"sequence_parallel": 0}, "int >= 1"),
        ({"compile": "yes"}, "True or False"),
        ({"attention": "fast"}, "attention must be one of"),
        ({"camera_cache": 1}, "None \\(auto\\), True or False"),
        ({"text_offload": True}, "runs on the CPU here already"),
        ({"device": "cuda", "text_device": "cpu", "text_offload": True}, "runs on the CPU here already"),
        ({"text_offload": "yes"}, "text_offload must be True or False"),
        ({"decode_segment": 0}, "decode_segment must be an int >= 1"),
        ({"decode_segment": 2.0}, "decode_segment must be an int >= 1"),
        ({"compile_decoder": 1}, "compile_decoder must be True or False"),
        ({"cuda_graphs": 1}, "cuda_graphs must be True or False"),
        ({"cuda_graphs": True}, "set compile=True too"),
    ],
)
def test_contradictory_or_unknown_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RuntimeOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attention": "cudnn"}, "needs a CUDA device.*use 'auto'"),
        ({"attention": "efficient"}, "needs a CUDA device"),
        ({"attention": "flash_attn"}, "needs a CUDA device"),
        ({"attention": "fa3"}, "needs a CUDA device"),
        ({"attention": "fa3_fp8"}, "needs a CUDA device"),
        ({"quantize": "fp8", "dtype": torch.bfloat16}, "need a CUDA GPU.*use quantize=None"),
        ({"sequence_parallel": 2}, "torchrun --nproc_per_node 2"),
        ({"compile": True, "cuda_graphs": True}, "cuda_graphs=True needs a CUDA device"),
    ],
)
def test_options_that_cannot_work_on_a_cpu_raise_before_anything_loads(kwargs, match):
    runtime = RuntimeOptions(device="cpu", **kwargs)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        apply_runtime(model, runtime)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert set(attention_backends(model).values()) == {"auto"}
    with pytest.raises(ValueError, match=match):
        load_world_model("tiny-random", runtime)


def test_fa3_backends_say_what_they_need(monkeypatch):
    monkeypatch.setattr(attention_mod, "fa3_available", lambda: False)
    with pytest.raises(ValueError, match="pip install fa3-fwd.*or use 'cudnn'"):
        attention_mod.check_attention_backend("fa3_fp8", "cuda", torch.bfloat16)
    monkeypatch.setattr(attention_mod, "fa3_available", lambda: True)
    with pytest.raises(ValueError, match="runs in bfloat16"):
        attention_mod.check_attention_backend("fa3", "cuda", torch.float16)
    attention_mod.check_attention_backend("fa3", "cuda", torch.bfloat16)  # what it needs: no error
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="CUDA bfloat16 inputs without a key mask"):
        attention_mod.attend(q, q, q, backend="fa3_fp8")  # a layer set to it on a CPU: raises, no fallback


def test_fp8_heads_scales_each_batch_element_and_head_on_its_own():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 64, 3, 16, generator=g)
    t[0, :, 1] *= 1e-3  # a quiet head keeps its precision: its own scale
    t[1, :, 2] = 0  # an all-zero head: scale 1, zeros
    t8, descale = attention_mod.fp8_heads(t.bfloat16())
    assert t8.dtype == torch.float8_e4m3fn and t8.shape == t.shape
    assert descale.shape == (2, 3) and descale.dtype == torch.float32
    assert descale[1, 2] == 1 and not t8[1, :, 2].float().any()
    assert torch.allclose(t8.float().abs().amax(dim=(1, 3))[descale != 1], torch.tensor(448.0))
    back = t8.float() * descale[:, None, :, None]
    for b, n in ((0, 0), (0, 1), (1, 0)):
        ref = t[b, :, n]
        assert (back[b, :, n] - ref).norm() / ref.norm() < 0.04  # e4m3: 3 mantissa bits, ~2.5 % rms
    assert torch.isfinite(back).all()


def test_rms_head_bounds_hold_and_keep_fp8_precision():
    """q and k come out of an RMSNorm over all heads' features and RoPE: the norms' weights bound them,
    even for a row with all its energy in one feature, and scaling by that bound loses no precision that
    counts against the measured per-head maximum."""
    from world_model.dit import RMSNorm
    from world_model.rope import apply_rope

    g = torch.Generator().manual_seed(0)
    B, L, N, D = 2, 64, 4, 16
    norm = RMSNorm(N * D, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(N * D, generator=g) * 2)
    x = torch.randn(B, L, N * D, generator=g)
    x[0, 0] = 0
    x[0, 0, norm.weight[:D].argmax()] = 3.0  # one feature, head 0's largest weight, holds the row: the bound
    x[1, 1, -1] = 1e4  # an outlier feature
    angles = torch.rand(B, L, N, D // 2, generator=g) * 6.3
    angles[0, 0] = 0
    with torch.no_grad():
        t = apply_rope(norm(x.bfloat16()).unflatten(-1, (N, D)), angles.cos(), angles.sin()).bfloat16()
    bound = attention_mod.rms_head_bounds(norm.weight, N)
    assert bound.shape == (N,)
    assert (t.float().abs().amax(dim=(0, 1, 3)) <= bound).all()
    assert t[0, 0].float().abs().amax() > 0.9 * bound[0]  # the bound is reached, not loose by construction
    dynamic, dd = attention_mod.fp8_heads(t)
    static, sd = attention_mod.fp8_heads(t, bound)
    assert sd.shape == (B, N) and torch.allclose(sd[0], sd[1])
    err = lambda t8, d: ((t8.float() * d[:, None, :, None] - t.float()).norm() / t.float().norm()).item()  # noqa: E731
    assert err(static, sd) < 1.1 * err(dynamic, dd) + 1e-3
    with pytest.raises(ValueError, match="backend 'fa3_fp8' only"):
        attention_mod.attend(t, t, t, backend="math", qk_bounds=(bound, bound))


def test_fa3_fp8_bounds_q_and_k_of_the_rms_normed_layers():
    from world_model.runtime import bound_qk_inputs

    model = _model()
    assert bound_qk_inputs(model) == 2 * model.cfg.num_layers  # self- and cross-attention of each block
    block = model.blocks[0]
    q_w, k_w = block.self_attn.attn.qk_rms_weights
    assert q_w is block.self_attn.norm_q.weight and k_w is block.self_attn.norm_k.weight  # the live weights
    copied = copy.deepcopy(model)
    assert copied.blocks[0].cross_attn.attn.qk_rms_weights[0] is copied.blocks[0].cross_attn.norm_q.weight


def test_fp8_support_names_the_reason_off_cuda():
    assert "CUDA" in fp8_supported("cpu")


# --------------------------------------------------------------------------------------------
# Attention backend: recorded per module, used by each module, no global
# --------------------------------------------------------------------------------------------


def test_loader_records_the_attention_backend_on_every_attention_module():
    wm = load_world_model("tiny-random", RuntimeOptions(attention="math"))
    backends = attention_backends(wm.dit)
    cfg = wm.config.dit
    a = cfg.action_config
    action_kernels = (a.enable_mouse + a.enable_keyboard) * len(a.blocks)  # mouse and keyboard attention
    assert len(backends) == 2 * cfg.num_layers + action_kernels
    assert set(backends.values()) == {"math"}
    assert load_world_model("tiny-random").dit.blocks[0].self_attn.attn.backend == "auto"  # no global left behind


def test_each_attention_module_calls_its_own_backend(monkeypatch):
    model = _model()
    set_attention_backend(model, "flash")
    model.blocks[1].self_attn.attn.backend = "math"  # one module differs: the backend is per module
    calls = []
    original = attention_mod.attend

    def recording(q, k, v, *, k_lens=None, backend="auto"):
        calls.append(backend)
        return original(q, k, v, k_lens=k_lens, backend=backend)

    monkeypatch.setattr(attention_mod, "attend", recording)
    with torch.no_grad():
        out = model(**_inputs(model.cfg))
    assert sorted(calls) == sorted(["math"] + ["flash"] * (len(attention_backends(model)) - 1))
    with torch.no_grad():
        set_attention_backend(model, "math")
        ref = model(**_inputs(model.cfg))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_attention_modules_add_no_checkpoint_keys():
    model = _model()
    assert not any(".attn." in k or "mouse_attn." in k or "keyboard_attn." in k for k in model.state_dict())
    assert isinstance(model.blocks[0].cross_attn.attn, AttentionKernel)


# --------------------------------------------------------------------------------------------
# Defaults change nothing
# --------------------------------------------------------------------------------------------


def test_default_options_leave_the_outputs_bit_identical():
    model = _model()
    inp = _inputs(model.cfg)
    with torch.no_grad():
        before = model(**inp)
        apply_runtime(model, RuntimeOptions())
        after = model(**inp)
    assert torch.equal(before, after)
    assert not any(isinstance(m, Float8Linear) for m in model.modules())
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in model.blocks)


def test_embedded_default_model_is_bit_identical_to_its_plain_weights():
    """The shipped model loaded with default options computes exactly what its weights compute in
    a plain MatrixGameDiT (the options machinery adds nothing to the default path)."""
    wm = load_world_model("default", RuntimeOptions())
    plain = MatrixGameDiT(wm.config.dit).eval()
    plain.load_state_dict(wm.dit.state_dict())
    inp = _inputs(wm.config.dit, h=8, w=8)
    with torch.no_grad():
        assert torch.equal(wm.dit(**inp), plain(**inp))


# --------------------------------------------------------------------------------------------
# 8-bit linears (FP8 e4m3, row-wise): CPU reference of the quantised product
# --------------------------------------------------------------------------------------------


def test_fp8_row_quantisation_round_trips_within_e4m3_precision():
    x = torch.randn(7, 64) * torch.logspace(-3, 3, 7)[:, None]  # rows of very different ranges
    q, scale = quantize_rows_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (7, 1)
    back = q.float() * scale
    assert ((back - x).abs() <= 2**-3 * x.abs().amax(-1, keepdim=True) / 2 + 1e-12).all()  # 3 mantissa bits
    assert (back - x).abs().max() > 0  # it really quantises


def test_fp8_linear_reference_is_close_to_the_float_linear():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    q = Float8Linear.from_linear(layer, dtype=torch.float32)
    x = torch.randn(3, 5, 64)
    out, ref = q(x), layer(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert 1e-3 < _rel(out, ref) < 6e-2
    assert q.weight.shape == layer.weight.shape and q.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="divisible by 16"):
        Float8Linear.from_linear(nn.Linear(64, 24))


def test_fp8_weights_survive_dtype_casts_of_the_model():
    q = Float8Linear.from_linear(nn.Linear(32, 16), dtype=torch.float32)
    w, s = q.weight_fp8.clone(), q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert torch.equal(q.weight_fp8, w) and q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, s)
    assert q.dtype == torch.bfloat16 and q.weight.dtype == torch.bfloat16 and q.bias.dtype == torch.bfloat16
    assert q(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_quantize_linears_frees_each_float_layer_once_replaced(monkeypatch):
    """The 5B's bf16 linears (9.3 GiB) were all held until the last one was quantised: a build peak of bf16 + fp8."""
    import weakref

    model = _model()
    originals = [weakref.ref(m) for m in model.modules() if type(m) is nn.Linear]
    alive_at_each_call = []
    make = Float8Linear.from_linear.__func__

    def spy(cls, linear, dtype=None):
        alive_at_each_call.append(sum(r() is not None for r in originals))
        return make(cls, linear, dtype)

    monkeypatch.setattr(Float8Linear, "from_linear", classmethod(spy))
    names = quantize_linears(model)
    assert len(names) > 2 and alive_at_each_call == [len(originals) - k for k in range(len(names))]


def test_quantize_linears_takes_the_block_linears_and_the_model_still_runs():
    model = _model()
    inp = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(**inp)
    names = quantize_linears(model)
    expected = {
        f"blocks.{i}.{n}"
        for i in range(model.cfg.num_layers)
        for n in (
            *(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"),
            "ffn.0",
            "ffn.2",
            "cam_injector_layer1",
            "cam_injector_layer2",
            "cam_scale_layer",
            "cam_shift_layer",
        )
    }
    assert set(names) == expected
    assert not any("action_model" in n for n in names)
    assert isinstance(model.head.head, nn.Linear) and not default_fp8_layers("head.head", model.head.head)
    with torch.no_grad():
        out = model(**inp)  # the CPU reference path
    assert 1e-4 < _rel(out, ref) < 0.1


def test_int8_rows_round_to_the_nearest_step_of_each_row():
    x = torch.randn(7, 64) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0  # an all-zero row: zeros, a finite scale
    q, scale = int8_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (7, 1) and q.abs().max() == 127
    assert torch.equal(q[3], torch.zeros_like(q[3])) and scale[3].item() > 0
    assert ((q.float() * scale - x).abs() <= scale / 2 * (1 + 1e-5)).all()
    assert (q.float() * scale - x).abs().max() > 0  # it really quantises
    assert torch.equal(int8_rows(x.bfloat16())[0], int8_rows(x.bfloat16().float())[0])  # bf16 in: the same rows


def test_int8_linear_is_close_to_the_float_linear_and_keeps_stored_integers():
    from world_model.weights import quantize_rows_int8

    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    stored, scale = quantize_rows_int8(layer.weight.detach())  # the embedded model's file format
    with torch.no_grad():
        layer.weight.copy_(stored.float() * scale.float()[:, None])  # what its loader hands the model
    q = Int8Linear.from_linear(layer)
    assert torch.equal(q.weight_int8_t.t(), stored)  # the GEMM multiplies the shipped integers
    x = torch.randn(3, 5, 64)
    out, ref = q(x), layer(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert 1e-4 < _rel(out, ref) < 2e-2  # the activations' rounding (bf16's is ~3e-3)
    want = F.linear(int8_rows(x.reshape(-1, 64))[0].float() * int8_rows(x.reshape(-1, 64))[1], q.dequantized_weight())
    assert torch.allclose(out.reshape(-1, 32), want + layer.bias, atol=1e-5)  # exactly the quantised product
    assert q.weight.shape == layer.weight.shape and q.weight.dtype == torch.float32
    no_bias = Int8Linear.from_linear(nn.Linear(64, 32, bias=False))
    assert no_bias.bias is None and no_bias(x).shape == (3, 5, 32)


def test_int8_weights_survive_dtype_casts_of_the_model():
    q = Int8Linear.from_linear(nn.Linear(32, 16))
    w, s = q.weight_int8_t.clone(), q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert torch.equal(q.weight_int8_t, w) and q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, s)
    assert q.dtype == torch.bfloat16 and q.bias.dtype == torch.bfloat16
    assert q(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_quantize_int8_takes_the_block_linears_and_the_model_stays_close():
    model = _model()
    inp = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(**inp)
    apply_runtime(model, RuntimeOptions(device="cpu", quantize="int8"))
    chosen = {n for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert chosen and all(n.startswith("blocks.") and "action_model" not in n for n in chosen)
    assert "blocks.0.ffn.0" in chosen and "blocks.0.self_attn.q" in chosen
    with torch.no_grad():
        out = model(**inp)
    assert 1e-4 < _rel(out, ref) < 0.05


def test_auto_quantize_takes_int8_for_int8_stored_weights_in_fp32_on_an_int8_cpu(monkeypatch):
    import world_model.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "cpu_int8_native", lambda: True)
    auto = RuntimeOptions(device="cpu", quantize="auto")
    assert auto.resolve_quantize(True).quantize == "int8"
    assert auto.resolve_quantize(False).quantize is None  # float weights: not quantised behind the user's back
    assert dataclasses.replace(auto, dtype=torch.bfloat16).resolve_quantize(True).quantize is None  # did not pay
    assert RuntimeOptions(device="cpu", quantize=None).resolve_quantize(True).quantize is None  # explicit wins
    assert RuntimeOptions(device="cuda", dtype=torch.bfloat16, quantize="auto").resolve_quantize(True).quantize is None
    monkeypatch.setattr(runtime_mod, "cpu_int8_native", lambda: False)
    assert auto.resolve_quantize(True).quantize is None
    model = _model()
    apply_runtime(model, auto)  # unresolved 'auto' quantises nothing
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


def test_loaders_resolve_auto_quantize_from_how_the_weights_are_stored(monkeypatch):
    import world_model.runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "cpu_int8_native", lambda: True)
    monkeypatch.delenv("MG3_CPU_QUANTIZE")  # the suite's "none" (conftest): a user's default
    runtime = RuntimeOptions.for_device("cpu", dtype=torch.float32)
    assert runtime.quantize == "auto"
    default = load_world_model("default", runtime)  # stored in int8
    assert default.runtime.quantize == "int8" and isinstance(default.dit.blocks[0].ffn[0], Int8Linear)
    random = load_world_model("tiny-random", runtime)  # float weights
    assert random.runtime.quantize is None and type(random.dit.blocks[0].ffn[0]) is nn.Linear
    bf16 = load_world_model("default", dataclasses.replace(runtime, dtype=torch.bfloat16))
    assert bf16.runtime.quantize is None and type(bf16.dit.blocks[0].ffn[0]) is nn.Linear
    off = load_world_model("default", RuntimeOptions.for_device("cpu", dtype=torch.float32, quantize=None))
    assert off.runtime.quantize is None and type(off.dit.blocks[0].ffn[0]) is nn.Linear
    with pytest.raises(ValueError, match="offered on the CPU only: it is not replicated to cuda"):
        default.replicate("cuda")  # refused before anything is copied
    assert default.replicate("cpu").runtime.quantize == "int8"


# --------------------------------------------------------------------------------------------
# compile: each block, same output as eager
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_blocks_match_eager_on_cpu():
    cfg = dataclasses.replace(tiny().dit, num_layers=1)  # one block (with the action module): one graph
    model = _model(cfg)
    inp = _inputs(cfg)
    with torch.no_grad():
        ref = model(**inp)
    from torch._dynamo.utils import counters

    counters.clear()
    apply_runtime(model, RuntimeOptions(compile=True))
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    with torch.no_grad():
        out = model(**inp)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really ran
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    copied = copy.deepcopy(model)  # a copy runs eagerly until compiled again, on its own weights
    assert all(b._compiled_call_impl is None for b in copied.blocks)
    compile_blocks(copied)
    assert all(b._compiled_call_impl is not None for b in copied.blocks)


@pytest.mark.slow
def test_compiled_camera_modulation_one_graph_for_every_block():
    """A cached window computes each block's camera modulation outside the blocks' compiled forwards:
    ``compile`` compiles it too, as one graph that every block (and a copy of the DiT) runs on its own
    weights; same output as eager."""
    from torch._dynamo.utils import counters

    from world_model.dit import reuse_conditioning
    from world_model.runtime import compiled_camera_modulation

    cfg = dataclasses.replace(tiny().dit, num_layers=3, action_config=None)
    model = _model(cfg)
    inp = _inputs(cfg)
    with torch.no_grad(), reuse_conditioning(model):
        ref = model(**inp)
    apply_runtime(model, RuntimeOptions(compile=True))
    assert model.camera_modulation_fn is compiled_camera_modulation()
    counters.clear()
    with torch.no_grad(), reuse_conditioning(model):
        out = model(**inp)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for block in copied.blocks:
            block.cam_scale_layer.weight.mul_(3.0)  # the copy's own weights, not the original's
        expected = copy.deepcopy(copied)
        expected.camera_modulation_fn = None
        for block in expected.blocks:
            block._compiled_call_impl = None
        with reuse_conditioning(expected):
            want = expected(**inp)
        with reuse_conditioning(copied):
            got = copied(**inp)
    assert _rel(want, ref) > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the first forward compiled the blocks' graph and the modulation's once; the copy compiled nothing new
    assert counters["stats"]["unique_graphs"] == graphs <= 3


def test_replicate_recompiles_the_copy():
    wm = load_world_model("tiny-random", RuntimeOptions(compile=True))  # compiles lazily: nothing runs here
    assert all(b._compiled_call_impl is not None for b in wm.dit.blocks)
    copy_ = wm.replicate("cpu")
    assert copy_.dit is not wm.dit
    assert all(b._compiled_call_impl is not None for b in copy_.dit.blocks)


def test_replicate_compiles_the_copy_with_the_models_cuda_graphs(monkeypatch):
    import dataclasses

    import world_model.model as model_module

    wm = load_world_model("tiny-random", RuntimeOptions(compile=True))
    wm = dataclasses.replace(wm, runtime=dataclasses.replace(wm.runtime, cuda_graphs=True))  # as on a GPU
    calls = []
    monkeypatch.setattr(model_module, "compile_blocks", lambda dit, **kw: calls.append(kw))
    wm.replicate("cpu")
    assert calls == [{"cuda_graphs": True}]  # the copy replays graphs as the model does (was: compiled without)


# --------------------------------------------------------------------------------------------
# compile_decoder: the VAE decoder as one compiled region, same frames as eager
# --------------------------------------------------------------------------------------------


def test_compile_decoder_reaches_every_copy_of_the_model():
    wm = load_world_model("tiny-random", RuntimeOptions(compile_decoder=True))  # compiles lazily
    assert wm.vae.decoder._compiled_call_impl is not None
    assert all(b._compiled_call_impl is None for b in wm.dit.blocks)  # the DiT's own option stays off
    copy_ = wm.replicate("cpu")
    assert copy_.vae is not wm.vae and copy_.vae.decoder._compiled_call_impl is not None
    assert wm.with_sampler(num_steps=2).vae.decoder._compiled_call_impl is not None
    plain = load_world_model("tiny-random", RuntimeOptions())
    assert getattr(plain.vae.decoder, "_compiled_call_impl", None) is None


def _stream_decode(vae, latents: list[torch.Tensor]) -> list[torch.Tensor]:
    """Decode the chunks of one stream in order (the cache carried), as the generator does."""
    cache, out = None, []
    for z in latents:
        video, cache = vae.decode(z, cache, segment=2)
        out.append(video)
    return out


def _chunks(vae, device="cpu", dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    c = vae.cfg
    return [torch.randn(1, c.z_dim, 2, 4, 4, generator=g).to(device, dtype) for _ in range(3)]  # fresh, then carried


@pytest.mark.slow
def test_compiled_decoder_matches_eager_on_cpu():
    from torch._dynamo.utils import counters

    from world_model.runtime import compile_decoder

    vae = load_world_model("tiny-random", RuntimeOptions()).vae
    z = _chunks(vae)
    with torch.no_grad():
        ref = _stream_decode(vae, z)
        counters.clear()
        compile_decoder(vae)
        out = _stream_decode(vae, z)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really ran
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decoding_after_a_reset_equals_a_new_stream_and_sees_no_carried_state():
    """A reset stream (states zeroed in the cache) decodes exactly as a new one; the decoder gets absent
    states for a first chunk either way (one compiled graph for both, see the next test)."""
    vae = load_world_model("tiny-random", RuntimeOptions()).vae
    z = _chunks(vae)
    seen = []
    hook = vae.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[1][0] is None))
    with torch.no_grad():
        fresh = _stream_decode(vae, z[:2])
        _, cache = vae.decode(z[2], vae.decode(z[0], None, segment=2)[1], segment=2)
        cache.reset_([True])
        again, cache = vae.decode(z[0], cache, segment=2)
        again2, _ = vae.decode(z[1], cache, segment=2)
    hook.remove()
    assert torch.equal(again, fresh[0]) and torch.equal(again2, fresh[1])
    assert seen == [True, False, True, False, True, False]  # first chunks (segment 2: one call each) start clean


@pytest.mark.slow
def test_compiled_decoder_compiles_nothing_new_for_a_reset_stream():
    """Measured on the H200 (2026-12-02): the second reset of a compiled-decoder env took 53 s, a new
    graph for a first chunk on a zeroed cache. A reset stream now reuses the first one's graphs."""
    from torch._dynamo.utils import counters

    from world_model.runtime import compile_decoder

    vae = load_world_model("tiny-random", RuntimeOptions()).vae
    compile_decoder(vae)
    z = _chunks(vae)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        _, cache = vae.decode(z[0], None, segment=2)
        _, cache = vae.decode(z[1], cache, segment=2)
        graphs = counters["stats"]["unique_graphs"]
        cache.reset_([True])
        _, cache = vae.decode(z[2], cache, segment=2)
        _, cache = vae.decode(z[1], cache, segment=2)
    assert graphs >= 2 and counters["stats"]["unique_graphs"] == graphs


# --------------------------------------------------------------------------------------------
# GPU: FP8 GEMMs and compiled blocks against eager bf16
# --------------------------------------------------------------------------------------------


def _need_fp8() -> None:
    if reason := fp8_supported("cuda"):
        pytest.skip(reason)


@pytest.mark.gpu
def test_fp8_linear_gemm_matches_its_reference_and_bf16():
    _need_fp8()
    torch.manual_seed(0)
    layer = nn.Linear(3072, 3072).cuda().to(torch.bfloat16)
    q = Float8Linear.from_linear(layer)
    x = torch.randn(4096, 3072, device="cuda", dtype=torch.bfloat16)
    out = q(x)  # torch._scaled_mm
    assert out.dtype == torch.bfloat16
    cpu_layer = copy.deepcopy(layer).cpu().float()
    ref_q = Float8Linear.from_linear(cpu_layer, dtype=torch.float32)(x.cpu().float())  # the same quantisation
    assert _rel(out.cpu(), ref_q) < 1e-2  # the GEMM computes the quantised product (fast accumulation)
    rel = _rel(out.float(), layer(x).float())
    assert rel < 6e-2, f"fp8 vs bf16 relative error {rel:.3e}"  # measured ~3.8e-2 on H200 at 5B shapes


@pytest.mark.gpu
@pytest.mark.parametrize("compile_,ffn_kernel", [(False, False), (True, False), (False, True), (True, True)])
def test_fp8_dit_close_to_bf16_eager(compile_, ffn_kernel):
    _need_fp8()
    from world_model.fp8_rows import triton_available

    if ffn_kernel and not triton_available():
        pytest.skip("Triton is not installed with this torch")
    cfg = dataclasses.replace(tiny().dit, dim=128, ffn_dim=256, action_config=None)
    model = _model(cfg).cuda().to(torch.bfloat16)
    inp = _inputs(cfg, M=1, F=3, h=8, w=8, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = model(**inp)
    runtime = RuntimeOptions(
        device="cuda", dtype=torch.bfloat16, quantize="fp8", compile=compile_, fp8_ffn_kernel=ffn_kernel
    )
    apply_runtime(model, runtime)
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) == 14 * cfg.num_layers  # 8 attn, 2 ffn, 4 cam
    assert sum(isinstance(m, Float8Linear) and m.input_gelu for m in model.modules()) == ffn_kernel * cfg.num_layers
    with torch.inference_mode():
        out = model(**inp)
    rel = _rel(out, ref)
    assert 1e-4 < rel < 0.1, f"fp8 DiT vs bf16 eager relative error {rel:.3e}"


@pytest.mark.gpu
def test_compiled_blocks_match_eager_on_gpu():
    model = _model().cuda().to(torch.bfloat16)
    inp = _inputs(model.cfg, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = model(**inp)
    apply_runtime(model, RuntimeOptions(device="cuda", dtype=torch.bfloat16, compile=True, attention="sdpa"))
    with torch.inference_mode():
        out = model(**inp)
    assert _rel(out, ref) < 2e-2  # bf16 kernels fused differently


def test_cuda_graphs_compile_the_blocks_in_reduce_overhead_mode_with_a_step_per_forward(monkeypatch):
    """The plumbing, on the CPU: each block compiled with mode="reduce-overhead", and a new graph step begun at
    every DiT forward (the previous forward's block outputs may be overwritten then)."""
    model = _model()
    modes = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    assert not begins_graph_steps(model)
    compile_blocks(model, cuda_graphs=True)
    assert modes == ["reduce-overhead"] * len(model.blocks) and begins_graph_steps(model)
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    inp = _inputs(model.cfg)
    with torch.no_grad():
        model(**inp)
        model(**inp)
    assert len(steps) == 2
    compile_blocks(model, cuda_graphs=True)  # again (a reload): one hook, not two
    with torch.no_grad():
        model(**inp)
    assert len(steps) == 3
    modes.clear()
    compile_blocks(_model())
    assert modes == [None] * len(model.blocks)


@pytest.mark.gpu
def test_cuda_graphs_match_eager_on_gpu_and_replay():
    """Compiled blocks as CUDA graphs: the same outputs as eager over repeated forwards (the graphs recorded at the
    second call, replayed after), none of the blocks skipped by inductor's graph checks."""
    from torch._dynamo.utils import counters

    model = _model().cuda().to(torch.bfloat16)
    inp = _inputs(model.cfg, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = model(**inp).clone()
    counters.clear()
    apply_runtime(
        model, RuntimeOptions(device="cuda", dtype=torch.bfloat16, compile=True, cuda_graphs=True, attention="sdpa")
    )
    with torch.inference_mode():
        outs = [model(**inp).clone() for _ in range(4)]
    assert all(_rel(o, ref) < 2e-2 for o in outs)
    assert torch.equal(outs[2], outs[3])  # replays of one recorded graph
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])


@pytest.mark.gpu
def test_compiled_decoder_matches_eager_on_gpu():
    from world_model.runtime import compile_decoder

    vae = load_world_model("tiny-random", RuntimeOptions(device="cuda", dtype=torch.bfloat16)).vae
    z = _chunks(vae, "cuda", torch.bfloat16)
    with torch.inference_mode():
        ref = _stream_decode(vae, z)
        compile_decoder(vae)
        out = _stream_decode(vae, z)
    for a, b in zip(out, ref):
        assert _rel(a, b) < 2e-2  # bf16 kernels fused differently


@pytest.mark.gpu
def test_fa3_backends_agree_with_sdpa_on_gpu():
    if not attention_mod.fa3_available():
        pytest.skip("the fa3-fwd package is not installed (bench/gpu/extras.sh installs it from .carry/fa3)")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    ref = attention_mod.attend(q.float(), k.float(), v.float(), backend="math")
    for backend, tol in (("fa3", 1e-2), ("fa3_fp8", 8e-2)):
        out = attention_mod.attend(q, k, v, backend=backend)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        assert _rel(out.float(), ref) < tol, backend
    model = _model().cuda().to(torch.bfloat16)
    inp = _inputs(model.cfg, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        apply_runtime(model, RuntimeOptions(device="cuda", dtype=torch.bfloat16, attention="cudnn"))
        ref = model(**inp)
        apply_runtime(model, RuntimeOptions(device="cuda", dtype=torch.bfloat16, attention="fa3_fp8"))
        assert set(attention_backends(model).values()) == {"fa3_fp8"}
        assert model.blocks[0].self_attn.attn.qk_rms_weights is not None  # q, k scaled by their norms' bounds
        bounded = model(**inp)
        assert _rel(bounded, ref) < 5e-2
        for m in model.modules():  # the same with q and k scaled by their measured maxima
            if isinstance(m, attention_mod.AttentionKernel):
                m.qk_rms_weights = None
        measured = model(**inp)
        assert _rel(bounded, ref) < 1.2 * _rel(measured, ref) + 2e-3


@pytest.mark.gpu
def test_cuda_attention_backends_are_used_on_gpu():
    model = _model().cuda().to(torch.bfloat16)
    inp = _inputs(model.cfg, device="cuda", dtype=torch.bfloat16)
    outs = {}
    for backend in ("math", "cudnn", "efficient", "flash"):
        apply_runtime(model, RuntimeOptions(device="cuda", dtype=torch.bfloat16, attention=backend))
        assert set(attention_backends(model).values()) == {backend}
        try:
            with torch.inference_mode():
                outs[backend] = model(**inp)
        except RuntimeError:  # SDPA has no kernel of this backend for one of the tiny shapes: it raises
            continue
    assert "math" in outs and len(outs) >= 2, sorted(outs)
    for backend, out in outs.items():
        assert _rel(out, outs["math"]) < 2e-2, backend


def test_camera_cache_option_reaches_the_dit_and_defaults_off_under_sequence_parallelism():
    assert RuntimeOptions().uses_camera_cache
    assert not RuntimeOptions(sequence_parallel=2).uses_camera_cache  # auto: off where it costs
    assert RuntimeOptions(sequence_parallel=2, camera_cache=True).uses_camera_cache
    assert load_world_model("tiny-random", RuntimeOptions(camera_cache=False)).dit.camera_cache is False
    assert load_world_model("tiny-random", RuntimeOptions()).dit.camera_cache is True


@pytest.mark.slow
def test_a_compiled_env_compiles_one_graph_per_shape_and_nothing_on_a_second_reset():
    """Measured on the H200 (2026-12-02, compile + fp8 + compiled decoder): a warm reset took 29.6 s. The
    compiled regions guarded on their inputs' strides: the first DiT block got the patch embedding's
    transposed tokens (a graph of its own), the decoder cache states and segments kept their slices'
    strides (a graph per layout). Now: one graph per block kind and shape, per decoder input shape."""
    from torch._dynamo.utils import counters

    from mg3_env import MatrixGameEnv

    torch._dynamo.reset()
    counters.clear()
    model = load_world_model("tiny-random", RuntimeOptions(compile=True, compile_decoder=True))
    env = MatrixGameEnv(model=model)
    env.reset(seed=0)
    for _ in range(2):
        env.step(env.action_space.sample())
    graphs = counters["stats"]["unique_graphs"]
    env.reset(seed=1)
    env.step(env.action_space.sample())
    # DiT: 2 block kinds (with and without the action module) x 2 window shapes (chunk 0, later chunks);
    # the cached windows' camera modulation: 1 x 2 window shapes; decoder: first segment (absent states),
    # carried states, the shorter last segment (dynamic from then on)
    assert graphs <= 4 + 2 + 3
    assert counters["stats"]["unique_graphs"] == graphs


# --------------------------------------------------------------------------------------------
# one-pass row quantisation (world_model.fp8_rows): the torch reference here, the Triton kernel on a GPU
# --------------------------------------------------------------------------------------------


def test_row_quantisation_reference_is_the_gelu_then_the_fp8_rows():
    from world_model.fp8_rows import quantize_rows, quantize_rows_reference

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 48, generator=g) * 3).bfloat16()
    q, s = quantize_rows(x, gelu=True)  # on a CPU: the reference
    rq, rs = quantize_rows_fp8(torch.nn.functional.gelu(x.float(), approximate="tanh"))
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
    b = torch.randn(48, generator=g)
    qb, sb = quantize_rows(x, gelu=True, bias=b)
    rqb, rsb = quantize_rows_fp8(torch.nn.functional.gelu(x.float() + b, approximate="tanh"))
    assert torch.equal(qb.view(torch.uint8), rqb.view(torch.uint8)) and torch.equal(sb, rsb)
    with pytest.raises(ValueError, match="bias of shape"):
        quantize_rows(x, bias=b[:5])
    q0, s0 = quantize_rows_reference(x)
    assert torch.equal(q0.view(torch.uint8), quantize_rows_fp8(x)[0].view(torch.uint8))
    with pytest.raises(ValueError, match=r"x \[M, K\]"):
        quantize_rows(x[None])


def test_fp8_rows_bench_runs_on_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(root / "bench" / "fp8_rows.py"), "--device", "cpu", "--rows", "8", "--repeats", "1"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    shapes = {"ffn_hidden_bias_gelu", "block_activations", "modulated_layer_norm", "qk_norm_rope", "v_head_amax"}
    assert {r["shape"] for r in rows} == shapes
    assert all(r["ms"] > 0 and 0 <= r["e4m3_differ"] < 0.05 and r["rel_error"] < 0.05 for r in rows)
    assert all(r["rel_error"] == 0 for r in rows if r["shape"] == "v_head_amax")  # the same maxima


def test_int8_linear_bench_runs_on_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "int8.json"
    cmd = [sys.executable, str(root / "bench" / "int8_linear.py"), "--tokens", "32", "--repeats", "2"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["in"], r["out"]) for r in rows] == [(320, 320), (320, 1024), (1024, 320)]
    assert all(all(v > 0 for v in r["ms"].values()) for r in rows)
    assert all(1e-4 < r["rel_error"]["int8"] < 3e-2 and r["rel_error"]["bf16"] < 1e-2 for r in rows)


@pytest.mark.slow
def test_int8_conv_bench_runs_on_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from world_model.quant import int8_convolution_available

    if not int8_convolution_available():
        pytest.skip("needs oneDNN's int8 convolution (an x86 torch with mkldnn)")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "int8_conv.json"
    cmd = [sys.executable, str(root / "bench" / "int8_conv.py"), "--chunks", "1", "--repeats", "1"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    convs, decoders = result["convolutions"], result["decoder"]
    assert len(convs) == 9 and all(r["ms"]["int8"] > 0 and 1e-3 < r["rel_error"] < 3e-2 for r in convs)
    settings = [(r["dtype"], r["quantize"]) for r in decoders]
    assert settings == [("float32", None), ("float32", "int8"), ("bfloat16", None), ("bfloat16", "int8")]
    assert decoders[0]["psnr_vs_fp32"] == [float("inf")]
    assert all(40 < r["psnr_vs_fp32"][0] < 90 for r in decoders[1:])


def test_fused_ffn_activations_keep_the_ffn():
    """fuse_ffn_activations moves each FP8 FFN's first bias and its GELU into the second layer's input
    quantisation: the same function (up to the bf16 rounding of the hidden activations it skips), the same
    structure for the model code (ffn[0].weight), the bias the live buffer; a model without one refuses."""
    from world_model.quant import fuse_ffn_activations

    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(32, 64), nn.GELU(approximate="tanh"), nn.Linear(64, 32)).to(torch.bfloat16)
    with torch.no_grad():
        ffn[0].bias.normal_()
    quantize_linears(ffn, include=lambda n, m: True)
    x = torch.randn(5, 7, 32).bfloat16()
    with torch.no_grad():
        ref = ffn(x).float()
        bias = ffn[0].bias
        assert fuse_ffn_activations(ffn) == 1
        assert isinstance(ffn[1], nn.Identity) and ffn[0].bias is None and ffn[2].input_bias is bias
        assert ffn[2].input_gelu and ffn[0].weight.dtype == torch.bfloat16
        out = ffn(x).float()
    assert _rel(out, ref) < 2e-2
    with pytest.raises(ValueError, match="no FP8 Linear-GELU"):
        fuse_ffn_activations(ffn)  # fused already: nothing left to fuse
    with pytest.raises(ValueError, match="set quantize='fp8' too"):
        RuntimeOptions(fp8_ffn_kernel=True)
    with pytest.raises(ValueError, match="True or False"):
        RuntimeOptions(quantize="fp8", dtype=torch.bfloat16, fp8_ffn_kernel=1)


@pytest.mark.gpu
def test_triton_row_quantisation_matches_the_reference_on_gpu():
    from world_model.fp8_rows import quantize_rows, quantize_rows_reference, triton_available

    if not triton_available():
        pytest.skip("Triton is not installed with this torch")
    g = torch.Generator(device="cuda").manual_seed(0)
    for k, gelu in ((14336, True), (3072, False), (100, True)):  # 100: a row narrower than its block (masked)
        x = (torch.randn(257, k, device="cuda", generator=g) * 2).bfloat16()
        bias = torch.randn(k, device="cuda", generator=g).bfloat16() if gelu else None
        q, s = quantize_rows(x, gelu, bias)
        rq, rs = quantize_rows_reference(x, gelu, bias)
        x = x if bias is None else x.float() + bias.float()
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
        differ = (q.view(torch.uint8) != rq.view(torch.uint8)).float().mean().item()
        assert differ < 1e-3, (k, gelu, differ)  # the GELU's exp form vs torch's tanh: a rounding tie now and then
        exact = torch.nn.functional.gelu(x.float(), approximate="tanh") if gelu else x.float()
        err = ((q.float() * s - exact).norm() / exact.norm()).item()
        assert err < 0.04


@pytest.mark.gpu
def test_triton_modulated_row_quantisation_matches_the_reference_on_gpu():
    """quantize_modulated_rows' kernel: a block's modulated LayerNorm of fp32 (and bf16) rows, quantised, as the
    reference computes it (the 5B width; a width narrower than its block; groups of rows sharing a modulation)."""
    from world_model.fp8_rows import quantize_modulated_rows, quantize_modulated_rows_reference, triton_available

    if not triton_available():
        pytest.skip("Triton is not installed with this torch")
    g = torch.Generator(device="cuda").manual_seed(0)
    for d, group, dtype in ((3072, 880, torch.float32), (3072, 880, torch.bfloat16), (100, 3, torch.float32)):
        x = (torch.randn(4 * group, d, device="cuda", generator=g) * 2 + 0.5).to(dtype)
        shift, scale = (0.5 * torch.randn(4, d, device="cuda", generator=g) for _ in range(2))
        q, s = quantize_modulated_rows(x, shift, scale, 1e-6, group)
        rq, rs = quantize_modulated_rows_reference(x, shift, scale, 1e-6, group)
        rtol = 1e-5 if dtype == torch.float32 else 2**-7  # bf16: its rounding of the normalised row may differ
        torch.testing.assert_close(s, rs, rtol=rtol, atol=0)
        back, ref = q.float() * s, rq.float() * rs
        assert ((back - ref).norm() / ref.norm()).item() < (1e-3 if dtype == torch.float32 else 2e-2), (d, dtype)


# ---- the CPU's default dtype ------------------------------------------------------------------------------------


def test_cpu_bf16_native_reads_the_cpu_flags(tmp_path):
    from world_model.runtime import cpu_bf16_native

    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f\n")
    amx = tmp_path / "c"
    amx.write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_bf16_native(with_bf16) and cpu_bf16_native(amx)
    assert not cpu_bf16_native(without)
    assert not cpu_bf16_native(tmp_path / "missing")  # not Linux: no flags, fp32


def test_cpu_int8_native_reads_the_cpu_flags(tmp_path):
    from world_model.runtime import cpu_int8_native

    for flags, want in (("avx2 avx512f avx512_vnni", True), ("avx2 avx_vnni", True), ("amx_int8 amx_tile", True)):
        (f := tmp_path / "x").write_text(f"processor\t: 0\nflags\t\t: fpu {flags}\n")
        assert cpu_int8_native(f) is want
    (f := tmp_path / "y").write_text("flags\t\t: fpu avx2 fma avx512f avx512_bf16\n")
    assert not cpu_int8_native(f) and not cpu_int8_native(tmp_path / "missing")


def test_cpu_name_tells_the_generations_of_one_model_name_apart(tmp_path):
    from world_model.runtime import cpu_name

    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: {m}\nmodel name\t: AMD EPYC\n"
    (f := tmp_path / "cpuinfo").write_text(block.format(n=0, m=2) + "\n" + block.format(n=1, m=9))
    assert cpu_name(f) == "AMD EPYC (family 26, model 2)"  # the first processor's
    (g := tmp_path / "bare").write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_name(g) == "Some CPU"
    assert cpu_name(tmp_path / "missing")  # a name all the same (platform's, or "cpu")


_FAULTS_OF_TEMPORARIES = """
import resource, sys, torch
from world_model.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once; then it says it is in effect
x = torch.ones(16 << 20)  # 64 MB: over glibc's largest default mapping threshold (32 MB)
(x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    (x * 2).sum()  # each a fresh 64 MB temporary: 16k pages to fault in if it is mapped anew
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_freed_memory_spares_large_temporaries_their_page_faults():
    """In fresh processes, as a user's, three of each: where the heap cannot grow in place (a long test process; at
    times in a fresh one too, by where the libraries happen to be mapped) glibc still maps some blocks afresh, so the
    sums are compared (measured: 0 faults with it in most processes, 2 of 5 temporaries faulted in at worst; 5 of 5
    without it)."""
    import os
    import platform
    import subprocess
    import sys
    from pathlib import Path

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    root = Path(__file__).resolve().parents[1]
    faults = {"system": 0, "keep": 0}
    for mode in ("system", "keep") * 3:
        proc = subprocess.run(
            [sys.executable, "-c", _FAULTS_OF_TEMPORARIES, mode],
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        faults[mode] += int(proc.stdout.split()[-1])
    assert faults["system"] > 3 * 40_000 and faults["keep"] < faults["system"] / 2, faults


def test_cpu_models_keep_freed_memory_unless_the_variable_says_system(monkeypatch):
    import world_model.runtime as runtime_mod

    calls = []
    monkeypatch.setattr(runtime_mod, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.delenv("MG3_CPU_MALLOC", raising=False)
    load_world_model("tiny-random", RuntimeOptions(device="cpu"))
    assert calls
    calls.clear()
    runtime_mod.apply_process_runtime(RuntimeOptions(device="cuda", dtype=torch.bfloat16))
    assert not calls  # a GPU's runtime leaves the process's malloc alone
    monkeypatch.setenv("MG3_CPU_MALLOC", "system")
    load_world_model("tiny-random", RuntimeOptions(device="cpu"))
    assert not calls
    monkeypatch.setenv("MG3_CPU_MALLOC", "big")
    with pytest.raises(ValueError, match="MG3_CPU_MALLOC must be one of"):
        load_world_model("tiny-random", RuntimeOptions(device="cpu"))


def test_gemm_attention_is_attention_and_auto_takes_it_on_a_cpu_in_bf16_within_its_memory_bound(monkeypatch):
    import world_model.attention as attn
    from world_model.attention import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=g) for n in (7, 9, 9))  # [B, L, N, D]
    k_lens = torch.tensor([9, 5])
    for lens in (None, k_lens):
        torch.testing.assert_close(
            attend(q, k, v, k_lens=lens, backend="gemm"),
            attend(q, k, v, k_lens=lens, backend="math"),
            rtol=1e-5,
            atol=1e-5,
        )
    calls = []
    real = attn._gemm_attention
    monkeypatch.setattr(attn, "_gemm_attention", lambda *a: calls.append(a[0].dtype) or real(*a))
    attend(q, k, v)  # fp32: SDPA
    assert not calls
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert calls == [torch.bfloat16] and (out.float() - attend(q, k, v)).abs().max() < 3e-2
    monkeypatch.setattr(attn, "_AUTO_GEMM_MAX_SCORE_BYTES", 2 * 3 * 7 * 9 * 2 - 1)  # one byte short of the scores
    attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert calls == [torch.bfloat16]  # too large: SDPA


def test_default_cpu_quantize_follows_the_variable(monkeypatch):
    monkeypatch.delenv("MG3_CPU_QUANTIZE", raising=False)
    assert RuntimeOptions.for_device("cpu").quantize == "auto"
    assert RuntimeOptions.for_device("cuda").quantize is None
    for name, want in (("none", None), ("int8", "int8"), ("auto", "auto")):
        monkeypatch.setenv("MG3_CPU_QUANTIZE", name)
        assert RuntimeOptions.for_device("cpu").quantize == want
    assert RuntimeOptions.for_device("cpu", quantize=None).quantize is None  # explicit wins
    monkeypatch.setenv("MG3_CPU_QUANTIZE", "fp8")
    with pytest.raises(ValueError, match="MG3_CPU_QUANTIZE"):
        RuntimeOptions.for_device("cpu")


def test_default_cpu_dtype_follows_the_variable_then_the_cpu(monkeypatch):
    import world_model.runtime as runtime_mod

    monkeypatch.setenv("MG3_CPU_DTYPE", "bfloat16")
    assert runtime_mod.default_cpu_dtype() == torch.bfloat16
    assert RuntimeOptions.for_device("cpu").dtype == torch.bfloat16
    assert RuntimeOptions.for_device("cpu", dtype=torch.float32).dtype == torch.float32  # explicit wins
    monkeypatch.setenv("MG3_CPU_DTYPE", "fp16")
    with pytest.raises(ValueError, match="MG3_CPU_DTYPE"):
        RuntimeOptions.for_device("cpu")
    monkeypatch.delenv("MG3_CPU_DTYPE")
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime_mod, "cpu_bf16_native", lambda native=native: native)
        assert RuntimeOptions.for_device("cpu").dtype == want
        assert load_world_model("tiny-random").dit.blocks[0].ffn[0].weight.dtype == want


@pytest.mark.slow
def test_embedded_model_in_bf16_on_the_cpu_matches_fp32():
    """The user's default on a CPU with bf16 instructions: the embedded model's frames in bf16 within rounding of
    fp32's (measured 50-56 dB over four chunks, session 20)."""
    import numpy as np

    from mg3_env import MatrixGameEnv

    frames = {}
    for dtype in (torch.float32, torch.bfloat16):
        env = MatrixGameEnv(model=load_world_model("default", RuntimeOptions(device="cpu", dtype=dtype)))
        env.reset(seed=0)
        env.action_space.seed(0)
        obs, *_ = env.step(env.action_space.sample())
        frames[dtype] = np.asarray(obs["frames"], dtype=np.float64)
        env.close()
    mse = ((frames[torch.float32] - frames[torch.bfloat16]) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 40


@pytest.mark.slow
def test_embedded_model_with_int8_gemms_on_the_cpu_matches_fp32():
    """The fp32 default on a CPU with int8 dot products (quantize='auto' -> 'int8': the DiT's block linears and the
    VAE decoder's convolutions): the embedded model's frames within rounding of plain fp32's over three chunks
    (measured 54-56 dB over four chunks with int8 linears, bf16's 54-56, session 32; the decoder's int8
    convolutions alone 56 dB, session 33, ``bench/int8_conv.py``)."""
    import numpy as np

    from mg3_env import MatrixGameEnv

    frames = {}
    for quantize in (None, "int8"):
        env = MatrixGameEnv(model=load_world_model("default", RuntimeOptions(device="cpu", quantize=quantize)))
        env.reset(seed=0)
        env.action_space.seed(0)
        frames[quantize] = [np.asarray(env.step(env.action_space.sample())[0]["frames"], np.float64) for _ in range(3)]
        env.close()
    for a, b in zip(frames[None], frames["int8"], strict=True):
        assert 40 < 10 * np.log10(255**2 / ((a - b) ** 2).mean()) < 90  # close, and really quantised


def test_a_big_random_model_is_made_in_the_runtime_dtype_not_in_fp32_first(monkeypatch):
    """The 5B DiT made in fp32 and then cast held 18.6 GiB on the way (a 24.1 GiB build peak on an H100, session 51):
    a big random model's parameters are made in the runtime dtype, and torch's default dtype is restored."""
    made = []
    init = MatrixGameDiT.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append({p.dtype for p in self.parameters()})

    monkeypatch.setattr(MatrixGameDiT, "__init__", spy)
    cfg = tiny(16, 16)
    action = cfg.dit.action_config.replace(img_hidden_size=1024)
    big = cfg.replace(dit=cfg.dit.replace(dim=1024, num_heads=8, ffn_dim=128, num_layers=1, action_config=action))
    model = random_world_model(big, RuntimeOptions(device="cpu", dtype=torch.bfloat16))
    assert made == [{torch.bfloat16}] and {p.dtype for p in model.dit.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
