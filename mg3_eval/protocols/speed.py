"""Speed: generated frames per second through the env API (steady-state chunks)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mg3_eval.rollout import sync
from world_model.model import WorldModel

__all__ = ["env_speed"]


def env_speed(wm: WorldModel, *, batch: int = 1, chunks: int = 5, seed: int = 0) -> dict[str, Any]:
    """Generated frames per second through the env API (``MatrixGameVectorEnv``) with the
    go-and-return explorer's actions: reset (chunk 0), then ``chunks`` timed steps."""
    from agents.explorer import Explorer
    from mg3_env.vector import MatrixGameVectorEnv

    env = MatrixGameVectorEnv(batch, model=wm, max_chunks=max(chunks, 1))
    explorer = Explorer(frames_per_chunk=env.frames_per_chunk)
    dev = torch.device(wm.runtime.device)
    try:
        t0 = time.perf_counter()
        env.reset(seed=seed)
        sync(dev)
        first = time.perf_counter() - t0
        times = []
        for _ in range(chunks):
            a = explorer.act()
            actions = {k: np.broadcast_to(v, (batch, *v.shape)).copy() for k, v in a.items()}
            t0 = time.perf_counter()
            env.step(actions)
            sync(dev)
            times.append(time.perf_counter() - t0)
    finally:
        env.close()
    per_chunk = float(np.median(times))
    return {
        "device": str(dev),
        "dtype": str(wm.runtime.dtype).removeprefix("torch."),
        "batch": batch,
        "frames_per_chunk": env.frames_per_chunk,
        "seconds_first_chunk": first,
        "seconds_per_chunk": per_chunk,
        "chunk_seconds": times,
        "frames_per_s": batch * env.frames_per_chunk / per_chunk,
        "frames_per_s_per_env": env.frames_per_chunk / per_chunk,
    }
