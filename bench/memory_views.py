"""The memory test's views, to look at: for each model, the start view and the return view of chosen episodes of
`mg3 eval --parts memory` (the same starts, seeds and go-and-return actions: a 360-degree turn in place over three
chunks, then standing still), memory on, beside the simulator's start frame.

The test's score is the PSNR of the return view against the start view, which a blurred return view wins over a sharp
one that puts the same detail a little elsewhere; the picture shows whether a lower score is that, or a view the model
did not remember (new objects, another wall).

    python bench/memory_views.py --episodes 10,22 --out views.png shipped=default candidate=DIR [...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from mg3_eval.protocols.memory import go_and_return
from mg3_eval.simulator import rest_starts
from world_model.model import load_world_model


def views(model: str, episodes: list[int], *, num_starts: int = 24, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """(simulator start, model start, model return) frames [H, W, 3] of each episode, as `mg3 eval` rolls them out
    (its default seed 0: starts drawn with seed 1, episode i sampled with seed i)."""
    wm = load_world_model(model)
    starts = rest_starts(wm.config, num_starts, split="test", seed=seed + 1)
    if max(episodes) >= len(starts):
        raise ValueError(f"episodes must be < {len(starts)}, got {episodes}")
    chosen = [starts[i] for i in episodes]
    r = go_and_return(wm, chosen, [seed + i for i in episodes], away_chunks=3)
    return [(s.frame, r.frames[j, r.start.stop - 1], r.frames[j, r.back][-1]) for j, s in enumerate(chosen)]


def sheet(rows: list[tuple[str, list[tuple[np.ndarray, ...]]]], episodes: list[int], scale: int) -> Image.Image:
    """One row per model: (simulator start, start, return) of each episode, nearest-neighbour enlarged."""
    h, w = (d * scale for d in rows[0][1][0][0].shape[:2])
    pad, gap = 14, 4
    img = Image.new("RGB", (3 * len(episodes) * (w + gap), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(img)
    for r, (label, trios) in enumerate(rows):
        y = r * (h + pad) + pad
        for j, trio in enumerate(trios):
            for k, (frame, name) in enumerate(zip(trio, ("simulator", f"{label}: start", f"{label}: return"))):
                x = (3 * j + k) * (w + gap)
                img.paste(Image.fromarray(np.ascontiguousarray(frame)).resize((w, h), Image.NEAREST), (x, y))
                draw.text((x + 2, y - pad + 1), f"{name} {episodes[j]}", fill="black")
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="LABEL=MODEL (a registry name such as 'default', or a model folder)")
    p.add_argument("--episodes", default="0,1,2,3", help="comma-separated episode indices of the memory test")
    p.add_argument("--memory-episodes", type=int, default=24, help="the test's episode count (its starts)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    episodes = [int(e) for e in args.episodes.split(",") if e]
    models = [m.split("=", 1) for m in args.models]
    if not episodes or any(len(m) != 2 for m in models):
        p.error("give --episodes and LABEL=MODEL for each model")
    torch.set_num_threads(args.threads)
    rows = [(label, views(model, episodes, num_starts=args.memory_episodes)) for label, model in models]
    sheet(rows, episodes, args.scale).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
