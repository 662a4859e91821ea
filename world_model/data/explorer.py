"""A scripted exploring policy for first-person levels: deterministic for a seed.

Behaviours, chosen at random when the previous one is done: walk (forward with gentle turns and
diagonal strafes), turn in place, strafe, look up/down, back up, pause, and go-and-return loops
(turn away and turn back; walk away, turn round, walk back, turn round) so that places are seen
again and memory can be learned and tested. Stuck detection: when translation keys are held for
``stuck_frames`` frames and the camera moved less than ``stuck_distance``, the plan is dropped and a
recovery runs (press USE once, back up, turn away).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from world_model.data.doom import Command

__all__ = ["ExplorerConfig", "Explorer"]


@dataclass(frozen=True)
class ExplorerConfig:
    """Rates in degrees per frame; distances in map units."""

    min_turn_rate: float = 1.5
    max_turn_rate: float = 6.0
    pitch_rate: float = 1.5
    pitch_limit: float = 20.0
    stuck_frames: int = 8
    stuck_distance: float = 6.0
    use_when_stuck: bool = True
    # relative weights of the behaviours
    walk: float = 0.40
    turn: float = 0.12
    strafe: float = 0.08
    look: float = 0.08
    back: float = 0.04
    pause: float = 0.04
    turn_and_return: float = 0.12
    walk_and_return: float = 0.12

    def __post_init__(self) -> None:
        if not 0 < self.min_turn_rate <= self.max_turn_rate:
            raise ValueError(f"need 0 < min_turn_rate <= max_turn_rate, got {self.min_turn_rate}, {self.max_turn_rate}")
        if self.stuck_frames < 2:
            raise ValueError(f"stuck_frames must be >= 2, got {self.stuck_frames}")


_MIN_ROTATION = 0.5  # degrees per frame; smaller rotations fall in the release's mouse deadzone (0.3 deg)
_BEHAVIOURS = ("walk", "turn", "strafe", "look", "back", "pause", "turn_and_return", "walk_and_return")


class Explorer:
    """``act(pose)`` -> :class:`Command` for the next frame; ``pose`` is the current (x, y, z, pitch, yaw)."""

    def __init__(self, seed: int, cfg: ExplorerConfig = ExplorerConfig()):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self._plan: deque[Command] = deque()
        self._history: deque[tuple[np.ndarray, bool]] = deque(maxlen=cfg.stuck_frames + 1)
        w = np.array([getattr(cfg, b) for b in _BEHAVIOURS], np.float64)
        self._weights = w / w.sum()
        self.num_stuck = 0  # recoveries so far
        self._pitch = 0.0

    def act(self, pose: np.ndarray) -> Command:
        pose = np.asarray(pose, np.float64)
        self._pitch = float(pose[3])
        if self._stuck(pose):
            self.num_stuck += 1
            self._plan.clear()
            self._history.clear()
            self._recover()
        while not self._plan:
            self._choose()
        cmd = self._limit_pitch(self._plan.popleft())
        self._history.append((pose[:2].copy(), cmd.forward or cmd.back or cmd.left or cmd.right))
        return cmd

    # ---------------------------------------------------------------- behaviours
    def _rate(self) -> float:
        return float(self.rng.uniform(self.cfg.min_turn_rate, self.cfg.max_turn_rate))

    def _turn(self, angle: float, rate: float) -> list[Command]:
        n = max(1, int(round(abs(angle) / rate)))
        return [Command(yaw=angle / n)] * n

    def _walk(self, n: int) -> list[Command]:
        out, drift, side = [], 0.0, (False, False)
        for i in range(n):
            if i % 10 == 0:
                drift = 0.0 if self.rng.random() < 0.4 else float(self.rng.uniform(0.5, 2.0) * self.rng.choice([-1, 1]))
                r = self.rng.random()
                side = (r < 0.15, 0.15 <= r < 0.3)
            pitch = -np.sign(self._pitch) * min(abs(self._pitch), 1.0) if abs(self._pitch) > 3 else 0.0
            out.append(Command(forward=True, left=side[0], right=side[1], yaw=drift, pitch=pitch))
        return out

    def _choose(self) -> None:
        b = _BEHAVIOURS[self.rng.choice(len(_BEHAVIOURS), p=self._weights)]
        rng, plan = self.rng, self._plan
        if b == "walk":
            plan.extend(self._walk(int(rng.integers(20, 80))))
        elif b == "turn":
            plan.extend(self._turn(float(rng.uniform(30, 180) * rng.choice([-1, 1])), self._rate()))
        elif b == "strafe":
            left = bool(rng.random() < 0.5)
            plan.extend([Command(left=left, right=not left)] * int(rng.integers(8, 30)))
        elif b == "look":
            target = float(rng.uniform(-self.cfg.pitch_limit, self.cfg.pitch_limit))
            n = int(round(abs(target - self._pitch) / self.cfg.pitch_rate))
            if n > 0:
                plan.extend([Command(pitch=(target - self._pitch) / n)] * n)
            plan.extend([Command()] * int(rng.integers(0, 10)))
        elif b == "back":
            plan.extend([Command(back=True)] * int(rng.integers(5, 15)))
        elif b == "pause":
            plan.extend([Command()] * int(rng.integers(3, 12)))
        elif b == "turn_and_return":
            angle, rate = float(rng.uniform(60, 180) * rng.choice([-1, 1])), self._rate()
            plan.extend(self._turn(angle, rate))
            plan.extend([Command()] * int(rng.integers(0, 15)))
            plan.extend(self._turn(-angle, rate))
        else:  # walk_and_return: away, turn round, back, turn round
            n, rate, sign = int(rng.integers(15, 50)), self._rate(), float(rng.choice([-1, 1]))
            plan.extend([Command(forward=True)] * n)
            plan.extend(self._turn(180.0 * sign, rate))
            plan.extend([Command(forward=True)] * n)
            plan.extend(self._turn(180.0 * sign, rate))

    def _recover(self) -> None:
        if self.cfg.use_when_stuck:
            self._plan.append(Command(use=True))
        self._plan.extend([Command(back=True)] * int(self.rng.integers(4, 10)))
        angle = float(self.rng.uniform(90, 180) * self.rng.choice([-1, 1]))
        self._plan.extend(self._turn(angle, self.cfg.max_turn_rate))

    def _stuck(self, pose: np.ndarray) -> bool:
        h = self._history
        if len(h) < h.maxlen or not all(moving for _, moving in h):
            return False
        return float(np.linalg.norm(pose[:2] - h[0][0])) < self.cfg.stuck_distance

    def _limit_pitch(self, cmd: Command) -> Command:
        lim = self.cfg.pitch_limit
        new = min(max(self._pitch + cmd.pitch, -lim), lim)
        if new - self._pitch == cmd.pitch:
            return cmd
        pitch = new - self._pitch if abs(new - self._pitch) >= _MIN_ROTATION else 0.0
        return Command(cmd.forward, cmd.back, cmd.left, cmd.right, cmd.yaw, pitch, cmd.use)
