"""Generated and retextured levels against the train levels: what the recorder's episodes show on each.

Records one explorer episode per level (begun anywhere, ``--frames`` frames at 128 x 128) on ``--levels`` train
levels, the same levels retextured (world_model.data.retexture: the same geometry, so the same poses) and as many
generated levels (world_model.data.procgen), the same seeds, and compares per episode: ground covered (cells of 128
map units), times the explorer got stuck, sharpness (mean luma gradient), brightness, the frame-to-frame change, the
recording's frames/s. Prints a table, writes JSON with ``--out`` and a strip with ``--png`` (a row per group: the
train levels, retextured, generated; each episode's frame 0 and middle).

    python bench/generated_levels.py --levels 8 --workers 2 --out bench/results/generated_levels_cpu.json \\
        --png docs/data/generated_levels.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


def _episode(args: tuple[str, int, int]) -> dict:
    from mg3_eval.metrics import frame_change, sharpness
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import record_episode
    from world_model.data.levels import get_level
    from world_model.data.summary import COVERAGE_CELL

    level, seed, frames = args
    t0 = time.perf_counter()
    ep = record_episode(get_level(level), frames, seed=seed, doom=DoomConfig(128, 128, spawn="anywhere"))
    seconds = time.perf_counter() - t0
    cells = {tuple(c) for c in np.floor(ep.poses[:, :2] / COVERAGE_CELL).astype(int).tolist()}
    f = ep.frames
    return {
        "level": level,
        "cells": len(cells),
        "stuck": int(ep.num_stuck),
        "sharpness": float(np.mean(sharpness(f))),
        "brightness": float(f.mean() / 255.0),
        "change": float(frame_change(f)),
        "fps": len(f) / seconds,
        "views": np.stack([f[0], f[len(f) // 2]]),
    }


def main(argv: list[str] | None = None) -> dict:
    from world_model.data.levels import levels_in_split, retextured_level

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, default=8, help="train levels, and as many retextured and generated ones")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument(
        "--seed", type=int, default=0, help="the first generated level's and looks' seed, and the levels' draw"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out")
    p.add_argument("--png")
    a = p.parse_args(argv)
    train = levels_in_split("train")
    picks = np.random.default_rng(a.seed).choice(len(train), size=min(a.levels, len(train)), replace=False)
    groups = {
        "train levels": [train[int(i)].name for i in picks],
        "retextured levels": [retextured_level(train[int(j)], a.seed + i).name for i, j in enumerate(picks)],
        "generated levels": [f"generated/{a.seed + i}" for i in range(len(picks))],
    }
    rows, views = {}, {}
    # one worker plays in this process (as the tests import this file, which a spawned worker could not)
    pool = ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) if a.workers > 1 else None
    with pool or contextlib.nullcontext():
        for group, names in groups.items():
            jobs = [(n, 1000 + i, a.frames) for i, n in enumerate(names)]
            eps = list(pool.map(_episode, jobs) if pool else map(_episode, jobs))
            views[group] = np.concatenate([e.pop("views") for e in eps], axis=0)
            keys = ("cells", "stuck", "sharpness", "brightness", "change", "fps")
            rows[group] = {"episodes": eps, **{k: float(np.mean([e[k] for e in eps])) for k in keys}}
    print(f"{len(picks)} episodes a group, {a.frames} frames each, begun anywhere, 128 x 128")
    print(f"{'':<18}{'cells':>7}{'stuck':>7}{'sharpness':>11}{'brightness':>12}{'change':>8}{'frames/s':>10}")
    for group, r in rows.items():
        print(
            f"{group:<18}{r['cells']:>7.1f}{r['stuck']:>7.1f}{r['sharpness']:>11.4f}{r['brightness']:>12.3f}"
            f"{r['change']:>8.4f}{r['fps']:>10.0f}"
        )
    result = {"frames": a.frames, "seed": a.seed, **rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    if a.png:
        from PIL import Image

        strip = np.concatenate([np.concatenate(list(v), axis=1) for v in views.values()], axis=0)
        Image.fromarray(strip).save(a.png)
    return result


if __name__ == "__main__":
    main()
