"""Training throughput of every stage of the embedded model's recipe: samples/s and model FLOP/s.

Each row builds one stage exactly as ``world_model.train.pipeline`` does (the embedded config, the
data resident on the device), on synthetic data of the real shapes: uint8 frames for the VAE and
decoder stages, a latent store (segments of 65 latents with the actions and integrated poses of
``world_model.train.frames.synthetic_store``, prompt embeddings) for the flow stages. It runs warm-up steps (compilation included),
then times ``--steps`` steps between two device synchronisations. FLOPs per step are counted once
by ``torch.utils.flop_counter`` on an eager step (matmuls, convolutions, attention; forward and
backward); TFLOP/s = FLOPs per step x steps/s. The ceiling is a bf16 8192^3 matmul measured in the
same run; MFU is reported against it and against the datasheet's dense bf16 peak (989 TFLOP/s for
H100/H200 SXM).

    python bench/train_throughput.py --json bench/results/train_throughput_h200.json
    python bench/train_throughput.py --device cpu --quick      # smoke run of every row on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from world_model.config import embedded, tiny
from world_model.dit import MatrixGameDiT
from world_model.train.autoencoder import ClipFrames, DecoderStage, VAEOptions, VAEStage, identity_stats
from world_model.train.clips import ClipSampler, LatentStore
from world_model.train.flow import FlowOptions, FlowStage
from world_model.train.frames import synthetic_store
from world_model.vae import WanVAE

DATASHEET_BF16 = 989e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, n: int = 8192) -> float:
    """Measured bf16 matmul FLOP/s (random inputs)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - t)


def latent_store(cfg, segments: int, seg_latents: int, device: torch.device) -> LatentStore:
    r = cfg.vae.temporal_stride
    seg_frames = 1 + r * (seg_latents - 1)
    fr = synthetic_store(segments, seg_frames, (1, 1))  # only its actions and poses are used
    h, w = cfg.latent_hw
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(segments, seg_latents, cfg.vae.z_dim, h, w, generator=g).to(torch.bfloat16)
    as_t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
    store = LatentStore(
        latents=lat,
        seg_start=torch.arange(segments, dtype=torch.int64) * seg_frames,
        mouse=as_t(fr.mouse),
        keyboard=as_t(fr.keyboard),
        poses=as_t(fr.poses),
        text=torch.randn(4, cfg.text.text_len, cfg.text.dim, generator=g),
        seg_prompt=torch.arange(segments) % 4,
    )
    return store.to(device)


def count_flops(stage, step: int = 0) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        stage.train_step(step)
    return float(counter.get_total_flops())


