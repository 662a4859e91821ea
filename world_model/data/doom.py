"""ViZDoom/Freedoom as a ground-truth simulator: frames with exact camera poses, in the package convention.

Conversion from Doom to the package (spec §5.1: left-handed world, X forward, Y right, Z up; yaw in
degrees, positive = right turn; positive pitch tilts the optical axis down):

- position: (x, y, z)_pkg = (X, -Y, Z) of ``CAMERA_POSITION_*`` (the eye, in Doom map units);
- yaw_pkg = -``CAMERA_ANGLE`` wrapped to [-180, 180) (Doom's angle is counter-clockwise);
- pitch_pkg = ``CAMERA_PITCH`` (Doom's pitch is positive when looking down).

View bob is off (``movebob 0``), so the eye height is exact. ViZDoom's software renderer draws pitch
by y-shearing; the recorded pitch is the true view pitch, the image is its sheared approximation.
One frame = ``tics_per_frame`` game tics (2 tics = 17.5 fps; Doom runs 35 tics/s).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from world_model.data.levels import Level
from world_model.data.poses import wrap_degrees

if TYPE_CHECKING:
    from world_model.data.spawn import LevelGeometry

__all__ = [
    "DoomConfig",
    "Command",
    "DoomEngine",
    "doom_to_pose",
    "describe_look",
    "DOOM_TIC_RATE",
    "DEPTH_UNIT",
    "SPAWNS",
    "level_geometry",
]

DOOM_TIC_RATE = 35
SPAWNS = ("start", "anywhere")
# map units per step of ViZDoom's 8-bit depth buffer (measured: walking straight at a wall, the buffer's value falls
# one step per 7.1-7.4 units of the walk; tests/test_depth_oracle.py checks it)
DEPTH_UNIT = 7.2
WARMUP_TICS = 8  # ViZDoom ignores input for the first ~7 tics of an episode
# 4:3 render modes (horizontal FOV 90 deg with square pixels); other aspects are centre crops of these
_NATIVE_4X3 = ((160, 120), (200, 150), (256, 192), (320, 240), (400, 300), (512, 384), (640, 480), (800, 600),
               (1024, 768), (1280, 960), (1400, 1050), (1600, 1200))  # fmt: skip


def _vizdoom():
    try:
        import vizdoom
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the data engine needs ViZDoom: pip install 'mg3[vizdoom]' (or pip install vizdoom)") from e
    return vizdoom


@dataclass(frozen=True)
class DoomConfig:
    """Rendering and timing of the engine."""

    width: int = 160
    height: int = 120
    tics_per_frame: int = 2
    god_mode: bool = True  # damaging floors and crushers do not end episodes
    allow_use: bool = True  # the USE key exists (opens doors); not part of the MG3 action
    # where an episode begins: "start" (the level's start spot) or "anywhere" (a point drawn uniformly over the
    # level's floor and a random heading, from the episode's seed: world_model.data.spawn)
    spawn: str = "start"
    # also render the depth buffer (DoomEngine.depth: distance along the view in map units, per pixel of the frames)
    depth: bool = False

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"resolution must be positive and even (H.264), got {self.width}x{self.height}")
        if self.tics_per_frame < 1:
            raise ValueError(f"tics_per_frame must be >= 1, got {self.tics_per_frame}")
        if self.spawn not in SPAWNS:
            raise ValueError(f"spawn must be one of {SPAWNS}, got {self.spawn!r}")
        _native_mode(self.width, self.height)  # raises when too large

    @property
    def fps(self) -> float:
        return DOOM_TIC_RATE / self.tics_per_frame

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the output frames: 90 deg horizontal FOV at the 4:3 render
        mode, then centre crop and resize."""
        nw, _, cw, ch = _native_mode(self.width, self.height)
        f = nw / 2.0
        return f * self.width / cw, f * self.height / ch, self.width / 2, self.height / 2


