"""Training data in RAM: uint8 frames with per-frame actions and poses, grouped into episodes.

Decoding mp4 inside a training loop starves a GPU, so a dataset (the data engine's LeRobot-layout
output, see :mod:`world_model.data`) is decoded once into a :class:`FrameStore` — plain arrays,
saved as ``.npy`` files and memory-mapped back. Per frame i: ``frames[i]`` [H, W, 3] uint8,
``mouse[i]`` [2], ``keyboard[i]`` [6] (the action taken at frame i, spec §4.1), ``poses[i]`` [5]
(x, y, z, pitch, yaw). Episode e spans frames ``starts[e] : starts[e + 1]``. Optionally ``depth[i]`` [g_h, g_w]
float16: frame i's inverse depth on a coarse grid (:func:`inverse_depth_map`; the flow stages' depth auxiliary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FrameStore", "synthetic_store", "segment_starts", "mirrored_actions", "inverse_depth_map"]

_ARRAYS = ("frames", "mouse", "keyboard", "poses", "starts")

# inverse depth as the depth auxiliary learns it: INVERSE_DEPTH_SCALE / max(depth, INVERSE_DEPTH_NEAR), depth in map
# units (DoomEngine.depth). A strafe of s units moves a point at depth d across the view by ~s/d of its half-width:
# the parallax a strafe shows is linear in the inverse depth. 64 units (the player's width x 2) maps a wall at arm's
# length (32 units, the near clamp) to 2 and a room's far wall (~500) to ~0.13
INVERSE_DEPTH_SCALE = 64.0
INVERSE_DEPTH_NEAR = 32.0


def inverse_depth_map(depth: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Depth [..., H, W] in map units -> inverse depth [..., g_h, g_w] float16: the mean over each cell of the grid
    (H and W multiples of it) of ``INVERSE_DEPTH_SCALE / max(depth, INVERSE_DEPTH_NEAR)``."""
    gh, gw = grid
    h, w = depth.shape[-2:]
    if gh < 1 or gw < 1 or h % gh or w % gw:
        raise ValueError(f"a depth map of {h}x{w} does not divide into a grid of {gh}x{gw}")
    inv = INVERSE_DEPTH_SCALE / np.maximum(np.asarray(depth, np.float32), INVERSE_DEPTH_NEAR)
    cells = inv.reshape(*inv.shape[:-2], gh, h // gh, gw, w // gw)
    return cells.mean(axis=(-3, -1)).astype(np.float16)


@dataclass
class FrameStore:
    """Episodes of frames, actions and poses as contiguous arrays (see module docstring)."""

    frames: np.ndarray  # [N, H, W, 3] uint8
    mouse: np.ndarray  # [N, 2] float32
    keyboard: np.ndarray  # [N, 6] float32
    poses: np.ndarray  # [N, 5] float32
    starts: np.ndarray  # [E + 1] int64, episode e = starts[e]:starts[e+1]
    prompts: list[str] = field(default_factory=list)  # [E]
    levels: list[str] = field(default_factory=list)  # [E] level/map id (for held-out splits)
    fps: float = 16.0
    depth: np.ndarray | None = None  # [N, g_h, g_w] float16 inverse depth (inverse_depth_map), or None

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"expected frames [N, H, W, 3] uint8, got {self.frames.shape} {self.frames.dtype}")
        for name, width in (("mouse", 2), ("keyboard", 6), ("poses", 5)):
            a = getattr(self, name)
            if a.shape != (n, width):
                raise ValueError(f"expected {name} [{n}, {width}], got {tuple(a.shape)}")
        s = self.starts
        if s.ndim != 1 or len(s) < 1 or s[0] != 0 or s[-1] != n or np.any(np.diff(s) <= 0):
            raise ValueError(f"starts must rise from 0 to {n} (one entry per episode + 1), got {s[:8]}...")
        e = len(s) - 1
        if not self.prompts:
            self.prompts = [""] * e
        if not self.levels:
            self.levels = ["?"] * e
        if len(self.prompts) != e or len(self.levels) != e:
            raise ValueError(f"expected {e} prompts and levels, got {len(self.prompts)} and {len(self.levels)}")
        if self.depth is not None and (self.depth.ndim != 3 or len(self.depth) != n):
            raise ValueError(f"expected depth [{n}, g_h, g_w], got {tuple(self.depth.shape)}")

    @property
    def num_episodes(self) -> int:
        return len(self.starts) - 1

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def episode(self, e: int) -> slice:
        return slice(int(self.starts[e]), int(self.starts[e + 1]))

    def select(self, episodes: list[int]) -> FrameStore:
        """A new store holding only ``episodes`` (copies the arrays)."""
        sl = [self.episode(e) for e in episodes]
        lens = [s.stop - s.start for s in sl]
        cat = lambda a: np.concatenate([a[s] for s in sl]) if sl else a[:0]  # noqa: E731
        return FrameStore(
            frames=cat(self.frames),
            mouse=cat(self.mouse),
            keyboard=cat(self.keyboard),
            poses=cat(self.poses),
            starts=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            prompts=[self.prompts[e] for e in episodes],
            levels=[self.levels[e] for e in episodes],
            fps=self.fps,
            depth=None if self.depth is None else cat(self.depth),
        )

    @classmethod
    def concat(cls, stores: list[FrameStore]) -> FrameStore:
        """One store holding the episodes of ``stores`` in order (copies the arrays)."""
        if not stores:
            raise ValueError("no stores to concatenate")
        lens = np.concatenate([np.diff(s.starts) for s in stores])
        cat = lambda name: np.concatenate([getattr(s, name) for s in stores])  # noqa: E731
        with_depth = {s.depth is not None for s in stores}
        if len(with_depth) > 1:
            raise ValueError("some of the stores to concatenate have depth maps and some have none")
        return cls(
            frames=cat("frames"),
            mouse=cat("mouse"),
            keyboard=cat("keyboard"),
            poses=cat("poses"),
            starts=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            prompts=[p for s in stores for p in s.prompts],
            levels=[lv for s in stores for lv in s.levels],
            fps=stores[0].fps,
            depth=cat("depth") if with_depth == {True} else None,
        )

    def split(self, held_out_levels: set[str]) -> tuple[FrameStore, FrameStore]:
        """(train, held-out) by level id."""
        held = [e for e in range(self.num_episodes) if self.levels[e] in held_out_levels]
        train = [e for e in range(self.num_episodes) if self.levels[e] not in held_out_levels]
        return self.select(train), self.select(held)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
        if self.depth is not None:
            np.save(folder / "depth.npy", np.ascontiguousarray(self.depth))
        meta = {"prompts": self.prompts, "levels": self.levels, "fps": self.fps}
        (folder / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = True) -> FrameStore:
        folder = Path(folder)
        missing = [n for n in (*_ARRAYS, "meta") if not list(folder.glob(f"{n}.*"))]
        if missing:
            raise FileNotFoundError(f"{folder} is not a FrameStore folder: missing {missing}")
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap and n == "frames" else None) for n in _ARRAYS}
        meta = json.loads((folder / "meta.json").read_text())
        depth = (
            np.load(folder / "depth.npy", mmap_mode="r" if mmap else None) if (folder / "depth.npy").exists() else None
        )
        return cls(**arrays, prompts=meta["prompts"], levels=meta["levels"], fps=meta["fps"], depth=depth)

    @classmethod
    def from_dataset(cls, root: str | Path, *, episodes: list[int] | None = None) -> FrameStore:
        """Decode a dataset written by the data engine / recorder (``world_model.data.format``) once."""
        from world_model.data.format import DatasetReader

        reader = DatasetReader(root)
        idx = list(range(len(reader))) if episodes is None else list(episodes)
        n = sum(reader.episodes[e].length for e in idx)
        frames = np.empty((n, reader.height, reader.width, 3), np.uint8)  # filled episode by episode
        mouse, keyboard, poses, starts, prompts, levels = [], [], [], [0], [], []
        for e in idx:
            ep = reader.load_episode(e)
            a = starts[-1]
            frames[a : a + len(ep)] = ep.frames
            mouse.append(ep.mouse)
            keyboard.append(ep.keyboard)
            poses.append(ep.poses)
            starts.append(a + len(ep))
            prompts.append(ep.prompt)
            levels.append(ep.info.level)
        empty = lambda k: np.zeros((0, k), np.float32)  # noqa: E731
        return cls(
            frames=frames,
            mouse=np.concatenate(mouse) if mouse else empty(2),
            keyboard=np.concatenate(keyboard) if keyboard else empty(6),
            poses=np.concatenate(poses) if poses else empty(5),
            starts=np.asarray(starts, np.int64),
            prompts=prompts,
            levels=levels,
            fps=reader.fps,
        )


