"""The CPU's 8-bit linear layer (``world_model.quant.Int8Linear``, ``RuntimeOptions(quantize="int8")``) against the
float layer in fp32 and bf16, at the embedded DiT's shapes: a window of ``--tokens`` tokens (1,216: 14 latents of
the chunk and 5 retrieved from memory, 64 tokens each) through the blocks' 320 -> 320 (attention, camera), 320 ->
1024 and 1024 -> 320 (FFN) linears.

Each row: the median time of a whole layer call (for int8: the activations' quantisation, ``torch._int_mm``, the
scales and the bias), its parts for int8 (quantisation, GEMM, dequantisation), its achieved GOP/s, and its output's
relative error against the fp32 layer on the same weights (the int8 weights are those the fp32 layer has: what a
model stored in int8 multiplies).

    python bench/int8_linear.py --threads 2 --json bench/results/int8_linear_cpu.json
"""

from __future__ import annotations

import argparse
import json

import torch
from _cpu_bench import cpu_line, cpu_record, median_seconds
from torch import nn

from world_model.checks import positive_arg
from world_model.quant import Int8Linear, int8_rows

SHAPES = ((320, 320), (320, 1024), (1024, 320))  # (in, out) of the embedded DiT's block linears


def median_ms(fn, repeats: int) -> float:
    return median_seconds(fn, repeats, warmup=max(2, repeats // 10)) * 1e3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def measure(tokens: int, cin: int, cout: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(cin, cout)
    nn.init.normal_(layer.weight, std=cin**-0.5, generator=g)
    x = torch.randn(1, tokens, cin, generator=g)
    q = Int8Linear.from_linear(layer)
    ref = layer(x)
    x2 = x.reshape(-1, cin)
    xq, xs = int8_rows(x2)
    acc = torch._int_mm(xq, q.weight_int8_t)
    bf16 = nn.Linear(cin, cout).to(torch.bfloat16)
    bf16.load_state_dict(layer.state_dict())
    xb = x.bfloat16()
    ms = {
        "fp32": median_ms(lambda: layer(x), repeats),
        "bf16": median_ms(lambda: bf16(xb), repeats),
        "int8": median_ms(lambda: q(x), repeats),
        "int8_quantise": median_ms(lambda: int8_rows(x2), repeats),
        "int8_gemm": median_ms(lambda: torch._int_mm(xq, q.weight_int8_t), repeats),
        "int8_dequantise": median_ms(lambda: torch.addcmul(q.bias, torch.mul(acc, xs), q.weight_scale), repeats),
    }
    ops = 2 * tokens * cin * cout
    return {
        "tokens": tokens,
        "in": cin,
        "out": cout,
        "ms": ms,
        "gops": {k: ops / ms[k] / 1e6 for k in ("fp32", "bf16", "int8")},
        "rel_error": {"int8": rel(q(x), ref), "bf16": rel(bf16(xb).float(), ref)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1216)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=positive_arg, default=None, help="torch CPU threads")
    p.add_argument("--json", default="bench_int8_linear.json")
    args = p.parse_args()
    if args.tokens < 1 or args.repeats < 1:
        p.error("--tokens and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(args.tokens, cin, cout, args.repeats) for cin, cout in SHAPES]
    print(cpu_line())
    print(
        f"{'shape':>18} {'fp32 ms':>8} {'bf16 ms':>8} {'int8 ms':>8} {'(quant':>7} {'gemm':>6} {'dequant)':>8} "
        f"{'int8 x fp32':>11} {'int8 err':>9} {'bf16 err':>9}"
    )
    for r in rows:
        m = r["ms"]
        shape = f"{r['tokens']}x{r['in']}->{r['out']}"
        print(
            f"{shape:>18} {m['fp32']:>8.3f} {m['bf16']:>8.3f} {m['int8']:>8.3f} {m['int8_quantise']:>7.3f} "
            f"{m['int8_gemm']:>6.3f} {m['int8_dequantise']:>8.3f} {m['fp32'] / m['int8']:>10.2f}x "
            f"{r['rel_error']['int8']:>9.2e} {r['rel_error']['bf16']:>9.2e}"
        )
    out = {**cpu_record(), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
