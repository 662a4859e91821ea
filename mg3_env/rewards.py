"""Reward functions: pluggable callables ``reward_fn(obs, action, info) -> float``.

``obs`` is one env's observation after the step, ``action`` the validated per-frame action
(keyboard [T, 6], mouse [T, 2]) and ``info`` the step's info for that env. A world model has no
built-in task, so the default reward is 0; these functions are simple examples to build on.
Poses are the commanded ones (integrated from actions), not estimated from the video.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["RewardFn", "zero_reward", "distance_travelled", "DistanceFromStart"]


class RewardFn(Protocol):
    def __call__(self, obs: dict[str, Any], action: dict[str, np.ndarray], info: dict[str, Any]) -> float: ...


def zero_reward(obs: dict[str, Any], action: dict[str, np.ndarray], info: dict[str, Any]) -> float:
    """The default: always 0."""
    return 0.0


def distance_travelled(obs: dict[str, Any], action: dict[str, np.ndarray], info: dict[str, Any]) -> float:
    """Ground-plane path length over the chunk's frames, in metres (release units / 100)."""
    xy = np.asarray(obs["pose"], dtype=np.float64)[:, :2]
    return float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum() * 0.01)


class DistanceFromStart:
    """Ground-plane distance of the chunk's last frame from the episode's first pose, in metres.

    Stateless across envs: the start is frame 0, which is the origin (poses start at zero).
    """

    def __call__(self, obs: dict[str, Any], action: dict[str, np.ndarray], info: dict[str, Any]) -> float:
        x, y = np.asarray(obs["pose"], dtype=np.float64)[-1, :2]
        return float(np.hypot(x, y) * 0.01)
