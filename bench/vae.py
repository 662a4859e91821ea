"""Benchmark: decode one 40-frame chunk with the full and both pruned (MG-LightVAE) Wan2.2 decoders.

The release setting (spec §7): 10 latents -> 40 frames at 704x1280, continuing a stream (the cache
holds a decoded first chunk), segments of 4 latents, bf16, conv weights in channels_last_3d.
Weights are random (initialised directly on the device); speed does not depend on their values.

    python bench/vae.py                    # on one GPU: table + bench/results/vae.json
    python bench/vae.py --tiny             # tiny config on CPU (smoke run)

Per variant: seconds per chunk (median), frames/s, peak memory, decoder FLOPs (counted with
torch.utils.flop_counter: convolutions and attention), and the ratio of the measured time to the
FLOP floor at a measured bf16 conv3d / matmul ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world_model.config import VAEConfig, tiny  # noqa: E402
from world_model.model import default_dtype  # noqa: E402
from world_model.vae import WanVAE, channels_last_, decoder_widths  # noqa: E402

VARIANTS = (("full", 0.0), ("lightvae (p=0.5)", 0.5), ("lightvae_v2 (p=0.75)", 0.75))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure_ceilings(device: torch.device, dtype: torch.dtype, small: bool) -> dict[str, float]:
    """Achieved TFLOP/s of a large matmul and of 3x3x3 conv3d layers shaped like the decoder's."""
    out: dict[str, float] = {}
    n = 512 if small else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = statistics.median(_timed(lambda: a @ b, device, 3 if small else 10, 1 if small else 3))
    out["matmul_tflops"] = 2 * n**3 / t / 1e12
    # (channels, frames, height, width) of the decoder's heaviest layers at 704x1280
    shapes = [(16, 4, 16, 16)] if small else [(1024, 20, 88, 160), (512, 16, 176, 320), (256, 16, 352, 640)]
    best = 0.0
    for c, f, h, w in shapes:
        conv = torch.nn.Conv3d(c, c, 3, padding=(0, 1, 1), device=device, dtype=dtype)
        x = torch.randn(1, c, f + 2, h, w, device=device, dtype=dtype)
        if device.type == "cuda":
            conv = channels_last_(conv)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            t = statistics.median(_timed(lambda conv=conv, x=x: conv(x), device, 3 if small else 10, 1 if small else 3))
        tflops = 2 * c * c * 27 * f * h * w / t / 1e12
        out[f"conv3d_{c}ch_{h}x{w}_tflops"] = tflops
        best = max(best, tflops)
    out["conv3d_best_tflops"] = best
    return out


def bench_variant(
    name: str, cfg: VAEConfig, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, ceiling: float
) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        model = WanVAE(cfg)
    if device.type == "cuda":
        channels_last_(model)
    model.eval().requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for p in model.decoder.parameters())
    s = cfg.spatial_stride
    h, w = args.height // s, args.width // s
    later = args.frames // cfg.temporal_stride
    z0 = torch.randn(args.batch, cfg.z_dim, args.first_latents, h, w, device=device, dtype=dtype)
    z1 = torch.randn(args.batch, cfg.z_dim, later, h, w, device=device, dtype=dtype)
    with torch.inference_mode():
        _, cache = model.decode(z0, segment=args.segment)  # a decoded first chunk
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        video = None

        def step():
            nonlocal video
            video, _ = model.decode(z1, cache, segment=args.segment)

        times = _timed(step, device, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        # oneDNN off: CPU convolutions then go through aten.convolution, which the counter sees
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mkldnn.flags warns about Intel-GPU TF32
            with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
                model.decode(z1, cache, segment=args.segment)
        flops = counter.get_total_flops()
    assert video is not None and video.shape[2] == args.frames
    sec = statistics.median(times)
    floor = flops / (ceiling * 1e12) if ceiling > 0 else float("nan")
    row = {
        "variant": name,
        "pruning_rate": cfg.pruning_rate,
        "widths": decoder_widths(cfg),
        "batch": args.batch,
        "latents": later,
        "frames": int(video.shape[2]),
        "seconds": sec,
        "seconds_all": times,
        "frames_per_s": args.batch * video.shape[2] / sec,
        "peak_mem_gib": peak / 2**30,
        "peak_over_resident_gib": (peak - base_mem) / 2**30,
        "decoder_weights_gib": weights / 2**30,
        "decoder_gflop": flops / 1e9,
        "achieved_tflops": flops / sec / 1e12,
        "floor_s": floor,
        "floor_ratio": sec / floor if not math.isnan(floor) else float("nan"),
    }
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config at 64x64 (CPU smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--frames", type=int, default=40, help="frames of the timed (continuing) chunk")
    ap.add_argument("--first-latents", type=int, default=15, help="latents of the untimed first chunk")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--segment", type=int, default=4, help="latents per decoder call (MG3: 4)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vae.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = tiny().vae if args.tiny else VAEConfig()
    args.height = args.height or (64 if args.tiny else 704)
    args.width = args.width or (64 if args.tiny else 1280)
    if args.frames % base.temporal_stride:
        ap.error(f"--frames must be a multiple of {base.temporal_stride}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    ceilings = measure_ceilings(device, dtype, small=args.tiny)
    ceiling = ceilings["conv3d_best_tflops"]
    rows = []
    for name, p in VARIANTS:
        rows.append(bench_variant(name, base.replace(pruning_rate=p), args, device, dtype, ceiling))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    result = {
        "benchmark": "vae_decode_chunk",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "height": args.height,
        "width": args.width,
        "segment": args.segment,
        "config": "tiny" if args.tiny else "release",
        "ceilings": ceilings,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"VAE decode of {args.frames} frames at {args.height}x{args.width}, batch {args.batch}, {result['device']}")
    print(f"ceilings (TFLOP/s): matmul {ceilings['matmul_tflops']:.1f}, conv3d {ceiling:.1f}")
    head = f"{'variant':<22}{'widths':<26}{'s/chunk':>9}{'frames/s':>10}{'peak GiB':>10}{'GFLOP':>10}{'TFLOP/s':>9}{'x floor':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        widths = "/".join(map(str, r["widths"]))
        print(
            f"{r['variant']:<22}{widths:<26}{r['seconds']:>9.3f}{r['frames_per_s']:>10.1f}{r['peak_mem_gib']:>10.2f}"
            f"{r['decoder_gflop']:>10.0f}{r['achieved_tflops']:>9.1f}{r['floor_ratio']:>9.2f}"
        )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
