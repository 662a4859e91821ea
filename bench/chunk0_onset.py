"""Where chunk 0 loses: does the model copy its start frame, and does it move as the simulator does?

Two rollouts of chunk 0 from the test starts (``mg3 eval``'s episodes, seed 0):

- *still*: no actions. PSNR per generated latent (its 4 frames) against the start frame, beside the VAE's round trip
  of the start frame held still (a model that copies its context sits near the VAE), and against its own frame 0.
- *onset*: the simulator's actions. How far each latent's frames are from frame 0, in the simulator and in the model
  (PSNR against their own frame 0: higher is less change), and the model against the simulator.

PSNR is capped at 60 dB here (frames identical to frame 0 would otherwise score the metric's 100 dB cap).

    PYTHONPATH=. python bench/chunk0_onset.py world_model/assets/embedded --episodes 6 --json out.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mg3_eval.metrics import psnr
from mg3_eval.protocols.fidelity import latent_means
from mg3_eval.rollout import generate_videos, vae_roundtrip
from mg3_eval.simulator import record_test_episodes
from world_model.checks import positive_arg
from world_model.generator import StreamingGenerator
from world_model.model import load_world_model
from world_model.runtime import RuntimeOptions

CAP_DB = 60.0


def per_latent(db: np.ndarray, r: int) -> list[float]:
    """[N, T] per-frame PSNR, capped at :data:`CAP_DB` -> the mean of each latent's ``r`` frames over episodes."""
    return [round(x, 2) for x in latent_means(np.minimum(db, CAP_DB), r)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--threads", type=positive_arg, default=2)
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wm = load_world_model(args.model, RuntimeOptions.for_device("cpu"))
    r = wm.config.vae.temporal_stride
    t = StreamingGenerator(wm).first_chunk_frames
    n = args.episodes
    eps = record_test_episodes(wm.config, n, t)
    imgs = np.stack([e.frames[0] for e in eps])
    prompts = [e.prompt for e in eps]
    seeds = list(range(n))
    kdim = eps[0].keyboard.shape[1]

    def vs_own_first(video: np.ndarray) -> np.ndarray:  # [N, t, H, W, 3] -> [N, t - 1]
        return psnr(video[:, :1], video[:, 1:t])

    still = generate_videos(
        wm, imgs, prompts, np.zeros((n, t, kdim), np.float32), np.zeros((n, t, 2), np.float32), seeds=seeds
    ).frames
    held = np.repeat(imgs[:, None], t, 1)
    sim = np.stack([e.frames[:t] for e in eps])
    moved = generate_videos(
        wm, imgs, prompts, np.stack([e.keyboard[:t] for e in eps]), np.stack([e.mouse[:t] for e in eps]), seeds=seeds
    ).frames
    out = {
        "model": str(args.model),
        "episodes": n,
        "still": {
            "model_vs_start": per_latent(psnr(still[:, 1:t], held[:, 1:t]), r),
            "vae_vs_start": per_latent(psnr(vae_roundtrip(wm, held)[:, 1:t], held[:, 1:t]), r),
            "model_vs_own_frame0": per_latent(vs_own_first(still), r),
        },
        "onset": {
            "sim_vs_own_frame0": per_latent(vs_own_first(sim), r),
            "model_vs_own_frame0": per_latent(vs_own_first(moved), r),
            "model_vs_sim": per_latent(psnr(moved[:, 1:t], sim[:, 1:t]), r),
        },
    }
    for part, rows in (("still", out["still"]), ("onset", out["onset"])):
        print(part)
        for name, vals in rows.items():
            print(f"  {name:22s} " + " ".join(f"{v:5.1f}" for v in vals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
