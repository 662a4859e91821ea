"""Memory retrieval cost over a long episode: per-chunk time at chunks 5, 50, 100, 200.

Two tables. ``retrieval``: :func:`world_model.memory.select_memory` alone on a rollout of the
release benchmark's random actions (12-frame segments of random keys and turns), batch 1 and 4,
per-ray counting (the default) against projecting every point (the reference), same selection
checked. ``env`` (``--env``): the embedded model stepped through ``MatrixGameEnv`` to chunk 202 with
random actions; the wall time of a chunk and of its retrieval, and frames/s, at the chunks asked
for (each the median over chunks k-2 ... k+2).

    python bench/memory_retrieval.py --json bench/results/memory_retrieval_cpu.json
    python bench/memory_retrieval.py --env --json bench/results/memory_retrieval_env_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from world_model.checks import positive_arg

CHUNKS = (5, 50, 100, 200)


def _rollout(cfg, seed: int, n_frames: int, batch: int) -> torch.Tensor:
    from world_model.camera import c2w_from_poses, integrate_poses

    g = torch.Generator().manual_seed(seed)
    n = n_frames - 1
    segs = n // 12 + 1
    kb = torch.zeros(batch, n, 6)
    kb[..., :4] = (torch.rand(batch, segs, 4, generator=g) > 0.6).float().repeat_interleave(12, 1)[:, :n]
    ms = (torch.randint(-1, 2, (batch, segs, 2), generator=g) * 0.1).double().repeat_interleave(12, 1)[:, :n]
    return c2w_from_poses(integrate_poses(kb, ms, torch.zeros(batch, 5, dtype=torch.float64), cfg))


def _best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def retrieval_table(cfg, chunks, batches, repeat: int) -> list[dict]:
    from world_model.camera import window_bounds
    from world_model.memory import select_memory

    rows = []
    for b in batches:
        for k in chunks:
            end = int(window_bounds(k, cfg)[1])
            c2w = _rollout(cfg, k, end, b)
            t_rays, a = _best(lambda c2w=c2w, k=k: select_memory(c2w, k, cfg), repeat)
            t_points, p = _best(lambda c2w=c2w, k=k: select_memory(c2w, k, cfg, method="points"), 1)
            same = all(torch.equal(x, y) for x, y in zip(a, p))  # type: ignore[arg-type]
            rows.append(
                {"batch": b, "chunk": k, "candidates": end, "rays_s": t_rays, "points_s": t_points, "same": same}
            )
            print(f"{b:5d} {k:5d} {end:10d} {t_rays * 1e3:10.1f} {t_points * 1e3:10.1f} {str(same):>5}", flush=True)
    return rows


def env_table(model_name: str, chunks, seed: int) -> list[dict]:
    import world_model.window as window
    from agents.random_agent import RandomAgent
    from mg3_env.env import MatrixGameEnv

    spent: list[float] = []
    real = window.select_memory

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = real(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return out

    window.select_memory = timed
    last = max(chunks) + 2  # each row: the median of chunks k-2 ... k+2 (one step's time is noisy)
    env = MatrixGameEnv(model=model_name, max_chunks=last)
    agent = RandomAgent(seed=seed)
    env.reset(seed=seed)
    steps: dict[int, tuple[float, float, int]] = {}
    for k in range(1, last + 1):
        spent.clear()
        t = time.perf_counter()
        obs, *_ = env.step(agent.act())
        steps[k] = (time.perf_counter() - t, sum(spent), obs["frames"].shape[0])
    rows = []
    for k in chunks:
        near = [steps[j] for j in range(max(1, k - 2), min(last, k + 2) + 1)]
        dt = float(np.median([x[0] for x in near]))
        spent_s = float(np.median([x[1] for x in near]))
        frames = near[0][2]
        row = {"chunk": k, "seconds": dt, "retrieval_s": spent_s, "frames_per_s": frames / dt}
        rows.append(row)
        print(f"{k:5d} {dt:9.3f} {spent_s:12.3f} {100 * spent_s / dt:9.1f}% {frames / dt:9.1f}", flush=True)
    env.close()
    window.select_memory = real
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--env", action="store_true", help="also step the embedded model to the last chunk")
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=positive_arg, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from world_model.model import load_world_model

    cfg = load_world_model(args.model).config.stream
    out: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    print("retrieval alone (ms, best of repeats; points = every point projected, the reference)")
    print("batch chunk candidates    rays_ms  points_ms  same")
    out["retrieval"] = retrieval_table(cfg, args.chunks, args.batches, args.repeat)
    if args.env:
        print(f"\nenv steps, model {args.model!r}, batch 1")
        print("chunk   step_s  retrieval_s    share  frames/s")
        out["env"] = env_table(args.model, args.chunks, seed=0)
        fps = {r["chunk"]: r["frames_per_s"] for r in out["env"]}
        out["fps_ratio_last_to_first"] = float(np.round(fps[max(fps)] / fps[min(fps)], 3))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
