"""The VAE decoder's int8 convolutions (``RuntimeOptions(quantize="int8")`` on the CPU): world_model.quant's
uint8_tensor, Int8Conv and quantize_convs, and how the model and the runtime take them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vae_fixture import randomize_, small_vae_config

from world_model.model import load_world_model
from world_model.quant import Int8Conv, int8_convolution_available, int8_supported, quantize_convs, uint8_tensor
from world_model.runtime import RuntimeOptions, apply_vae_runtime, check_runtime
from world_model.vae import CausalConv3d, Resample, WanVAE

pytestmark = pytest.mark.skipif(
    not int8_convolution_available(), reason="needs oneDNN's int8 convolution (an x86 torch with mkldnn)"
)
CL = torch.channels_last_3d


def _dequantised(q: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    return (q.float() - zero) * scale


def test_uint8_tensor_rounds_to_the_nearest_level_keeps_zero_and_the_layout():
    g = torch.Generator().manual_seed(0)
    x = (F.silu(torch.randn(2, 5, 3, 4, 6, generator=g)) * 3).contiguous(memory_format=CL)
    q, scale, zero = uint8_tensor(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape and q.is_contiguous(memory_format=CL)
    assert scale == pytest.approx((x.max() - min(x.min(), 0)).item() / 254)
    assert (_dequantised(q, scale, zero) - x).abs().max() <= scale / 2 + 1e-6
    assert _dequantised(torch.tensor(zero), scale, zero) == 0  # zero padding stays exact
    positive = torch.rand(3, 7, generator=g) + 1  # the range is widened to hold 0
    qp, sp, zp = uint8_tensor(positive)
    assert zp == 0 and qp.max() == 254 and (_dequantised(qp, sp, zp) - positive).abs().max() <= sp / 2 + 1e-6
    # pieces: a tensor over one piece quantises as the same values in one go would
    big = torch.randn(3 << 19, generator=g)
    qb, sb, zb = uint8_tensor(big)
    assert torch.equal(qb, torch.add(torch.tensor(zb + 0.5), big, alpha=1 / sb).to(torch.uint8))
    qh, sh, zh = uint8_tensor(x.bfloat16())
    assert (_dequantised(qh, sh, zh) - x.bfloat16().float()).abs().max() <= sh / 2 + 1e-6


def test_uint8_tensor_declines_non_finite_values_and_takes_a_zero_tensor():
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(4, 4)
        x[1, 2] = bad
        assert uint8_tensor(x) is None
    q, scale, zero = uint8_tensor(torch.zeros(3, 3))
    assert scale == 1.0 and zero == 0 and not q.any()


def _conv_case(cin=6, cout=5, kernel=(3, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, *kernel, generator=g).contiguous(memory_format=CL) * 0.2
    b = torch.randn(cout, generator=g)
    x = F.silu(torch.randn(1, cin, 6, 8, 8, generator=g)).contiguous(memory_format=CL)
    return w, b, x


def test_int8_conv_is_the_exact_product_of_its_integers_and_close_to_the_float_one():
    w, b, x = _conv_case()
    conv = Int8Conv(w, padding=(0, 1, 1))
    y = conv(x, w, b)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    q, scale, zero = uint8_tensor(x)
    exact = F.conv3d(_dequantised(q, scale, zero), conv.dequantized_weight(), b, padding=(0, 1, 1))
    torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-5)  # int32 accumulation: exact
    ref = F.conv3d(x, w, b, padding=(0, 1, 1))
    assert (y - ref).norm() / ref.norm() < 3e-2
    assert torch.equal(conv.weight_int8.abs().amax(dim=(1, 2, 3, 4)), torch.full((5,), 127, dtype=torch.int8))
    yb = conv(x.bfloat16(), w.bfloat16(), b.bfloat16())  # bf16 in: bf16 out, the same integers
    assert yb.dtype == torch.bfloat16 and (yb.float() - y).norm() / y.norm() < 1e-2


def test_int8_conv_upsamples_its_uint8_input_as_the_float_path_upsamples_x():
    w, b, x = _conv_case(kernel=(1, 3, 3))
    conv = Int8Conv(w, padding=(0, 1, 1))
    up = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    # the same range, so the same levels: quantise-then-upsample is upsample-then-quantise
    torch.testing.assert_close(conv(x, w, b, upsample=True), conv(up, w, b), rtol=0, atol=1e-6)


def test_int8_conv_quantises_again_when_its_weight_changes():
    w, b, x = _conv_case()
    conv = Int8Conv(w, padding=(0, 1, 1))
    before = conv(x, w, b)
    with torch.no_grad():
        w.mul_(-2)  # e.g. load_state_dict copying new weights in place
    after = conv(x, w, b)
    bias = b.view(-1, 1, 1, 1)
    torch.testing.assert_close(after, -2 * (before - bias) + bias, rtol=1e-4, atol=1e-4)
    conv(x, w.bfloat16(), b)  # another tensor: packed again, no error
    with pytest.raises(ValueError, match="3-D convolution's weight"):
        Int8Conv(w[:, :, 0])


def _vae():
    vae = WanVAE(small_vae_config()).eval()
    randomize_(vae, torch.Generator().manual_seed(0))
    return vae


def test_quantize_convs_takes_every_decoder_convolution_once():
    vae = _vae()
    names = quantize_convs(vae.decoder)
    convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv3d)]
    ups = [m for m in vae.decoder.modules() if isinstance(m, Resample) and m.up]
    assert ups and len(names) == len(convs) + len(ups)
    assert all(m.int8 is not None for m in convs + ups)
    first = convs[0].int8
    quantize_convs(vae.decoder)  # idempotent
    assert convs[0].int8 is first
    assert all(m.int8 is None for m in vae.encoder.modules() if isinstance(m, CausalConv3d))
    with pytest.raises(ValueError, match="no convolution"):
        quantize_convs(torch.nn.Linear(3, 3))


def _psnr(a, b):
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))


@torch.no_grad()
def test_int8_decoder_changes_what_runs_and_stays_close_and_carries_a_nan():
    vae = _vae()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    z = vae.encode(video)
    ref, ref_cache = vae.decode(z)
    apply_vae_runtime(vae, RuntimeOptions(device="cpu", quantize="int8"))
    out, cache = vae.decode(z)
    assert not torch.equal(out, ref) and _psnr(out, ref) > 35
    nxt, _ = vae.decode(z[:, :, :2], cache)  # a continuing chunk, through the cached frames
    assert _psnr(nxt, vae.decode(z[:, :, :2], ref_cache)[0]) > 35
    bad = z.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    assert torch.isnan(vae.decode(bad, clamp=False)[0]).any()  # the float path carries the NaN on


def test_int8_decoder_leaves_autograd_to_the_float_weights():
    vae = _vae()
    quantize_convs(vae.decoder)
    z = torch.randn(1, vae.cfg.z_dim, 2, 4, 4)
    vae.decode(z)[0].square().mean().backward()  # the int8 kernel has no gradient: the float convolutions ran
    assert vae.decoder.conv1.weight.grad is not None and vae.decoder.conv1.weight.grad.abs().sum() > 0


def test_the_model_takes_int8_convolutions_with_int8_and_not_otherwise():
    int8 = load_world_model("tiny-random", RuntimeOptions(device="cpu", quantize="int8"))
    assert int8.vae.decoder.conv1.int8 is not None
    assert int8.with_sampler(num_steps=2).vae.decoder.conv1.int8 is int8.vae.decoder.conv1.int8
    copy = int8.replicate("cpu")  # oneDNN's packing is opaque: the copy packs its own weights
    z = torch.randn(1, int8.vae.cfg.z_dim, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(copy.vae.decode(z)[0], int8.vae.decode(z)[0], rtol=0, atol=0)
    assert copy.vae.decoder.conv1.int8 is not int8.vae.decoder.conv1.int8
    plain = load_world_model("tiny-random", RuntimeOptions(device="cpu", quantize=None))
    assert plain.vae.decoder.conv1.int8 is None


def test_int8_with_a_compiled_decoder_is_refused_and_int8_needs_the_onednn_kernel(monkeypatch):
    with pytest.raises(ValueError, match="compile_decoder=True would compile its float ones"):
        check_runtime(RuntimeOptions(device="cpu", quantize="int8", compile_decoder=True))
    import world_model.quant as quant

    monkeypatch.setattr(quant.platform, "machine", lambda: "arm64")
    assert "oneDNN" in int8_supported("cpu")
    with pytest.raises(ValueError, match="quantize='int8': the VAE decoder's int8 convolutions need oneDNN"):
        check_runtime(RuntimeOptions(device="cpu", quantize="int8"))
