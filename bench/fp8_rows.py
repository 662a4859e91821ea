"""Row-wise FP8 quantisation of the 5B DiT's activations: one Triton pass (world_model.fp8_rows) against the
torch path inductor compiles today (issue 14: the FFN's GELU + quantisation took 77 ms of a 1.19 s chunk).

For each shape (the FFN's hidden activations with the first layer's bias and the GELU; a block's 3,072-wide activations
without; a block's modulated LayerNorm of the fp32 residual stream, 880 tokens a frame, as the self-attention and FFN
inputs: ``quantize_modulated_rows``; the self-attention's q and k after their projections, RMS-normalised, rotated
and quantised with their heads' bound scales: ``world_model.fp8_attention.quantize_qk_rope``, timed for q and k
together; v's per-head largest magnitude: ``head_amax`` against the strided reduction), each
method's time per call (median of CUDA-event timings), its achieved bandwidth against ``--bandwidth-gbs`` (the
bytes: the bf16 rows read once, the e4m3 rows and fp32 scales written), and its agreement with the fp32
reference: the share of e4m3 values that differ and the dequantised values' relative error.

    python bench/fp8_rows.py --json bench/results/fp8_rows_h200.json        # a CUDA GPU
    python bench/fp8_rows.py --device cpu --rows 880                         # the plumbing (torch rows only)
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from world_model.attention import fp8_heads, head_amax, head_scales, rms_head_bounds
from world_model.dit import RMSNorm, _layer_norm, _modulate
from world_model.fp8_attention import quantize_qk_rope, quantize_qk_rope_reference
from world_model.fp8_rows import (
    quantize_modulated_rows,
    quantize_modulated_rows_reference,
    quantize_rows,
    quantize_rows_fp8,
    quantize_rows_reference,
    triton_available,
)
from world_model.rope import apply_rope

SHAPES = {"ffn_hidden_bias_gelu": (14336, True), "block_activations": (3072, False)}
TOKENS_PER_FRAME = 880  # the 5B window at 704x1280: 22 x 40 tokens a latent frame
EPS = 1e-6
HEADS = 24  # the 5B DiT's


def qk_path(q, k, norms, cos, sin):
    """What the self-attention computes without the kernel for q and k [M, D]: RMSNorm, RoPE in fp32, bf16, then
    ``fp8_heads`` with the norms' bounds (the 'fa3_fp8' backend); returns the e4m3 rows [M, D] and q's descale per
    feature [1, D]."""
    m, d = q.shape
    out = []
    for t, norm in zip((q, k), norms):
        y = apply_rope(norm(t).view(1, m, HEADS, -1), cos.view(1, m, HEADS, -1), sin.view(1, m, HEADS, -1))
        out.append(fp8_heads(y.to(t.dtype), rms_head_bounds(norm.weight, HEADS)))
    (q8, qd), (k8, _) = out
    return q8.view(m, d), qd.view(HEADS, 1).expand(HEADS, d // HEADS).reshape(1, d)


def qk_kernel(q, k, norms, cos, sin):
    """``quantize_qk_rope`` for q and k (one Triton program per token); returns as :func:`qk_path`."""
    m, d = q.shape
    qs, ks = (head_scales(rms_head_bounds(n.weight, HEADS), torch.bfloat16) for n in norms)
    q8, _ = quantize_qk_rope(q, k, norms[0].weight, norms[1].weight, EPS, cos, sin, qs, ks)
    return q8, (1.0 / qs).view(HEADS, 1).expand(HEADS, d // HEADS).reshape(1, d)


def strided_amax(v: torch.Tensor) -> torch.Tensor:
    """``fp8_heads``' reduction before session 18: over tokens and features at once (strided)."""
    return torch.maximum(v.amax(dim=(1, 3)), -v.amin(dim=(1, 3))).float()


