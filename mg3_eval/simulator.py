"""The ViZDoom simulator on held-out levels: episodes of the data engine's explorer, rest starts,
and replaying commanded actions from a start.

Frames are rendered at the model's resolution with the crop of the training data
(:func:`doom_config_for`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from world_model.config import StreamConfig, WorldModelConfig

__all__ = [
    "SimEpisode",
    "SimStart",
    "doom_config_for",
    "record_test_episodes",
    "EVAL_EXPLORER",
    "eval_explorer",
    "rest_starts",
    "play_commands",
    "play_command_sets",
    "iter_commands",
]


def doom_config_for(cfg: WorldModelConfig):
    """The engine settings the training data of ``cfg`` was made with: the data stage of the
    pipeline generates at the model's resolution with :class:`GenerateConfig`'s other defaults."""
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import GenerateConfig

    g = GenerateConfig(frames=1, width=cfg.stream.width, height=cfg.stream.height)
    return DoomConfig(g.width, g.height, g.tics_per_frame)


@dataclass
class SimEpisode:
    """Simulator frames with the actions that produced them (action i moves frame i to i + 1).

    ``frames`` uint8 [T, H, W, 3]; ``keyboard`` float32 [T, 6]; ``mouse`` float32 [T, 2] in release
    units; ``poses`` float64 [T, 5]; ``depth`` float32 [T, H, W] in map units when recorded with it
    (:func:`record_test_episodes`, ``depth=True``).
    """

    level: str
    seed: int
    prompt: str
    frames: np.ndarray
    keyboard: np.ndarray
    mouse: np.ndarray
    poses: np.ndarray
    depth: np.ndarray | None = None


def record_test_episodes(
    cfg: WorldModelConfig,
    n: int,
    num_frames: int,
    *,
    split: str = "test",
    seed: int = 0,
    workdir=None,
    spawn: str = "start",
    depth: bool = False,
) -> list[SimEpisode]:
    """``n`` episodes of ``num_frames`` frames played by the data engine's explorer (the training
    policy) from the spawn of the levels of ``split`` (``spawn="anywhere"``: from a point and heading of the level
    drawn from the episode's seed, DoomConfig.spawn), taken in turn. Episodes cut short by a level
    exit or a teleporter are replaced by another seed of the same level. ``depth``: each frame's depth as well
    (DoomEngine.depth; the frames are the same with it)."""
    from world_model.data.generate import record_episode
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    doom = dataclasses.replace(doom_config_for(cfg), spawn=spawn, depth=depth)
    out: list[SimEpisode] = []
    attempt = 0
    while len(out) < n:
        if attempt > 20 * n + 20:
            raise RuntimeError(f"could not record {n} episodes of {num_frames} frames on {split} levels")
        level = levels[len(out) % len(levels)]
        ep_seed = seed * 100_003 + attempt
        attempt += 1
        ep = record_episode(level, num_frames, seed=ep_seed, doom=doom, explorer=eval_explorer(), workdir=workdir)
        if len(ep.poses) < num_frames:
            continue
        out.append(SimEpisode(level.name, ep_seed, ep.prompt, ep.frames, ep.keyboard, ep.mouse, ep.poses, ep.depth))
    return out


# The data engine's explorer as the evaluation plays it, pinned to the values every stored metrics file was made with
# (sessions up to 38): a run's episodes pair with another's only while they play the same actions, so a new default
# of the training data's explorer (world_model.data.explorer.ExplorerConfig) must not move them.
EVAL_EXPLORER: dict[str, float | int | bool] = {
    "min_turn_rate": 0.5, "max_turn_rate": 8.0, "pitch_limit": 30.0, "min_pitch_rate": 0.6, "max_pitch_rate": 3.0,
    "look_while_moving": 0.55, "stuck_frames": 8, "stuck_distance": 6.0, "use_when_stuck": True,
    "walk": 0.16, "walk_turn": 0.10, "turn": 0.11, "strafe": 0.20, "look": 0.30, "back": 0.06, "pause": 0.05,
    "turn_and_return": 0.07, "walk_and_return": 0.07,
}  # fmt: skip


def eval_explorer(*, look: bool = True):
    """The explorer config of :func:`record_test_episodes` (:data:`EVAL_EXPLORER`); ``look=False``: the camera kept
    level, as the rest starts walk."""
    from world_model.data.explorer import ExplorerConfig

    return ExplorerConfig(**{**EVAL_EXPLORER, **({} if look else {"look": 0.0})})


@dataclass
class SimStart:
    """A start state of the simulator with the player at rest.

    Replayed exactly by resetting ``level`` with ``seed``, playing the explorer (seed ``seed``, no
    looking up or down) for ``walk_frames`` frames and then ``settle_frames`` no-op frames.
    ``frame`` uint8 [H, W, 3] and ``pose`` [5] are the state reached.
    """

    level: str
    seed: int
    walk_frames: int
    settle_frames: int
    prompt: str
    frame: np.ndarray
    pose: np.ndarray


_SETTLE_FRAMES = 24  # no-op frames after walking: Doom's momentum has died out well before


def _start_explorer(seed: int):
    from world_model.data.explorer import Explorer

    return Explorer(seed, eval_explorer(look=False))


def _replay_start(engine, start: SimStart) -> tuple[np.ndarray, np.ndarray, bool]:
    """Reset ``engine`` and play the start's prefix; returns (frame, pose, finished)."""
    from world_model.data.doom import Command

    frame, pose = engine.reset(seed=start.seed)
    policy = _start_explorer(start.seed)
    for i in range(start.walk_frames + start.settle_frames):
        cmd = policy.act(pose) if i < start.walk_frames else Command()
        if cmd.use:
            cmd = dataclasses.replace(cmd, use=False)
        frame, pose, finished = engine.step(cmd)
        if finished:
            return frame, pose, True
    return frame, pose, False


def rest_starts(
    cfg: WorldModelConfig, n: int, *, split: str = "test", seed: int = 0, walk_frames: Sequence[int] = (0, 150, 300)
) -> list[SimStart]:
    """``n`` start states on the levels of ``split``: level j % L; the spawn first, then points
    reached by walking ``walk_frames[j // L]`` frames and settling (distinct views of a level)."""
    from world_model.data.doom import DoomEngine, describe_look
    from world_model.data.levels import get_level, levels_in_split

    levels = levels_in_split(split)
    doom = doom_config_for(cfg)
    out: list[SimStart] = []
    for j in range(n):
        level = levels[j % len(levels)]
        walk = int(walk_frames[(j // len(levels)) % len(walk_frames)])
        ep_seed = seed * 100_003 + j
        with DoomEngine(get_level(level.name), doom, seed=ep_seed) as engine:
            spawn, _ = engine.reset(seed=ep_seed)
            prompt = level.prompt(describe_look(spawn))
            for w in (walk, walk // 2, 0):  # a level exit or teleporter on the way: walk less
                start = SimStart(level.name, ep_seed, w, _SETTLE_FRAMES if w else 0, prompt, spawn, np.zeros(5))
                frame, pose, finished = _replay_start(engine, start)
                if not finished:
                    out.append(dataclasses.replace(start, frame=frame, pose=pose))
                    break
    return out


def play_commands(start: SimStart, doom, keyboard: np.ndarray, mouse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Play per-frame actions (keyboard [T, 6], mouse [T, 2] release units) in the simulator from
    ``start``; returns frames uint8 [T', H, W, 3] and poses [T', 5] with T' = T + 1 (frame 0 is
    the start), fewer when the level ended on the way."""
    return play_command_sets(start, doom, [(keyboard, mouse)])[0]


def play_command_sets(
    start: SimStart, doom, actions: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`play_commands` for several action sets from one start, in one engine (the start is
    replayed before each)."""
    from world_model.data.doom import DoomEngine
    from world_model.data.levels import get_level

    out = []
    with DoomEngine(get_level(start.level), doom, seed=start.seed) as engine:
        for keyboard, mouse in actions:
            frames, poses = zip(*_play(engine, start, keyboard, mouse))
            out.append((np.stack(frames), np.stack(poses)))
    return out


def iter_commands(
    start: SimStart, doom, keyboard: np.ndarray, mouse: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`play_commands` one frame at a time: yields (frame, pose), the start first, without
    holding the video (long rollouts at high resolution); stops early where the level ends."""
    from world_model.data.doom import DoomEngine
    from world_model.data.levels import get_level

    with DoomEngine(get_level(start.level), doom, seed=start.seed) as engine:
        yield from _play(engine, start, keyboard, mouse)


def _play(engine, start: SimStart, keyboard: np.ndarray, mouse: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Replay ``start`` in ``engine`` (checked against its frame), then play the actions: yields (frame, pose)."""
    from world_model.data.doom import Command

    unit = StreamConfig().degrees_per_mouse_unit
    frame, pose, finished = _replay_start(engine, start)
    if finished or not np.array_equal(frame, start.frame):
        raise RuntimeError(f"replaying the start on {start.level} (seed {start.seed}) did not reach its frame")
    yield frame, pose
    for k, m in zip(keyboard, mouse):
        cmd = Command(
            forward=bool(k[0] > 0.5), back=bool(k[1] > 0.5), left=bool(k[2] > 0.5), right=bool(k[3] > 0.5),
            yaw=float(m[1]) * unit, pitch=float(m[0]) * unit,
        )  # fmt: skip
        frame, pose, finished = engine.step(cmd)
        if finished:
            return
        yield frame, pose
