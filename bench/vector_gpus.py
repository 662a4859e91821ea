"""Aggregate frames/s of MatrixGameVectorEnv over the GPUs of one host, N envs per GPU (issue 8 item 2).

For each GPU count G (``--gpus``, default 1 and every GPU of the host) and each N
(``--envs-per-gpu``): a vector env of G*N envs on ``cuda:0 .. cuda:G-1`` (the model built once on
cuda:0, its weights copied to the other GPUs), one reset, ``--warmup`` untimed steps, then
``--steps`` timed steps (each step = one 40-frame chunk per env, frames copied to the host as an env
user gets them). Reported per configuration: seconds per step, aggregate frames/s
(G*N*40 / seconds per step), frames/s per GPU, scaling efficiency against 1 GPU at the same N, and
the peak memory of the most loaded GPU. A configuration that runs out of memory is reported as such.

``--check`` also verifies "same results as on one device": a vector env of G envs (one per GPU)
against each of those envs alone on cuda:0 (same seeds and actions); with one env per GPU the
kernels are the same, so the frames should agree exactly (max |diff| and the share of equal pixels
are reported, not asserted).

The default model is the 5B architecture with random bf16 weights and the pruned VAE decoder
(as bench/env_5b.py); ``--model`` takes any registry name or folder instead.

    source bench/gpu/setup.sh        # gymnasium on the GPU machine
    python bench/vector_gpus.py --envs-per-gpu 1 2 4 --steps 3 --check --out bench/results/vector_gpus.json
    python bench/vector_gpus.py --cpu --gpus 1 2 --model tiny-random --steps 2   # CPU smoke test

Prints a table and writes JSON. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mg3_env.vector import MatrixGameVectorEnv
from world_model.config import VAEConfig, mg3_5b
from world_model.model import WorldModel, load_world_model, random_world_model
from world_model.runtime import RuntimeOptions


def build_model(name: str, device: str, vae_pruning: float, attention: str = "auto") -> WorldModel:
    """The model on the first device: the random 5B with a pruned decoder, or a registry name/folder."""
    runtime = RuntimeOptions.for_device(device, attention=attention)
    if name == "mg3-5b-random":
        base = mg3_5b()
        cfg = base.replace(
            name="mg3-5b-random", text=base.text.replace(kind="random"), vae=VAEConfig(pruning_rate=vae_pruning)
        )
        return random_world_model(cfg, runtime)
    return load_world_model(name, runtime)


def actions(num_envs: int, keyboard_dim: int) -> dict[str, np.ndarray]:
    """Forward while turning right, the same for every env."""
    kb = np.zeros((num_envs, keyboard_dim), np.int8)
    kb[:, 0] = 1
    ms = np.tile(np.array([0.0, 0.1], np.float32), (num_envs, 1))
    return {"keyboard": kb, "mouse": ms}


def sync(devices: list[str]) -> None:
    for d in devices:
        if d.startswith("cuda"):
            torch.cuda.synchronize(d)


def measure(model: WorldModel, devices: list[str], n: int, warmup: int, steps: int) -> dict:
    """Seconds per step of a vector env of len(devices) * n envs."""
    num_envs = len(devices) * n
    cuda = sorted({d for d in devices if d.startswith("cuda")})
    for d in cuda:
        torch.cuda.reset_peak_memory_stats(d)
    env = MatrixGameVectorEnv(num_envs, model=model, devices=devices, max_chunks=warmup + steps + 1)
    try:
        a = actions(num_envs, env.keyboard_dim)
        t = time.perf_counter()
        env.reset(seed=0)
        sync(cuda)
        reset_s = time.perf_counter() - t
        for _ in range(warmup):
            env.step(a)
        times = []
        for _ in range(steps):
            sync(cuda)
            t = time.perf_counter()
            obs, *_ = env.step(a)
            sync(cuda)
            times.append(time.perf_counter() - t)
        frames = int(obs["frames"].shape[1])
    finally:
        env.close()
        del env
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    step_s = float(np.median(times))
    peak = max((torch.cuda.max_memory_allocated(d) for d in cuda), default=0) / 2**30
    return {
        "gpus": len(devices),
        "envs_per_gpu": n,
        "num_envs": num_envs,
        "reset_s": round(reset_s, 3),
        "step_s": [round(x, 4) for x in times],
        "step_s_median": round(step_s, 4),
        "frames_per_step": num_envs * frames,
        "fps": round(num_envs * frames / step_s, 2),
        "fps_per_gpu": round(num_envs * frames / step_s / len(devices), 2),
        "peak_memory_gib_max": round(peak, 2) if cuda else None,
    }


def check(model: WorldModel, devices: list[str], steps: int) -> dict:
    """One env per device, all together, against each env alone on the first device."""
    g = len(devices)
    seeds = [100 + i for i in range(g)]
    multi = MatrixGameVectorEnv(g, model=model, devices=devices, max_chunks=steps + 1)
    a = actions(g, multi.keyboard_dim)
    together = [multi.reset(seed=seeds)[0]["frames"]] + [multi.step(a)[0]["frames"] for _ in range(steps)]
    multi.close()
    del multi
    max_diff, equal = 0, []
    for i, seed in enumerate(seeds):
        alone_env = MatrixGameVectorEnv(1, model=model, devices=devices[:1], max_chunks=steps + 1)
        a1 = actions(1, alone_env.keyboard_dim)
        alone = [alone_env.reset(seed=seed)[0]["frames"]] + [alone_env.step(a1)[0]["frames"] for _ in range(steps)]
        alone_env.close()
        for x, y in zip(alone, together):
            diff = np.abs(x[0].astype(int) - y[i].astype(int))
            max_diff = max(max_diff, int(diff.max()))
            equal.append(float((diff == 0).mean()))
    gc.collect()
    return {"gpus": g, "steps": steps, "max_abs_frame_diff": max_diff, "equal_pixel_share_min": min(equal)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mg3-5b-random", help="registry name or folder (default: random 5B)")
    p.add_argument("--vae-pruning", type=float, default=0.75, help="decoder pruning of the random 5B (0 = full)")
    p.add_argument("--gpus", type=int, nargs="+", default=None, help="GPU counts to run (default: 1 and all)")
    p.add_argument("--envs-per-gpu", type=int, nargs="+", default=[1, 2])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--attention", default="auto")
    p.add_argument("--check", action="store_true", help="also compare the G-GPU frames with one GPU")
    p.add_argument("--cpu", action="store_true", help="smoke test: each 'GPU' is a CPU device group")
    p.add_argument("--out", default="bench/results/vector_gpus.json")
    args = p.parse_args()
    if args.model != "mg3-5b-random" and args.vae_pruning != p.get_default("vae_pruning"):
        p.error("--vae-pruning sets the random 5B's decoder: a loaded model has its own")

    if args.cpu:
        available, names = max(args.gpus or [1]), ["cpu"] * max(args.gpus or [1])
        device_name = platform.processor() or "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: run on a GPU host, or pass --cpu for a smoke test")
        available = torch.cuda.device_count()
        names = [f"cuda:{i}" for i in range(available)]
        device_name = torch.cuda.get_device_name(0)
    counts = sorted(set(args.gpus or [1, available]))
    if counts[-1] > available:
        raise SystemExit(f"--gpus asks for {counts[-1]} GPUs; this host has {available}")
    t = time.perf_counter()
    model = build_model(args.model, names[0], args.vae_pruning, args.attention)
    build_s = time.perf_counter() - t

    rows = []
    for g in counts:
        for n in args.envs_per_gpu:
            try:
                rows.append(measure(model, names[:g], n, args.warmup, args.steps))
            except torch.cuda.OutOfMemoryError as e:
                gc.collect()
                torch.cuda.empty_cache()
                rows.append({"gpus": g, "envs_per_gpu": n, "num_envs": g * n, "error": f"out of memory: {e}"[:200]})
    one = {r["envs_per_gpu"]: r["fps"] for r in rows if r["gpus"] == 1 and "fps" in r}
    for r in rows:
        if "fps" in r and r["envs_per_gpu"] in one:
            r["scaling_efficiency"] = round(r["fps"] / (r["gpus"] * one[r["envs_per_gpu"]]), 3)

    checks = [check(model, names[:g], steps=2) for g in counts if g > 1] if args.check else []

    header = f"{'GPUs':>4} {'envs/GPU':>8} {'envs':>5} {'s/step':>8} {'frames/s':>9} {'fps/GPU':>8} {'eff':>6} {'peak GiB':>9}"
    print(f"{args.model} on {device_name}; model build {build_s:.1f} s")
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['gpus']:>4} {r['envs_per_gpu']:>8} {r['num_envs']:>5}  {r['error'][:60]}")
            continue
        eff = f"{r['scaling_efficiency']:.2f}" if "scaling_efficiency" in r else "-"
        peak = f"{r['peak_memory_gib_max']:.1f}" if r["peak_memory_gib_max"] is not None else "-"
        print(
            f"{r['gpus']:>4} {r['envs_per_gpu']:>8} {r['num_envs']:>5} {r['step_s_median']:>8.3f} "
            f"{r['fps']:>9.1f} {r['fps_per_gpu']:>8.1f} {eff:>6} {peak:>9}"
        )
    for c in checks:
        print(
            f"check {c['gpus']} GPUs vs 1: max |frame diff| {c['max_abs_frame_diff']}, "
            f"equal pixels >= {c['equal_pixel_share_min']:.4f}"
        )

    result = {
        "benchmark": "vector_gpus",
        "model": args.model,
        "vae_pruning_rate": args.vae_pruning if args.model == "mg3-5b-random" else None,
        "device": device_name,
        "devices_available": available,
        "torch": torch.__version__,
        "attention": args.attention,
        "resolution": [model.config.stream.height, model.config.stream.width],
        "sampler_steps": model.config.sampler.num_steps,
        "build_s": round(build_s, 2),
        "warmup_steps": args.warmup,
        "results": rows,
        "checks": checks,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