def segment_starts(store: FrameStore, segment_frames: int, stride: int | None = None) -> np.ndarray:
    """Start frames of all windows of ``segment_frames`` frames inside single episodes.

    ``stride`` defaults to ``segment_frames`` (disjoint segments). Returns [S] int64.
    """
    stride = stride or segment_frames
    out = []
    for e in range(store.num_episodes):
        sl = store.episode(e)
        out.extend(range(sl.start, sl.stop - segment_frames + 1, stride))
    return np.asarray(out, dtype=np.int64)


def mirrored_actions(
    mouse: np.ndarray, keyboard: np.ndarray, poses: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The actions and poses of frames seen in a left-right mirror (the frames flipped along their width).

    The mirror is the world's reflection through its x-z plane: a yaw turn and the yaw angle change sign, the
    strafe keys (left, right: keyboard columns 2 and 3) swap, the lateral coordinate y changes sign; pitch, the
    forward/back keys, x and z stay. So the camera's path in the mirrored world is the one the flipped frames
    show, and integrating the mirrored actions from the mirrored start pose gives the mirrored poses
    (``world_model.camera``'s recurrence is symmetric under it). Arrays [N, 2], [N, 6], [N, 5]; new arrays.
    """
    if mouse.shape[-1] != 2 or keyboard.shape[-1] < 4 or poses.shape[-1] != 5:
        raise ValueError(
            f"expected mouse [N, 2], keyboard [N, >=4], poses [N, 5], got {mouse.shape}, {keyboard.shape}, {poses.shape}"
        )
    mouse = mouse.copy()
    mouse[..., 1] = -mouse[..., 1]
    keyboard = keyboard.copy()
    keyboard[..., [2, 3]] = keyboard[..., [3, 2]]
    poses = poses.copy()
    poses[..., 1] = -poses[..., 1]
    poses[..., 4] = -poses[..., 4]
    return mouse, keyboard, poses


def _integrate(mouse: np.ndarray, keyboard: np.ndarray, speed: float, deg_per_unit: float) -> np.ndarray:
    """Poses [N, 5] from per-frame actions (pose i+1 from action i; simplified spec §5.1)."""
    n = len(mouse)
    poses = np.zeros((n, 5), np.float32)
    for i in range(n - 1):
        x, y, z, pitch, yaw = poses[i]
        pitch2 = float(np.clip(pitch + deg_per_unit * mouse[i, 0], -30, 30))
        yaw2 = yaw + deg_per_unit * mouse[i, 1]
        fwd = speed * (keyboard[i, 0] - keyboard[i, 1])
        right = speed * (keyboard[i, 3] - keyboard[i, 2])
        ym = np.deg2rad(0.5 * (yaw + yaw2))
        poses[i + 1] = (
            x + np.cos(ym) * fwd - np.sin(ym) * right,
            y + np.sin(ym) * fwd + np.cos(ym) * right,
            z,
            pitch2,
            (yaw2 + 180.0) % 360.0 - 180.0,
        )
    return poses


def synthetic_store(
    num_episodes: int = 2,
    frames_per_episode: int = 29,
    size: tuple[int, int] = (32, 32),
    *,
    seed: int = 0,
    levels: list[str] | None = None,
    depth_grid: tuple[int, int] | None = None,
) -> FrameStore:
    """A tiny action-dependent fake world for tests: a periodic texture that pans with yaw/pitch and
    slides with movement; actions are held for 4 frames at a time (the data engine's real data is
    read through :meth:`FrameStore.from_dataset`). ``depth_grid``: also a depth per texel of the texture, moving
    with it, as inverse depth maps on that grid (:func:`inverse_depth_map`)."""
    rng = np.random.default_rng(seed)
    h, w = size
    tex = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))  # [64, 64, 3] blocky texture
    depths = []
    if depth_grid is not None:  # a generator of its own: the frames and actions stay those of a store without depth
        texel_depth = np.random.default_rng([seed, 1]).uniform(40.0, 500.0, size=(8, 8)).astype(np.float32)
        depth_tex = np.kron(texel_depth, np.ones((8, 8), np.float32))
    th, tw = tex.shape[:2]
    frames, mouse, keyboard, poses, starts = [], [], [], [], [0]
    for _ in range(num_episodes):
        n = frames_per_episode
        k = np.zeros((n, 6), np.float32)
        m = np.zeros((n, 2), np.float32)
        for i in range(0, n, 4):
            k[i : i + 4, rng.integers(0, 4)] = float(rng.random() < 0.7)
            m[i : i + 4] = rng.choice([-0.1, 0.0, 0.1], size=2)
        p = _integrate(m, k, speed=4.0, deg_per_unit=15.0)
        ys = (np.arange(h)[None, :] + np.round(p[:, 3:4] * 0.5 + p[:, 1:2] * 0.2).astype(int)) % th  # [n, h]
        xs = (np.arange(w)[None, :] + np.round(p[:, 4:5] * 1.0 + p[:, 0:1] * 0.2).astype(int)) % tw  # [n, w]
        frames.append(tex[ys[:, :, None], xs[:, None, :]])  # [n, h, w, 3]
        if depth_grid is not None:
            depths.append(inverse_depth_map(depth_tex[ys[:, :, None], xs[:, None, :]], depth_grid))
        mouse.append(m)
        keyboard.append(k)
        poses.append(p)
        starts.append(starts[-1] + n)
    e = num_episodes
    return FrameStore(
        frames=np.concatenate(frames),
        mouse=np.concatenate(mouse),
        keyboard=np.concatenate(keyboard),
        poses=np.concatenate(poses),
        starts=np.asarray(starts, np.int64),
        prompts=["a first-person walk through a textured corridor"] * e,
        levels=levels or [f"level{i % 3}" for i in range(e)],
        depth=np.concatenate(depths) if depth_grid is not None else None,
    )
