"""What the DiT loses to the camera code it is given at inference: its chunks conditioned on the engine's recorded
poses (as it was trained) against the poses the env integrates from the same actions (what it gets when played).

The env integrates the actions into poses (``move_speed`` whenever a key is held); the training clips carried the
engine's poses, where the player accelerates, glides and stops at walls (bench/pose_drift.py: 108 map units apart at
the median over a chunk-0 window). This records episodes with the engine, encodes them with the model's VAE and
generates chunk 0, and chunk 1 after the true and after its own chunk 0, each conditioned both ways, scored against
the engine's frames by the training evaluation (world_model.train.evaluate.FirstChunkEval; the same noise for both).
The difference is what training on integrated poses (``--camera-poses integrated``) can win back at most on these
windows, where the recorded camera code is an oracle the env never has.

    python bench/pose_source_gap.py --model default --split test --episodes 12 --json bench/results/pose_source_gap_test_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions
    from world_model.train.clips import CAMERA_POSES, ClipSampler
    from world_model.train.encode import encode_store
    from world_model.train.engine_frames import record_whole_episodes
    from world_model.train.evaluate import FirstChunkEval

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help='a registry name or model folder ("default": the embedded one)')
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--sampler-steps", type=int, default=0, help="the sampler's steps (0: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.episodes < 1 or a.sampler_steps < 0:
        p.error("--episodes must be >= 1 and --sampler-steps >= 0")
    t0 = time.perf_counter()
    model = load_world_model(a.model, RuntimeOptions(device="cpu", dtype=torch.float32, quantize=None))
    cfg = model.config
    sampler_cfg = cfg.sampler.replace(num_steps=a.sampler_steps) if a.sampler_steps else cfg.sampler
    s = cfg.stream
    latents = s.first_latents + s.new_latents  # chunks 0 and 1
    length = 1 + cfg.vae.temporal_stride * (latents - 1)
    frames = record_whole_episodes(a.split, a.episodes, length, (s.height, s.width), seed=a.seed)
    lat = encode_store(model.vae, frames, latents, model.text_encoder, progress=False)
    per_window: dict[str, list[dict[str, float]]] = {}
    for source in CAMERA_POSES:
        clips = ClipSampler(lat, cfg, 1, use_memory=True, camera_poses=source)
        evaluate = FirstChunkEval(clips, frames, model.vae, sampler_cfg, num_segments=lat.num_segments, seed=a.seed)
        per_window[source] = []
        for w in range(lat.num_segments):  # one window at a time, each with noise of its own, the same for both sources
            evaluate.segments, evaluate.seed = torch.tensor([w]), a.seed + w
            per_window[source].append(evaluate(model.dit))
        print(source, "done", flush=True)
    keys = ("psnr_model", "gain_db", "psnr_next", "gain_next_db", "psnr_next_rollout", "sharpness_model")
    mean = {s: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for s, rows in per_window.items()}
    paired = {}
    for k in keys:
        d = np.array([i[k] - r[k] for r, i in zip(per_window["recorded"], per_window["integrated"], strict=True)])
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        paired[k] = {"diff": float(d.mean()), "se": se, "integrated_better": int((d > 0).sum())}
    print(f"\n{lat.num_segments} {a.split}-level windows, {sampler_cfg.num_steps} sampler steps (paired per window)")
    print(f"  {'':22s} {'recorded':>9s} {'integrated':>10s} {'diff':>7s} {'+- se':>6s}")
    for k in keys:
        r, i, d = mean["recorded"][k], mean["integrated"][k], paired[k]
        print(f"  {k:22s} {r:9.3f} {i:10.3f} {d['diff']:+7.3f} {d['se']:6.3f}")
    out = {
        "model": a.model,
        "split": a.split,
        "windows": lat.num_segments,
        "sampler_steps": sampler_cfg.num_steps,
        "mean": mean,
        "integrated_minus_recorded": paired,
        "per_window": per_window,
        "seconds": time.perf_counter() - t0,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
