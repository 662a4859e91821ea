"""The inverse-dynamics model (IDM): motion classes measured from poses, simulator frames played with
blocks of constant commands, a small classifier of frame stacks, its training and prediction.

Keyboard classes: none, forward, back, left, right (strafes); yaw classes: none, left, right.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mg3_eval.metrics import luma
from mg3_eval.rollout import vae_length, vae_roundtrip
from mg3_eval.simulator import doom_config_for
from world_model.config import WorldModelConfig
from world_model.model import WorldModel

__all__ = [
    "SHIPPED_IDM",
    "KEYBOARD_CLASSES",
    "MOUSE_CLASSES",
    "motion_labels",
    "command_actions",
    "idm_frames",
    "InverseDynamics",
    "IDMData",
    "collect_idm_data",
    "play_block",
    "train_idm",
    "idm_predict",
    "accuracy",
    "confusion",
    "idm_scores",
    "data_info",
    "idm_view",
    "check_idm_file",
]

# the IDM the control part reads the model's video with by default: trained on simulator frames of the train levels
# (``python -m mg3_eval.idm_build``; its recipe and held-out scores in the file's metadata, InverseDynamics.info)
SHIPPED_IDM = Path(__file__).with_name("assets") / "idm.safetensors"


KEYBOARD_CLASSES = ("none", "forward", "back", "left", "right")
MOUSE_CLASSES = ("none", "yaw_left", "yaw_right")
_KEY_INDEX = {"forward": 0, "back": 1, "left": 2, "right": 3}  # W S A D in the MG3 keyboard vector


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

    def save(self, path: str | Path, info: dict | None = None) -> None:
        """Its weights as safetensors, with its window, width and frame size in the metadata (:meth:`load`) and
        ``info`` (JSON: how it was trained, what it scored; :meth:`info`)."""
        from safetensors.torch import save_file

        meta = {"window": str(self.window), "width": str(self.features[0].out_channels), "size": str(self.size)}
        if info is not None:
            meta["info"] = json.dumps(info)
        save_file(self.state_dict(), str(path), metadata=meta)

    @staticmethod
    def info(path: str | Path) -> dict:
        """The ``info`` an IDM file was saved with (empty for files saved without)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("info", "{}"))

    @staticmethod
    def saved_size(path: str | Path) -> int:
        """The frame size an IDM file was trained on (64 for files written before the size was recorded)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("size", 64))

    @classmethod
    def load(cls, path: str | Path) -> InverseDynamics:
        """An IDM saved by :meth:`save` (files without metadata: the defaults they were trained with), in eval mode."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        net = cls(int(meta.get("window", 5)), int(meta.get("width", 32)), int(meta.get("size", 64)))
        net.load_state_dict(load_file(str(path)))
        return net.eval()

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


