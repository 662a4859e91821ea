"""Time the per-chunk camera work of the release geometry (704x1280, spec §5) on CPU and GPU.

Per chunk the generator integrates 40 actions into poses, builds the window camera code
(14 latents, [B, 1536, 14, 44, 80]), retrieves 5 memory latents out of every past frame and builds
their camera code. Retrieval cost grows with the rollout length, so it is timed at several chunk
indices (chunk k has 40k candidates).

    python bench/bench_camera.py [--batch 1 8] [--chunks 1 10 50 200] [--devices cpu cuda] [--json out.json]

Prints a table (ms per call) and writes JSON. It also checks that CPU and GPU select the same
memory frames (column "same").
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from world_model.camera import c2w_from_poses, integrate_poses, window_bounds, window_plucker, window_pose_frames
from world_model.config import mg3_5b
from world_model.memory import memory_plucker, select_memory


def _time_ms(fn, device: str, iters: int) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3


def _rollout(batch: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keyboard [B, T, 6] and mouse [B, T, 2] of random 12-frame actions (like the release's benchmark)."""
    g = torch.Generator().manual_seed(0)
    seg = num_frames // 12 + 1
    kb = (torch.rand(batch, seg, 6, generator=g) > 0.6).float()
    kb[..., 4:] = 0
    ms = torch.randint(-1, 2, (batch, seg, 2), generator=g).double() * 0.1
    ms[..., 0] = 0
    return kb.repeat_interleave(12, 1)[:, :num_frames], ms.repeat_interleave(12, 1)[:, :num_frames]


def _bench(dev: str, b: int, k: int, kb: torch.Tensor, ms: torch.Tensor, iters: int) -> tuple[dict, torch.Tensor]:
    """One (device, batch, chunk) row of timings and the selected memory frames."""
    cfg = mg3_5b()
    s, r, stride = cfg.stream, cfg.vae.temporal_stride, cfg.vae.spatial_stride
    start_pose = torch.zeros(b, 5, dtype=torch.float64, device=dev)
    kb, ms = kb.to(dev), ms.to(dev)
    c2w = c2w_from_poses(integrate_poses(kb, ms, start_pose, s))  # [B, end, 4, 4]
    frames = window_pose_frames(torch.full((b,), k), s, r).to(dev)
    win = torch.gather(c2w, 1, frames[..., None, None].expand(-1, -1, 4, 4))
    sel = select_memory(c2w, k, s, r)
    f32 = torch.float32
    row = {
        "device": dev,
        "batch": b,
        "chunk": k,
        "candidates": int(window_bounds(k, s, r)[0]) - 1,
        "integrate_ms": _time_ms(lambda: integrate_poses(kb[:, :40], ms[:, :40], start_pose, s), dev, iters),
        "window_plucker_ms": _time_ms(lambda: window_plucker(win, s.height, s.width, stride, dtype=f32), dev, iters),
        "select_memory_ms": _time_ms(lambda: select_memory(c2w, k, s, r), dev, iters),
        "memory_plucker_ms": _time_ms(
            lambda: memory_plucker(c2w, sel, s.height, s.width, stride, dtype=f32), dev, iters
        ),
    }
    return row, sel.frames.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", default="bench_camera.json")
    args = parser.parse_args()
    cfg = mg3_5b()
    rows = []
    for b in args.batch:
        for k in args.chunks:
            _, end = window_bounds(k, cfg.stream, cfg.vae.temporal_stride)
            kb, ms = _rollout(b, int(end) - 1)
            results = [_bench(dev, b, k, kb, ms, args.iters) for dev in args.devices]
            same = all(torch.equal(frames, results[0][1]) for _, frames in results)
            for row, _ in results:
                rows.append({**row, "same_as_first_device": same})

    print(
        f"{'device':>6} {'B':>3} {'chunk':>5} {'cands':>6} {'integr':>8} {'win_pl':>8} {'select':>8} {'mem_pl':>8} same"
    )
    for x in rows:
        print(
            f"{x['device']:>6} {x['batch']:>3} {x['chunk']:>5} {x['candidates']:>6} {x['integrate_ms']:>8.2f} "
            f"{x['window_plucker_ms']:>8.2f} {x['select_memory_ms']:>8.2f} {x['memory_plucker_ms']:>8.2f} "
            f"{x['same_as_first_device']}"
        )
    info = {"cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
