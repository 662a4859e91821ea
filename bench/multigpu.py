"""Sequence-parallel speed and agreement of the 5B DiT over the GPUs of one host (issue 8, spec §8).

One steady-state chunk (spec §6): 5 memory + 4 past + 10 noisy latents at 704x1280 (token grid
22x40, 19 x 880 = 16,720 tokens), 56 action frames, 512 text rows, 3 sampler steps = 3 DiT forwards
(timesteps 1000/908/712, context frames 0); random bf16 weights (the same on every rank), batch 1.

Every rank runs the model with :func:`world_model.parallel.apply_sequence_parallel` applied, on the
same inputs; rank 0 then removes it and runs the model alone on its GPU for the 1-GPU time and the
reference output. Reported:
seconds per chunk and frames/s (40 new frames per chunk) for N GPUs and for 1, speedup and
efficiency, the max abs difference of the N-GPU output from the 1-GPU output in bf16 (per step), and
peak memory per rank. Prints a table on rank 0 and writes JSON.

    PYTHONPATH=. torchrun --standalone --nproc_per_node N bench/multigpu.py [--out bench/results/multigpu_N.json]
        [--attention auto|sdpa|cudnn|flash|efficient] [--iters 5] [--warmup 2] [--skip-single]
    PYTHONPATH=. torchrun --standalone --nproc_per_node 2 bench/multigpu.py --tiny    # CPU smoke test (gloo)

Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from world_model.attention import set_attention_backend
from world_model.config import DiTConfig, mg3_5b, tiny
from world_model.dit import MatrixGameDiT
from world_model.parallel import apply_sequence_parallel

FRAMES_PER_CHUNK = 40  # new pixel frames per later chunk (10 latents x 4)
STEP_TIMESTEPS = (1000.0, 908.0, 712.0)  # the 3-step schedule as the model sees it (bf16-rounded)
MEMORY, PAST, NEW = 5, 4, 10


def build_model(cfg: DiTConfig, device: torch.device, dtype: torch.dtype) -> MatrixGameDiT:
    """Random weights made on ``device`` in ``dtype``, then rank 0's weights broadcast to all ranks."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # give the zero-initialised layers weights so every path does real work
        for block in model.blocks:
            block.cam_scale_layer.weight.normal_(std=0.01)
            block.cam_shift_layer.weight.normal_(std=0.01)
            if block.action_model is not None:
                for name in ("proj_mouse", "proj_keyboard"):
                    layer = getattr(block.action_model, name, None)
                    if layer is not None:
                        layer.weight.normal_(std=0.01)
        model.head.head.weight.normal_(std=0.01)
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    return model.eval()


def make_inputs(cfg: DiTConfig, h: int, w: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One later chunk's inputs, batch 1, drawn from a fixed CPU seed (identical on every rank)."""
    g = torch.Generator().manual_seed(1)
    F = PAST + NEW
    nf = 4 * F  # pixel frames of the window (later clips: a multiple of 4)
    start = 41  # first window latent of chunk 4 (spec §6: 10k + 1)
    memory_positions = torch.tensor([1, 7, 13, 20, 33])

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "x": randn(1, cfg.in_dim, F, h, w),
        "context": randn(1, cfg.text_len, cfg.text_dim),
        "plucker": randn(1, cfg.plucker_channels, MEMORY + F, h, w),
        "mouse": (0.1 * torch.randn(1, nf, 2, generator=g)).to(device),
        "keyboard": (torch.rand(1, nf, 6, generator=g) > 0.5).float().to(device),
        "positions": torch.cat([memory_positions, torch.arange(start, start + F)])[None].to(device),  # [1, M+F]
        "memory": randn(1, cfg.in_dim, MEMORY, h, w),
    }


