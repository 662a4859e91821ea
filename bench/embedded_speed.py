"""Generated frames/s of a model through the env API, for several batch sizes (default: the embedded model).

Each row: ``MatrixGameVectorEnv(batch)`` on one device; reset (text + image encoding + the first
57-frame chunk) timed once, then ``--chunks`` steps of 40 frames with the scripted explorer's
actions, frames copied to the host as an env user gets them; the median step gives frames/s.

    python bench/embedded_speed.py --device cpu --batches 1 --json bench/results/embedded_cpu.json
    python bench/embedded_speed.py --device cuda --batches 1 8 64 --json bench/results/embedded_h100.json
    python bench/embedded_speed.py --device cpu --camera-cache both --chunks 12 --json bench/results/embedded_cpu_camera_cache.json
    python bench/embedded_speed.py --device cpu --vae-pruning 0.5 0.25 0 --chunks 8 --json bench/results/embedded_cpu_decoder_widths.json
    python bench/embedded_speed.py --device cpu --dtype both --chunks 12 --json bench/results/embedded_cpu_dtypes.json
    python bench/embedded_speed.py --device cpu --dtype both --quantize both --chunks 6 --json J
    python bench/embedded_speed.py --device cpu --context-cache both --chunks 12 --json J

``--camera-cache both`` measures every batch size with the window's conditioning reused across sampler
steps (``RuntimeOptions.camera_cache``) and without, alternating runs of 3 chunks so that a drift of
the machine's speed hits both alike. ``--vae-pruning P ...`` does the same for the model's architecture
with its VAE decoder at other widths (pruning rate P: width 1 - P of the full decoder; random weights,
as the speed does not depend on the values): what a wider shipped decoder would cost. ``--dtype both`` compares
fp32 with bf16 the same way (the default is the runtime's for the device: on a CPU bf16 where it has bf16
instructions), ``--quantize both`` the float GEMMs with int8 ones (``RuntimeOptions.quantize``; the CPU default
'auto' takes int8 for the embedded model where the CPU has int8 dot products).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from mg3_eval.protocols.speed import env_speed
from world_model.checks import positive_arg
from world_model.model import load_world_model, random_world_model
from world_model.runtime import CONTEXT_CACHE_CHOICES, RuntimeOptions, cpu_name


def measure(model, batch: int, chunks: int) -> dict:
    """One row: :func:`mg3_eval.protocols.speed.env_speed` (the same measurement as ``mg3 eval``'s speed part)."""
    r = env_speed(model, batch=batch, chunks=chunks)
    return {
        "batch": batch,
        "seconds_reset": r["seconds_first_chunk"],
        "seconds_per_chunk": r["seconds_per_chunk"],
        "frames_per_chunk": r["frames_per_chunk"],
        "frames_per_s": r["frames_per_s"],
        "frames_per_s_per_env": r["frames_per_s_per_env"],
        "chunk_seconds": r["chunk_seconds"],
    }


def _setting(dtype: torch.dtype, quantize: str | None) -> str:
    """A row's label when dtypes and GEMMs are compared: 'float32', 'float32+int8', ..."""
    name = str(dtype).removeprefix("torch.")
    return name if quantize is None else f"{name}+{quantize}"


def _merge(runs: list[dict], **extra) -> dict:
    """One row from several runs of one setting: every chunk time, their median, the median reset."""
    chunk_s = [t for r in runs for t in r["chunk_seconds"]]
    median = statistics.median(chunk_s)
    first = runs[0]
    return {
        "batch": first["batch"],
        "seconds_reset": statistics.median(r["seconds_reset"] for r in runs),
        "seconds_per_chunk": median,
        "frames_per_chunk": first["frames_per_chunk"],
        "frames_per_s": first["frames_per_chunk"] * first["batch"] / median,
        "frames_per_s_per_env": first["frames_per_chunk"] / median,
        "chunk_seconds": chunk_s,
        **extra,
    }


def _cache_label(cache: bool, refresh: int) -> str:
    """A context-cache setting as the table and the JSON name it: off, on, or on/rR (refreshed every R-th step)."""
    return "off" if not cache else "on" if not refresh else f"on/r{refresh}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="registry name or model folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--chunks", type=int, default=5, help="timed steps per batch size")
    p.add_argument("--threads", type=positive_arg, default=None, help="torch CPU threads")
    p.add_argument(
        "--camera-cache",
        choices=("on", "off", "both"),
        default="on",
        help="RuntimeOptions.camera_cache; 'both' measures each batch size with and without (alternating)",
    )
    p.add_argument(
        "--context-cache",
        choices=(*CONTEXT_CACHE_CHOICES, "both"),
        default="auto",
        help="RuntimeOptions.context_cache (the window's clean tokens through the DiT once per chunk: an "
        "approximation): auto (default) as the device's default runs the model (a CPU: on for the embedded model, "
        "refreshed as its config says); 'both' measures each batch size exact and cached (alternating)",
    )
    p.add_argument(
        "--context-cache-refresh",
        type=int,
        nargs="+",
        default=[0],
        metavar="R",
        help="RuntimeOptions.context_cache_refresh of the cached runs (the clean tokens recomputed every R-th step; "
        "default 0: the first only); several values: one cached setting each, alternating",
    )
    p.add_argument(
        "--vae-pruning",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="measure the model's architecture with random weights and its decoder at these pruning rates "
        "(alternating runs; with the camera cache on)",
    )
    p.add_argument(
        "--dtype",
        choices=("default", "float32", "bfloat16", "both"),
        default="default",
        help="the model's dtype: the runtime's default for the device (on a CPU bf16 where it has bf16 "
        "instructions, world_model.runtime.default_cpu_dtype), one of them, or 'both' (alternating runs)",
    )
    p.add_argument(
        "--quantize",
        choices=("default", "none", "int8", "both"),
        default="default",
        help="RuntimeOptions.quantize: the runtime's default for the device (on a CPU 'auto': int8 GEMMs for the "
        "embedded model where the CPU has int8 dot products), none, int8, or 'both' (alternating runs; with "
        "--dtype both, every pair)",
    )
    p.add_argument(
        "--sampler-steps",
        type=int,
        default=None,
        metavar="N",
        help="the sampler's steps per chunk (default: the model's own, its config's sampler.num_steps)",
    )
    p.add_argument("--json", default="bench_embedded_speed.json")
    args = p.parse_args()
    if args.sampler_steps is not None and args.sampler_steps < 1:
        p.error(f"--sampler-steps must be >= 1, got {args.sampler_steps}")
    dtypes = {
        "default": [RuntimeOptions.for_device(args.device).dtype],
        "float32": [torch.float32],
        "bfloat16": [torch.bfloat16],
        "both": [torch.float32, torch.bfloat16],
    }[args.dtype]
    quantizes = {
        "default": [RuntimeOptions.for_device(args.device).quantize],
        "none": [None],
        "int8": ["int8"],
        "both": [None, "int8"],
    }[args.quantize]
    combos = [(d, q) for d in dtypes for q in quantizes]
    if args.context_cache == "both" and (len(combos) > 1 or args.camera_cache != "on" or args.vae_pruning is not None):
        p.error("--context-cache both compares the context cache alone: leave the other comparisons at their defaults")
    if len(combos) > 1 and (args.camera_cache != "on" or args.vae_pruning is not None):
        p.error(
            "--dtype both / --quantize both compare dtypes and GEMMs alone: leave --camera-cache and --vae-pruning "
            "at their defaults"
        )
    context_cache = {**CONTEXT_CACHE_CHOICES, "both": False}[args.context_cache]
    refreshes = args.context_cache_refresh
    if any(r < 0 for r in refreshes):
        p.error(f"--context-cache-refresh values must be >= 0, got {refreshes}")
    if refreshes != [0] and args.context_cache in ("off", "auto"):
        p.error("--context-cache-refresh sets the cached runs' refresh: add --context-cache on or both")
    if len(refreshes) > 1 and args.context_cache == "on" and (len(combos) > 1 or args.camera_cache != "on"):
        p.error("several --context-cache-refresh values compare the refresh alone: leave the other comparisons alone")
    if args.threads:
        torch.set_num_threads(args.threads)

    def options(**changes) -> RuntimeOptions:
        """The device's runtime with the first dtype, GEMMs and context cache asked for, and ``changes``."""
        kw = dict(
            dtype=dtypes[0], quantize=quantizes[0], context_cache=context_cache, context_cache_refresh=refreshes[0]
        )
        return RuntimeOptions.for_device(args.device, **{**kw, **changes})

    if args.vae_pruning is not None:
        if len(refreshes) > 1:
            p.error("--vae-pruning compares decoders alone: give one --context-cache-refresh value at most")
        if args.camera_cache != "on":
            p.error("--vae-pruning measures with the camera cache on; leave --camera-cache at its default")
        if not all(0.0 <= r < 1.0 for r in args.vae_pruning):
            p.error(f"--vae-pruning rates must be in [0, 1), got {args.vae_pruning}")
        runtime = options()
        cfg = load_world_model(args.model, runtime).config
        models = {
            r: random_world_model(cfg.replace(vae=cfg.vae.replace(pruning_rate=r)), runtime) for r in args.vae_pruning
        }
        key = "vae_pruning_rate"
    elif args.context_cache == "both" or len(refreshes) > 1:
        cached = [(True, r) for r in refreshes]
        models = {
            _cache_label(c, r): load_world_model(args.model, options(context_cache=c, context_cache_refresh=r))
            for c, r in ([(False, 0)] if args.context_cache == "both" else []) + cached
        }
        key = "context_cache"
    elif len(combos) > 1:
        models = {_setting(d, q): load_world_model(args.model, options(dtype=d, quantize=q)) for d, q in combos}
        key = "dtype" if len(quantizes) == 1 else "setting"
    else:
        settings = {"on": [True], "off": [False], "both": [True, False]}[args.camera_cache]
        models = {c: load_world_model(args.model, options(camera_cache=c)) for c in settings}
        key = "camera_cache"
    if args.sampler_steps is not None:
        models = {k: m.with_sampler(num_steps=args.sampler_steps) for k, m in models.items()}
    settings = list(models)
    # one untimed warm-up (allocator, kernels, cuDNN autotuning)
    for model in models.values():
        measure(model, args.batches[0], 1)
    rows = []
    for b in args.batches:
        if len(settings) == 1:
            rows.append({**measure(models[settings[0]], b, args.chunks), key: settings[0]})
            continue
        parts: dict = {c: [] for c in settings}
        for _ in range(max(1, args.chunks // 3)):  # alternate runs of 3 chunks
            for c in settings:
                parts[c].append(measure(models[c], b, 3))
        rows += [_merge(parts[c], **{key: c}) for c in settings]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    steps = sorted({m.config.sampler.num_steps for m in models.values()})
    print(
        f"model {args.model} on {args.device} ({name}), torch threads {torch.get_num_threads()}, "
        f"{'/'.join(map(str, steps))} sampler steps"
    )
    head, shown = {
        "vae_pruning_rate": ("decoder p", lambda v: f"{v:g}"),
        "dtype": ("dtype", str),
        "setting": ("setting", str),
        "camera_cache": ("cam cache", lambda v: "on" if v else "off"),
        "context_cache": ("ctx cache", str),
    }[key]
    width = max(9, *(len(shown(r[key])) for r in rows))
    print(f"{'envs':>5} {head:>{width}} {'reset s':>8} {'chunk s':>8} {'frames/s':>9} {'per env':>8}")
    for r in rows:
        setting = shown(r[key])
        print(
            f"{r['batch']:>5} {setting:>{width}} {r['seconds_reset']:>8.3f} "
            f"{r['seconds_per_chunk']:>8.3f} {r['frames_per_s']:>9.1f} {r['frames_per_s_per_env']:>8.1f}"
        )
    out = {
        "model": args.model,
        "random_weights": args.vae_pruning is not None,
        "device": args.device,
        "device_name": name,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtypes": sorted({str(m.runtime.dtype).removeprefix("torch.") for m in models.values()}),
        "quantize": sorted({str(m.runtime.quantize) for m in models.values()}),
        "context_cache": sorted({m.runtime.context_cache for m in models.values()}),  # as resolved at load
        "context_cache_refresh": sorted({m.runtime.context_cache_refresh for m in models.values()}),
        "sampler_steps": steps,
        "rows": rows,
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
