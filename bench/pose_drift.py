"""How far the poses the env integrates from the actions drift from the engine's own, over a chunk's window.

At inference nothing measures the camera: the env integrates the keys and the mouse into poses
(``world_model.camera.integrate_poses``: ``move_speed`` a frame whenever a key is held) and the DiT's camera code and
memory retrieval come from those. The DiT was trained on the poses the engine recorded, where the player accelerates,
glides after a key is released and stops at walls. This plays episodes as the training recorder does (train levels,
random start points, the strafing explorer), integrates each window's actions from its first recorded pose and
reports the gap at the window's end against the window's true displacement, and the engine's per-frame speed while a
move key is held against the integrator's. ``--camera-poses integrated`` (world_model.train.clips) trains on the
integrated poses instead.

    python bench/pose_drift.py --episodes 4 --json bench/results/pose_drift_cpu.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def window_drift(poses: np.ndarray, keyboard: np.ndarray, mouse: np.ndarray, cfg, frames: int, stride: int):
    """Per window of ``frames`` frames (every ``stride``): (end-position gap, true displacement), map units."""
    from world_model.camera import integrate_poses

    gaps, moves = [], []
    for s in range(0, len(poses) - frames + 1, stride):
        kb = torch.as_tensor(keyboard[None, s : s + frames - 1])
        ms = torch.as_tensor(mouse[None, s : s + frames - 1])
        start = torch.as_tensor(poses[None, s], dtype=torch.float64)
        end = integrate_poses(kb, ms, start, cfg)[0, -1].numpy()
        gaps.append(float(np.linalg.norm(end[:2] - poses[s + frames - 1, :2])))
        moves.append(float(np.linalg.norm(poses[s + frames - 1, :2] - poses[s, :2])))
    return gaps, moves


def main(argv: list[str] | None = None) -> dict:
    from world_model.data.levels import levels_in_split
    from world_model.model import EMBEDDED_DIR, read_exported_config
    from world_model.train.engine_frames import record_episode_store

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=600, help="frames an episode")
    p.add_argument("--explorer", default="strafe=0.4", help="the recorder's explorer spec (the training data's)")
    p.add_argument("--window", type=int, default=57, help="frames a window (chunk 0's 57)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.episodes < 1 or a.frames < a.window or a.window < 2:
        p.error("need --episodes >= 1 and --frames >= --window >= 2")
    cfg = read_exported_config(EMBEDDED_DIR / "config.json").stream  # the shipped model's integrator: its move_speed
    levels = levels_in_split("train")
    gaps, moves, speeds = [], [], {"forward or back": [], "strafe": []}
    for i in range(a.episodes):
        level = levels[(a.seed + 7 * i) % len(levels)]
        ep = record_episode_store((level.name, a.seed + i, a.frames, 128, 128, "anywhere", a.explorer, 0))
        poses = ep.poses.astype(np.float64)
        g, m = window_drift(poses, ep.keyboard, ep.mouse, cfg, a.window, max(1, a.window // 3))
        gaps += g
        moves += m
        speed = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1)  # frame i's action moved it this far
        keys = ep.keyboard[:-1] > 0.5
        only_strafe = (keys[:, 2] | keys[:, 3]) & ~(keys[:, 0] | keys[:, 1])
        only_walk = (keys[:, 0] | keys[:, 1]) & ~(keys[:, 2] | keys[:, 3])
        speeds["strafe"] += speed[only_strafe].tolist()
        speeds["forward or back"] += speed[only_walk].tolist()
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else float("nan")  # noqa: E731
    out = {
        "episodes": a.episodes,
        "frames": a.frames,
        "explorer": a.explorer,
        "window": a.window,
        "windows": len(gaps),
        "move_speed": cfg.move_speed,
        "end_gap": {"median": pct(gaps, 50), "mean": float(np.mean(gaps)), "p90": pct(gaps, 90)},
        "displacement": {"median": pct(moves, 50), "mean": float(np.mean(moves))},
        "speed_while_held": {
            k: {
                "frames": len(v),
                "median": pct(v, 50),
                "p10": pct(v, 10),
                "p90": pct(v, 90),
                "share_below_1": float(np.mean(np.asarray(v) < 1.0)) if v else float("nan"),
            }
            for k, v in speeds.items()
        },  # fmt: skip
    }
    print(f"{len(gaps)} windows of {a.window} frames: the integrated end position {out['end_gap']['median']:.0f} map "
          f"units from the recorded one at the median (p90 {out['end_gap']['p90']:.0f}), of a "
          f"{out['displacement']['median']:.0f}-unit median displacement")  # fmt: skip
    for k, v in out["speed_while_held"].items():
        print(f"  {k:16s} speed while held: median {v['median']:.1f} (p10 {v['p10']:.1f}, p90 {v['p90']:.1f}), "
              f"{100 * v['share_below_1']:.0f} % of frames below 1 unit; the integrator {cfg.move_speed:.2f}")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