def time_chunks(chunk: Callable[[], list[torch.Tensor]], device: torch.device, warmup: int, iters: int, sync_all: bool):
    """Seconds per chunk (wall clock; all ranks start and end together when ``sync_all``)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if sync_all:
            dist.barrier()

    for _ in range(warmup):
        chunk()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        chunk()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/multigpu_<N>.json)")
    parser.add_argument("--attention", default="auto", help="attention backend (world_model.attention)")
    parser.add_argument("--iters", type=int, default=5, help="timed chunks (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed chunks first")
    parser.add_argument("--skip-single", action="store_true", help="do not time the 1-GPU model on rank 0")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny config (gloo)")
    args = parser.parse_args(argv)

    if args.tiny:
        backend, device, dtype = "gloo", torch.device("cpu"), torch.float32
        cfg, h, w = tiny().dit, 8, 8
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("multigpu.py needs CUDA GPUs (or --tiny for a CPU smoke test)")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend, dtype = "nccl", torch.bfloat16
        cfg, h, w = mg3_5b().dit, 44, 80
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        model = build_model(cfg, device, dtype)
        set_attention_backend(model, args.attention)
        sp = apply_sequence_parallel(model)
        inputs = make_inputs(cfg, h, w, device, dtype)
        t_steps = [torch.tensor([[0.0] * PAST + [s] * NEW], device=device) for s in STEP_TIMESTEPS]  # [1, F]

        def chunk_with(net: torch.nn.Module) -> Callable[[], list[torch.Tensor]]:
            def chunk() -> list[torch.Tensor]:
                with torch.inference_mode():
                    return [net(t=t, **inputs) for t in t_steps]

            return chunk

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sp_times = time_chunks(chunk_with(model), device, args.warmup, args.iters, sync_all=True)
        sp_out = chunk_with(model)()
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        peak = torch.tensor([peak_gib], device=device)
        peaks = [torch.zeros_like(peak) for _ in range(world)]
        dist.all_gather(peaks, peak)

        single_times, diffs = None, None
        sp.remove()  # the plain model again
        if rank == 0 and not args.skip_single:
            single_times = time_chunks(chunk_with(model), device, args.warmup, args.iters, sync_all=False)
            ref = chunk_with(model)()
            diffs = [
                {
                    "timestep": s,
                    "max_abs_diff": float((a - b).abs().max()),
                    "ref_max_abs": float(b.abs().max()),
                    "ref_mean_abs": float(b.abs().mean()),
                }
                for s, a, b in zip(STEP_TIMESTEPS, sp_out, ref)
            ]
        # Every rank returns the same full output.
        first = sp_out[-1].contiguous()
        gathered = [torch.empty_like(first) for _ in range(world)]
        dist.all_gather(gathered, first)
        ranks_agree = all(torch.equal(gathered[0], g) for g in gathered[1:])
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return None

    L = (MEMORY + PAST + NEW) * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    sec = statistics.median(sp_times)
    single = None if single_times is None else statistics.median(single_times)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "backend": backend,
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "mg3-5b",
        "dtype": str(dtype).removeprefix("torch."),
        "attention_backend": args.attention,
        "resolution": "tiny" if args.tiny else "704x1280",
        "tokens": L,
        "forwards_per_chunk": len(STEP_TIMESTEPS),
        "seconds_per_chunk": sec,
        "seconds_per_chunk_all": sp_times,
        "frames_per_second": FRAMES_PER_CHUNK / sec,
        "single_gpu_seconds_per_chunk": single,
        "single_gpu_seconds_per_chunk_all": single_times,
        "single_gpu_frames_per_second": None if single is None else FRAMES_PER_CHUNK / single,
        "speedup": None if single is None else single / sec,
        "efficiency": None if single is None else single / sec / world,
        "vs_single_gpu": diffs,
        "max_abs_diff": None if diffs is None else max(d["max_abs_diff"] for d in diffs),
        "ranks_agree": ranks_agree,
        "peak_memory_gib_per_rank": [float(p) for p in peaks] if device.type == "cuda" else None,  # SP run only
    }
    _print_table(result)
    out = Path(args.out or f"bench/results/multigpu_{world}{'_tiny' if args.tiny else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print_table(r: dict) -> None:
    def fmt(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    rows = [
        ("device", f"{r['world_size']} x {r['device']} ({r['backend']})"),
        ("config / dtype / attention", f"{r['config']} / {r['dtype']} / {r['attention_backend']}"),
        ("tokens per forward", f"{r['tokens']:,}"),
        (f"seconds per chunk, {r['world_size']} ranks (median)", fmt(r["seconds_per_chunk"], ".4f")),
        (f"frames/s, {r['world_size']} ranks", fmt(r["frames_per_second"], ".2f")),
        ("seconds per chunk, 1 GPU (median)", fmt(r["single_gpu_seconds_per_chunk"], ".4f")),
        ("frames/s, 1 GPU", fmt(r["single_gpu_frames_per_second"], ".2f")),
        ("speedup / efficiency", f"{fmt(r['speedup'], '.2f')} / {fmt(r['efficiency'], '.2f')}"),
        ("max abs diff vs 1 GPU (3 steps)", fmt(r["max_abs_diff"], ".3e")),
        *(
            (f"  step t={d['timestep']:.0f}: max diff / ref max", f"{d['max_abs_diff']:.3e} / {d['ref_max_abs']:.3e}")
            for d in r["vs_single_gpu"] or []
        ),
        ("all ranks return the same output", str(r["ranks_agree"])),
        (
            "peak memory GiB per rank",
            "n/a"
            if r["peak_memory_gib_per_rank"] is None
            else ", ".join(f"{p:.1f}" for p in r["peak_memory_gib_per_rank"]),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
    # Everything is written and the process group destroyed; what is left is the interpreter's teardown, where
    # gloo's C++ state aborts now and then ("terminate called without an active exception": 2 of 40 and 2 of 50
    # two-rank CPU runs with torch 2.13; a held reference to the group past destroy_process_group does the same in
    # a bare gloo script). Leave without it, so that a finished run exits 0 and torchrun does not report a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
