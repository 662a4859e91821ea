"""Evaluation of a world model against the ViZDoom simulator on levels it never trained on.

Protocols (all from frames the simulator renders on held-out levels, at the model's resolution and
with the crop of the training data):

- **fidelity**: from the simulator's first frame and its true per-frame actions, PSNR of every
  generated chunk against the simulator's frames, with the "repeat the first frame" baseline and
  the VAE's own reconstruction of chunk 0 (the ceiling of any latent model);
- **distillation**: the fidelity measure of chunk 0 for the few-step model and its many-step
  teacher, with the time per chunk of each;
- **control**: an inverse-dynamics classifier (IDM), trained on simulator frames of training
  levels only, labels the keyboard direction and the yaw direction of short frame stacks; its
  accuracy on held-out simulator frames, on video the model generates from commanded actions, and
  on the simulator's video of the same commands (what a perfect model would score);
- **memory**: go-and-return trajectories; PSNR between the generated view after the return and
  the generated view at the start, with memory on and off;
- **stability**: a long rollout; brightness, contrast and sharpness at the end against the start,
  and whether every latent stayed finite;
- **speed**: generated frames per second through the env API (steady-state chunks).

The functions compute and report; :func:`run_evaluation` puts the values next to :data:`TARGETS`
without asserting them. ``mg3 eval`` (:mod:`mg3_env.eval_cli`) is the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.config import StreamConfig, WorldModelConfig
from world_model.generator import ChunkActions, StreamingGenerator
from world_model.model import WorldModel
from world_model.vae import to_uint8_frames

__all__ = [
    "PSNR_CAP_DB",
    "KEYBOARD_CLASSES",
    "MOUSE_CLASSES",
    "psnr",
    "repeat_first_psnr",
    "luma",
    "frame_stats",
    "relative_change",
    "SimStart",
    "SimEpisode",
    "doom_config_for",
    "record_test_episodes",
    "rest_starts",
    "play_commands",
    "Generated",
    "generate_videos",
    "without_memory",
    "chunk_slices",
    "fidelity",
    "motion_labels",
    "command_actions",
    "InverseDynamics",
    "IDMData",
    "idm_frames",
    "collect_idm_data",
    "vae_roundtrip",
    "train_idm",
    "idm_predict",
    "control",
    "go_and_return_actions",
    "memory",
    "stability",
    "env_speed",
    "PARTS",
    "EvalOptions",
    "TARGETS",
    "REFERENCES",
    "run_evaluation",
    "line_plot",
    "format_table",
]

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0  # PSNR of identical frames (an infinite value would poison every mean)
KEYBOARD_CLASSES = ("none", "forward", "back", "left", "right")
MOUSE_CLASSES = ("none", "yaw_left", "yaw_right")
_KEY_INDEX = {"forward": 0, "back": 1, "left": 2, "right": 3}  # W S A D in the MG3 keyboard vector


# ------------------------------------------------------------------------------------------------
# metrics on frames
# ------------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames [..., H, W, 3] (peak 255), capped at :data:`PSNR_CAP_DB`.

    The leading axes broadcast (e.g. [T, 1, H, W, 3] against [1, R, H, W, 3] gives [T, R]).
    """
    if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"expected frames [..., H, W, 3] of one size, got shapes {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP_DB)