@dataclass(frozen=True)
class Command:
    """One frame of input: keys W/S/A/D, yaw change (deg, + right), pitch change (deg, + down), USE."""

    forward: bool = False
    back: bool = False
    left: bool = False
    right: bool = False
    yaw: float = 0.0
    pitch: float = 0.0
    use: bool = False

    def keyboard(self) -> np.ndarray:
        """The MG3 keyboard multi-hot [6] (0 W, 1 S, 2 A, 3 D, 4-5 unused)."""
        return np.array([self.forward, self.back, self.left, self.right, 0, 0], np.float32)


def _native_mode(width: int, height: int) -> tuple[int, int, int, int]:
    """The smallest 4:3 mode whose centre crop of aspect width/height covers width x height.

    Returns (native_w, native_h, crop_w, crop_h)."""
    aspect = width / height
    for nw, nh in _NATIVE_4X3:
        cw, ch = (nw, round(nw / aspect)) if aspect >= 4 / 3 else (round(nh * aspect), nh)
        if cw >= width and ch >= height:
            return nw, nh, cw, ch
    raise ValueError(f"resolution {width}x{height} exceeds the largest 4:3 render mode (1600x1200)")


def doom_to_pose(x: float, y: float, z: float, angle: float, pitch: float) -> np.ndarray:
    """Doom camera readings -> pose (x, y, z, pitch, yaw) [5] float64 in the package convention."""
    return np.array([x, -y, z, pitch, float(wrap_degrees(-angle))])


def describe_look(frame: np.ndarray) -> str:
    """A short description of a frame's brightness and dominant colours (for level prompts)."""
    rgb = np.asarray(frame, np.float64).reshape(-1, 3) / 255.0
    mx, mn = rgb.max(1), rgb.min(1)
    value = float(mx.mean())
    light = "very dark" if value < 0.15 else "dark" if value < 0.3 else "dimly lit" if value < 0.45 else "bright"
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    d = np.maximum(mx - mn, 1e-9)
    r, g, b = rgb.T
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    names = []
    grey = sat < 0.2
    if grey.mean() > 0.35:
        names.append("grey")
    bins = {"red": (345, 15), "brown": (15, 45), "yellow": (45, 70), "green": (70, 170), "blue": (170, 260)}
    counts = {}
    for name, (lo, hi) in bins.items():
        sel = (hue >= lo) | (hue < hi) if lo > hi else (hue >= lo) & (hue < hi)
        counts[name] = float((sel & ~grey).mean())
    for name, c in sorted(counts.items(), key=lambda kv: -kv[1]):
        if c > 0.15 and len(names) < 2:
            names.append(name)
    colours = " and ".join(names) if names else "muted"
    return f"A {light} place of {colours} walls and floors, seen from eye height without weapon or HUD."


@functools.lru_cache(maxsize=128)
def level_geometry(level: Level) -> LevelGeometry:
    """The sectors' outlines of ``level`` (world_model.data.spawn), read from its WAD's map lumps once per process
    (~2 ms). Not from a game that reports sectors: it builds them into every state, which makes each frame ~8x slower
    (MAP15: 2.4 against 0.31 ms), and ViZDoom cannot turn the report off after ``init``."""
    from world_model.data.spawn import LevelGeometry

    if level.generated is not None:
        from world_model.data.procgen import generate_map

        return generate_map(level.generated).geometry
    vzd = _vizdoom()
    return LevelGeometry.from_wad(os.path.join(os.path.dirname(vzd.__file__), level.wad), level.map)


