"""A scripted exploring policy for first-person levels: deterministic for a seed.

It is built to teach every action of the MG3 keyboard/mouse interface in balanced proportions
(``world_model.data.summary.action_histogram`` measures them; the data README has the numbers).
Behaviours, chosen at random when the previous one is done:

- walk: forward, straight or with gentle turns (0.5-4 deg/frame), sometimes diagonal (W+A, W+D);
- walk_turn: forward while turning at 1-8 deg/frame (curves);
- turn: in place, at a rate from one of several bins (0.5-2, 2-4, 4-8 deg/frame);
- strafe: A or D, sometimes while turning (circle strafe);
- look: pitch up or down (to 8-30 deg, at 0.6-3 deg/frame), hold a while (still, walking or turning with
  the camera pitched), then back to level; the pitch moves in place, while walking or while strafing;
- back: S, sometimes while turning;
- pause: no input;
- turn_and_return, walk_and_return: go-and-return loops (turn away and back; walk away, turn round,
  walk back, turn round) so that places are seen again and memory can be learned and tested.

Every rotation is 0 or at least 0.5 deg/frame (the release's mouse deadzone is 0.3 deg/frame).
The pitch stays within ``pitch_limit`` (ViZDoom clamps at 32 deg up and 56 deg down; its software
renderer draws pitch by y-shearing, which still looks right at 30 deg). A pitch left over when a plan
is dropped is brought back to level before the next behaviour.

Stuck detection: when translation keys are held for ``stuck_frames`` frames and the camera moved less
than ``stuck_distance``, the plan is dropped and a recovery runs (press USE once, back up, turn away).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields, replace

import numpy as np

from world_model.data.doom import Command

__all__ = ["ExplorerConfig", "Explorer", "explorer_from_spec"]


@dataclass(frozen=True)
class ExplorerConfig:
    """Rates in degrees per frame; angles in degrees; distances in map units.

    The behaviour weights are relative; ``look = 0`` turns every pitch motion off (level camera)."""

    min_turn_rate: float = 0.5
    max_turn_rate: float = 8.0
    pitch_limit: float = 30.0
    min_pitch_rate: float = 0.6
    max_pitch_rate: float = 3.0
    look_while_moving: float = 0.55  # probability that a look's pitch motion (or hold) has keys held
    stuck_frames: int = 8
    stuck_distance: float = 6.0
    use_when_stuck: bool = True
    # relative weights of the behaviours
    walk: float = 0.16
    walk_turn: float = 0.10
    turn: float = 0.11
    strafe: float = 0.20
    look: float = 0.30
    back: float = 0.06
    pause: float = 0.05
    turn_and_return: float = 0.07
    walk_and_return: float = 0.07

    def __post_init__(self) -> None:
        if not 0.5 <= self.min_turn_rate <= self.max_turn_rate:
            raise ValueError(
                f"need 0.5 <= min_turn_rate <= max_turn_rate, got {self.min_turn_rate}, {self.max_turn_rate}"
            )
        if not 0.5 <= self.min_pitch_rate <= self.max_pitch_rate:
            raise ValueError(
                f"need 0.5 <= min_pitch_rate <= max_pitch_rate, got {self.min_pitch_rate}, {self.max_pitch_rate}"
            )
        if not 0 <= self.pitch_limit <= 32:
            raise ValueError(f"pitch_limit must be in [0, 32] (ViZDoom's range looking up), got {self.pitch_limit}")
        if self.stuck_frames < 2:
            raise ValueError(f"stuck_frames must be >= 2, got {self.stuck_frames}")
        if min(getattr(self, b) for b in _BEHAVIOURS) < 0 or sum(getattr(self, b) for b in _BEHAVIOURS) <= 0:
            raise ValueError("behaviour weights must be >= 0 with a positive sum")


def explorer_from_spec(spec: str, base: ExplorerConfig | None = None) -> ExplorerConfig:
    """``base`` (default: ``ExplorerConfig()``) with the fields a ``"name=value,name=value"`` spec names replaced,
    e.g. ``"strafe=0.4"``; ``""`` is ``base`` itself. An unknown name or a value of the wrong kind raises."""
    base = base or ExplorerConfig()
    kinds = {f.name: {"float": float, "int": int, "bool": bool}[str(f.type)] for f in fields(ExplorerConfig)}
    changes: dict[str, float | int | bool] = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        name, eq, value = (x.strip() for x in item.partition("="))
        if not eq or name not in kinds:
            raise ValueError(
                f"explorer spec {spec!r}: expected name=value with a name of {', '.join(kinds)}, got {item!r}"
            )
        if name in changes:
            raise ValueError(f"explorer spec {spec!r} names {name} twice")
        kind = kinds[name]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                changes[name] = value.lower() == "true"
            else:
                changes[name] = kind(value)
        except ValueError:
            raise ValueError(f"explorer spec {spec!r}: {name} takes a {kind.__name__}, got {value!r}") from None
    return replace(base, **changes)


_MIN_ROTATION = 0.5  # degrees per frame; smaller rotations fall in the release's mouse deadzone (0.3 deg)
_BEHAVIOURS = (
    "walk", "walk_turn", "turn", "strafe", "look", "back", "pause", "turn_and_return", "walk_and_return",
)  # fmt: skip
_TURN_BINS = ((0.5, 2.0), (2.0, 4.0), (4.0, 8.0))  # rates of turns in place, clipped to the config's range
_TURN_BIN_WEIGHTS = (0.5, 0.25, 0.25)  # slow turns are favoured: recoveries and loops turn fast
_MAX_TURN_FRAMES = 45  # a slow turn covers a smaller angle


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

    # ---------------------------------------------------------------- helpers
    def _sign(self) -> float:
        return float(self.rng.choice([-1.0, 1.0]))

    def _rate(self, lo: float | None = None, hi: float | None = None) -> float:
        """A turn rate in [lo, hi] clipped to the config's range."""
        lo = max(self.cfg.min_turn_rate, lo if lo is not None else self.cfg.min_turn_rate)
        hi = min(self.cfg.max_turn_rate, hi if hi is not None else self.cfg.max_turn_rate)
        return float(self.rng.uniform(lo, max(lo, hi)))

    def _binned_rate(self) -> float:
        lo, hi = _TURN_BINS[int(self.rng.choice(len(_TURN_BINS), p=_TURN_BIN_WEIGHTS))]
        return self._rate(lo, hi)

    @staticmethod
    def _steps(total: float, rate: float) -> list[float]:
        """``total`` split into equal steps of at least ``rate`` (and at least 0.5) each; [] when too small."""
        if abs(total) < _MIN_ROTATION:
            return []
        n = max(1, int(abs(total) // max(rate, _MIN_ROTATION)))
        return [total / n] * n

    def _turn(self, angle: float, rate: float, **keys) -> list[Command]:
        return [Command(yaw=y, **keys) for y in self._steps(angle, rate)]

    def _pitch_to(self, start: float, target: float, rate: float, **keys) -> list[Command]:
        return [Command(pitch=p, **keys) for p in self._steps(target - start, rate)]

    def _walk(self, n: int) -> list[Command]:
        out, drift, side = [], 0.0, (False, False)
        for i in range(n):
            if i % 10 == 0:
                r = self.rng.random()
                drift = 0.0 if r < 0.4 else self._rate(0.5, 2.0) if r < 0.8 else self._rate(2.0, 4.0)
                drift *= self._sign()
                r = self.rng.random()
                side = (r < 0.15, 0.15 <= r < 0.3)
            out.append(Command(forward=True, left=side[0], right=side[1], yaw=drift))
        return out

    # ---------------------------------------------------------------- behaviours
    def _choose(self) -> None:
        rng, plan = self.rng, self._plan
        if abs(self._pitch) >= 1.0 and self.cfg.look > 0:  # left over from a dropped plan: level the camera
            plan.extend(self._pitch_to(self._pitch, 0.0, self._pitch_rate(), forward=bool(rng.random() < 0.5)))
            if plan:
                return
        b = _BEHAVIOURS[rng.choice(len(_BEHAVIOURS), p=self._weights)]
        if b == "walk":
            plan.extend(self._walk(int(rng.integers(20, 60))))
        elif b == "walk_turn":
            rate = self._rate(1.0, 4.0) if rng.random() < 0.7 else self._rate(4.0, 8.0)
            angle = min(float(rng.uniform(45, 180)), rate * _MAX_TURN_FRAMES)
            plan.extend(self._turn(angle * self._sign(), rate, forward=True))
        elif b == "turn":
            rate = self._binned_rate()
            angle = min(float(rng.uniform(30, 180)), rate * _MAX_TURN_FRAMES)
            plan.extend(self._turn(angle * self._sign(), rate))
        elif b == "strafe":
            left, n = bool(rng.random() < 0.5), int(rng.integers(10, 35))
            yaw = self._rate(1.0, 4.0) * self._sign() if rng.random() < 0.4 else 0.0
            plan.extend([Command(left=left, right=not left, yaw=yaw)] * n)
        elif b == "look":
            self._look()
        elif b == "back":
            yaw = self._rate(1.0, 4.0) * self._sign() if rng.random() < 0.5 else 0.0
            plan.extend([Command(back=True, yaw=yaw)] * int(rng.integers(5, 15)))
        elif b == "pause":
            plan.extend([Command()] * int(rng.integers(3, 12)))
        elif b == "turn_and_return":
            rate = self._binned_rate()
            angle = min(float(rng.uniform(60, 180)), rate * _MAX_TURN_FRAMES) * self._sign()
            plan.extend(self._turn(angle, rate))
            plan.extend([Command()] * int(rng.integers(0, 15)))
            plan.extend(self._turn(-angle, rate))
        else:  # walk_and_return: away, turn round, back, turn round
            n, rate, sign = int(rng.integers(15, 50)), self._rate(2.0, 8.0), self._sign()
            plan.extend([Command(forward=True)] * n)
            plan.extend(self._turn(180.0 * sign, rate))
            plan.extend([Command(forward=True)] * n)
            plan.extend(self._turn(180.0 * sign, rate))

    def _pitch_rate(self) -> float:
        lo, hi = self.cfg.min_pitch_rate, self.cfg.max_pitch_rate
        mid = min(max(1.5, lo), hi)  # half slow (lo-1.5), half fast (1.5-hi)
        return float(self.rng.uniform(lo, mid) if self.rng.random() < 0.5 else self.rng.uniform(mid, hi))

    def _look(self) -> None:
        """Look up or down (in place, walking or strafing), hold (still, walking or turning), look back."""
        rng, plan, lim = self.rng, self._plan, self.cfg.pitch_limit
        if lim < 1.0:
            plan.extend([Command()] * int(rng.integers(3, 12)))
            return
        target = float(rng.uniform(min(8.0, lim), lim)) * self._sign()
        rate = self._pitch_rate()

        moving = self.cfg.look_while_moving

        def keys() -> dict[str, bool]:
            r = rng.random()
            if r >= moving:
                return {}
            if r < 0.73 * moving:
                return {"forward": True}
            left = bool(rng.random() < 0.5)
            return {"left": left, "right": not left}

        plan.extend(self._pitch_to(self._pitch, target, rate, **keys()))
        hold, r = int(rng.integers(0, 20)), rng.random()
        if r < 0.4:
            plan.extend([Command()] * hold)
        elif r < 0.7:
            plan.extend([Command(forward=moving > 0)] * hold)
        else:
            yaw = self._rate(0.5, 4.0) * self._sign()
            plan.extend([Command(yaw=yaw)] * hold)
        plan.extend(self._pitch_to(target, 0.0, self._pitch_rate(), **keys()))

    def _recover(self) -> None:
        if self.cfg.use_when_stuck:
            self._plan.append(Command(use=True))
        self._plan.extend([Command(back=True)] * int(self.rng.integers(4, 10)))
        angle = float(self.rng.uniform(90, 180)) * self._sign()
        self._plan.extend(self._turn(angle, self._rate(2.0, 8.0)))

    def _stuck(self, pose: np.ndarray) -> bool:
        h = self._history
        if len(h) < h.maxlen or not all(moving for _, moving in h):
            return False
        return float(np.linalg.norm(pose[:2] - h[0][0])) < self.cfg.stuck_distance

    def _limit_pitch(self, cmd: Command) -> Command:
        lim = self.cfg.pitch_limit if self.cfg.look > 0 else 0.0
        new = min(max(self._pitch + cmd.pitch, -lim), lim)
        if new - self._pitch == cmd.pitch:
            return cmd
        pitch = new - self._pitch if abs(new - self._pitch) >= _MIN_ROTATION else 0.0
        return Command(cmd.forward, cmd.back, cmd.left, cmd.right, cmd.yaw, pitch, cmd.use)