def repeat_first_psnr(frames: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """PSNR of "repeat the first frame" against each frame: frames [T, H, W, 3] -> [T].

    ``first`` defaults to ``frames[0]``.
    """
    first = frames[0] if first is None else first
    return psnr(first, frames)


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float64 luma [..., H, W] in [0, 255] (BT.601 weights)."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def frame_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame image statistics of uint8 frames [T, H, W, 3] -> each [T].

    ``brightness``: mean luma; ``contrast``: standard deviation of luma; ``sharpness``: mean
    absolute 4-neighbour Laplacian of luma (inner pixels), which falls when frames blur.
    """
    y = luma(frames)
    lap = 4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]
    return {
        "brightness": y.mean(axis=(-2, -1)),
        "contrast": y.std(axis=(-2, -1)),
        "sharpness": np.abs(lap).mean(axis=(-2, -1)),
    }


def relative_change(start: float, end: float) -> float:
    """|end - start| / |start| (inf when start is 0 and end is not)."""
    if start == 0:
        return 0.0 if end == 0 else math.inf
    return abs(end - start) / abs(start)


# ------------------------------------------------------------------------------------------------
# the simulator on held-out levels
# ------------------------------------------------------------------------------------------------


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
    units; ``poses`` float64 [T, 5].
    """

    level: str
    seed: int
    prompt: str
    frames: np.ndarray
    keyboard: np.ndarray
    mouse: np.ndarray
    poses: np.ndarray


def record_test_episodes(
    cfg: WorldModelConfig, n: int, num_frames: int, *, split: str = "test", seed: int = 0, workdir=None
) -> list[SimEpisode]:
    """``n`` episodes of ``num_frames`` frames played by the data engine's explorer (the training
    policy) from the spawn of the levels of ``split``, taken in turn. Episodes cut short by a level
    exit or a teleporter are replaced by another seed of the same level."""
    from world_model.data.generate import record_episode
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    doom = doom_config_for(cfg)
    out: list[SimEpisode] = []
    attempt = 0
    while len(out) < n:
        if attempt > 20 * n + 20:
            raise RuntimeError(f"could not record {n} episodes of {num_frames} frames on {split} levels")
        level = levels[len(out) % len(levels)]
        ep_seed = seed * 100_003 + attempt
        attempt += 1
        ep = record_episode(level, num_frames, seed=ep_seed, doom=doom, workdir=workdir)
        if len(ep.poses) < num_frames:
            continue
        out.append(SimEpisode(level.name, ep_seed, ep.prompt, ep.frames, ep.keyboard, ep.mouse, ep.poses))
    return out


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
    from world_model.data.explorer import Explorer, ExplorerConfig

    return Explorer(seed, ExplorerConfig(look=0.0))


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
    from world_model.data.doom import Command, DoomEngine
    from world_model.data.levels import get_level

    unit = StreamConfig().degrees_per_mouse_unit
    with DoomEngine(get_level(start.level), doom, seed=start.seed) as engine:
        frame, pose, finished = _replay_start(engine, start)
        if finished or not np.array_equal(frame, start.frame):
            raise RuntimeError(f"replaying the start on {start.level} (seed {start.seed}) did not reach its frame")
        frames, poses = [frame], [pose]
        for k, m in zip(keyboard, mouse):
            cmd = Command(
                forward=bool(k[0] > 0.5), back=bool(k[1] > 0.5), left=bool(k[2] > 0.5), right=bool(k[3] > 0.5),
                yaw=float(m[1]) * unit, pitch=float(m[0]) * unit,
            )  # fmt: skip
            frame, pose, finished = engine.step(cmd)
            if finished:
                break
            frames.append(frame)
            poses.append(pose)
    return np.stack(frames), np.stack(poses)


# ------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------


class Generated(NamedTuple):
    """Generated video: ``frames`` uint8 [B, T, H, W, 3]; ``chunk_seconds`` wall time of each
    chunk (all B envs together); ``finite``: every latent stayed finite."""

    frames: np.ndarray
    chunk_seconds: list[float]
    finite: bool


def without_memory(wm: WorldModel) -> WorldModel:
    """The same model with memory off: chunks k >= 1 see no memory latents (only the past ones)."""
    stream = wm.config.stream.replace(num_memory=0)
    return dataclasses.replace(wm, config=wm.config.replace(stream=stream))


def chunk_slices(first_frames: int, chunk_frames: int, num_chunks: int) -> list[slice]:
    """Frame ranges of chunks 0..num_chunks-1 of a rollout."""
    out = [slice(0, first_frames)]
    for k in range(1, num_chunks):
        a = first_frames + (k - 1) * chunk_frames
        out.append(slice(a, a + chunk_frames))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_videos(
    wm: WorldModel,
    images: np.ndarray,
    prompts: Sequence[str],
    keyboard: np.ndarray,
    mouse: np.ndarray,
    *,
    seeds: Sequence[int],
    use_memory: bool = True,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    keep_frames: bool = True,
) -> Generated:
    """Roll out B envs from first frames with per-frame actions, batched.

    Args:
        images: uint8 [B, H, W, 3] at the model's resolution.
        keyboard: [B, T, K], mouse: [B, T, 2]; T = first chunk frames + k * chunk frames.
        on_chunk: called with (chunk index, frames uint8 [B, t, H, W, 3]) after every chunk.
        keep_frames: False returns frames [B, 0, H, W, 3] (long rollouts; use ``on_chunk``).
    """
    model = wm if use_memory else without_memory(wm)
    gen = StreamingGenerator(model)
    s = model.config.stream
    b = len(images)
    if images.shape[1:] != (s.height, s.width, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected images uint8 [B, {s.height}, {s.width}, 3], got {images.dtype} {images.shape}")
    if keyboard.shape[0] != b or mouse.shape[:2] != keyboard.shape[:2] or len(prompts) != b or len(seeds) != b:
        raise ValueError(
            f"expected {b} prompts, seeds, keyboard [B, T, K] and mouse [B, T, 2], got {len(prompts)}, "
            f"{len(seeds)}, {keyboard.shape}, {mouse.shape}"
        )
    t = keyboard.shape[1]
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    if t < first or (t - first) % rest:
        raise ValueError(f"expected {first} + k * {rest} frames of actions, got {t}")
    num_chunks = 1 + (t - first) // rest
    state = gen.init_state(b)
    # torch.tensor copies: the simulator's frames may be read-only
    video = torch.tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, H, W] in [-1, 1]
    gen.reset_(state, [True] * b, video, model.encode_prompts(list(prompts)), [int(x) for x in seeds])
    kb, ms = torch.tensor(keyboard, dtype=torch.float32), torch.tensor(mouse, dtype=torch.float32)
    frames, seconds = [], []
    for k, sl in enumerate(chunk_slices(first, rest, num_chunks)):
        t0 = time.perf_counter()
        outs, state = gen.step(state, [ChunkActions(kb[i, sl], ms[i, sl]) for i in range(b)])
        _sync(gen.device)
        seconds.append(time.perf_counter() - t0)
        chunk = np.stack([o.frames.numpy() for o in outs])  # [B, t, H, W, 3]
        if on_chunk is not None:
            on_chunk(k, chunk)
        if keep_frames:
            frames.append(chunk)
    finite = all(bool(torch.isfinite(z).all()) for z in state.latents if z is not None)
    out = np.concatenate(frames, 1) if frames else np.zeros((b, 0, s.height, s.width, 3), np.uint8)
    return Generated(out, seconds, finite)


def _batched(n: int, size: int) -> list[range]:
    return [range(a, min(n, a + size)) for a in range(0, n, size)]


# ------------------------------------------------------------------------------------------------
# fidelity (and distillation)
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def vae_roundtrip(wm: WorldModel, frames: np.ndarray) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] or [B, T, H, W, 3] encoded and decoded by the model's VAE
    (T = 1 + r*k, the first frame alone as in a first chunk): the simulator's video with the blur
    of the model's decoder and none of its dynamics. Its PSNR is what a perfect model scores."""
    single = frames.ndim == 4
    clips = np.ascontiguousarray(frames[None] if single else frames)
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).to(wm.runtime.device, wm.runtime.dtype) / 127.5 - 1.0
    rec, _ = wm.vae.decode(wm.vae.encode(x), first_chunk=True)
    out = to_uint8_frames(rec).numpy()
    return out[0] if single else out


