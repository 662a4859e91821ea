"""RL-friendly views of :class:`~mg3_env.vector.MatrixGameVectorEnv` for standard algorithms.

``LatestFrame`` turns the chunk observation into the chunk's latest frame (uint8 [H, W, 3] per
env, the image a CNN policy expects); ``DiscreteActions`` turns ``Discrete(n)`` into the release's
single-key actions (one per chunk). Both also convert ``final_obs`` of the ``SAME_STEP``
autoreset mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorActionWrapper, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

__all__ = ["LatestFrame", "DiscreteActions", "ACTION_VOCABULARY"]

# name -> (keyboard multi-hot [W, S, A, D, -, -], mouse (pitch, yaw)); mouse at the release's 0.1.
ACTION_VOCABULARY: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {
    "noop": ((0, 0, 0, 0, 0, 0), (0.0, 0.0)),
    "forward": ((1, 0, 0, 0, 0, 0), (0.0, 0.0)),
    "back": ((0, 1, 0, 0, 0, 0), (0.0, 0.0)),
    "left": ((0, 0, 1, 0, 0, 0), (0.0, 0.0)),
    "right": ((0, 0, 0, 1, 0, 0), (0.0, 0.0)),
    "turn_left": ((0, 0, 0, 0, 0, 0), (0.0, -0.1)),
    "turn_right": ((0, 0, 0, 0, 0, 0), (0.0, 0.1)),
    "look_up": ((0, 0, 0, 0, 0, 0), (0.1, 0.0)),
    "look_down": ((0, 0, 0, 0, 0, 0), (-0.1, 0.0)),
    "forward_turn_left": ((1, 0, 0, 0, 0, 0), (0.0, -0.1)),
    "forward_turn_right": ((1, 0, 0, 0, 0, 0), (0.0, 0.1)),
}


class LatestFrame(VectorWrapper):
    """Observation = each env's latest frame, uint8 [B, H, W, 3] (every autoreset mode)."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        frames = env.single_observation_space["frames"]
        self.single_observation_space = spaces.Box(0, 255, frames.shape[1:], np.uint8)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return obs["frames"][:, -1], infos

    def step(self, actions: Any):
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        if "final_obs" in infos:
            infos = dict(infos)
            final = np.empty(self.num_envs, dtype=object)  # one entry per env (None if not done)
            for i, o in enumerate(infos["final_obs"]):
                final[i] = None if o is None else o["frames"][-1]
            infos["final_obs"] = final
        return obs["frames"][:, -1], rewards, terminated, truncated, infos


class DiscreteActions(VectorActionWrapper):
    """Action = an index into ``names`` (default: all of :data:`ACTION_VOCABULARY`), one per env."""

    def __init__(self, env: VectorEnv, names: tuple[str, ...] | None = None) -> None:
        super().__init__(env)
        names = tuple(ACTION_VOCABULARY) if names is None else tuple(names)
        unknown = [n for n in names if n not in ACTION_VOCABULARY]
        if unknown:
            raise ValueError(f"unknown action names {unknown}; known: {list(ACTION_VOCABULARY)}")
        self.names = names
        self._keyboard = np.array([ACTION_VOCABULARY[n][0] for n in names], np.int8)  # [n, 6]
        self._mouse = np.array([ACTION_VOCABULARY[n][1] for n in names], np.float32)  # [n, 2]
        self.single_action_space = spaces.Discrete(len(names))
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    def actions(self, actions: Any) -> dict[str, np.ndarray]:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"expected {self.num_envs} integer action indices, got {a.dtype} {a.shape}")
        if (a < 0).any() or (a >= len(self.names)).any():
            raise ValueError(f"action indices must lie in [0, {len(self.names)}), got {a.tolist()}")
        return {"keyboard": self._keyboard[a], "mouse": self._mouse[a]}
