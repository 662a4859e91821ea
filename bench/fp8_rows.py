"""Row-wise FP8 quantisation of the 5B DiT's activations: one Triton pass (world_model.fp8_rows) against the
torch path inductor compiles today (issue 14: the FFN's GELU + quantisation took 77 ms of a 1.19 s chunk).

For each shape (the FFN's hidden activations with the first layer's bias and the GELU; a block's 3,072-wide activations
without; a block's modulated LayerNorm of the fp32 residual stream, 880 tokens a frame, as the self-attention and FFN
inputs: ``quantize_modulated_rows``), each
method's time per call (median of CUDA-event timings), its achieved bandwidth against ``--bandwidth-gbs`` (the
bytes: the bf16 rows read once, the e4m3 rows and fp32 scales written), and its agreement with the fp32
reference: the share of e4m3 values that differ and the dequantised values' relative error.

    python bench/fp8_rows.py --json bench/results/fp8_rows_h200.json        # a CUDA GPU
    python bench/fp8_rows.py --device cpu --rows 64                          # the plumbing (torch rows only)
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

from world_model.dit import _layer_norm, _modulate
from world_model.fp8_rows import (
    quantize_modulated_rows,
    quantize_modulated_rows_reference,
    quantize_rows,
    quantize_rows_fp8,
    quantize_rows_reference,
    triton_available,
)

SHAPES = {"ffn_hidden_bias_gelu": (14336, True), "block_activations": (3072, False)}
TOKENS_PER_FRAME = 880  # the 5B window at 704x1280: 22 x 40 tokens a latent frame
EPS = 1e-6


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