class DoomEngine:
    """One ViZDoom game on one level. ``reset()`` starts an episode; ``step(command)`` advances one frame.

    Frames are uint8 [H, W, 3] RGB at ``cfg.width x cfg.height``; poses are float64 [5] (see module doc).
    ``workdir`` holds ViZDoom's ``_vizdoom.ini`` (a temp folder by default, never the cwd).
    """

    def __init__(
        self, level: Level, cfg: DoomConfig = DoomConfig(), *, seed: int = 0, workdir: str | Path | None = None
    ):
        vzd = _vizdoom()
        self.level, self.cfg = level, cfg
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mg3-vizdoom-")
            workdir = self._tmp.name
        nw, nh, self._crop_w, self._crop_h = _native_mode(cfg.width, cfg.height)
        self._native = (nw, nh)
        game = vzd.DoomGame()
        game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), level.wad))
        if level.generated is not None:  # its map, written as a PWAD next to ViZDoom's ini (world_model.data.procgen)
            from world_model.data.procgen import generate_map

            wad = generate_map(level.generated).write_wad(Path(workdir) / f"generated-{level.generated}.wad")
            game.set_doom_scenario_path(str(wad))
        if level.retexture is not None:  # its map with new looks, a PWAD on its own IWAD (world_model.data.retexture)
            from world_model.data.retexture import retextured_wad

            wad = Path(workdir) / f"retextured-{level.retexture}-{level.map}.wad"
            wad.write_bytes(retextured_wad(level.wad, level.map, level.retexture))
            game.set_doom_scenario_path(str(wad))
        game.set_doom_map(level.map)
        game.set_doom_config_path(str(Path(workdir) / "_vizdoom.ini"))
        game.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{nw}X{nh}"))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_depth_buffer_enabled(cfg.depth)
        for setter in ("hud", "minimal_hud", "weapon", "crosshair", "messages", "particles", "effects_sprites"):
            getattr(game, f"set_render_{setter}")(False)
        game.set_render_screen_flashes(False)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        # cl_showsecretmessage 0: entering a secret sector would print "A SECRET IS REVEALED!" across the frames for
        # seconds (a mid-screen print, which set_render_messages does not hide)
        game.add_game_args("-nomonsters +freelook 1 +movebob 0 +stillbob 0 +sv_cheats 1 +cl_showsecretmessage 0")
        buttons = [vzd.Button.MOVE_FORWARD, vzd.Button.MOVE_BACKWARD, vzd.Button.MOVE_LEFT, vzd.Button.MOVE_RIGHT]
        buttons += [vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.LOOK_UP_DOWN_DELTA]
        if cfg.allow_use:
            buttons.append(vzd.Button.USE)
        game.set_available_buttons(buttons)
        gv = vzd.GameVariable
        self._vars = [
            gv.CAMERA_POSITION_X,
            gv.CAMERA_POSITION_Y,
            gv.CAMERA_POSITION_Z,
            gv.CAMERA_ANGLE,
            gv.CAMERA_PITCH,
        ]
        game.set_available_game_variables(self._vars)
        game.set_episode_timeout(0)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_seed(int(seed) % (2**31))
        game.init()
        self.game = game
        self._pose = np.zeros(5)
        self._seed = int(seed)

    @property
    def fps(self) -> float:
        return self.cfg.fps

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the output frames (90 deg horizontal FOV at the native 4:3 mode)."""
        return self.cfg.intrinsics()

    def doom_readings(self) -> dict[str, float]:
        """ViZDoom's own camera readings (Doom convention), for checks."""
        names = ("x", "y", "z", "angle", "pitch")
        return {n: float(self.game.get_game_variable(v)) for n, v in zip(names, self._vars)}

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start a new episode at the level's start (or, with ``cfg.spawn == "anywhere"``, at a point and heading
        drawn from the seed); returns (frame [H, W, 3], pose [5])."""
        if seed is not None:
            self._seed = int(seed)
            self.game.set_seed(int(seed) % (2**31))
        self.game.new_episode()
        if self.cfg.god_mode:
            self.game.send_game_command("god")
        self.game.make_action(self._action(Command()), WARMUP_TICS)
        if self.cfg.spawn == "anywhere":
            self._spawn_anywhere()
        frame, pose = self._observe()
        if frame is None:
            raise RuntimeError(f"{self.level.name}: the episode ended during warm-up")
        return frame, pose

    def _spawn_anywhere(self) -> None:
        """Warp to a spawn point of the level and turn to a random heading (both from the episode's seed)."""
        rng = np.random.default_rng([self._seed % (2**63), 0x59A3])
        point = level_geometry(self.level).sample(rng)
        if point is None:
            raise RuntimeError(f"{self.level.name}: no spawn point found on the level's floor")
        x, y = point
        self.game.send_game_command(f"warp {x:.3f} {y:.3f}")
        heading = float(rng.uniform(-180.0, 180.0))
        self.game.make_action(self._action(Command(yaw=heading), per_tic=1.0), 1)  # the warp and the turn, one tic
        self.game.make_action(self._action(Command()), 1)  # a tic at rest, as the start spot's warm-up ends
        r = self.doom_readings()
        if abs(r["x"] - x) > 1.0 or abs(r["y"] - y) > 1.0:
            raise RuntimeError(
                f"{self.level.name}: the warp to ({x:.1f}, {y:.1f}) landed at ({r['x']:.1f}, {r['y']:.1f})"
            )

    def step(self, command: Command) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
        """Apply ``command`` for one frame; returns (frame, pose, finished). When the level ends
        (e.g. an exit was used) frame and pose are None and finished is True."""
        t = self.cfg.tics_per_frame
        self.game.make_action(self._action(command, per_tic=1.0 / t), t)
        if self.game.is_episode_finished():
            return None, None, True
        frame, pose = self._observe()
        return frame, pose, frame is None

    def depth(self) -> np.ndarray:
        """The current frame's depth, float32 [H, W] in map units (``cfg.depth`` must be on): the distance along the
        horizontal view direction of what each pixel shows (Doom's renderer draws walls by it), in steps of
        :data:`DEPTH_UNIT`, cropped and resized as the frames are (nearest: no depth between two surfaces)."""
        if not self.cfg.depth:
            raise RuntimeError("the depth buffer is off: DoomConfig(depth=True) renders it")
        state = self.game.get_state()
        if state is None:
            raise RuntimeError("no current frame (the episode has ended)")
        d = self._crop(state.depth_buffer)
        if d.shape != (self.cfg.height, self.cfg.width):
            rows = (np.arange(self.cfg.height) + 0.5) * d.shape[0] / self.cfg.height
            cols = (np.arange(self.cfg.width) + 0.5) * d.shape[1] / self.cfg.width
            d = d[rows.astype(int)[:, None], cols.astype(int)[None, :]]
        return d.astype(np.float32) * DEPTH_UNIT

    def close(self) -> None:
        self.game.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> DoomEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _action(self, c: Command, per_tic: float = 0.0) -> list[float]:
        # TURN_LEFT_RIGHT_DELTA > 0 turns right; LOOK_UP_DOWN_DELTA > 0 looks up (Doom pitch decreases).
        action = [float(c.forward), float(c.back), float(c.left), float(c.right), c.yaw * per_tic, -c.pitch * per_tic]
        if self.cfg.allow_use:
            action.append(float(c.use))
        return action

    def _observe(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        state = self.game.get_state()
        if state is None:
            return None, None
        r = self.doom_readings()
        pose = doom_to_pose(r["x"], r["y"], r["z"], r["angle"], r["pitch"])
        return self._frame(state.screen_buffer), pose

    def _crop(self, screen: np.ndarray) -> np.ndarray:
        nh, nw = screen.shape[:2]
        top, left = (nh - self._crop_h) // 2, (nw - self._crop_w) // 2
        return screen[top : top + self._crop_h, left : left + self._crop_w]

    def _frame(self, screen: np.ndarray) -> np.ndarray:
        crop = self._crop(screen)
        if crop.shape[:2] == (self.cfg.height, self.cfg.width):
            return np.ascontiguousarray(crop)
        from PIL import Image

        return np.asarray(Image.fromarray(crop).resize((self.cfg.width, self.cfg.height), Image.BILINEAR))
