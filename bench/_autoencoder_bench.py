"""What the autoencoder benches (decoder_init.py, vae_grid.py) share: a VAE stage checkpoint from a tar, freshly
recorded ViZDoom episodes (train and validation levels), clip samplers over them, and their common options."""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

from world_model.checks import positive_arg


def add_options(p: argparse.ArgumentParser, *, steps: int, every: int) -> None:
    p.add_argument("--vae-tar", required=True, help="a tar holding vae/ (a vae stage folder with a checkpoint)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--every", type=int, default=every)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--clip-frames", type=int, default=9)
    p.add_argument("--eval-clips", type=int, default=6)
    p.add_argument("--episodes", type=int, default=6, help="training episodes of 300 frames (two held out)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=positive_arg, default=2)
    p.add_argument("--json", default=None)


def vae_checkpoint(tar_path: str) -> dict:
    """The latest checkpoint of the vae stage folder in ``tar_path``."""
    from world_model.train.checkpoints import load_latest

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        state = load_latest(Path(tmp) / "vae")
    if state is None:
        raise SystemExit(f"{tar_path} holds no vae/ checkpoint")
    return state


def episodes(n: int) -> tuple[list, list]:
    """``n`` episodes of 300 frames (128x128) on training levels and two on validation levels, fixed seeds."""
    from world_model.data.levels import levels_in_split
    from world_model.train.engine_frames import record_episode_store

    train_levels = [lv.name for lv in levels_in_split("train")]
    held_levels = [lv.name for lv in levels_in_split("validation")]
    train = [
        record_episode_store((train_levels[i * 9 % len(train_levels)], 300 + i, 300, 128, 128, "start", ""))
        for i in range(n)
    ]
    held = [
        record_episode_store((held_levels[i % len(held_levels)], 900 + i, 300, 128, 128, "start", "")) for i in range(2)
    ]
    return train, held


def clips(eps: list, clip_frames: int, seed: int):
    """One clip sampler (CPU) over all of ``eps``."""
    from world_model.train.autoencoder import ClipFrames

    c = ClipFrames(eps[0], clip_frames, "cpu", seed)
    for e in eps[1:]:
        c.extend(e)
    return c
