"""A random agent: the release's benchmark-style random actions, one per chunk.

``mode="vocabulary"`` draws uniformly from single keys, turns and forward+turn combinations with
the release's mouse magnitude 0.1 (like ``utils/conditions.py``'s random generator, spec §4.5);
``mode="uniform"`` samples the whole action space (mouse up to 15 degrees per frame).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mg3_env.wrappers.rl import ACTION_VOCABULARY

__all__ = ["RandomAgent"]

_MOVES = ("forward", "left", "right")
_TURNS = ("turn_left", "turn_right")


class RandomAgent:
    """``act(obs)`` returns one action dict; ``hold`` repeats each draw for that many chunks."""

    def __init__(self, *, mode: str = "vocabulary", hold: int = 1, seed: int | None = None) -> None:
        if mode not in ("vocabulary", "uniform"):
            raise ValueError(f"mode must be 'vocabulary' or 'uniform', got {mode!r}")
        if hold < 1:
            raise ValueError(f"hold must be >= 1, got {hold}")
        self.mode, self.hold = mode, hold
        self.rng = np.random.default_rng(seed)
        self._current: dict[str, np.ndarray] | None = None
        self._left = 0

    def act(self, obs: Any = None) -> dict[str, np.ndarray]:
        if self._left == 0:
            self._current = self._draw()
            self._left = self.hold
        self._left -= 1
        assert self._current is not None
        return {k: v.copy() for k, v in self._current.items()}

    def _draw(self) -> dict[str, np.ndarray]:
        if self.mode == "uniform":
            return {
                "keyboard": self.rng.integers(0, 2, 6).astype(np.int8),
                "mouse": self.rng.uniform(-1.0, 1.0, 2).astype(np.float32),
            }
        names = [*_MOVES, *_TURNS, *(f"{m}+{t}" for m in _MOVES for t in _TURNS)]
        name = names[self.rng.integers(len(names))]
        keyboard = np.zeros(6, np.int8)
        mouse = np.zeros(2, np.float32)
        for part in name.split("+"):
            kb, ms = ACTION_VOCABULARY[part]
            keyboard |= np.array(kb, np.int8)
            mouse += np.array(ms, np.float32)
        return {"keyboard": keyboard, "mouse": mouse}
