"""How much of the train levels the recorded episodes show: start-spot episodes against episodes begun anywhere.

Counts the distinct (level, cell) pairs the camera visits, cells of ``--cell`` map units, over ``--episodes``
episodes per level and mode (the same levels and seeds for both), and prints a table; JSON with ``--out``.

    python bench/spawn_coverage.py --episodes 2 --frames 1000 --workers 2 --out bench/results/spawn_coverage_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


def _cells(args: tuple[str, int, int, str, float]) -> list[tuple[int, int]]:
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import record_episode
    from world_model.data.levels import get_level

    level, seed, frames, spawn, cell = args
    ep = record_episode(get_level(level), frames, seed=seed, doom=DoomConfig(64, 48, spawn=spawn))
    return sorted({tuple(c) for c in np.floor(ep.poses[:, :2] / cell).astype(int).tolist()})


def main(argv: list[str] | None = None) -> dict:
    from world_model.data.levels import levels_in_split
    from world_model.data.summary import COVERAGE_CELL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2, help="episodes per level and mode")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--cell", type=float, default=COVERAGE_CELL, help="map units (mg3 data summary's cells)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--levels", type=int, default=0, help="the first N train levels (0: all 56)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    levels = [lv.name for lv in levels_in_split("train")]
    levels = levels[: a.levels] if a.levels else levels
    rows = {}
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
        for mode in ("start", "anywhere"):
            t0 = time.perf_counter()
            jobs = [(lv, 1000 + e, a.frames, mode, a.cell) for lv in levels for e in range(a.episodes)]
            per_level: dict[str, set] = {lv: set() for lv in levels}
            per_episode = []
            for (lv, *_), cells in zip(jobs, pool.map(_cells, jobs)):
                per_level[lv] |= set(cells)
                per_episode.append(len(cells))
            rows[mode] = {
                "cells": sum(len(c) for c in per_level.values()),
                "cells_per_level_median": float(np.median([len(c) for c in per_level.values()])),
                "cells_per_episode_mean": float(np.mean(per_episode)),
                "seconds": time.perf_counter() - t0,
            }
    print(f"{len(levels)} train levels x {a.episodes} episodes x {a.frames} frames, cells of {a.cell:g} map units")
    print(f"{'spawn':<10}{'cells':>8}{'per level (median)':>20}{'per episode':>13}{'s':>8}")
    for mode, r in rows.items():
        print(
            f"{mode:<10}{r['cells']:>8}{r['cells_per_level_median']:>20.1f}{r['cells_per_episode_mean']:>13.1f}"
            f"{r['seconds']:>8.1f}"
        )
    result = {"levels": len(levels), "episodes_per_level": a.episodes, "frames": a.frames, "cell": a.cell, **rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
