"""How big a model's screen door is: the fixed 2-pixel pattern in its generated frames, in grey levels.

The test levels' grid share (`mg3 eval --parts sharpness`) is the pattern's share of the frames' fine detail, which is
small in a blurred frame, so a faint pattern can have a large share. This rolls a model out through the env (random
actions, seeded), takes each frame's mean pattern at the 2-pixel phases (its high-pass averaged over the 2 x 2 blocks
at each phase, per colour channel), and reports its amplitude and what removing it changes: the grid share and the
sharpness at full and half resolution (sharpness as `mg3 eval` measures it; a ratio after / before, no simulator).

    python bench/grid_pattern.py --model M [--chunks 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mg3_eval.metrics import sharpness
from world_model.checks import positive_arg
from world_model.train.autoencoder import fixed_grid_share


def frame_patterns(x: torch.Tensor, period: int = 2) -> torch.Tensor:
    """Each frame's and channel's mean high-pass at the ``period`` x ``period`` phases (zero mean): [N, C, p, p]."""
    n, c, h, w = x.shape
    hp = x - F.avg_pool2d(x, period + 1, stride=1, padding=period // 2, count_include_pad=False)
    pat = hp.reshape(n, c, h // period, period, w // period, period).mean(dim=(2, 4))
    return pat - pat.mean(dim=(2, 3), keepdim=True)


def without_pattern(x: torch.Tensor, period: int = 2) -> torch.Tensor:
    """``x`` [N, C, H, W] less each frame's own pattern (see :func:`frame_patterns`) tiled over it."""
    n, c, h, w = x.shape
    pat = frame_patterns(x, period)[:, :, None, :, None, :]
    return (x.reshape(n, c, h // period, period, w // period, period) - pat).reshape(n, c, h, w)


def luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def rollout(model: str, chunks: int, seed: int) -> np.ndarray:
    from mg3_env import MatrixGameEnv

    env = MatrixGameEnv(model=model)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    frames = [np.asarray(env.step(env.action_space.sample())[0]["frames"]) for _ in range(chunks)]
    env.close()
    return np.concatenate(frames)  # [N, H, W, 3] uint8


def measure(frames: np.ndarray) -> dict:
    x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
    y = without_pattern(x)
    clean = y.permute(0, 2, 3, 1).clamp(0, 255).round().numpy().astype(np.uint8)
    out = {
        "frames": len(frames),
        "pattern_rms_grey_levels": float(frame_patterns(x).pow(2).mean().sqrt()),
        "change_rms_grey_levels": float((y - x).pow(2).mean().sqrt()),
        "grid_share_2": float(fixed_grid_share(luma(x), 2)),
        "grid_share_2_without": float(fixed_grid_share(luma(y), 2)),
    }
    for name, pooled in (("full", False), ("half", True)):
        before, after = (float(sharpness(f, pooled=pooled).mean()) for f in (frames, clean))
        out[f"sharpness_{name}_resolution_ratio_without"] = after / before if before > 0 else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_arg, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    result = {"model": a.model, "chunks": a.chunks, "seed": a.seed, **measure(rollout(a.model, a.chunks, a.seed))}
    for k, v in result.items():
        print(f"{k:>42}  {v:.4f}" if isinstance(v, float) else f"{k:>42}  {v}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
