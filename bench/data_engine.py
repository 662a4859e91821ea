"""Data engine throughput: frames/s of ViZDoom + exploring policy, with and without H.264 encoding,
and MB per hour of video. Prints a table and writes JSON.

    python bench/data_engine.py [--frames 2000] [--resolutions 160x120 128x128 256x192] [--out bench.json]
    python bench/data_engine.py --generate 1000000 --workers 16 --out-dir /tmp/doom1m   # the 1M-frame run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from world_model.checks import changed_flags
from world_model.data.doom import DoomConfig
from world_model.data.generate import GenerateConfig, generate_dataset, record_episode
from world_model.data.levels import get_level
from world_model.data.video import VideoEncoder


def bench_resolution(width: int, height: int, frames: int, level: str, preset: str) -> dict:
    doom = DoomConfig(width, height)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        record_episode(get_level(level), frames, seed=0, doom=doom, workdir=tmp)
        raw = frames / (time.perf_counter() - t0)
        path = Path(tmp) / "v.mp4"
        enc = VideoEncoder(path, fps=doom.fps, height=height, width=width, preset=preset)
        t0 = time.perf_counter()
        ep = record_episode(get_level(level), frames, seed=0, doom=doom, video=enc, workdir=tmp)
        enc.close()
        encoded = len(ep.poses) / (time.perf_counter() - t0)
        size = path.stat().st_size
    hours = len(ep.poses) / doom.fps / 3600
    return {
        "resolution": f"{width}x{height}",
        "frames": len(ep.poses),
        "engine_fps": raw,
        "engine_plus_encode_fps": encoded,
        "mb_per_hour": size / 1e6 / hours,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--resolutions", nargs="*", default=["160x120", "128x128", "256x192", "320x240"])
    p.add_argument("--level", default="MAP01")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--out", default="bench_data_engine.json")
    p.add_argument("--generate", type=int, default=0, help="also time a full generate run of this many frames")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out-dir", default=None, help="dataset folder for --generate (default: a temp folder)")
    p.add_argument("--gen-resolution", default="160x120")
    args = p.parse_args()
    idle = changed_flags(p, args, ("workers", "out_dir", "gen_resolution"))
    if idle and not args.generate:
        p.error(f"{', '.join(idle)}: options of the --generate run")

    rows = []
    for res in args.resolutions:
        w, h = (int(v) for v in res.split("x"))
        rows.append(bench_resolution(w, h, args.frames, args.level, args.preset))
    print(f"{'resolution':>10} {'frames':>7} {'engine fps':>11} {'+encode fps':>12} {'MB/hour':>8}  (one process)")
    for r in rows:
        print(
            f"{r['resolution']:>10} {r['frames']:>7} {r['engine_fps']:>11.0f} "
            f"{r['engine_plus_encode_fps']:>12.0f} {r['mb_per_hour']:>8.0f}"
        )
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "per_process": rows}

    if args.generate:
        w, h = (int(v) for v in args.gen_resolution.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out_dir or Path(tmp) / "ds")
            cfg = GenerateConfig(
                frames=args.generate, width=w, height=h, workers=args.workers, seed=0, preset=args.preset
            )
            t0 = time.perf_counter()
            reader = generate_dataset(out, cfg)
            dt = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        gen = {
            "frames": reader.num_frames, "episodes": len(reader), "workers": args.workers, "seconds": dt,
            "fps": reader.num_frames / dt, "resolution": args.gen_resolution, "bytes": size,
        }  # fmt: skip
        print(
            f"generate: {gen['frames']} frames, {gen['episodes']} episodes, {args.workers} workers, "
            f"{dt:.0f} s ({gen['fps']:.0f} frames/s), {size / 1e9:.2f} GB"
        )
        result["generate"] = gen
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