def block_path(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a DiT block computes without the kernel: its modulated LayerNorm (per-frame shift and scale), then the
    FP8 linears' row quantisation."""
    y = _modulate(_layer_norm(x[None], EPS), shift[None], scale[None])[0]
    return quantize_rows_fp8(y)


def modulated_kernel(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_modulated_rows(x, shift, scale, EPS, x.shape[0] // shift.shape[0])


def model_path(x: torch.Tensor, gelu: bool, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the DiT computes without the kernel: the first layer's bias and the GELU in the activations' dtype,
    then the row quantisation."""
    if bias is not None:
        x = x + bias
    return quantize_rows_fp8(F.gelu(x, approximate="tanh") if gelu else x)


def timed(call, cuda: bool, repeats: int) -> float:
    """Median seconds per ``call()`` (CUDA events on a GPU, wall time on a CPU), after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def measured(shape: str, method: str, call, x: torch.Tensor, nbytes: int, ref, exact, args) -> dict:
    """One row of the table: ``call()``'s time per call over rows ``x`` moving ``nbytes``, its bandwidth against
    the ceiling, and its output's agreement with the reference and the exact values."""
    sec = timed(call, x.is_cuda, args.repeats)
    q, s = call()
    return {
        "shape": shape,
        "rows": x.shape[0],
        "width": x.shape[1],
        "method": method,
        "ms": sec * 1e3,
        "gb_per_s": nbytes / sec / 1e9,
        "of_bandwidth": nbytes / sec / 1e9 / args.bandwidth_gbs,
        "floor_ms": nbytes / (args.bandwidth_gbs * 1e9) * 1e3,
        **agreement(q, s, ref, exact),
    }


def agreement(q: torch.Tensor, s: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor], exact: torch.Tensor) -> dict:
    rq, _ = ref
    back = q.float() * s
    return {
        "e4m3_differ": float((q.view(torch.uint8) != rq.view(torch.uint8)).float().mean()),
        "rel_error": float((back - exact).norm() / exact.norm()),
    }


def qk_rows(device: torch.device, g: torch.Generator, args) -> list[dict]:
    """The self-attention's q/k rows (timed for both, the bytes of both) and v's per-head amax (bf16 read once)."""
    cuda = device.type == "cuda"
    m, d = args.rows, 3072
    q, k = ((torch.randn(m, d, device=device, generator=g) * 2).to(torch.bfloat16) for _ in range(2))
    norms = [RMSNorm(d, EPS).to(device) for _ in range(2)]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(torch.rand(d, device=device, generator=g) + 0.5)
            n.to(torch.bfloat16)
    angle = torch.rand(m, d // 2, device=device, generator=g) * 100
    cos, sin = angle.cos(), angle.sin()
    qs = head_scales(rms_head_bounds(norms[0].weight, HEADS), torch.bfloat16)
    ref = (quantize_qk_rope_reference(q, norms[0].weight, EPS, cos, sin, qs), None)
    qf = q.float()  # q normalised and rotated in fp32 throughout: what the e4m3 values stand for
    qf = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + EPS) * norms[0].weight.float()
    exact = apply_rope(qf.view(1, m, HEADS, -1), cos.view(1, m, HEADS, -1), sin.view(1, m, HEADS, -1)).view(m, d)
    nbytes = 2 * q.numel() * 2 + 2 * cos.numel() * 4 + 2 * q.numel()
    methods = {"eager": qk_path}
    if cuda:
        methods["compiled"] = torch.compile(qk_path, dynamic=False)
        if triton_available():
            methods["triton one pass"] = qk_kernel
    rows = []
    with torch.no_grad():
        for name, fn in methods.items():
            call = functools.partial(fn, q, k, norms, cos, sin)
            rows.append(measured("qk_norm_rope", name, call, q, nbytes, ref, exact, args))
        v = q.view(1, m, HEADS, -1)
        want = strided_amax(v)
        amax = {"strided (before)": strided_amax, "heads first": head_amax}
        for name, fn in list(amax.items()):
            amax[name + ", eager"] = fn
            if cuda:
                amax[name + ", compiled"] = torch.compile(fn, dynamic=False)
            del amax[name]
        for name, fn in amax.items():
            sec = timed(functools.partial(fn, v), cuda, args.repeats)
            nb = v.numel() * 2
            rows.append(
                {
                    "shape": "v_head_amax",
                    "rows": m,
                    "width": d,
                    "method": name,
                    "ms": sec * 1e3,
                    "gb_per_s": nb / sec / 1e9,
                    "of_bandwidth": nb / sec / 1e9 / args.bandwidth_gbs,
                    "floor_ms": nb / (args.bandwidth_gbs * 1e9) * 1e3,
                    "e4m3_differ": 0.0,
                    "rel_error": float((fn(v) - want).abs().max()),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", type=int, default=17600, help="tokens (the 5B window: 17,600)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--bandwidth-gbs", type=float, default=4000.0, help="the memory ceiling to compare with (H200)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fp8_rows: no CUDA device here (--device cpu measures the torch rows only)", file=sys.stderr)
        return 2
    methods = {"eager": model_path, "compiled": torch.compile(model_path, dynamic=False)}
    if device.type == "cuda" and triton_available():
        methods["triton one pass"] = quantize_rows
    elif device.type == "cuda":
        print("fp8_rows: Triton is missing: the kernel's row is skipped", file=sys.stderr)
    if device.type != "cuda":
        methods.pop("compiled")  # a CPU's inductor compile measures nothing the GPU question needs
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for shape, (k, gelu) in SHAPES.items():
        x = (torch.randn(args.rows, k, device=device, generator=g) * 2).to(torch.bfloat16)
        bias = torch.randn(k, device=device, generator=g).to(torch.bfloat16) if gelu else None  # the FFN's first bias
        ref = quantize_rows_reference(x, gelu, bias)
        exact = x.float() + (0 if bias is None else bias.float())
        exact = F.gelu(exact, approximate="tanh") if gelu else exact
        nbytes = x.numel() * 2 + x.numel() + args.rows * 4
        for name, fn in methods.items():
            call = functools.partial(fn, x, gelu, bias)
            rows.append(measured(shape, name, call, x, nbytes, ref, exact, args))
    # the modulated LayerNorm: fp32 rows in (the residual stream), e4m3 rows and scales out
    group = min(TOKENS_PER_FRAME, args.rows)
    frames = max(1, args.rows // group)
    x = torch.randn(frames * group, 3072, device=device, generator=g) * 2
    shift, scale = (0.5 * torch.randn(frames, 3072, device=device, generator=g) for _ in range(2))
    ref = quantize_modulated_rows_reference(x, shift, scale, EPS, group)
    exact = _modulate(_layer_norm(x[None], EPS), shift[None], scale[None])[0]
    nbytes = x.numel() * 4 + x.numel() + x.shape[0] * 4
    mod_methods = {"eager": block_path, "compiled": torch.compile(block_path, dynamic=False)}
    if device.type == "cuda" and triton_available():
        mod_methods["triton one pass"] = modulated_kernel
    if device.type != "cuda":
        mod_methods.pop("compiled")
    for name, fn in mod_methods.items():
        call = functools.partial(fn, x, shift, scale)
        rows.append(measured("modulated_layer_norm", name, call, x, nbytes, ref, exact, args))
    rows += qk_rows(device, g, args)
    print(
        f"{'shape':20s} {'method':16s} {'ms':>8s} {'GB/s':>8s} {'of ceiling':>10s} {'floor ms':>9s} {'e4m3 differ':>11s} {'rel err':>8s}"
    )
    for r in rows:
        print(
            f"{r['shape']:20s} {r['method']:16s} {r['ms']:8.3f} {r['gb_per_s']:8.0f} {r['of_bandwidth']:10.2f} "
            f"{r['floor_ms']:9.3f} {r['e4m3_differ']:11.4f} {r['rel_error']:8.4f}"
        )
    if args.json:
        out = {
            "benchmark": "fp8_rows",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "bandwidth_gbs": args.bandwidth_gbs,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
