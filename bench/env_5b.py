"""Seconds per reset and per chunk of the 5B architecture through the env API (random bf16 weights).

The released geometry (704x1280, 3-step sampler, 5 memory + 4 past + 10 new latents) with random
weights and a random text encoder of umt5-xxl's shape, so no checkpoint is needed; the VAE decoder
is pruned as MG-LightVAE v2 (p = 0.75) by default. Reset = text + image encoding + the first chunk
(57 frames); each step = one 40-frame chunk incl. memory retrieval and decoding; frames are
copied to the host (as an env user gets them).

    python bench/env_5b.py --chunks 3 --json bench_env_5b.json
    python bench/env_5b.py --chunks 3 --quantize fp8 --compile --attention cudnn

``--attention``, ``--quantize`` and ``--compile`` are RuntimeOptions, applied to the model by the
loader (``world_model.runtime.apply_runtime``); the JSON records what the model carries after
loading (the backends of its attention modules, its FP8 layers, whether its blocks are compiled).

Needs a CUDA GPU. The env API needs gymnasium (pure Python: carry its wheel plus
farama-notifications and cloudpickle if the machine lacks them); without it the script measures
the same loop one level down (the streaming generator) and says so in the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from world_model.attention import attention_backends
from world_model.config import VAEConfig, mg3_5b
from world_model.model import random_world_model
from world_model.quant import Float8Linear
from world_model.runtime import ATTENTION_BACKENDS, RuntimeOptions


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--vae-pruning", type=float, default=0.75, help="decoder pruning rate (0 = full Wan2.2 VAE)")
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS)
    p.add_argument("--quantize", default=None, choices=("fp8",), help="8-bit linears in the DiT blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.add_argument(
        "--camera-cache",
        choices=("on", "off"),
        default="on",
        help="reuse a chunk's text/camera/RoPE conditioning across sampler steps (RuntimeOptions.camera_cache)",
    )
    p.add_argument("--json", default="bench_env_5b.json")
    args = p.parse_args()

    base = mg3_5b()
    cfg = base.replace(
        name="mg3-5b-random",
        text=base.text.replace(kind="random"),
        vae=VAEConfig(pruning_rate=args.vae_pruning),
    )
    runtime = RuntimeOptions(
        device=args.device,
        dtype=torch.bfloat16,
        attention=args.attention,
        quantize=args.quantize,
        compile=args.compile,
        camera_cache=args.camera_cache == "on",
    )
    t0 = time.perf_counter()
    model = random_world_model(cfg, runtime)
    _sync()
    build_s = time.perf_counter() - t0
    applied = {  # what the loader applied, read back from the model
        "attention_backends": sorted(set(attention_backends(model.dit).values())),
        "fp8_layers": sum(isinstance(m, Float8Linear) for m in model.dit.modules()),
        "camera_cache": bool(model.dit.camera_cache),
        "compiled_blocks": sum(getattr(b, "_compiled_call_impl", None) is not None for b in model.dit.blocks),
    }

    try:
        import numpy as np

        from mg3_env.env import MatrixGameEnv

        api = "gymnasium MatrixGameEnv"
    except ImportError:
        MatrixGameEnv = None  # noqa: N806
        api = "StreamingGenerator (gymnasium not installed)"

    forward = {"keyboard": [1, 0, 0, 0, 0, 0], "mouse": [0.0, 0.1]}
    times: dict[str, list[float]] = {"reset": [], "warmup_chunk": [], "chunk": []}
    warmup_chunks = 1 if args.compile else 0  # a later chunk's window shape compiles on its first step
    if MatrixGameEnv is not None:
        env = MatrixGameEnv(model=model, max_chunks=max(args.chunks + warmup_chunks, 1))
        for _ in range(2):  # the first reset includes warm-up (kernel selection, allocator)
            _sync()
            t = time.perf_counter()
            env.reset(seed=0)
            _sync()
            times["reset"].append(time.perf_counter() - t)
        action = {k: np.asarray(v, dtype=np.float32) for k, v in forward.items()}
        action["keyboard"] = action["keyboard"].astype(np.int8)
        for i in range(warmup_chunks + args.chunks):
            t = time.perf_counter()
            obs, *_ = env.step(action)
            _sync()
            times["warmup_chunk" if i < warmup_chunks else "chunk"].append(time.perf_counter() - t)
        frames_per_chunk = int(obs["frames"].shape[0])
        env.close()
    else:
        from world_model.generator import ChunkActions, StreamingGenerator

        gen = StreamingGenerator(model)
        s = cfg.stream
        state = gen.init_state(1)
        image = torch.zeros(1, 3, s.height, s.width)
        for _ in range(2):
            _sync()
            t = time.perf_counter()
            gen.reset_(state, [True], image, model.encode_prompts(["a street"]), [0])
            kb, ms = torch.zeros(gen.first_chunk_frames, 6), torch.zeros(gen.first_chunk_frames, 2)
            outs, state = gen.step(state, [ChunkActions(kb, ms)])
            _sync()
            times["reset"].append(time.perf_counter() - t)
        kb = torch.tensor(forward["keyboard"], dtype=torch.float32).repeat(gen.chunk_frames, 1)
        ms = torch.tensor(forward["mouse"]).repeat(gen.chunk_frames, 1)
        for i in range(warmup_chunks + args.chunks):
            t = time.perf_counter()
            outs, state = gen.step(state, [ChunkActions(kb, ms)])
            _sync()
            times["warmup_chunk" if i < warmup_chunks else "chunk"].append(time.perf_counter() - t)
        frames_per_chunk = int(outs[0].frames.shape[0])

    chunk_mean = sum(times["chunk"]) / max(1, len(times["chunk"]))
    result = {
        "benchmark": "env_5b",
        "api": api,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "resolution": [cfg.stream.height, cfg.stream.width],
        "sampler_steps": cfg.sampler.num_steps,
        "vae_pruning_rate": args.vae_pruning,
        "attention": args.attention,
        "quantize": args.quantize,
        "compile": args.compile,
        "applied": applied,
        "build_s": round(build_s, 3),
        "reset_s": [round(x, 3) for x in times["reset"]],
        "reset_s_warm": round(times["reset"][-1], 3),
        "warmup_chunk_s": [round(x, 3) for x in times["warmup_chunk"]],
        "chunk_s": [round(x, 3) for x in times["chunk"]],
        "chunk_s_mean": round(chunk_mean, 3),
        "frames_per_chunk": frames_per_chunk,
        "fps": round(frames_per_chunk / chunk_mean, 2) if chunk_mean else None,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    print(f"{'what':<22}{'seconds':>10}")
    print(f"{'build (random init)':<22}{build_s:>10.3f}")
    print(f"applied: {applied}")
    for i, x in enumerate(times["reset"]):
        print(f"{'reset ' + str(i) + (' (warm-up)' if i == 0 else ''):<22}{x:>10.3f}")
    for x in times["warmup_chunk"]:
        print(f"{'chunk 0 (compiles)':<22}{x:>10.3f}")
    for i, x in enumerate(times["chunk"]):
        print(f"{'chunk ' + str(i + 1):<22}{x:>10.3f}")
    print(f"mean chunk {chunk_mean:.3f} s -> {result['fps']} frames/s ({api})")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