def _vae_length(n: int, r: int) -> int:
    """The longest 1 + r*k <= n."""
    return 1 + r * ((n - 1) // r) if n >= 1 else 0


def fidelity(
    wm: WorldModel, episodes: Sequence[SimEpisode], *, num_chunks: int = 10, seed: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """PSNR of generated chunks against the simulator, from its first frame with its actions.

    Chunk 0 is scored on frames 1.. (frame 0 is given); chunk k >= 1 on its new frames. Returns
    per-chunk means over episodes (``psnr_model``, ``psnr_repeat``), chunk 0's summary
    (``chunk0``: model, repeat, gain, VAE ceiling, per episode) and the time per chunk and env.
    """
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    t = first + (num_chunks - 1) * rest
    short = [e.level for e in episodes if len(e.frames) < t]
    if short:
        raise ValueError(f"episodes need {t} frames for {num_chunks} chunks; shorter ones: {short}")
    slices = chunk_slices(first, rest, num_chunks)
    slices[0] = slice(1, first)
    model_db = np.zeros((len(episodes), num_chunks))
    repeat_db = np.zeros_like(model_db)
    vae_db = np.zeros(len(episodes))
    seconds: list[float] = []
    finite = True
    for idx in _batched(len(episodes), batch_size):
        eps = [episodes[i] for i in idx]
        truth = np.stack([e.frames[:t] for e in eps])  # [b, T, H, W, 3]
        g = generate_videos(
            wm,
            truth[:, 0],
            [e.prompt for e in eps],
            np.stack([e.keyboard[:t] for e in eps]),
            np.stack([e.mouse[:t] for e in eps]),
            seeds=[seed + i for i in idx],
        )
        finite &= g.finite
        seconds += [s / len(eps) for s in g.chunk_seconds]
        for j, i in enumerate(idx):
            for k, sl in enumerate(slices):
                model_db[i, k] = psnr(g.frames[j, sl], truth[j, sl]).mean()
                repeat_db[i, k] = repeat_first_psnr(truth[j, sl], truth[j, 0]).mean()
        vae_db[list(idx)] = psnr(vae_roundtrip(wm, truth[:, :first]), truth[:, :first])[:, 1:].mean(1)
    chunk0 = {
        "psnr_model": float(model_db[:, 0].mean()),
        "psnr_repeat": float(repeat_db[:, 0].mean()),
        "gain_db": float((model_db[:, 0] - repeat_db[:, 0]).mean()),
        "psnr_vae": float(vae_db.mean()),
        "per_episode": [float(x) for x in model_db[:, 0]],
    }
    return {
        "episodes": len(episodes),
        "levels": sorted({e.level for e in episodes}),
        "chunks": num_chunks,
        "psnr_model": [float(x) for x in model_db.mean(0)],
        "psnr_repeat": [float(x) for x in repeat_db.mean(0)],
        "chunk0": chunk0,
        "seconds_first_chunk": float(np.mean(seconds[::num_chunks])),
        "seconds_per_chunk": float(np.mean([s for k, s in enumerate(seconds) if k % num_chunks]))
        if num_chunks > 1
        else None,
        "finite": finite,
    }


# ------------------------------------------------------------------------------------------------
# control: labels, inverse dynamics
# ------------------------------------------------------------------------------------------------


def motion_labels(
    poses: np.ndarray,
    window: int,
    *,
    still_speed: float = 1.5,
    move_speed: float = 4.0,
    still_yaw: float = 0.1,
    turn_yaw: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Keyboard and yaw classes of every window of ``window`` frames, measured from poses [T, 5].

    Window t covers frames t..t+window-1 (its window-1 moves). The keyboard class is the direction
    of the mean displacement per frame in the camera's frame (forward/right axes at each frame's
    yaw; map units): ``none`` below ``still_speed``, a direction when its component is at least
    ``move_speed`` and twice the other one. The yaw class: ``none`` when every |yaw change| <
    ``still_yaw`` degrees, left/right when every change is <= -``turn_yaw`` / >= ``turn_yaw``.
    Anything else is ambiguous: -1. Returns two int64 arrays [T - window + 1].
    """
    poses = np.asarray(poses, np.float64)
    n = len(poses) - window + 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = np.diff(poses[:, :2], axis=0)  # [T-1, 2]
    yaw = np.deg2rad(poses[:-1, 4])
    fwd = d[:, 0] * np.cos(yaw) + d[:, 1] * np.sin(yaw)
    right = -d[:, 0] * np.sin(yaw) + d[:, 1] * np.cos(yaw)
    dyaw = (np.diff(poses[:, 4]) + 180.0) % 360.0 - 180.0
    m = window - 1
    kb, ms = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for t in range(n):
        f, r = fwd[t : t + m].mean(), right[t : t + m].mean()
        speed = np.hypot(fwd[t : t + m], right[t : t + m]).mean()
        if speed < still_speed:
            kb[t] = 0
        elif abs(f) >= move_speed and abs(f) >= 2 * abs(r):
            kb[t] = 1 if f > 0 else 2
        elif abs(r) >= move_speed and abs(r) >= 2 * abs(f):
            kb[t] = 4 if r > 0 else 3
        y = dyaw[t : t + m]
        if (np.abs(y) < still_yaw).all():
            ms[t] = 0
        elif (y <= -turn_yaw).all():
            ms[t] = 1
        elif (y >= turn_yaw).all():
            ms[t] = 2
    return kb, ms


def command_actions(
    keyboard_class: int, mouse_class: int, frames: int, yaw_step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame actions holding one keyboard class and one yaw class: keyboard [T, 6], mouse [T, 2]
    (yaw ``yaw_step`` release units per frame, negative = left)."""
    kb = np.zeros((frames, 6), np.float32)
    name = KEYBOARD_CLASSES[keyboard_class]
    if name != "none":
        kb[:, _KEY_INDEX[name]] = 1.0
    ms = np.zeros((frames, 2), np.float32)
    ms[:, 1] = (0.0, -yaw_step, yaw_step)[mouse_class]
    return kb, ms


def idm_frames(frames: np.ndarray, size: int = 64) -> np.ndarray:
    """The IDM's view of uint8 frames [T, H, W, 3]: luma, area-downsampled so that neither side
    exceeds ``size`` -> uint8 [T, h, w]."""
    y = torch.from_numpy(luma(frames)).float()[:, None]  # [T, 1, H, W]
    h, w = frames.shape[1:3]
    scale = max(h, w) / size
    if scale > 1:
        y = F.interpolate(y, size=(round(h / scale), round(w / scale)), mode="area")
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


class InverseDynamics(nn.Module):
    """Frame stack -> (keyboard logits [B, 5], yaw logits [B, 3]).

    Input: uint8 luma stacks [B, S, h, w]; the network sees the frames and their S - 1 differences.
    Four convolutions (three strided), a 4x4 adaptive pool (keeps where motion happens: expansion vs
    contraction separates forward from back) and two linear heads. ``size``: the longest side of
    the luma frames it works on (:func:`idm_frames`).
    """

    def __init__(self, window: int = 5, width: int = 32, size: int = 64) -> None:
        super().__init__()
        self.window, self.size = window, size
        c = 2 * window - 1
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * width, 128), nn.GELU(),
        )  # fmt: skip
        self.keyboard = nn.Linear(128, len(KEYBOARD_CLASSES))
        self.mouse = nn.Linear(128, len(MOUSE_CLASSES))

    @torch.no_grad()
    def predict(
        self, frames: np.ndarray, starts: Sequence[int], batch_size: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classes (keyboard, yaw) of the windows of video frames uint8 [T, H, W, 3] at ``starts``."""
        luma = idm_frames(frames, self.size)
        starts = np.asarray(starts, np.int64)
        data = IDMData(luma, starts, np.zeros(len(starts), np.int64), np.zeros(len(starts), np.int64), self.window)
        return idm_predict(self, data, batch_size)

    def forward(self, stack: Tensor) -> tuple[Tensor, Tensor]:
        if stack.ndim != 4 or stack.shape[1] != self.window:
            raise ValueError(f"expected frame stacks [B, {self.window}, h, w], got {tuple(stack.shape)}")
        x = stack.float() / 255.0
        x = torch.cat([x - 0.5, 4.0 * x.diff(dim=1)], 1)
        h = self.features(x)
        return self.keyboard(h), self.mouse(h)


@dataclass
class IDMData:
    """Labelled windows over concatenated luma frames: ``frames`` uint8 [N, h, w]; window i covers
    ``frames[starts[i] : starts[i] + window]``; labels int64 (-1 = unknown, not used)."""

    frames: np.ndarray
    starts: np.ndarray
    keyboard: np.ndarray
    mouse: np.ndarray
    window: int

    @classmethod
    def build(cls, clips: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], window: int) -> IDMData:
        """From (luma frames [T, h, w], keyboard labels [T - window + 1], mouse labels [same])."""
        frames, starts, kb, ms, off = [], [], [], [], 0
        for f, k, m in clips:
            n = len(f) - window + 1
            if len(k) != max(n, 0) or len(m) != max(n, 0):
                raise ValueError(f"expected {max(n, 0)} labels for {len(f)} frames, got {len(k)} and {len(m)}")
            frames.append(f)
            if n > 0:
                starts.append(off + np.arange(n))
                kb.append(k)
                ms.append(m)
            off += len(f)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        return cls(np.concatenate(frames), cat(starts), cat(kb), cat(ms), window)

    def labelled(self) -> IDMData:
        """Only the windows with both labels known."""
        keep = (self.keyboard >= 0) & (self.mouse >= 0)
        return IDMData(self.frames, self.starts[keep], self.keyboard[keep], self.mouse[keep], self.window)

    def __len__(self) -> int:
        return len(self.starts)

    def stacks(self, idx: np.ndarray) -> Tensor:
        """uint8 [len(idx), window, h, w]."""
        rows = self.starts[idx][:, None] + np.arange(self.window)
        return torch.from_numpy(self.frames[rows])


def _block_policy(rng: np.random.Generator, blocked: bool):
    """One block of constant commands: (keyboard class, yaw class, yaw deg/frame, frames)."""
    if blocked:  # against a wall: turn in place
        return 0, int(rng.integers(1, 3)), float(rng.uniform(2.0, 4.5)), int(rng.integers(15, 30))
    return int(rng.integers(0, 5)), int(rng.integers(0, 3)), float(rng.uniform(1.0, 4.5)), int(rng.integers(14, 40))


def collect_idm_data(
    cfg: WorldModelConfig,
    num_frames: int,
    *,
    split: str = "train",
    seed: int = 0,
    episode_frames: int = 400,
    window: int = 5,
    size: int = 64,
    vae_of: WorldModel | None = None,
) -> IDMData:
    """Simulator frames of ``split`` levels played with blocks of constant commands (every keyboard
    class x yaw class, random yaw rates and lengths), labelled by the measured motion. With
    ``vae_of``, each episode is cut to 1 + r*k frames and passed through that model's VAE
    (:func:`vae_roundtrip`)."""
    from world_model.data.doom import Command, DoomEngine
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    doom = doom_config_for(cfg)
    rng = np.random.default_rng([seed, 17])
    clips = []
    total = 0
    e = 0
    while total < num_frames:
        level = levels[int(rng.integers(len(levels)))]
        with DoomEngine(level, doom, seed=seed * 1000 + e) as engine:
            frame, pose = engine.reset()
            frames, poses = [frame], [pose]
            blocked = False
            while len(frames) < min(episode_frames, num_frames - total):
                k, m, rate, n = _block_policy(rng, blocked)
                yaw = (0.0, -rate, rate)[m]
                kb = KEYBOARD_CLASSES[k]
                cmd = Command(
                    forward=kb == "forward", back=kb == "back", left=kb == "left", right=kb == "right", yaw=yaw
                )
                start = len(poses)
                finished = False
                for _ in range(n):
                    frame, pose, finished = engine.step(cmd)
                    if finished:
                        break
                    frames.append(frame)
                    poses.append(pose)
                moved = np.linalg.norm(poses[-1][:2] - poses[start - 1][:2]) if len(poses) > start else 0.0
                blocked = k != 0 and moved < 2.0 * n
                if finished:
                    break
        e += 1
        if len(frames) < window:
            continue
        poses_arr, frames_arr = np.stack(poses), np.stack(frames)
        if (np.linalg.norm(np.diff(poses_arr[:, :3], axis=0), axis=1) > 64).any():  # teleported: drop
            continue
        if vae_of is not None:
            n = _vae_length(len(frames_arr), vae_of.config.vae.temporal_stride)
            if n < window:
                continue
            frames_arr, poses_arr = vae_roundtrip(vae_of, frames_arr[:n]), poses_arr[:n]
        kb_l, ms_l = motion_labels(poses_arr, window)
        clips.append((idm_frames(frames_arr, size), kb_l, ms_l))
        total += len(frames)
    return IDMData.build(clips, window).labelled()


_FLIP_KEYBOARD = torch.tensor([0, 1, 2, 4, 3])  # a mirrored view swaps left and right
_FLIP_MOUSE = torch.tensor([0, 2, 1])


def train_idm(
    data: IDMData,
    *,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 32,
    size: int = 64,
) -> InverseDynamics:
    """Train the IDM (AdamW, cosine schedule, random horizontal mirroring with swapped labels)."""
    if len(data) == 0:
        raise ValueError("no labelled windows to train the inverse-dynamics model on")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InverseDynamics(data.window, width, size)
    steps = epochs * math.ceil(len(data) / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    kb_all, ms_all = torch.from_numpy(data.keyboard), torch.from_numpy(data.mouse)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).numpy()
        for a in range(0, len(order), batch_size):
            idx = order[a : a + batch_size]
            x, kb, ms = data.stacks(idx), kb_all[idx], ms_all[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            kb = torch.where(flip, _FLIP_KEYBOARD[kb], kb)
            ms = torch.where(flip, _FLIP_MOUSE[ms], ms)
            lk, lm = net(x)
            loss = F.cross_entropy(lk, kb) + F.cross_entropy(lm, ms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def idm_predict(net: InverseDynamics, data: IDMData, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (keyboard, yaw) classes of every window of ``data``."""
    net.eval()
    kb, ms = [], []
    for a in range(0, len(data), batch_size):
        lk, lm = net(data.stacks(np.arange(a, min(len(data), a + batch_size))))
        kb.append(lk.argmax(1).numpy())
        ms.append(lm.argmax(1).numpy())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(kb), cat(ms)


def _accuracy(pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    keep = label >= 0 if mask is None else (label >= 0) & mask
    return float((pred[keep] == label[keep]).mean()) if keep.any() else None


def _confusion(pred: np.ndarray, label: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    keep = label >= 0
    np.add.at(m, (label[keep], pred[keep]), 1)
    return m.tolist()


def _commanded_windows(slices: Sequence[slice], window: int, settle: int, stride: int) -> list[tuple[int, int]]:
    """(chunk, window start) of the windows scored in each chunk: after ``settle`` frames (Doom's
    momentum needs about 10 frames to build up or die out), every ``stride`` frames."""
    out = []
    for k, sl in enumerate(slices):
        for t in range(sl.start + settle, sl.stop - window + 1, stride):
            out.append((k, t))
    return out


def control(
    wm: WorldModel,
    idm: InverseDynamics,
    starts: Sequence[SimStart],
    *,
    num_chunks: int = 4,
    yaw_step: float = 0.15,
    settle: int = 12,
    stride: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    sim_through_vae: bool = False,
) -> dict[str, Any]:
    """Generate video from commanded actions (one random keyboard class and yaw class held per
    chunk) and label it with the IDM; the same commands are played in the simulator from the same
    start (``sim_through_vae``: its video passed through the model's VAE, for an IDM trained so). Scores (``model``, ``sim``): IDM accuracy against the commanded classes on the model's
    video and on the simulator's (the simulator's is the ceiling the IDM allows), and the same
    restricted to the windows where the simulator moved as commanded (``feasible``: walls stop the
    player, and a model that learned that is not wrong)."""
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    slices = chunk_slices(first, rest, num_chunks)
    rng = np.random.default_rng([seed, 23])
    doom = doom_config_for(wm.config)
    w = idm.window
    scored = _commanded_windows(slices, w, settle, stride)
    res = {"model": ([], []), "sim": ([], []), "feasible": []}  # per episode: predicted keyboard, yaw
    labels_kb, labels_ms = [], []
    commands = []
    for _ in starts:
        classes = [(int(rng.integers(0, 5)), int(rng.integers(0, 3))) for _ in range(num_chunks)]
        acts = [command_actions(k, m, sl.stop - sl.start, yaw_step) for (k, m), sl in zip(classes, slices)]
        commands.append((classes, np.concatenate([a[0] for a in acts]), np.concatenate([a[1] for a in acts])))
    for idx in _batched(len(starts), batch_size):
        g = generate_videos(
            wm,
            np.stack([starts[i].frame for i in idx]),
            [starts[i].prompt for i in idx],
            np.stack([commands[i][1] for i in idx]),
            np.stack([commands[i][2] for i in idx]),
            seeds=[seed + i for i in idx],
        )
        for j, i in enumerate(idx):
            classes, kb, ms = commands[i]
            sim_frames, sim_poses = play_commands(starts[i], doom, kb, ms)
            if sim_through_vae:
                sim_frames = vae_roundtrip(
                    wm, sim_frames[: _vae_length(len(sim_frames), wm.config.vae.temporal_stride)]
                )
            lab_kb = np.array([classes[k][0] for k, _ in scored])
            lab_ms = np.array([classes[k][1] for k, _ in scored])
            labels_kb.append(lab_kb)
            labels_ms.append(lab_ms)
            for name, frames in (("model", g.frames[j]), ("sim", sim_frames)):
                ok = [s for _, s in scored if s + w <= len(frames)]
                pk, pm = idm.predict(frames, ok)
                full_k, full_m = np.full(len(scored), -1), np.full(len(scored), -1)
                full_k[: len(ok)], full_m[: len(ok)] = pk, pm  # windows past a level end stay -1 (wrong)
                res[name][0].append(full_k)
                res[name][1].append(full_m)
            mk, mm = motion_labels(sim_poses, w)
            feas = np.array([s < len(mk) and mk[s] == classes[k][0] and mm[s] == classes[k][1] for k, s in scored])
            res["feasible"].append(feas)
    lk, lm = np.concatenate(labels_kb), np.concatenate(labels_ms)
    feasible = np.concatenate(res["feasible"])
    out: dict[str, Any] = {"episodes": len(starts), "chunks": num_chunks, "windows": int(len(lk)), "yaw_step": yaw_step}
    for name in ("model", "sim"):
        pk, pm = np.concatenate(res[name][0]), np.concatenate(res[name][1])
        out[name] = {
            "keyboard_accuracy": _accuracy(pk, lk),
            "mouse_accuracy": _accuracy(pm, lm),
            "keyboard_confusion": _confusion(pk, lk, len(KEYBOARD_CLASSES)),
            "mouse_confusion": _confusion(pm, lm, len(MOUSE_CLASSES)),
            "feasible": {
                "keyboard_accuracy": _accuracy(pk, lk, feasible),
                "mouse_accuracy": _accuracy(pm, lm, feasible),
            },
        }
    out["feasible_windows"] = int(feasible.sum())
    out["feasible_fraction"] = float(feasible.mean()) if len(feasible) else None
    return out


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def go_and_return_actions(
    first_frames: int, chunk_frames: int, *, away_chunks: int = 3, walk_chunks: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-frame actions of a go-and-return trajectory: keyboard [T, 6], mouse [T, 2], and the
    number of chunks C (T = first_frames + (C - 1) * chunk_frames).

    Chunk 0 and the last chunk stand still at the start pose. In between, ``away_chunks`` chunks:
    with ``walk_chunks = 0`` a full 360-degree turn in place at a constant rate; otherwise walk
    forward ``walk_chunks`` chunks, turn 180 degrees, walk back, turn 180 degrees (the turns share
    the remaining chunks equally, at least one each). Integrated with the package's constant step
    (:func:`world_model.camera.integrate_poses`) the pose after the last move equals the start.
    """
    if away_chunks < 1 or walk_chunks < 0:
        raise ValueError(f"expected away_chunks >= 1 and walk_chunks >= 0, got {away_chunks}, {walk_chunks}")
    unit = StreamConfig().degrees_per_mouse_unit
    parts: list[tuple[np.ndarray, np.ndarray]] = []

    def still(n: int):
        parts.append((np.zeros((n, 6), np.float32), np.zeros((n, 2), np.float32)))

    def turn(degrees: float, chunks: int):
        n = chunks * chunk_frames
        ms = np.zeros((n, 2), np.float32)
        ms[:, 1] = degrees / n / unit
        parts.append((np.zeros((n, 6), np.float32), ms))

    def walk(chunks: int):
        kb = np.zeros((chunks * chunk_frames, 6), np.float32)
        kb[:, 0] = 1.0
        parts.append((kb, np.zeros((len(kb), 2), np.float32)))

    still(first_frames)
    if walk_chunks == 0:
        turn(360.0, away_chunks)
    else:
        turn_chunks = away_chunks - 2 * walk_chunks
        if turn_chunks < 2:
            raise ValueError(f"away_chunks ({away_chunks}) must leave >= 2 turn chunks after 2 x {walk_chunks} walks")
        walk(walk_chunks)
        turn(180.0, turn_chunks // 2)
        walk(walk_chunks)
        turn(180.0, turn_chunks - turn_chunks // 2)
    still(chunk_frames)
    kb = np.concatenate([p[0] for p in parts])
    ms = np.concatenate([p[1] for p in parts])
    return kb, ms, away_chunks + 2


def memory(
    wm: WorldModel,
    starts: Sequence[SimStart],
    *,
    away_chunks: int = 3,
    walk_chunks: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    reference_frames: int = 8,
) -> dict[str, Any]:
    """Go-and-return from held-out first frames, with memory on and off (same seeds and actions).

    Score: PSNR of every frame of the last chunk (back at the start pose, standing still) against
    each of the last ``reference_frames`` frames of chunk 0 (standing at the start pose), averaged.
    Also the PSNR of the view half-way (farthest from the start) against the same reference, which
    shows that the views in between really differ.
    """
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    kb, ms, num_chunks = go_and_return_actions(first, rest, away_chunks=away_chunks, walk_chunks=walk_chunks)
    last = chunk_slices(first, rest, num_chunks)[-1]
    half = first + (away_chunks * rest) // 2  # half-way through the moves: the farthest view
    scores: dict[str, list[float]] = {"on": [], "off": [], "away": []}
    for idx in _batched(len(starts), batch_size):
        n = len(idx)
        args = (
            np.stack([starts[i].frame for i in idx]),
            [starts[i].prompt for i in idx],
            np.broadcast_to(kb, (n, *kb.shape)),
            np.broadcast_to(ms, (n, *ms.shape)),
        )
        for on in (True, False):
            g = generate_videos(wm, *args, seeds=[seed + i for i in idx], use_memory=on)
            for j in range(n):
                ref = g.frames[j, first - reference_frames : first]  # [R, H, W, 3]
                ret = g.frames[j, last]  # [t, H, W, 3]
                db = psnr(ret[:, None], ref[None]).mean()  # [t, R] -> mean
                scores["on" if on else "off"].append(float(db))
                if on:
                    away = g.frames[j, half]
                    scores["away"].append(float(psnr(away, ref).mean()))
    on, off = np.mean(scores["on"]), np.mean(scores["off"])
    return {
        "episodes": len(starts),
        "away_chunks": away_chunks,
        "walk_chunks": walk_chunks,
        "psnr_return_memory_on": float(on),
        "psnr_return_memory_off": float(off),
        "gain_db": float(on - off),
        "psnr_away_vs_start": float(np.mean(scores["away"])),
        "per_episode_on": scores["on"],
        "per_episode_off": scores["off"],
    }


# ------------------------------------------------------------------------------------------------
# stability, speed
# ------------------------------------------------------------------------------------------------


def _explorer_actions(first_frames: int, chunk_frames: int, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions of the package's go-and-return explorer (agents.explorer): walk, look, turn round."""
    from agents.explorer import Explorer

    explorer = Explorer(frames_per_chunk=chunk_frames)
    kb = [np.zeros((first_frames, 6), np.float32)]
    ms = [np.zeros((first_frames, 2), np.float32)]
    for _ in range(num_chunks - 1):
        a = explorer.act()
        kb.append(a["keyboard"].astype(np.float32))
        ms.append(a["mouse"].astype(np.float32))
    return np.concatenate(kb), np.concatenate(ms)


def stability(
    wm: WorldModel, start: SimStart, *, num_chunks: int = 121, edge_chunks: int = 5, seed: int = 0
) -> dict[str, Any]:
    """A long rollout with the go-and-return explorer; per-chunk image statistics.

    ``start``/``end``: statistics over chunks 1..edge_chunks and the last ``edge_chunks`` chunks;
    ``relative_change``: |end - start| / start of each; ``finite``: every latent stayed finite.
    ``thumbnails``: the last frame of chunks 0, C/4, C/2, 3C/4 and C-1 (uint8 [5, H, W, 3]).
    """
    if num_chunks < 2 * edge_chunks + 1:
        raise ValueError(f"num_chunks ({num_chunks}) must be at least 2 * edge_chunks + 1 ({2 * edge_chunks + 1})")
    gen = StreamingGenerator(wm)
    kb, ms = _explorer_actions(gen.first_chunk_frames, gen.chunk_frames, num_chunks)
    per_chunk: dict[str, list[float]] = {"brightness": [], "contrast": [], "sharpness": []}
    marks = {0, num_chunks // 4, num_chunks // 2, 3 * num_chunks // 4, num_chunks - 1}
    thumbs: dict[int, np.ndarray] = {}

    def on_chunk(k: int, frames: np.ndarray) -> None:
        for name, v in frame_stats(frames[0]).items():
            per_chunk[name].append(float(v.mean()))
        if k in marks:
            thumbs[k] = frames[0, -1]

    g = generate_videos(
        wm, start.frame[None], [start.prompt], kb[None], ms[None], seeds=[seed], on_chunk=on_chunk, keep_frames=False
    )
    out: dict[str, Any] = {"chunks": num_chunks, "level": start.level, "finite": g.finite, "per_chunk": per_chunk}
    out["start"] = {k: float(np.mean(v[1 : 1 + edge_chunks])) for k, v in per_chunk.items()}
    out["end"] = {k: float(np.mean(v[-edge_chunks:])) for k, v in per_chunk.items()}
    out["relative_change"] = {k: relative_change(out["start"][k], out["end"][k]) for k in per_chunk}
    out["all_values_finite"] = bool(all(np.isfinite(v).all() for v in per_chunk.values()))
    out["seconds_per_chunk"] = float(np.mean(g.chunk_seconds[1:]))
    out["thumbnails"] = np.stack([thumbs[k] for k in sorted(thumbs)])
    out["thumbnail_chunks"] = sorted(thumbs)
    return out


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
        _sync(dev)
        first = time.perf_counter() - t0
        times = []
        for _ in range(chunks):
            a = explorer.act()
            actions = {k: np.broadcast_to(v, (batch, *v.shape)).copy() for k, v in a.items()}
            t0 = time.perf_counter()
            env.step(actions)
            _sync(dev)
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


# ------------------------------------------------------------------------------------------------
# the whole evaluation
# ------------------------------------------------------------------------------------------------

PARTS = ("fidelity", "distillation", "control", "memory", "stability", "speed")

# The targets of the evaluation: (metric path, target); reported next to the values, never asserted.
TARGETS: dict[str, tuple[str, str]] = {
    "fidelity_psnr": ("fidelity.chunk0.psnr_model", ">= 20 dB"),
    "fidelity_gain": ("fidelity.chunk0.gain_db", ">= 2 dB over repeat-first"),
    "control_keyboard": ("control.model.keyboard_accuracy", ">= 0.9"),
    "control_mouse": ("control.model.mouse_accuracy", ">= 0.9"),
    "memory_psnr": ("memory.psnr_return_memory_on", ">= 20 dB"),
    "memory_gain": ("memory.gain_db", ">= 3 dB over memory off"),
    "stability_brightness": ("stability.relative_change.brightness", "<= 0.15"),
    "stability_contrast": ("stability.relative_change.contrast", "<= 0.15"),
    "stability_sharpness": ("stability.relative_change.sharpness", "<= 0.15"),
    "stability_finite": ("stability.finite", "true"),
    "speed": ("speed.frames_per_s", ">= 16 frames/s (CPU, 2 cores)"),
    "distillation_gap": ("distillation.psnr_gap_db", "<= 1 dB below the teacher"),
}
# What a perfect model would score with the same instrument: the VAE's reconstruction for PSNR, the
# IDM on the simulator's own video of the commanded actions for control.
REFERENCES: dict[str, str] = {
    "fidelity_psnr": "fidelity.chunk0.psnr_vae",
    "control_keyboard": "control.sim.keyboard_accuracy",
    "control_mouse": "control.sim.mouse_accuracy",
}


def _met(value: Any, target: str) -> bool | None:
    if value is None:
        return None
    if target == "true":
        return bool(value)
    op, num = target.split()[:2]
    v, n = float(value), float(num)
    return v >= n if op == ">=" else v <= n


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`run_evaluation` does. The defaults are the full evaluation of the embedded model:
    every protocol covers the six test levels (control and memory: from the spawn and from a second
    point of each level). Episode counts trade time for confidence; at 128x128 on a 2-core CPU a
    chunk of the embedded model takes ~1.4 s per episode."""

    parts: tuple[str, ...] = PARTS
    split: str = "test"
    fidelity_episodes: int = 6
    fidelity_chunks: int = 10
    teacher_episodes: int = 6
    teacher: str | None = None  # the many-step teacher (registry name or folder); None: the model's own
    control_episodes: int = 12
    control_chunks: int = 4
    idm_train_frames: int = 24_000
    idm_held_out_frames: int = 4_000
    idm_epochs: int = 10  # held-out simulator accuracy ~0.93 keyboard, ~0.85 yaw (4 epochs: 0.83, 0.75)
    idm_path: str | None = None  # reuse a trained IDM (safetensors) instead of training one
    idm_vae: bool = False  # IDM trained and scored on simulator video passed through the model's VAE
    memory_episodes: int = 12
    memory_away_chunks: int = 3
    stability_chunks: int = 121  # chunk 0 + 120 chunks: ~5 minutes of video at 16 frames/s
    stability_edge_chunks: int = 5  # chunks averaged at the start (1..n) and at the end (last n)
    speed_chunks: int = 5
    seed: int = 0
    batch_size: int = 6

    def __post_init__(self) -> None:
        bad = sorted(set(self.parts) - set(PARTS))
        if not self.parts or bad:
            raise ValueError(f"unknown evaluation parts {bad or '(none)'}; expected some of {list(PARTS)}")
        if self.split not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, got {self.split!r}")
        positive = (
            "fidelity_episodes", "fidelity_chunks", "teacher_episodes", "control_episodes", "control_chunks",
            "idm_train_frames", "idm_held_out_frames", "idm_epochs", "memory_episodes", "memory_away_chunks",
            "stability_edge_chunks", "speed_chunks", "batch_size",
        )  # fmt: skip
        small = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if small:
            raise ValueError(f"expected counts >= 1, got {', '.join(small)}")
        if self.stability_chunks < 2 * self.stability_edge_chunks + 1:
            raise ValueError(
                f"stability_chunks ({self.stability_chunks}) must be at least 2 * stability_edge_chunks + 1 "
                f"({2 * self.stability_edge_chunks + 1})"
            )
        if self.idm_path is not None and not Path(self.idm_path).is_file():
            raise ValueError(f"no IDM weights at {self.idm_path}")
        if self.teacher is not None:
            from world_model.model import MODEL_NAMES

            if self.teacher not in MODEL_NAMES and not (Path(self.teacher).expanduser() / "base_model").is_dir():
                raise ValueError(f"teacher must be a registry name or a folder with base_model/, got {self.teacher!r}")


_TEACHERS = {"default": "default-teacher", "mg3-5b": "mg3-5b-base"}  # registry model -> its many-step model


def _teacher_for(wm: WorldModel, runtime, teacher: str | None = None) -> WorldModel | None:
    """The many-step teacher: ``teacher`` (a registry name, or a folder whose ``base_model/`` is
    loaded) when given, else the model's own (``base_model/`` of its folder), or None."""
    from world_model.model import EMBEDDED_DIR, load_world_model

    if teacher is not None:
        folder = Path(teacher).expanduser().is_dir()
        return load_world_model(teacher, runtime, variant="base" if folder else "distilled")
    if wm.name == "default" and not (EMBEDDED_DIR / "base_model").is_dir():
        return None
    if wm.name in _TEACHERS:
        return load_world_model(_TEACHERS[wm.name], runtime)
    path = Path(wm.name).expanduser()
    if path.is_dir() and (path / "base_model").is_dir():
        return load_world_model(path, runtime, variant="base")
    return None


def _get(d: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def run_evaluation(
    model: str | Path | WorldModel, out: str | Path, opts: EvalOptions = EvalOptions(), *, runtime=None
) -> dict[str, Any]:
    """Run the parts of ``opts`` on ``model`` (a loaded model, a registry name or a model folder) at
    its own resolution; writes ``out/metrics.json`` and PNG plots; returns the metrics (with
    ``targets``: each target, its value and whether it is met). The distillation part compares with
    the model's many-step teacher (``default-teacher`` for ``default``, ``base_model/`` of a folder)
    and is skipped where there is none."""
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    runtime = runtime or (model.runtime if isinstance(model, WorldModel) else RuntimeOptions.for_device())
    wm = model if isinstance(model, WorldModel) else load_world_model(model, runtime)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = wm.config
    metrics: dict[str, Any] = {
        "model": {**wm.describe(), "sampler_steps": cfg.sampler.num_steps},
        "options": dataclasses.asdict(opts),
        "torch_threads": torch.get_num_threads(),
    }
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        log.info("evaluation: %s ...", part)
        t0 = time.perf_counter()
        r = fn()
        seconds[part] = time.perf_counter() - t0
        log.info("evaluation: %s done in %.1f s", part, seconds[part])
        return r

    gen = StreamingGenerator(wm)
    parts = set(opts.parts)
    if parts & {"fidelity", "distillation"}:
        n_ep = max(
            opts.fidelity_episodes if "fidelity" in parts else 0,
            opts.teacher_episodes if "distillation" in parts else 0,
        )
        frames = gen.first_chunk_frames + (opts.fidelity_chunks - 1) * gen.chunk_frames
        episodes = timed("record", lambda: record_test_episodes(cfg, n_ep, frames, split=opts.split, seed=opts.seed))
    if "fidelity" in parts:
        fid = timed(
            "fidelity",
            lambda: fidelity(
                wm,
                episodes[: opts.fidelity_episodes],
                num_chunks=opts.fidelity_chunks,
                seed=opts.seed,
                batch_size=opts.batch_size,
            ),
        )
        metrics["fidelity"] = fid
        line_plot(
            out / "fidelity_psnr.png",
            {"model": fid["psnr_model"], "repeat first frame": fid["psnr_repeat"]},
            title=f"PSNR against the simulator ({fid['episodes']} episodes, {opts.split} levels)",
            xlabel="chunk",
            ylabel="PSNR (dB)",
        )
        _save_fidelity_strip(wm, episodes[0], out / "fidelity_strip.png", opts.seed)
    if "distillation" in parts:
        teacher = _teacher_for(wm, runtime, opts.teacher)
        if teacher is None:
            metrics["distillation"] = {"skipped": f"no many-step teacher (base_model/) for model {wm.name!r}"}
        else:
            eps = episodes[: opts.teacher_episodes]
            s = timed(
                "distillation (student)",
                lambda: fidelity(wm, eps, num_chunks=1, seed=opts.seed, batch_size=opts.batch_size),
            )
            t = timed(
                "distillation (teacher)",
                lambda: fidelity(teacher, eps, num_chunks=1, seed=opts.seed, batch_size=opts.batch_size),
            )
            metrics["distillation"] = {
                "episodes": len(eps),
                "student": {
                    "steps": cfg.sampler.num_steps,
                    "psnr": s["chunk0"]["psnr_model"],
                    "seconds_first_chunk": s["seconds_first_chunk"],
                },
                "teacher": {
                    "steps": teacher.config.sampler.num_steps,
                    "psnr": t["chunk0"]["psnr_model"],
                    "seconds_first_chunk": t["seconds_first_chunk"],
                },
                "psnr_gap_db": t["chunk0"]["psnr_model"] - s["chunk0"]["psnr_model"],
                "time_ratio": s["seconds_first_chunk"] / t["seconds_first_chunk"],
            }
            del teacher
    if "control" in parts:
        metrics["control"] = timed("control", lambda: _control_part(wm, opts, out))
    if "memory" in parts:
        starts = rest_starts(cfg, opts.memory_episodes, split=opts.split, seed=opts.seed + 1)
        metrics["memory"] = timed(
            "memory",
            lambda: memory(wm, starts, away_chunks=opts.memory_away_chunks, seed=opts.seed, batch_size=opts.batch_size),
        )
    if "stability" in parts:
        start = rest_starts(cfg, 1, split=opts.split, seed=opts.seed)[0]
        st = timed(
            "stability",
            lambda: stability(
                wm, start, num_chunks=opts.stability_chunks, edge_chunks=opts.stability_edge_chunks, seed=opts.seed
            ),
        )
        _save_strip(
            out / "stability_frames.png", list(st.pop("thumbnails")), [f"chunk {k}" for k in st["thumbnail_chunks"]]
        )
        metrics["stability"] = st
        pc = st["per_chunk"]
        line_plot(
            out / "stability.png",
            {k: [x / max(st["start"][k], 1e-9) for x in v] for k, v in pc.items()},
            title=f"Stability over {st['chunks']} chunks (relative to the first {opts.stability_edge_chunks} after chunk 0)",
            xlabel="chunk",
            ylabel="value / start",
            hlines=[0.85, 1.15],
        )
    if "speed" in parts:
        metrics["speed"] = timed("speed", lambda: env_speed(wm, batch=1, chunks=opts.speed_chunks, seed=opts.seed))
    metrics["seconds"] = {**seconds, "total": time.perf_counter() - t_all}
    metrics["targets"] = {
        k: {
            "metric": path,
            "value": _get(metrics, path),
            "target": target,
            "met": _met(_get(metrics, path), target),
            "reference": _get(metrics, REFERENCES[k]) if k in REFERENCES else None,
        }
        for k, (path, target) in TARGETS.items()
        if path.split(".")[0] in metrics and "skipped" not in metrics[path.split(".")[0]]
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default) + "\n")
    return metrics


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.generic,)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _control_part(wm: WorldModel, opts: EvalOptions, out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    cfg = wm.config
    t0 = time.perf_counter()
    vae_of = wm if opts.idm_vae else None
    held = collect_idm_data(cfg, opts.idm_held_out_frames, split=opts.split, seed=opts.seed + 7, vae_of=vae_of)
    if opts.idm_path:
        net = InverseDynamics()
        net.load_state_dict(load_file(opts.idm_path))
        net.eval()
        idm_info: dict[str, Any] = {"loaded_from": opts.idm_path}
    else:
        train = collect_idm_data(cfg, opts.idm_train_frames, split="train", seed=opts.seed, vae_of=vae_of)
        t1 = time.perf_counter()
        net = train_idm(train, epochs=opts.idm_epochs, seed=opts.seed)
        save_file(net.state_dict(), str(out / "idm.safetensors"))
        idm_info = {
            "train_windows": len(train),
            "train_levels": "train split",
            "train_seconds": time.perf_counter() - t1,
            "train_keyboard_classes": np.bincount(train.keyboard, minlength=5).tolist(),
            "train_mouse_classes": np.bincount(train.mouse, minlength=3).tolist(),
        }
    pk, pm = idm_predict(net, held)
    idm_info.update(
        view="simulator video through the model's VAE" if opts.idm_vae else "simulator video",
        held_out_windows=len(held),
        held_out_levels=f"{opts.split} split",
        held_out_keyboard_accuracy=_accuracy(pk, held.keyboard),
        held_out_mouse_accuracy=_accuracy(pm, held.mouse),
        held_out_keyboard_confusion=_confusion(pk, held.keyboard, 5),
        held_out_mouse_confusion=_confusion(pm, held.mouse, 3),
        seconds=time.perf_counter() - t0,
    )
    starts = rest_starts(cfg, opts.control_episodes, split=opts.split, seed=opts.seed + 2)
    res = control(
        wm,
        net,
        starts,
        num_chunks=opts.control_chunks,
        seed=opts.seed,
        batch_size=opts.batch_size,
        sim_through_vae=opts.idm_vae,
    )
    return {"idm": idm_info, **res}


# ------------------------------------------------------------------------------------------------
# pictures (PIL only)
# ------------------------------------------------------------------------------------------------

_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_plot(
    path: str | Path,
    series: dict[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    hlines: Sequence[float] = (),
    size: tuple[int, int] = (640, 400),
) -> None:
    """A PNG line chart of ``series`` (name -> y values at x = 0, 1, ...), with a legend."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 45
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [float(y) for v in series.values() for y in v if math.isfinite(float(y))] + list(hlines)
    n = max((len(v) for v in series.values()), default=1)
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(i: float, y: float) -> tuple[float, float]:
        x = left + (w - left - right) * (i / max(n - 1, 1))
        return x, top + (h - top - bottom) * (1 - (y - lo) / (hi - lo))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(6):
        y = lo + (hi - lo) * k / 5
        _, yy = px(0, y)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{y:.3g}", fill="black")
    for k in range(min(n, 11)):
        i = round(k * (n - 1) / max(min(n, 11) - 1, 1))
        xx, _ = px(i, lo)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 6, h - bottom + 6), str(i), fill="black")
    for y in hlines:
        _, yy = px(0, y)
        d.line([left, yy, w - right, yy], fill=(170, 170, 170))
    for c, (label, v) in enumerate(series.items()):
        colour = _COLOURS[c % len(_COLOURS)]
        pts = [px(i, float(y)) for i, y in enumerate(v) if math.isfinite(float(y))]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts if len(pts) <= 30 else []:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        d.line([left + 10, top + 10 + 14 * c, left + 30, top + 10 + 14 * c], fill=colour, width=2)
        d.text((left + 35, top + 4 + 14 * c), label, fill="black")
    d.text((left, 8), title, fill="black")
    d.text(((w - len(xlabel) * 6) / 2, h - 16), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    img.save(path)


def _save_strip(path: Path, frames: Sequence[np.ndarray], labels: Sequence[str], rows: int = 1) -> None:
    """Frames uint8 [H, W, 3] side by side (``rows`` rows), each with a label above."""
    from PIL import Image, ImageDraw

    h, w = frames[0].shape[:2]
    cols = math.ceil(len(frames) / rows)
    scale = max(1, 128 // h)
    img = Image.new("RGB", (cols * (w * scale + 4), rows * (h * scale + 16)), "white")
    d = ImageDraw.Draw(img)
    for i, (f, label) in enumerate(zip(frames, labels)):
        r, c = divmod(i, cols)
        x, y = c * (w * scale + 4), r * (h * scale + 16)
        img.paste(Image.fromarray(f).resize((w * scale, h * scale), Image.NEAREST), (x, y + 14))
        d.text((x + 2, y + 1), label, fill="black")
    img.save(path)


def _save_fidelity_strip(wm: WorldModel, ep: SimEpisode, path: Path, seed: int) -> None:
    """Simulator (top) and model (bottom) frames of the first chunk of one episode."""
    gen = StreamingGenerator(wm)
    t = gen.first_chunk_frames
    g = generate_videos(wm, ep.frames[:1], [ep.prompt], ep.keyboard[None, :t], ep.mouse[None, :t], seeds=[seed])
    picks = np.linspace(0, t - 1, 6).round().astype(int)
    frames = [ep.frames[i] for i in picks] + [g.frames[0, i] for i in picks]
    labels = [f"sim {i}" for i in picks] + [f"model {i}" for i in picks]
    _save_strip(path, frames, labels, rows=2)


def format_table(metrics: dict[str, Any]) -> str:
    """The targets as a text table: name, value, target, met, and the reference of a perfect model
    measured with the same instrument (:data:`REFERENCES`) where there is one."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [("measure", "value", "target", "met", "reference")]
    for k, t in metrics.get("targets", {}).items():
        met = "-" if t["met"] is None else "yes" if t["met"] else "no"
        rows.append((k, fmt(t["value"]), t["target"], met, fmt(t.get("reference"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
