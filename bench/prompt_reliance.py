"""Does the model draw chunk 0 from the picture it is given, or from the level its prompt names?

The training prompts name the level ("First-person walk through Armory (E1M5), a Freedoom: Phase 1 level. A dimly lit
place of ..."): a model can learn each train level's look from its title instead of from the first frame, which does
not carry over to a level it has not seen, nor to a user's own picture and words. This plays chunk 0 of the same
episodes (``mg3 eval``'s explorer and seeds, the first frame and the simulator's actions) under three prompts:

- *as recorded*: the level's own prompt (what training and ``mg3 eval`` use);
- *another level's title*: the title and map of the next level of the split, the look sentence kept;
- *look only*: the look sentence alone, no title (what a person describing a picture might write);

and scores each against the simulator (chunk 0's pooled-error PSNR, frames 1.., and its gain over repeating frame 0,
as ``mg3 eval --parts fidelity``), with the paired differences from *as recorded*. A model that reads the picture
loses little to a wrong or missing title.

    python bench/prompt_reliance.py --model default --split train --episodes 12 --json out.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mg3_eval.metrics import psnr_pooled
from mg3_eval.rollout import generate_videos
from mg3_eval.simulator import SimEpisode, record_test_episodes
from world_model.data.levels import split_level_prompt
from world_model.generator import StreamingGenerator
from world_model.model import load_world_model
from world_model.runtime import RuntimeOptions

VARIANTS = ("as recorded", "another level's title", "look only")


def variant_prompts(episodes: list[SimEpisode], variant: str) -> list[str]:
    """The episodes' prompts under ``variant`` (one of :data:`VARIANTS`). *another level's title* takes the title of
    the next episode whose level differs (in turn), so every episode gets a real title that is not its own."""
    if variant == "as recorded":
        return [e.prompt for e in episodes]
    parts = [split_level_prompt(e.prompt) for e in episodes]
    if variant == "look only":
        return [look for _, look in parts]
    if variant != "another level's title":
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    n = len(episodes)
    out = []
    for i, e in enumerate(episodes):
        other = next((j for j in (i + k for k in range(1, n)) if episodes[j % n].level != e.level), None)
        if other is None:
            raise ValueError("another level's title needs episodes of at least two levels")
        out.append(f"{parts[other % n][0]} {parts[i][1]}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--split", default="train", choices=("train", "validation", "test"))
    p.add_argument("--spawn", default="start", choices=("start", "anywhere"))
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--sampler-steps", type=int, default=None, help="the model's own when left out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.episodes < 2:
        p.error("--episodes takes 2 or more (another level's title needs two levels)")
    torch.set_num_threads(a.threads)
    wm = load_world_model(a.model, RuntimeOptions.for_device("cpu"))
    if a.sampler_steps is not None:
        wm = wm.with_sampler(num_steps=a.sampler_steps)
    t = StreamingGenerator(wm).first_chunk_frames
    eps = record_test_episodes(wm.config, a.episodes, t, split=a.split, spawn=a.spawn)
    truth = np.stack([e.frames for e in eps])
    repeat = psnr_pooled(np.broadcast_to(truth[:, :1], truth[:, 1:].shape), truth[:, 1:])
    kb, ms = np.stack([e.keyboard for e in eps]), np.stack([e.mouse for e in eps])
    pooled: dict[str, np.ndarray] = {}
    for v in VARIANTS:
        g = generate_videos(wm, truth[:, 0], variant_prompts(eps, v), kb, ms, seeds=list(range(len(eps))))
        pooled[v] = psnr_pooled(g.frames[:, 1:], truth[:, 1:])
        print(f"{v:24s} chunk-0 gain {float((pooled[v] - repeat).mean()):+.2f} dB", flush=True)
    ref = pooled["as recorded"]
    rows = {}
    for v in VARIANTS:
        d = pooled[v] - ref
        rows[v] = {
            "psnr_pooled": float(pooled[v].mean()),
            "gain_db": float((pooled[v] - repeat).mean()),
            "diff_db": float(d.mean()),
            "diff_se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "worse": int((d < 0).sum()),
        }
    print(f"\nchunk 0 of {len(eps)} {a.split}-level episodes ({a.spawn}), {wm.config.sampler.num_steps} sampler steps")
    print(f"{'prompt':24s} {'PSNR':>7s} {'gain':>7s} {'vs recorded':>13s} worse")
    for v, r in rows.items():
        diff = f"{r['diff_db']:+.2f}±{r['diff_se']:.2f}"
        print(f"{v:24s} {r['psnr_pooled']:7.2f} {r['gain_db']:+7.2f} {diff:>13s} {r['worse']:2d}/{len(eps)}")
    if a.json:
        with open(a.json, "w") as f:
            out = {"model": a.model, "split": a.split, "spawn": a.spawn, "episodes": len(eps)}
            out |= {"sampler_steps": wm.config.sampler.num_steps, "levels": sorted({e.level for e in eps})}
            json.dump({**out, "repeat_first_psnr_pooled": float(repeat.mean()), "prompts": rows}, f, indent=1)


if __name__ == "__main__":
    main()
