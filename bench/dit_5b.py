"""Time one steady-state Matrix-Game 3.0 chunk through the 5B DiT on one GPU, against measured ceilings.

A later chunk (spec §6): 5 memory + 4 past + 10 noisy latents at 704x1280 (latent grid 44x80, token
grid 22x40, 19 x 880 = 16,720 tokens), 56 action frames, 512 text rows; 3 sampler steps = 3 DiT
forwards (timesteps 1000/908/712; context frames 0). Random bf16 weights, initialised on the GPU.

The script counts the forward's FLOPs (every linear incl. the action modules; attention QK^T and PV;
2 FLOPs per multiply-add), measures the bf16 matmul ceiling and the attention throughput at the
self-attention shape, and reports seconds per chunk, frames/s (40 new frames per chunk), achieved
TFLOP/s, peak GPU memory and the floor time (matmul FLOPs / matmul ceiling + attention FLOPs /
attention throughput) with the measured/floor ratio.

    PYTHONPATH=. python bench/dit_5b.py [--out bench/results/dit_5b.json] [--attention auto|sdpa|cudnn|flash|efficient]
    PYTHONPATH=. python bench/dit_5b.py --quantize fp8 --compile   # runtime options, applied by apply_runtime
    PYTHONPATH=. python bench/dit_5b.py --tiny          # CPU smoke test with the tiny config

The runtime options (``--attention``, ``--quantize``, ``--compile``, ``--self-attn-projections``) are
applied to the built model by ``world_model.runtime.apply_runtime``, as the model loader does; the
JSON records the backend found on the model's attention modules and the number of FP8 layers.
With ``--quantize`` or ``--compile``, one forward is also compared with the eager forward of
the same weights (relative L2 error, cosine), and the first (compiling) chunk is timed apart.

``--self-attn-projections fp32`` times the release's precision (the self-attention q/k/v/o linears as
fp32 GEMMs, spec §15.6) instead of the bf16 default (``dtype``). ``--agreement`` also compares one
forward of each choice (bf16 weights) with an fp32 forward of the same weights (TF32 off) and reports
the relative L2 error and the cosine similarity.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from world_model.attention import attend, attention_backends
from world_model.config import DiTConfig, mg3_5b, tiny
from world_model.dit import MatrixGameDiT
from world_model.quant import Float8Linear
from world_model.runtime import RuntimeOptions, apply_runtime

FRAMES_PER_CHUNK = 40  # new pixel frames per later chunk (10 latents x 4)
STEP_TIMESTEPS = (1000.0, 908.0, 712.0)  # the 3-step schedule as the model sees it (bf16-rounded)


def count_flops(cfg: DiTConfig, num_memory: int, num_frames: int, h: int, w: int) -> dict:
    """FLOPs of one forward as this implementation runs it (batch 1): {"linear", "attention", "total"}.

    h, w: latent grid. Linears (incl. the patch-embedding conv and the action module's) count
    2 * rows * in * out; attention counts QK^T and PV, 2 * 2 * Lq * Lk * width.
    """
    d, ph, pw = cfg.dim, cfg.patch_size[1], cfg.patch_size[2]
    T = num_memory + num_frames
    S = (h // ph) * (w // pw)  # tokens per frame
    L, Lt = T * S, cfg.text_len
    patch = ph * pw
    lin = 0
    lin += L * cfg.in_dim * patch * d  # patch embedding
    lin += L * cfg.plucker_channels * patch * d + 2 * L * d * d  # camera tokens
    lin += Lt * (cfg.text_dim * d + d * d)  # text embedding
    lin += T * (cfg.freq_dim * d + d * d + d * 6 * d)  # timestep embedding, per frame
    lin += L * d * cfg.out_dim * patch  # head
    att = 0
    per_block_lin = 4 * L * d * d + 2 * L * d * d + 2 * Lt * d * d + 4 * L * d * d + 2 * L * d * cfg.ffn_dim
    per_block_att = 2 * L * L * d + 2 * L * Lt * d  # self + cross attention
    lin += cfg.num_layers * per_block_lin
    att += cfg.num_layers * per_block_att
    a = cfg.action_config
    if a is not None:
        win = a.frames_per_window
        mh, kh, hs = a.mouse_hidden_dim, a.keyboard_hidden_dim, a.hidden_size
        act_lin = act_att = 0
        if a.enable_mouse:
            act_lin += L * ((a.mouse_dim_in * win + d) * mh + mh * mh + mh * 3 * mh + mh * d)
            act_att += 2 * S * T * T * mh
        if a.enable_keyboard:
            act_lin += T * win * (a.keyboard_dim_in * hs + hs * hs) + T * hs * win * 2 * kh
            act_lin += L * (d * kh + kh * d)
            act_att += 2 * L * T * kh
        lin += len(a.blocks) * act_lin
        att += len(a.blocks) * act_att
    return {"linear": 2 * lin, "attention": 2 * att, "total": 2 * (lin + att)}


def _timer(device: torch.device) -> Callable[[Callable[[], object], int, int], list[float]]:
    """Returns time(fn, warmup, iters) -> seconds per call, CUDA events on GPU."""

    def run(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times

    return run


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, timer) -> float:
    """Measured TFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = statistics.median(timer(lambda: a @ b, 3, 10))
    return 2 * n**3 / sec / 1e12


def attention_throughput(device, dtype, L: int, heads: int, head_dim: int, backend: str, timer) -> float | None:
    """Measured TFLOP/s of attend() at [1, L, heads, head_dim]; None if the backend cannot run it."""
    q, k, v = (torch.randn(1, L, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    try:
        attend(q, k, v, backend=backend)
    except RuntimeError:
        return None
    sec = statistics.median(timer(lambda: attend(q, k, v, backend=backend), 2, 5))
    return 4 * L * L * heads * head_dim / sec / 1e12


def build_model(cfg: DiTConfig, device: torch.device, dtype: torch.dtype) -> MatrixGameDiT:
    """Random weights made on ``device`` in ``dtype`` directly (no full-size CPU init)."""
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # the zero-initialised layers would skip nothing, but keep activations honest
        for block in model.blocks:
            block.cam_scale_layer.weight.normal_(std=0.01)
            block.cam_shift_layer.weight.normal_(std=0.01)
        model.head.head.weight.normal_(std=0.01)
    return model.eval()


def make_inputs(cfg: DiTConfig, M: int, past: int, new: int, h: int, w: int, device, dtype) -> dict:
    """Inputs of one later chunk, batch 1 (see the module docstring)."""
    F = past + new
    nf = 4 * F  # pixel frames of the window (multiple of 4: later clips)
    start = 41  # first window latent index of chunk k = 4 (spec §6: 10k + 1)
    memory_positions = torch.tensor([1, 7, 13, 20, 33])  # retrieved latents; slot 5 would be the sink
    return {
        "x": torch.randn(1, cfg.in_dim, F, h, w, device=device, dtype=dtype),
        "context": torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype),
        "plucker": torch.randn(1, cfg.plucker_channels, M + F, h, w, device=device, dtype=dtype),
        "mouse": 0.1 * torch.randn(1, nf, 2, device=device),
        "keyboard": (torch.rand(1, nf, 6, device=device) > 0.5).float(),
        "positions": torch.cat([memory_positions[:M], torch.arange(start, start + F)])[None].to(device),  # [1, M+F]
        "memory": torch.randn(1, cfg.in_dim, M, h, w, device=device, dtype=dtype) if M else None,
    }


def _agreement_one(model: MatrixGameDiT, reference: MatrixGameDiT, inputs: dict, t: torch.Tensor) -> dict:
    with torch.inference_mode():
        out = model(t=t, **inputs).double()
        ref = reference(t=t, **inputs).double()
    rel = float((out - ref).norm() / ref.norm())
    cosine = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
    return {"relative_l2": rel, "cosine": cosine}


def agreement(model: MatrixGameDiT, inputs: dict, t: torch.Tensor) -> dict:
    """One forward with bf16 weights, for each self-attention projection choice, against an fp32
    forward of the same (bf16-rounded) weights with TF32 off: {"dtype": {...}, "fp32": {...}}."""
    low = model if model.patch_embedding.weight.dtype == torch.bfloat16 else copy.deepcopy(model).to(torch.bfloat16)
    reference = copy.deepcopy(low).float()
    reference.set_self_attn_projection_dtype(None)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        result = {}
        for choice, dtype in (("dtype", None), ("fp32", torch.float32)):
            low.set_self_attn_projection_dtype(dtype)
            result[choice] = _agreement_one(low, reference, inputs, t)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/dit_5b.json")
    parser.add_argument("--attention", default="auto", help="attention backend for the model (world_model.attention)")
    parser.add_argument("--iters", type=int, default=5, help="timed chunks (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed chunks first")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny config")
    parser.add_argument(
        "--self-attn-projections",
        choices=("dtype", "fp32"),
        default="dtype",
        help="self-attention q/k/v/o GEMMs in the model dtype (bf16, default) or in fp32 like the release",
    )
    parser.add_argument(
        "--agreement", action="store_true", help="also compare one forward of each choice with an fp32 forward"
    )
    parser.add_argument("--quantize", choices=("fp8",), default=None, help="8-bit linears (RuntimeOptions.quantize)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (RuntimeOptions.compile)")
    args = parser.parse_args(argv)

    if args.tiny:
        cfg, device, dtype = tiny().dit, torch.device("cpu"), torch.float32
        h, w, n = 8, 8, 128
    else:
        if not torch.cuda.is_available():
            raise SystemExit("dit_5b.py needs a CUDA GPU (or --tiny for a CPU smoke test)")
        cfg, device, dtype = mg3_5b().dit, torch.device("cuda"), torch.bfloat16
        h, w, n = 44, 80, 8192
    M, past, new = 5, 4, 10
    F = past + new
    timer = _timer(device)
    runtime = RuntimeOptions(
        device=str(device),
        dtype=dtype,
        attention=args.attention,
        quantize=args.quantize,
        compile=args.compile,
        self_attn_projections=args.self_attn_projections,
    )
    torch.manual_seed(0)
    model = build_model(cfg, device, dtype)
    inputs = make_inputs(cfg, M, past, new, h, w, device, dtype)
    t_steps = [torch.tensor([[0.0] * past + [s] * new], device=device) for s in STEP_TIMESTEPS]  # [1, F] per step
    eager_ref = None
    if args.quantize or args.compile:  # the eager forward of the same weights, before the options change it
        with torch.inference_mode():
            eager_ref = model(t=t_steps[0], **inputs).double()
    agree = agreement(model, inputs, t_steps[0]) if args.agreement and not args.quantize else None
    apply_runtime(model, runtime)
    backends = sorted(set(attention_backends(model).values()))
    fp8_layers = sum(isinstance(m, Float8Linear) for m in model.modules())

    def chunk() -> torch.Tensor:
        with torch.inference_mode():
            for t in t_steps:
                out = model(t=t, **inputs)
        return out

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first_chunk_s = None
    if args.compile:  # compiles (cold, or from the inductor cache)
        first_chunk_s = timer(chunk, 0, 1)[0]
    chunk_times = timer(chunk, args.warmup, args.iters)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    out = chunk()
    finite = bool(torch.isfinite(out).all())
    vs_eager = None
    if eager_ref is not None:
        with torch.inference_mode():
            got = model(t=t_steps[0], **inputs).double()
        vs_eager = {
            "relative_l2": float((got - eager_ref).norm() / eager_ref.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(got.flatten(), eager_ref.flatten(), dim=0)),
        }

    L = (M + F) * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    ceiling = matmul_ceiling(device, dtype, n, timer)
    attn = {
        b: attention_throughput(device, dtype, L, cfg.num_heads, cfg.head_dim, b, timer)
        for b in (args.attention, "flash", "efficient", "cudnn", "math" if args.tiny else None)
        if b is not None
    }

    flops = count_flops(cfg, M, F, h, w)
    sec = statistics.median(chunk_times)
    chunk_flops = len(STEP_TIMESTEPS) * flops["total"]
    attn_tput = attn[args.attention]
    floor = None
    if attn_tput:
        floor = len(STEP_TIMESTEPS) * (flops["linear"] / (ceiling * 1e12) + flops["attention"] / (attn_tput * 1e12))
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "mg3-5b",
        "dtype": str(dtype).removeprefix("torch."),
        "attention_backend": args.attention,
        "attention_backends_applied": backends,
        "quantize": args.quantize,
        "fp8_layers": fp8_layers,
        "compile": args.compile,
        "first_chunk_seconds": first_chunk_s,
        "self_attn_projections": args.self_attn_projections,
        "tokens": L,
        "forwards_per_chunk": len(STEP_TIMESTEPS),
        "seconds_per_chunk": sec,
        "seconds_per_chunk_all": chunk_times,
        "frames_per_second": FRAMES_PER_CHUNK / sec,
        "flops_per_forward": flops,
        "achieved_tflops": chunk_flops / sec / 1e12,
        "matmul_ceiling_tflops": ceiling,
        "attention_tflops": attn,
        "floor_seconds_per_chunk": floor,
        "measured_over_floor": None if floor is None else sec / floor,
        "peak_memory_gib": peak_gib,
        "output_finite": finite,
        "agreement_with_fp32": agree,
        "agreement_with_eager": vs_eager,
    }
    _print_table(result)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print_table(r: dict) -> None:
    f = r["flops_per_forward"]
    rows = [
        ("device", r["device"]),
        ("config / dtype / attention", f"{r['config']} / {r['dtype']} / {r['attention_backend']}"),
        ("self-attention projections", r["self_attn_projections"]),
        ("attention backends on the model", ", ".join(r["attention_backends_applied"])),
        ("quantize / FP8 layers", f"{r['quantize']} / {r['fp8_layers']}"),
        ("compile (first chunk s)", f"{r['compile']} ({r['first_chunk_seconds'] or 0:.1f})"),
        ("tokens per forward", f"{r['tokens']:,}"),
        (
            "TFLOP per forward (linear + attention)",
            f"{f['total'] / 1e12:.3f} ({f['linear'] / 1e12:.3f} + {f['attention'] / 1e12:.3f})",
        ),
        ("seconds per chunk (3 forwards, median)", f"{r['seconds_per_chunk']:.4f}"),
        ("frames/s (40 frames per chunk)", f"{r['frames_per_second']:.2f}"),
        ("achieved TFLOP/s", f"{r['achieved_tflops']:.1f}"),
        ("matmul ceiling TFLOP/s", f"{r['matmul_ceiling_tflops']:.1f}"),
        *((f"attention TFLOP/s [{b}]", "n/a" if v is None else f"{v:.1f}") for b, v in r["attention_tflops"].items()),
        (
            "floor seconds per chunk",
            "n/a" if r["floor_seconds_per_chunk"] is None else f"{r['floor_seconds_per_chunk']:.4f}",
        ),
        ("measured / floor", "n/a" if r["measured_over_floor"] is None else f"{r['measured_over_floor']:.2f}"),
        ("peak GPU memory GiB", "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"),
        ("output finite", str(r["output_finite"])),
        *(
            (f"vs fp32, {choice} projections (rel. L2 / cosine)", f"{a['relative_l2']:.2e} / {a['cosine']:.6f}")
            for choice, a in (r["agreement_with_fp32"] or {}).items()
        ),
        *(
            [("vs eager, same weights (rel. L2 / cosine)", f"{a['relative_l2']:.2e} / {a['cosine']:.6f}")]
            if (a := r["agreement_with_eager"])
            else []
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
