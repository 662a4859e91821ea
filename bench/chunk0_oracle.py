"""What chunk 0 can gain over repeat-first: a geometric oracle and blurred baselines on the evaluation's episodes.

The fidelity part's chunk-0 target asks for +2 dB over repeating frame 0 (pooled PSNR of frames 1..56). This bench
plays the same episodes (``record_test_episodes`` with the fidelity part's arguments: the same levels, seeds and
actions, frames checked against the part's own repeat-first scores when ``--metrics`` is given) with the simulator's
depth, and scores per episode, each against repeat-first:

- ``oracle``: frame 0 moved by the true camera motion and the true depth (mg3_eval.oracle.reproject): every pixel of
  frame t that frame 0 shows, where frame 0 shows it; the rest repeat-first. What exact motion of the given content
  gains, sharp, knowing nothing out of view;
- ``oracle_blur_fill``: the same with the rest from frame 0 blurred (a Gaussian of ``--blur`` px);
- ``blur_<s>``: frame 0 blurred by a Gaussian of s px, repeated (no motion at all): what blur alone gains in PSNR;
- ``model`` (with ``--metrics``, a metrics.json of ``mg3 eval --parts fidelity`` on the same split, episodes and
  seed): the model's pooled chunk-0 gain per episode.

Prints a table, writes JSON with ``--json`` and a strip with ``--png`` (the first four episodes: the simulator's frames above
the oracle's, at four frames across chunk 0: 8, 24, 40 and 56 of 57).

    python bench/chunk0_oracle.py --split test --episodes 18 --metrics M/metrics.json \\
        --json bench/results/chunk0_oracle_test_cpu.json --png docs/embedded/chunk0_oracle_test.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(sigma)))


def score_episode(ep, first: int, intrinsics, *, blurs: tuple[float, ...], fill_blur: float) -> dict:
    """Pooled PSNR of frames 1..first-1 of one SimEpisode (recorded with depth) for each baseline."""
    from mg3_eval.metrics import psnr_pooled
    from mg3_eval.oracle import reproject

    truth, f0 = ep.frames[1:first], ep.frames[0]
    fill = _blur(f0, fill_blur)
    moved, oracle, oracle_fill = [], [], []
    for t in range(1, first):
        o, vis = reproject(f0, ep.depth[0], ep.poses[0], ep.depth[t], ep.poses[t], intrinsics)
        oracle.append(o)
        oracle_fill.append(np.where(vis[..., None], o, fill))
        moved.append(vis.mean())
    oracle, oracle_fill = np.stack(oracle), np.stack(oracle_fill)

    def pooled(video: np.ndarray) -> float:
        return float(psnr_pooled(np.broadcast_to(video, truth.shape), truth))

    out = {
        "level": ep.level,
        "seed": ep.seed,
        "repeat": pooled(f0[None]),
        "oracle": pooled(oracle),
        "oracle_blur_fill": pooled(oracle_fill),
        "moved_share": float(np.mean(moved)),
        "walked": float(np.linalg.norm(ep.poses[first - 1, :2] - ep.poses[0, :2])),
        "turned": float(np.abs(np.diff(ep.poses[:first, 4])).sum()),
    }
    for s in blurs:
        out[f"blur_{s:g}"] = pooled(_blur(f0, s)[None])
    picks = np.round(np.linspace((first - 1) / 7, first - 1, 4)).astype(int)  # 8, 24, 40, 56 of 57 frames
    out["strip"] = np.concatenate(
        [np.concatenate([ep.frames[t] for t in picks], 1), np.concatenate([oracle[t - 1] for t in picks], 1)]
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    from mg3_eval.run import EvalOptions
    from mg3_eval.simulator import doom_config_for, record_test_episodes
    from world_model.config import WorldModelConfig
    from world_model.data.doom import SPAWNS
    from world_model.data.levels import EVAL_SPLITS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", choices=EVAL_SPLITS)
    p.add_argument("--episodes", type=int, default=18)
    p.add_argument("--seed", type=int, default=0, help="the evaluation's seed (mg3 eval --seed)")
    p.add_argument("--spawn", default="start", choices=SPAWNS)
    p.add_argument("--chunks", type=int, default=EvalOptions.fidelity_chunks, help="the fidelity part's chunks")
    p.add_argument("--config", default=None, help="a model's config.json (default: the embedded model's)")
    p.add_argument("--blur", type=float, default=10.0, help="the oracle's fill: frame 0 blurred by this many px")
    p.add_argument("--blurs", default="4,10,30", help="blurred repeat-first baselines, px")
    p.add_argument("--metrics", help="metrics.json of mg3 eval --parts fidelity on the same episodes")
    p.add_argument("--json")
    p.add_argument("--png")
    a = p.parse_args(argv)
    if a.episodes < 1 or a.chunks < 1:
        p.error("--episodes and --chunks must be >= 1")
    blurs = tuple(float(s) for s in a.blurs.split(",") if s)

    if a.config is None:
        from world_model.model import EMBEDDED_DIR

        a.config = str(EMBEDDED_DIR / "config.json")
    cfg = WorldModelConfig.load(a.config)
    first = cfg.vae.num_frames(cfg.stream.first_latents, first_chunk=True)
    rest = cfg.vae.num_frames(cfg.stream.new_latents, first_chunk=False)
    frames = first + (a.chunks - 1) * rest
    model = None
    if a.metrics:
        m = json.loads(Path(a.metrics).read_text())
        model = m["fidelity"]["chunk0"]["pooled"]
        if len(model["per_episode"]) != a.episodes:
            raise SystemExit(f"{a.metrics} scores {len(model['per_episode'])} episodes, not --episodes {a.episodes}")
    eps = record_test_episodes(cfg, a.episodes, frames, split=a.split, seed=a.seed, spawn=a.spawn, depth=True)
    intrinsics = doom_config_for(cfg).intrinsics()
    rows = [score_episode(e, first, intrinsics, blurs=blurs, fill_blur=a.blur) for e in eps]
    strips = [r.pop("strip") for r in rows]
    keys = ["oracle", "oracle_blur_fill"] + [f"blur_{s:g}" for s in blurs]
    gains = {k: np.array([r[k] - r["repeat"] for r in rows]) for k in keys}
    if model is not None:
        # the part's repeat-first, episode by episode: the same episodes or a refusal
        part_repeat = model["psnr_repeat"]
        if abs(part_repeat - np.mean([r["repeat"] for r in rows])) > 1e-6:
            raise SystemExit(f"these episodes are not the metrics' (repeat-first {part_repeat:.4f} there)")
        gains["model"] = np.array(model["per_episode"]) - np.array([r["repeat"] for r in rows])
        for r, g in zip(rows, gains["model"]):
            r["model_gain"] = float(g)
    summary = {
        k: {
            "gain_db": float(g.mean()),
            "median_db": float(np.median(g)),
            "sem_db": float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else None,
        }
        for k, g in gains.items()
    }
    print(
        f"chunk 0 (frames 1..{first - 1}), {a.split} levels, {len(rows)} episodes, pooled PSNR gain over repeat-first"
    )
    print(f"{'baseline':<20}{'gain dB':>9}{'median':>9}{'sem':>7}")
    for k, s in summary.items():
        sem = "" if s["sem_db"] is None else f"{s['sem_db']:.2f}"
        print(f"{k:<20}{s['gain_db']:>9.2f}{s['median_db']:>9.2f}{sem:>7}")
    print(f"share of frame t's pixels the oracle moves from frame 0: {np.mean([r['moved_share'] for r in rows]):.2f}")
    result = {
        "split": a.split,
        "episodes": len(rows),
        "seed": a.seed,
        "spawn": a.spawn,
        "frames": [1, first - 1],
        "repeat_db": float(np.mean([r["repeat"] for r in rows])),
        "fill_blur_px": a.blur,
        "summary": summary,
        "per_episode": rows,
        "command": "python bench/chunk0_oracle.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    if a.png:
        from PIL import Image

        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(strips[:4], 0)).save(a.png)
    return result


if __name__ == "__main__":
    main()
