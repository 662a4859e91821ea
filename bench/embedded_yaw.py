"""Does the model turn when told to? Horizontal image motion under commanded yaw, model vs simulator.

From rest starts on held-out levels, the first chunk is played with no keys and a constant yaw
command, once in the simulator and once by the model (the same start frame, prompt and actions).
For each pair of consecutive frames the horizontal shift (pixels) is the pan of
:func:`mg3_eval.metrics.image_shift` (the shift that minimises the mean squared difference of the
luma over the central part). Unlike phase correlation this survives blurry frames. The table gives
the mean shift per frame for each command, for the simulator and for the model. ``mg3 eval --parts
motion`` measures the same at two yaw rates beside pitch, forward and strafe.

    python bench/embedded_yaw.py --model default --device cpu --starts 6 --json bench/results/embedded_yaw.json
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from mg3_eval.metrics import image_shift, luma
from mg3_eval.rollout import generate_videos
from mg3_eval.simulator import doom_config_for, play_commands, rest_starts
from world_model.checks import positive_arg
from world_model.generator import StreamingGenerator
from world_model.model import load_world_model
from world_model.runtime import RuntimeOptions


def mean_shift(frames: np.ndarray) -> float:
    """Mean pan per frame (pixels, content moving left) of uint8 frames [T, H, W, 3]."""
    y = luma(frames)
    return float(image_shift(y[:-1], y[1:])[:, 0].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--starts", type=int, default=6, help="rest starts (one per level, then further points)")
    p.add_argument("--yaws", type=float, nargs="+", default=[0.0, 0.15, -0.15, 0.35, -0.35])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_arg, default=None)
    p.add_argument("--json", default="bench_embedded_yaw.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = RuntimeOptions.for_device(args.device)
    wm = load_world_model(args.model, runtime)
    cfg = wm.config
    t = StreamingGenerator(wm).first_chunk_frames
    doom = doom_config_for(cfg)
    starts = rest_starts(cfg, args.starts, split=args.split, seed=args.seed)
    n = len(args.yaws)
    sim = np.zeros((len(starts), n))
    model = np.zeros((len(starts), n))
    for i, start in enumerate(starts):
        keyboard = np.zeros((n, t, 6), np.float32)
        mouse = np.zeros((n, t, 2), np.float32)
        mouse[:, :, 1] = np.array(args.yaws, np.float32)[:, None]
        g = generate_videos(
            wm, np.stack([start.frame] * n), [start.prompt] * n, keyboard, mouse, seeds=[args.seed + i] * n
        )
        for j in range(n):
            frames, _ = play_commands(start, doom, keyboard[j], mouse[j])
            sim[i, j] = mean_shift(frames[1:])  # frame 0 is the start; the generated chunk is frames 1..t
            model[i, j] = mean_shift(g.frames[j, 1:])  # its frame 0 is the decoded start image
        print(f"start {i + 1}/{len(starts)} ({start.level}) done", flush=True)
    rows = [
        {
            "yaw": y,
            "degrees_per_frame": y * cfg.stream.degrees_per_mouse_unit,
            "sim_px_per_frame": float(sim[:, j].mean()),
            "model_px_per_frame": float(model[:, j].mean()),
            "model_per_start": model[:, j].tolist(),
            "sim_per_start": sim[:, j].tolist(),
        }
        for j, y in enumerate(args.yaws)
    ]
    print(f"model {wm.name} ({cfg.name}) on {runtime.device}; {len(starts)} starts on {args.split} levels")
    print(f"{'yaw':>6} {'deg/frame':>9} {'sim px/frame':>12} {'model px/frame':>14}")
    for r in rows:
        y, d, s, m = r["yaw"], r["degrees_per_frame"], r["sim_px_per_frame"], r["model_px_per_frame"]
        print(f"{y:>6.2f} {d:>9.2f} {s:>12.2f} {m:>14.2f}")
    out = {
        "model": wm.name,
        "config": cfg.name,
        "device": str(runtime.device),
        "machine": platform.machine(),
        "split": args.split,
        "levels": [s.level for s in starts],
        "frames_per_episode": t,
        "rows": rows,
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