def play_block(engine, rng: np.random.Generator, blocked: bool, frames: list, poses: list) -> tuple[int, bool, bool]:
    """Play one block of :func:`_block_policy` (``blocked``: the last block's key was stopped, so turn in place) in
    ``engine``, appending its frames and poses; returns (its keyboard class, whether its key was stopped: under 2 map
    units a frame, whether the level ended on the way)."""
    from world_model.data.doom import Command

    k, m, rate, n = _block_policy(rng, blocked)
    kb = KEYBOARD_CLASSES[k]
    cmd = Command(
        forward=kb == "forward", back=kb == "back", left=kb == "left", right=kb == "right", yaw=(0.0, -rate, rate)[m]
    )
    start = len(poses)
    for _ in range(n):
        frame, pose, finished = engine.step(cmd)
        if finished:
            return k, False, True
        frames.append(frame)
        poses.append(pose)
    moved = np.linalg.norm(poses[-1][:2] - poses[start - 1][:2]) if len(poses) > start else 0.0
    return k, k != 0 and moved < 2.0 * n, False


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
    progress: bool = False,
) -> IDMData:
    """Simulator frames of ``split`` levels played with blocks of constant commands (every keyboard
    class x yaw class, random yaw rates and lengths), labelled by the measured motion. With
    ``vae_of``, each episode is cut to 1 + r*k frames and passed through that model's VAE
    (:func:`vae_roundtrip`). ``progress``: a bar of the frames collected."""
    from tqdm.auto import tqdm

    from world_model.data.doom import DoomEngine
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    doom = doom_config_for(cfg)
    rng = np.random.default_rng([seed, 17])
    clips = []
    total = 0
    e = 0
    desc = f"IDM frames ({split} levels{', through the VAE' if vae_of is not None else ''})"
    bar = tqdm(total=num_frames, unit="frame", desc=desc, disable=not progress)
    while total < num_frames:
        level = levels[int(rng.integers(len(levels)))]
        with DoomEngine(level, doom, seed=seed * 1000 + e) as engine:
            frame, pose = engine.reset()
            frames, poses = [frame], [pose]
            blocked = False
            while len(frames) < min(episode_frames, num_frames - total):
                _, blocked, finished = play_block(engine, rng, blocked, frames, poses)
                if finished:
                    break
        e += 1
        if len(frames) < window:
            continue
        poses_arr, frames_arr = np.stack(poses), np.stack(frames)
        if (np.linalg.norm(np.diff(poses_arr[:, :3], axis=0), axis=1) > 64).any():  # teleported: drop
            continue
        if vae_of is not None:
            n = vae_length(len(frames_arr), vae_of.config.vae.temporal_stride)
            if n < window:
                continue
            frames_arr, poses_arr = vae_roundtrip(vae_of, frames_arr[:n]), poses_arr[:n]
        kb_l, ms_l = motion_labels(poses_arr, window)
        clips.append((idm_frames(frames_arr, size), kb_l, ms_l))
        total += len(frames)
        bar.update(min(len(frames), bar.total - bar.n))
    bar.close()
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
    progress: bool = False,
) -> InverseDynamics:
    """Train the IDM (AdamW, cosine schedule, random horizontal mirroring with swapped labels); ``progress``: a bar
    of the steps."""
    from tqdm.auto import tqdm

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
    bar = tqdm(total=steps, unit="step", desc="IDM training", disable=not progress)
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
            bar.update()
    bar.close()
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


def idm_view(vae: bool) -> str:
    """What an IDM reads (its info's "view"): the simulator's own video, or that video through a model's VAE."""
    return "simulator video through the model's VAE" if vae else "simulator video"


def check_idm_file(path: str | Path, *, size: int, vae: bool) -> None:
    """Refuse an IDM file that reads other frames than a run's: another frame size, or another view (a file saved
    before its info was recorded has none: the caller's word). Reads the file's metadata only."""
    if (saved := InverseDynamics.saved_size(path)) != size:
        raise ValueError(f"the IDM at {path} sees {saved}-pixel frames: pass --idm-size {saved}")
    view = InverseDynamics.info(path).get("view")
    if view is not None and view != idm_view(vae):
        raise ValueError(f"the IDM at {path} was trained on {view}: {'drop' if vae else 'pass'} idm_vae")


def data_info(train: IDMData) -> dict[str, object]:
    """What an IDM was trained on, for its info: windows and the count of each class."""
    return {
        "train_windows": len(train),
        "train_levels": "train split",
        "train_keyboard_classes": np.bincount(train.keyboard, minlength=len(KEYBOARD_CLASSES)).tolist(),
        "train_mouse_classes": np.bincount(train.mouse, minlength=len(MOUSE_CLASSES)).tolist(),
    }


def idm_scores(net: InverseDynamics, data: IDMData) -> dict[str, object]:
    """Accuracy and confusion (rows: label, columns: prediction) of ``net`` on the labelled windows of ``data``."""
    pk, pm = idm_predict(net, data)
    return {
        "windows": len(data),
        "keyboard_accuracy": accuracy(pk, data.keyboard),
        "mouse_accuracy": accuracy(pm, data.mouse),
        "keyboard_confusion": confusion(pk, data.keyboard, len(KEYBOARD_CLASSES)),
        "mouse_confusion": confusion(pm, data.mouse, len(MOUSE_CLASSES)),
    }


def accuracy(pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    keep = label >= 0 if mask is None else (label >= 0) & mask
    return float((pred[keep] == label[keep]).mean()) if keep.any() else None


def confusion(pred: np.ndarray, label: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    keep = label >= 0
    np.add.at(m, (label[keep], pred[keep]), 1)
    return m.tolist()
