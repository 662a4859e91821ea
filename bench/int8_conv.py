"""The CPU's int8 convolution (``world_model.quant.Int8Conv``, ``RuntimeOptions(quantize="int8")``) in the VAE
decoder: each of the embedded decoder's convolution shapes, then the whole decoder on a rollout's latents.

Convolution rows: the median time of one call at the decoder's shapes for one chunk (40 frames; the
input with its causal frames; "up": the up-sampling convolutions, whose input is upsampled 2x first, in uint8
for int8), fp32 (oneDNN, channels-last) against int8 (the input's quantisation, then the int8 convolution with
its dequantisation), the int8 call's parts, GOP/s and the output's relative error against fp32 on the same
weights and a SiLU-shaped input.

Decoder rows: the model's VAE decoding the latents of ``--chunks`` chunks that the model generated from its
default image with random actions (each chunk with the decode cache of the one before, as the env runs it),
in fp32 and bf16, each with and without int8 convolutions: the median seconds per 40-frame chunk, and the
frames' PSNR and sharpness (mean luma gradient, in [0, 1] pixel units) against fp32's.

    python bench/int8_conv.py --threads 2 --json bench/results/int8_conv_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from _cpu_bench import cpu_line, cpu_record, median_seconds

from world_model.checks import positive_arg
from world_model.model import load_world_model
from world_model.quant import Int8Conv, uint8_tensor
from world_model.runtime import RuntimeOptions
from world_model.vae import _conv3d

# (in, out, kernel, frames, side, upsampled) of the embedded decoder's convolutions for one 40-frame chunk
# (upsampled: the up-sampling convolutions, whose input is the side / 2 tensor upsampled 2x in space first)
SHAPES = (
    (80, 80, (3, 3, 3), 10, 16, False),
    (80, 160, (3, 1, 1), 10, 16, False),
    (80, 80, (1, 3, 3), 20, 32, True),
    (80, 80, (3, 3, 3), 20, 32, False),
    (80, 160, (3, 1, 1), 20, 32, False),
    (80, 80, (1, 3, 3), 40, 64, True),
    (80, 40, (3, 3, 3), 40, 64, False),
    (40, 40, (3, 3, 3), 40, 64, False),
    (40, 12, (3, 3, 3), 40, 64, False),
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def conv_row(
    cin: int, cout: int, kernel: tuple[int, int, int], frames: int, side: int, upsampled: bool, repeats: int
) -> dict:
    g = torch.Generator().manual_seed(0)
    kt, kh, kw = kernel
    w = (torch.randn(cout, cin, *kernel, generator=g) * (cin * kt * kh * kw) ** -0.5).contiguous(
        memory_format=torch.channels_last_3d
    )
    b = torch.randn(cout, generator=g) * 0.1
    in_side = side // 2 if upsampled else side
    x = F.silu(torch.randn(1, cin, frames + kt - 1, in_side, in_side, generator=g)).contiguous(
        memory_format=torch.channels_last_3d
    )
    padding = (0, kh // 2, kw // 2)
    q = Int8Conv(w, padding=padding)
    xq, xs, xz = uint8_tensor(x)
    if upsampled:
        xq = F.interpolate(xq, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    s = {
        "fp32": median_seconds(lambda: _conv3d(x, w, b, padding=padding, upsample=upsampled), repeats),
        "int8": median_seconds(lambda: q(x, w, b, upsample=upsampled), repeats),
        "int8_quantise": median_seconds(lambda: uint8_tensor(x), repeats),
        "int8_conv": median_seconds(
            lambda: torch.ops.onednn.qconv_pointwise(
                xq,
                xs,
                xz,
                q.packed,
                q.scale,
                q.zero_points,
                b,
                [1, 1, 1],
                list(padding),
                [1, 1, 1],
                1,
                1.0,
                0,
                torch.float32,
                "none",
                [],
                "",
            ),  # fmt: skip
            repeats,
        ),
    }
    ops = 2 * cin * cout * kt * kh * kw * frames * side * side
    return {
        "in": cin,
        "out": cout,
        "kernel": list(kernel),
        "frames": frames,
        "side": side,
        "upsampled": upsampled,
        "ms": {k: v * 1e3 for k, v in s.items()},
        "gops": {k: ops / s[k] / 1e9 for k in ("fp32", "int8", "int8_conv")},
        "rel_error": rel(q(x, w, b, upsample=upsampled), _conv3d(x, w, b, padding=padding, upsample=upsampled)),
    }


@torch.no_grad()
def rollout_latents(model_name: str, chunks: int) -> list[tuple]:
    """The (latents, cache) of each decode call of a fp32 rollout of ``chunks`` chunks after the first."""
    from mg3_env.env import MatrixGameEnv

    model = load_world_model(model_name, RuntimeOptions(device="cpu", dtype=torch.float32, quantize=None))
    calls: list[tuple] = []
    decode = model.vae.decode

    def spy(z, cache=None, first_chunk=None, **kw):
        calls.append((z.clone(), None if cache is None else cache.clone(), first_chunk, kw))
        return decode(z, cache, first_chunk, **kw)

    model.vae.decode = spy
    env = MatrixGameEnv(model=model)
    env.action_space.seed(0)
    env.reset(seed=0)
    for _ in range(chunks):
        env.step(env.action_space.sample())
    del model.vae.decode
    return calls[1:]  # the chunks after the first (57 frames; timed separately by the env benches)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def sharpness(video: torch.Tensor) -> float:
    y = (video.float().mean(1) + 1) / 2
    return float((y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., :, 1:] - y[..., :, :-1]).abs().mean()) / 2


@torch.no_grad()
def decoder_rows(model_name: str, calls: list[tuple], repeats: int) -> list[dict]:
    rows, reference = [], None
    for dtype in (torch.float32, torch.bfloat16):
        for quantize in (None, "int8"):
            model = load_world_model(model_name, RuntimeOptions(device="cpu", dtype=dtype, quantize=quantize))
            vae = model.vae

            def decode_all(vae=vae, dtype=dtype):
                return [
                    vae.decode(z.to(dtype), None if c is None else c.to(dtype=dtype), f, **kw)[0]
                    for z, c, f, kw in calls
                ]

            videos = [v.float() for v in decode_all()]
            reference = reference or videos
            seconds = median_seconds(decode_all, repeats) / len(calls)
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "quantize": quantize,
                    "seconds_per_chunk": seconds,
                    "psnr_vs_fp32": [psnr(v, r) for v, r in zip(videos, reference)],
                    "sharpness": [sharpness(v) for v in videos],
                    "sharpness_fp32": [sharpness(r) for r in reference],
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="registry name or model folder (its VAE is measured)")
    p.add_argument("--chunks", type=int, default=4, help="rollout chunks whose latents the decoder rows decode")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=positive_arg, default=None, help="torch CPU threads")
    p.add_argument("--json", default="bench_int8_conv.json")
    args = p.parse_args()
    if args.chunks < 1 or args.repeats < 1:
        p.error("--chunks and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_line())
    convs = [conv_row(*shape, repeats=args.repeats * 2) for shape in SHAPES]
    print(
        f"{'conv':>24} {'fp32 ms':>8} {'int8 ms':>8} {'(quant':>7} {'conv)':>6} {'fp32 GF/s':>9} {'int8 GOP/s':>10} "
        f"{'fp32/int8':>9} {'rel err':>8}"
    )
    for r in convs:
        m, g = r["ms"], r["gops"]
        up = " up" if r["upsampled"] else ""
        name = f"{r['in']}->{r['out']} {'x'.join(map(str, r['kernel']))} {r['frames']}@{r['side']}{up}"
        print(
            f"{name:>24} {m['fp32']:>8.2f} {m['int8']:>8.2f} {m['int8_quantise']:>7.2f} {m['int8_conv']:>6.2f} "
            f"{g['fp32']:>9.0f} {g['int8_conv']:>10.0f} {m['fp32'] / m['int8']:>8.2f}x {r['rel_error']:>8.1e}"
        )
    calls = rollout_latents(args.model, args.chunks)
    decoders = decoder_rows(args.model, calls, args.repeats)
    print(f"\ndecoder of {args.model!r}, {len(calls)} chunks of 40 frames (latents of a fp32 rollout)")
    print(f"{'setting':>14} {'s/chunk':>8} {'PSNR vs fp32 (min, dB)':>23} {'sharpness / fp32':>17}")
    for r in decoders:
        name = r["dtype"] + ("+int8" if r["quantize"] else "")
        ratio = statistics.mean(a / b for a, b in zip(r["sharpness"], r["sharpness_fp32"]))
        print(f"{name:>14} {r['seconds_per_chunk']:>8.3f} {min(r['psnr_vs_fp32']):>23.2f} {ratio:>17.4f}")
    out = {
        **cpu_record(),
        "model": args.model,
        "convolutions": convs,
        "decoder": decoders,
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