def time_stage(stage, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(steps/s, seconds of warm-up incl. compilation)."""
    t0 = time.perf_counter()
    for i in range(warmup):
        out = stage.train_step(i)
    float(next(iter(out.values())))
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        out = stage.train_step(i)
    sync(device)
    return steps / (time.perf_counter() - t0), warm


def vae_row(
    cfg,
    device,
    batch: int,
    decoder: bool,
    gan: bool,
    warmup: int,
    steps: int,
    compile: bool = False,
    lam_every: int = 1,
) -> dict:
    store = synthetic_store(8, 300, (cfg.stream.height, cfg.stream.width))
    opts = VAEOptions(batch_size=batch, gan_start=0 if gan else -1, compile=compile, gan_lambda_every=lam_every)
    full = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0)).to(device)
    clips = ClipFrames(store, opts.clip_frames, device)

    def make(o: VAEOptions):
        if decoder:
            return DecoderStage(full, WanVAE(identity_stats(cfg.vae)).to(device), clips, None, o)
        return VAEStage(full, clips, None, o)

    stage = make(opts)
    # a compiled graph hides its ops from the counter: count on an eager twin
    flops = count_flops(make(replace(opts, compile=False)) if compile else stage)
    rate, warm = time_stage(stage, device, warmup, steps)
    name = "decoder" if decoder else "vae"
    return {
        "stage": name,
        "batch": batch,
        "compile": compile,
        "gan": gan,
        "gan_lambda_every": lam_every,
        "unit": "clip of 17 frames",
        "steps_per_s": rate,
        "samples_per_s": rate * batch,
        "frames_per_s": rate * batch * opts.clip_frames,
        "flops_per_step": flops,
        "tflops": flops * rate / 1e12,
        "warmup_s": warm,
    }


def flow_row(cfg, device, store, batch: int, memory: bool, compile: bool, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = MatrixGameDiT(cfg.dit).to(device)
    sampler = ClipSampler(store, cfg, batch, use_memory=memory, seed=0)
    eager = FlowStage(model, sampler, FlowOptions(batch_size=batch, use_memory=memory))
    flops = count_flops(eager)  # the compiled graph hides its ops from the counter: count eagerly
    stage = FlowStage(model, sampler, FlowOptions(batch_size=batch, use_memory=memory, compile=compile))
    # a compiled model compiles once per window geometry (chunk 0, chunk k >= 1): warm up until both ran
    rate, warm = time_stage(stage, device, 3 * warmup if compile else warmup, steps)
    return _dit_row(
        "memory" if memory else "base", batch, compile, "window of 14-15 latents (+5 memory)", rate, flops, warm
    )


def _dit_row(stage: str, batch: int, compile: bool, unit: str, rate: float, flops: float, warm: float) -> dict:
    """A DiT stage's row (no adversary, no frames: samples are windows or chunks)."""
    return {
        "stage": stage,
        "batch": batch,
        "compile": compile,
        "gan": False,
        "unit": unit,
        "steps_per_s": rate,
        "samples_per_s": rate * batch,
        "frames_per_s": float("nan"),
        "flops_per_step": flops,
        "tflops": flops * rate / 1e12,
        "warmup_s": warm,
    }


def distill_row(cfg, device, store, batch: int, teacher_steps: int, reuse: int, warmup: int, steps: int) -> dict:
    """The dmd stage as ODE distillation (dmd_weight 0): the student in the shipped sampler's steps regressed to the
    teacher's sample in ``teacher_steps``, one teacher sample per ``reuse`` steps, ground-truth history."""
    from world_model.train.dmd import DMDOptions, DMDStage

    torch.manual_seed(0)
    model = MatrixGameDiT(cfg.dit).to(device)
    sampler = ClipSampler(store, cfg, batch, use_memory=True, seed=0)
    opts = DMDOptions(
        batch_size=batch, cold_start_steps=10**9, regression_weight=1.0, dmd_weight=0.0,
        teacher_steps=teacher_steps, target_reuse=reuse,
    )  # fmt: skip
    stage = DMDStage(model, sampler, cfg.sampler, opts)
    flops = sum(count_flops(stage, i) for i in range(reuse)) / reuse  # one teacher sample per reuse steps
    rate, warm = time_stage(stage, device, warmup, steps)
    unit = f"chunk, student {cfg.sampler.num_steps} steps, teacher {teacher_steps} steps / {reuse}"
    return _dit_row("distill", batch, False, unit, rate, flops, warm)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 20; --quick: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 6; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny config and batches (CPU smoke run)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--json", default="bench_train_throughput.json")
    p.add_argument("--stages", default="vae,decoder,flow", help="rows to run: any of vae, decoder, flow, distill")
    p.add_argument(
        "--gan-lambda-every", type=int, default=0, help="also the VAE rows with the adversary at this VAEOptions value"
    )
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = tiny(32, 32) if a.quick else embedded()
    b = (lambda n: 2) if a.quick else (lambda n: n)  # noqa: E731
    steps = a.steps if a.steps is not None else 2 if a.quick else 20  # --quick no longer overrides a given --steps
    warmup = a.warmup if a.warmup is not None else 1 if a.quick else 6
    seg_latents = 25 if a.quick else 65
    store = latent_store(cfg, 16 if a.quick else 400, seg_latents, device)
    ceiling = matmul_ceiling(device)
    rows = []

    def add(fn, *args) -> None:
        try:
            rows.append(fn(*args))
        except Exception as e:  # noqa: BLE001 - a failing row (OOM, compile) is reported, the others still run
            rows.append({"stage": fn.__name__, "args": repr(args[2:]), "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1], default=float), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    stages = set(a.stages.split(","))
    if stages - {"vae", "decoder", "flow", "distill"}:
        p.error(f"--stages: among vae, decoder, flow, distill, got {a.stages}")
    if a.gan_lambda_every and (a.gan_lambda_every < 2 or "vae" not in stages):
        p.error("--gan-lambda-every N adds VAE rows with the adversary every N-th step: N >= 2 (1 is the rows it "
                "always runs), with the vae stage")  # fmt: skip
    if "vae" in stages:
        for compiled in (False,) if a.no_compile else (False, True):  # a compiled row's first step compiles (warmup_s)
            add(vae_row, cfg, device, b(32), False, False, warmup, steps, compiled)
            add(vae_row, cfg, device, b(32), False, True, warmup, steps, compiled)
            if a.gan_lambda_every > 1:
                add(vae_row, cfg, device, b(32), False, True, warmup, steps, compiled, a.gan_lambda_every)
    if "decoder" in stages:
        add(vae_row, cfg, device, b(32), True, True, warmup, steps)
    if "flow" in stages:
        for batch in (32, 128, 256):
            add(flow_row, cfg, device, store, b(batch), False, False, warmup, steps)
        add(flow_row, cfg, device, store, b(128), True, False, warmup, steps)
        if not a.no_compile:
            add(flow_row, cfg, device, store, b(128), False, True, warmup, steps)
            add(flow_row, cfg, device, store, b(128), True, True, warmup, steps)
    if "distill" in stages:  # the shipped sampler's steps for the student (the embedded model's: 5)
        dcfg = cfg.replace(sampler=cfg.sampler.replace(num_steps=5))
        for batch in (32, 64):
            add(distill_row, dcfg, device, store, b(batch), 16, 4, warmup, steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {
        "device": name,
        "torch": torch.__version__,
        "matmul_bf16_ceiling_tflops": ceiling / 1e12,
        "datasheet_bf16_tflops": DATASHEET_BF16 / 1e12,
        "rows": rows,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"\n{name}, torch {torch.__version__}, measured bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s")
    print(f"{'stage':>8} {'batch':>5} {'compile':>7} {'gan':>4} {'lam/N':>5} {'steps/s':>8} {'samples/s':>10} {'TFLOP/s':>8} "
          f"{'MFU meas':>8} {'MFU 989':>8} {'warm s':>7}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['stage']:>8} {r['args']}: {r['error'][:80]}")
            continue
        print(
            f"{r['stage']:>8} {r['batch']:>5} {r['compile']!s:>7} {r['gan']!s:>4} {r.get('gan_lambda_every', '-')!s:>5} "
            f"{r['steps_per_s']:>8.2f} "
            f"{r['samples_per_s']:>10.1f} {r['tflops']:>8.1f} {100 * r['tflops'] * 1e12 / ceiling:>7.1f}% "
            f"{100 * r['tflops'] * 1e12 / DATASHEET_BF16:>7.1f}% {r['warmup_s']:>7.1f}"
        )


if __name__ == "__main__":
    main()
