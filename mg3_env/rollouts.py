"""Datasets from batched world-model rollouts: ``mg3 rollouts``.

``rollouts(model, num_envs=N, episodes=E, policy=..., out=DIR)`` steps a
:class:`~mg3_env.vector.MatrixGameVectorEnv` of N envs with a policy and records every env's
episodes into one LeRobot-layout dataset (:class:`~mg3_env.wrappers.record.RecordVectorEpisodes`)
until E episodes are written, with a progress bar. Policies: ``"random"`` (the release's random
vocabulary, one :class:`~agents.random_agent.RandomAgent` per env), ``"explorer"`` (the scripted
go-and-return explorer per env) or ``"module:callable"``, a callable ``policy(obs) -> action`` on
the batched observation (``{"keyboard": [N, 6] or [N, T, 6], "mouse": [N, 2] or [N, T, 2]}``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from world_model.checks import MAX_SEED, whole

__all__ = ["rollouts", "make_policy"]


def make_policy(policy: str | Callable, num_envs: int, frames_per_chunk: int, seed: int = 0):
    """A batched policy ``act(obs, new_episode_mask) -> action`` from a name or ``module:callable``."""
    if callable(policy):
        return lambda obs, new: policy(obs)
    if policy in ("random", "explorer"):
        from agents.explorer import Explorer
        from agents.random_agent import RandomAgent

        def make(i: int):
            return RandomAgent(seed=seed + i) if policy == "random" else Explorer(frames_per_chunk=frames_per_chunk)

        agents = [make(i) for i in range(num_envs)]

        def act(obs: dict[str, np.ndarray], new: np.ndarray) -> dict[str, np.ndarray]:
            for i in np.flatnonzero(new):
                if hasattr(agents[i], "reset"):
                    agents[i].reset()
            acts = [a.act() for a in agents]
            return {k: np.stack([a[k] for a in acts]) for k in ("keyboard", "mouse")}

        return act
    if isinstance(policy, str) and ":" in policy:
        module, _, name = policy.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"policy {policy!r}: cannot import {name!r} from module {module!r} ({e})") from e
        if not callable(fn):
            raise ValueError(f"policy {policy!r} is not callable")
        return lambda obs, new: fn(obs)
    raise ValueError(f"policy must be 'random', 'explorer' or 'module:callable', got {policy!r}")


def rollouts(
    model: Any = "default",
    *,
    num_envs: int = 4,
    episodes: int = 8,
    policy: str | Callable = "random",
    out: str | Path = "mg3_rollouts",
    max_chunks: int = 8,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``episodes`` episodes of ``num_envs`` batched rollouts to the dataset ``out``; returns
    a summary (episodes, frames, seconds, frames/s written, the env of each episode)."""
    from tqdm.auto import tqdm

    from mg3_env.vector import MatrixGameVectorEnv
    from mg3_env.wrappers.record import RecordVectorEpisodes
    from world_model.model import WorldModel, load_world_model
    from world_model.runtime import RuntimeOptions

    whole(episodes, "episodes", 1)
    whole(seed, "seed", 0, MAX_SEED)
    if isinstance(model, WorldModel) and device is not None:
        raise ValueError(
            f"device={device!r} is where a model loaded by name runs; the WorldModel given runs on its own"
        )
    wm = model if isinstance(model, WorldModel) else load_world_model(model, RuntimeOptions.for_device(device))
    env = MatrixGameVectorEnv(num_envs, model=wm, max_chunks=max_chunks)
    try:  # the policy before the dataset: a bad one leaves no folder or lock behind
        act = make_policy(policy, num_envs, env.frames_per_chunk, seed)
        rec = RecordVectorEpisodes(env, out, max_episodes=episodes)
    except BaseException:
        env.close()
        raise
    t0 = time.perf_counter()
    bar = tqdm(total=episodes, unit="episode", disable=not progress, desc="mg3 rollouts")
    try:
        obs, _ = rec.reset(seed=seed)
        new = np.ones(num_envs, bool)
        while not rec.done:
            obs, _, terminated, truncated, info = rec.step(act(obs, new))
            new = info.get("_first_chunk_frames", np.zeros(num_envs, bool))
            bar.update(min(len(rec.episodes_written), episodes) - bar.n)
    finally:
        bar.close()
        rec.close()
    seconds = time.perf_counter() - t0
    frames = rec.writer.num_frames
    return {
        "dataset": str(rec.root),
        "episodes": len(rec.episodes_written),
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "episode_envs": rec.episode_envs,
    }
