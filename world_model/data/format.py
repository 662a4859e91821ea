"""Datasets of (video, pose, action, prompt) in the LeRobot v3 layout: writer, reader, validation.

Layout (one data file and one video file per episode; ``info.json``'s templates say so)::

    meta/info.json                                  codebase_version "v3.0", fps, features, splits, ...
    meta/tasks.parquet                              prompts: index task (the prompt), column task_index
    meta/stats.json                                 per feature mean/std/min/max/count (videos per channel)
    meta/episodes/chunk-000/file-000.parquet        per-episode rows (1000 episodes per file)
    data/chunk-000/file-000.parquet                 per-frame rows of episode 0
    videos/observation.images.rgb/chunk-000/file-000.mp4   H.264 yuv420p video of episode 0

Per-frame columns: episode_index, frame_index, index, timestamp, task_index, ``action.keyboard`` [6]
(multi-hot: 0 W, 1 S, 2 A, 3 D, 4-5 unused), ``action.mouse`` [2] (pitch, yaw in release units of
``StreamConfig.degrees_per_mouse_unit`` degrees per frame), ``observation.state`` [5] (x, y, z, pitch,
yaw) and ``observation.c2w`` [16] (row-major 4x4, see :mod:`world_model.data.poses`).
The action of frame i moves the camera from pose i to pose i + 1 (spec §5.1).

LeRobot's own reader (``lerobot.datasets.LeRobotDataset``) reads these files as they are:
``tasks.parquet`` carries pandas' index metadata, so ``pd.read_parquet`` gives the prompt as the
index (``item["task"]`` is the prompt), and ``stats.json`` holds what its policies normalise with:
for each numeric per-frame feature, per dimension over every frame; for the video, per channel
([3, 1, 1], pixel values / 255) over every frame; ``count`` = frames. Both are updated on append.

Crash safety: an episode's files are written under temporary names, fsynced and renamed; the
episodes table is the source of truth and is replaced atomically after them; tasks, stats and
info.json are derived from it and rewritten last. A reader trusts the table: killed between the
table and info.json, the dataset reads as the table says (info.json's totals are taken from the
table), so at every instant a reader sees a consistent dataset. Re-opening a dataset deletes temporary and orphan files
and appends after the last complete episode.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from world_model.checkpoint import read_json_object
from world_model.checks import MAX_SEED, whole_or_none
from world_model.data.poses import c2w_from_poses
from world_model.data.video import VideoEncoder, check_encoding, decode_video

__all__ = [
    "CODEBASE_VERSION",
    "VIDEO_KEY",
    "DatasetError",
    "Episode",
    "EpisodeInfo",
    "DatasetWriter",
    "DatasetReader",
    "VideoStats",
    "validate_dataset",
]

CODEBASE_VERSION = "v3.0"
VIDEO_KEY = "observation.images.rgb"
CHUNK_SIZE = 1000  # files per chunk folder
EPISODES_PER_META_FILE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
INFO_PATH = "meta/info.json"
TMP_MARK = ".tmp"

KEYBOARD_NAMES = ["forward", "back", "left", "right", "unused_4", "unused_5"]
MOUSE_NAMES = ["pitch", "yaw"]
STATE_NAMES = ["x", "y", "z", "pitch", "yaw"]


class DatasetError(RuntimeError):
    """A dataset on disk is missing, corrupt or inconsistent; the message names the episode."""


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("datasets need pyarrow: pip install 'mg3[data]' (or pip install pyarrow)") from e
    return pa, pq


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of the episodes table."""

    index: int
    length: int
    prompt: str
    seed: int  # -1 when not known
    split: str
    level: str
    source: str
    dataset_from_index: int
    data_path: str  # relative to the dataset root
    video_path: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """A loaded episode. T frames of H x W."""

    info: EpisodeInfo
    frames: np.ndarray | None  # uint8 [T, H, W, 3]; None when loaded without video
    keyboard: np.ndarray  # float32 [T, 6]
    mouse: np.ndarray  # float32 [T, 2]
    poses: np.ndarray  # float32 [T, 5] (x, y, z, pitch, yaw)
    c2w: np.ndarray  # float32 [T, 4, 4]

    @property
    def prompt(self) -> str:
        return self.info.prompt

    def __len__(self) -> int:
        return self.info.length


def _episode_paths(episode_index: int) -> tuple[str, str, str]:
    chunk, file = divmod(episode_index, CHUNK_SIZE)
    meta_file = episode_index // EPISODES_PER_META_FILE
    return (
        DATA_PATH.format(chunk_index=chunk, file_index=file),
        VIDEO_PATH.format(video_key=VIDEO_KEY, chunk_index=chunk, file_index=file),
        EPISODES_PATH.format(chunk_index=meta_file // CHUNK_SIZE, file_index=meta_file % CHUNK_SIZE),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it to ``final`` and fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}-{os.getpid()}")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    _publish(tmp, path)


def _write_table_atomic(path: Path, table) -> None:
    _, pq = _pa()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    pq.write_table(table, tmp)
    _publish(tmp, path)


def _tasks_table(tasks: list[str]):
    """tasks.parquet as pandas (and so LeRobot's ``load_tasks``) reads it: the task string is the
    index (named ``task``), ``task_index`` the one column."""
    pa, _ = _pa()
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }  # fmt: skip
    schema = pa.schema(
        [("task_index", pa.int64()), ("task", pa.string())], metadata={"pandas": json.dumps(pandas_meta)}
    )
    return pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}, schema=schema
    )


def _frame_columns(
    arrays: dict[str, np.ndarray], index: int, start: int, fps: float, task_index: int
) -> dict[str, np.ndarray]:
    """The per-frame columns of one episode's data file (numeric, [T] or [T, K])."""
    t = len(arrays["poses"])
    frame_index = np.arange(t, dtype=np.int64)
    return {
        "episode_index": np.full(t, index, np.int64),
        "frame_index": frame_index,
        "index": start + frame_index,
        "timestamp": (frame_index / fps).astype(np.float32),
        "task_index": np.full(t, task_index, np.int64),
        "action.keyboard": np.asarray(arrays["keyboard"], np.float32),
        "action.mouse": np.asarray(arrays["mouse"], np.float32),
        "observation.state": np.asarray(arrays["poses"], np.float32),
        "observation.c2w": np.asarray(arrays["c2w"], np.float32).reshape(t, 16),
    }


class _RunningStats:
    """Per-dimension count, sum, sum of squares, min and max of a feature, merged episode by episode."""

    def __init__(self, n: int = 0, s1=None, s2=None, lo=None, hi=None) -> None:
        self.n, self.s1, self.s2, self.lo, self.hi = n, s1, s2, lo, hi

    def add(self, values: np.ndarray, axis: tuple[int, ...]) -> None:
        v = np.asarray(values, np.float64)
        n = int(np.prod([v.shape[a] for a in axis]))
        s1, s2 = v.sum(axis=axis), np.square(v).sum(axis=axis)
        lo, hi = v.min(axis=axis), v.max(axis=axis)
        self.merge(_RunningStats(n, s1, s2, lo, hi))

    def merge(self, other: _RunningStats) -> None:
        """Add the values ``other`` counted."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.s1, self.s2, self.lo, self.hi = other.n, other.s1, other.s2, other.lo, other.hi
            return
        self.n += other.n
        self.s1, self.s2 = self.s1 + other.s1, self.s2 + other.s2
        self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)

    def summary(self, frames: int, scale: float = 1.0, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        mean = self.s1 / self.n
        std = np.sqrt(np.maximum(self.s2 / self.n - mean**2, 0.0))
        out = {"mean": mean / scale, "std": std / scale, "min": self.lo / scale, "max": self.hi / scale}
        out = {k: (v.reshape(shape) if shape else np.atleast_1d(v)).tolist() for k, v in out.items()}
        out["count"] = [int(frames)]
        return out

    @classmethod
    def from_summary(cls, d: dict[str, Any], n: int, scale: float = 1.0) -> _RunningStats:
        mean, std = np.asarray(d["mean"], np.float64).ravel() * scale, np.asarray(d["std"], np.float64).ravel() * scale
        return cls(
            n, mean * n, (std**2 + mean**2) * n, np.asarray(d["min"], np.float64).ravel() * scale,
            np.asarray(d["max"], np.float64).ravel() * scale,
        )  # fmt: skip


class VideoStats(_RunningStats):
    """Per-channel count, sum, sum of squares, min and max of an episode's frames, accumulated as they
    are encoded: what :meth:`DatasetWriter.add_encoded_episode` otherwise decodes the video again for
    (the stats then come from the frames before H.264, as with :meth:`DatasetWriter.add_frames`)."""

    def add_frames(self, frames: np.ndarray) -> None:
        """Add uint8 frames [T, H, W, 3]: exact, from a 256-bin histogram per channel (7x faster than
        float64 sums: 0.25 s against 1.8 s for 1,000 frames of 128x128 here)."""
        v = np.asarray(frames)
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {v.dtype} {v.shape}")
        x = v.reshape(-1, 3)
        if len(x) == 0:
            return
        hist = np.stack([np.bincount(x[:, c], minlength=256) for c in range(3)]).astype(np.float64)  # [3, 256]
        levels = np.arange(256, dtype=np.float64)
        seen = hist > 0
        lo = np.argmax(seen, axis=1).astype(np.float64)
        hi = 255.0 - np.argmax(seen[:, ::-1], axis=1)
        self.merge(_RunningStats(len(x), hist @ levels, hist @ (levels * levels), lo, hi))


def _vector_column(values: np.ndarray):
    """float32 [T, K] -> a fixed-size-list column."""
    pa, _ = _pa()
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _check_array(name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"expected {name} of shape {list(shape)}, got {list(a.shape)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values")
    return a


def _check_action_values(keyboard: np.ndarray, mouse: np.ndarray) -> None:
    """The values the env takes (mg3_env.spaces): keys 0 or 1, mouse in [-1, 1] release units (15 degrees a frame),
    so that a dataset holds no action the env would refuse to replay."""
    if not np.isin(keyboard, (0, 1)).all():
        bad = np.asarray(keyboard)[~np.isin(keyboard, (0, 1))].ravel()[:3].tolist()
        raise ValueError(f"keyboard must be multi-hot with values 0 or 1, got values such as {bad}")
    if (np.abs(mouse) > 1.0).any():
        worst = float(np.asarray(mouse).ravel()[np.argmax(np.abs(mouse).ravel())])
        raise ValueError(f"mouse must lie in [-1, 1] (1 unit = 15 degrees a frame), got {worst}")


def _split_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> "0:3,5:7" (LeRobot's "start:end" split strings, several ranges)."""
    out, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}:{prev + 1}")
            start = prev = i
    if start is not None:
        out.append(f"{start}:{prev + 1}")
    return ",".join(out)


def _features(height: int, width: int, fps: float) -> dict[str, Any]:
    def vec(n: int, names: list[str] | None) -> dict[str, Any]:
        return {"dtype": "float32", "shape": [n], "names": names}

    scalar = {"shape": [1], "names": None}
    return {
        VIDEO_KEY: {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        },
        "action.keyboard": vec(6, KEYBOARD_NAMES),
        "action.mouse": vec(2, MOUSE_NAMES),
        "observation.state": vec(5, STATE_NAMES),
        "observation.c2w": vec(16, [f"m{r}{c}" for r in range(4) for c in range(4)]),
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
    }


def _read_episode_rows(root: Path) -> list[dict[str, Any]]:
    _, pq = _pa()
    rows: list[dict[str, Any]] = []
    for path in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        try:
            rows.extend(pq.read_table(path).to_pylist())
        except Exception as e:
            raise DatasetError(f"episodes table {path} cannot be read ({e}); the dataset index is damaged") from e
    rows.sort(key=lambda r: r["episode_index"])
    for expected, row in enumerate(rows):
        if row["episode_index"] != expected:
            raise DatasetError(
                f"episodes table: expected episode {expected}, found {row['episode_index']} (episodes missing)"
            )
    return rows


def _check_episode_meta(prompt: Any, seed: Any, split: Any, level: Any, extra_meta: Any) -> None:
    """An episode's metadata as the tables store it, checked before anything is written (a bad one failed inside
    pyarrow or json after the video was encoded)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"expected a non-empty prompt string, got {prompt!r}")
    whole_or_none(seed, "seed", 0, MAX_SEED, note="None: none recorded")
    for name, value in (("split", split), ("level", level)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    if extra_meta is not None:
        if not isinstance(extra_meta, dict):
            raise ValueError(f"extra_meta must be a dict, got {type(extra_meta).__name__}")
        try:
            json.dumps(extra_meta, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra_meta must hold JSON values (str, number, bool, None, lists, dicts): {e}") from None


def _read_info(path: Path) -> dict[str, Any]:
    """info.json, or a DatasetError naming it."""
    info = read_json_object(path, DatasetError, "the dataset's info file is damaged")
    missing = [k for k in ("codebase_version", "fps", "features", "total_episodes", "total_frames") if k not in info]
    if missing:
        raise DatasetError(f"{path} lacks {missing}; the dataset's info file is damaged")
    fps, total = info["fps"], (info["total_episodes"], info["total_frames"])
    video = info["features"].get(VIDEO_KEY) if isinstance(info["features"], dict) else None
    shape = video.get("shape") if isinstance(video, dict) else None
    wrong = [
        name
        for name, ok in (
            ("fps (a number > 0)", isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0),
            (
                "total_episodes / total_frames (ints)",
                all(isinstance(n, int) and not isinstance(n, bool) for n in total),
            ),
            (f"features[{VIDEO_KEY!r}].shape ([H, W, 3])", isinstance(shape, list) and len(shape) == 3),
        )
        if not ok
    ]
    if wrong:
        raise DatasetError(f"{path}: wrong or missing {', '.join(wrong)}; the dataset's info file is damaged")
    return info


def _info_from_row(row: dict[str, Any]) -> EpisodeInfo:
    tasks = row["tasks"]
    return EpisodeInfo(
        index=row["episode_index"],
        length=row["length"],
        prompt=tasks[0] if tasks else "",
        seed=row.get("seed", -1),
        split=row.get("split", "train"),
        level=row.get("level", ""),
        source=row.get("source", ""),
        dataset_from_index=row["dataset_from_index"],
        data_path=DATA_PATH.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]),
        video_path=VIDEO_PATH.format(
            video_key=VIDEO_KEY,
            chunk_index=row[f"videos/{VIDEO_KEY}/chunk_index"],
            file_index=row[f"videos/{VIDEO_KEY}/file_index"],
        ),
        extra=json.loads(row.get("extra_meta") or "{}"),
    )


class DatasetWriter:
    """Append episodes to a dataset folder (created if absent, re-opened and appended to if present).

    Either ``add_episode(...)`` with a whole episode, or ``begin_episode`` / ``add_frames`` (any number
    of times) / ``end_episode`` for recorders that produce a chunk at a time. One writer per folder
    (an advisory lock is held until ``close()``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        height: int,
        width: int,
        source: str = "mg3",
        robot_type: str | None = None,
        info_extra: dict[str, Any] | None = None,
        crf: int = 20,
        preset: str = "veryfast",
    ):
        check_encoding(fps, height, width, crf, preset)
        self.root = Path(root)
        self.fps, self.height, self.width = float(fps), int(height), int(width)
        self.source, self.robot_type = source, robot_type
        self.crf, self.preset = crf, preset
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "meta").mkdir(exist_ok=True)
        self._lock = open(self.root / "meta" / ".writer.lock", "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock.close()
            raise DatasetError(f"{self.root} is open in another DatasetWriter") from e
        self._info_extra = dict(info_extra or {})
        self._rows: list[dict[str, Any]] = []
        self._tasks: list[str] = []
        self._stats: dict[str, _RunningStats] = {}
        try:
            self._open_existing()
        except BaseException:
            fcntl.flock(self._lock, fcntl.LOCK_UN)  # a failed open holds nothing
            self._lock.close()
            raise
        self._current: dict[str, Any] | None = None

    # ---------------------------------------------------------------- opening / recovery
    def _open_existing(self) -> None:
        info_path = self.root / INFO_PATH
        for tmp in self.root.rglob(f"*{TMP_MARK}-*"):
            tmp.unlink()
        if info_path.exists():
            info = _read_info(info_path)
            old = (float(info["fps"]), *info["features"][VIDEO_KEY]["shape"][:2])
            if old != (self.fps, self.height, self.width):
                raise DatasetError(
                    f"{self.root} holds fps/height/width {old}, expected {(self.fps, self.height, self.width)}"
                )
            self._info_extra = {**info.get("mg3", {}), **self._info_extra}
        self._rows = _read_episode_rows(self.root)
        for row in self._rows:
            for t in row["tasks"]:
                if t not in self._tasks:
                    self._tasks.append(t)
        n = len(self._rows)
        # files of an episode that crashed between its publication and the episodes table update
        for folder, pattern in (("data", "chunk-*/file-*.parquet"), ("videos", f"{VIDEO_KEY}/chunk-*/file-*.mp4")):
            for path in (self.root / folder).glob(pattern):
                index = int(path.parent.name[6:]) * CHUNK_SIZE + int(path.stem[5:])
                if index >= n:
                    path.unlink()
        self._load_stats()
        self._write_tasks()
        self._write_stats()
        self._write_info()

    def _load_stats(self) -> None:
        """The running statistics of the episodes kept: from stats.json when it covers them, else
        recomputed from the data files and videos (datasets written before stats.json existed)."""
        frames = sum(r["length"] for r in self._rows)
        path = self.root / STATS_PATH
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved and all(v.get("count") == [frames] for v in saved.values()) and frames:
                pixels = frames * self.height * self.width
                self._stats = {
                    k: _RunningStats.from_summary(
                        v, pixels if k == VIDEO_KEY else frames, 255.0 if k == VIDEO_KEY else 1.0
                    )
                    for k, v in saved.items()
                }
                return
        self._stats = {}
        if not self._rows:
            return
        reader = DatasetReader.__new__(DatasetReader)
        reader.root, reader.fps, reader.height, reader.width = self.root, self.fps, self.height, self.width
        for row in self._rows:
            info = _info_from_row(row)
            data = reader._load_data(info)
            self._add_stats(
                _frame_columns(
                    data, row["episode_index"], row["dataset_from_index"], self.fps, self._tasks.index(row["tasks"][0])
                )
            )
            self._add_video_stats(reader._load_video(info))

    def _add_stats(self, columns: dict[str, np.ndarray]) -> None:
        for name, values in columns.items():
            v = values.reshape(len(values), -1)
            self._stats.setdefault(name, _RunningStats()).add(v, (0,))

    def _add_video_stats(self, frames: np.ndarray) -> None:
        stats = VideoStats()
        stats.add_frames(frames)  # [T, H, W, 3] -> [3]
        self._stats.setdefault(VIDEO_KEY, _RunningStats()).merge(stats)

    # ---------------------------------------------------------------- public API
    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        return sum(r["length"] for r in self._rows)

    @property
    def info_extra(self) -> dict[str, Any]:
        """The extra metadata stored under ``info.json["mg3"]``."""
        return dict(self._info_extra)

    def update_info_extra(self, **items: Any) -> None:
        """Add or replace entries of ``info.json["mg3"]`` (written at once)."""
        self._info_extra.update(items)
        self._write_info()

    def add_episode(
        self,
        frames: np.ndarray,
        keyboard: np.ndarray,
        mouse: np.ndarray,
        poses: np.ndarray,
        prompt: str,
        *,
        c2w: np.ndarray | None = None,
        seed: int | None = None,
        split: str = "train",
        level: str = "",
        extra_meta: dict[str, Any] | None = None,
    ) -> int:
        """Write a whole episode (frames uint8 [T, H, W, 3]); returns its episode index."""
        self.begin_episode(prompt, seed=seed, split=split, level=level, extra_meta=extra_meta)
        try:
            self.add_frames(frames, keyboard, mouse, poses, c2w=c2w)
            return self.end_episode()
        except BaseException:
            self.discard_episode()  # all or nothing (nothing to discard where the episode was published)
            raise

    def begin_episode(
        self,
        prompt: str,
        *,
        seed: int | None = None,
        split: str = "train",
        level: str = "",
        extra_meta: dict[str, Any] | None = None,
    ) -> None:
        if self._current is not None:
            raise DatasetError("begin_episode called twice; call end_episode or discard_episode first")
        _check_episode_meta(prompt, seed, split, level, extra_meta)
        index = len(self._rows)
        _, video_rel, _ = _episode_paths(index)
        video_path = self.root / video_rel
        video_path.parent.mkdir(parents=True, exist_ok=True)
        encoder = VideoEncoder(
            _tmp_name(video_path), fps=self.fps, height=self.height, width=self.width, crf=self.crf, preset=self.preset
        )
        self._current = {
            "prompt": prompt,
            "seed": -1 if seed is None else int(seed),
            "split": split,
            "level": level,
            "extra": dict(extra_meta or {}),
            "encoder": encoder,
            "arrays": {"keyboard": [], "mouse": [], "poses": [], "c2w": []},
            "video_stats": VideoStats(),
        }

    def add_frames(
        self,
        frames: np.ndarray,
        keyboard: np.ndarray,
        mouse: np.ndarray,
        poses: np.ndarray,
        *,
        c2w: np.ndarray | None = None,
    ) -> None:
        """Append T frames (uint8 [T, H, W, 3]) with keyboard [T, 6], mouse [T, 2], poses [T, 5]."""
        if self._current is None:
            raise DatasetError("add_frames called outside an episode; call begin_episode first")
        frames = np.asarray(frames)
        t = frames.shape[0] if frames.ndim == 4 else -1
        _check_array("frames", frames, (t, self.height, self.width, 3))
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        keyboard = _check_array("keyboard", keyboard, (t, 6))
        mouse = _check_array("mouse", mouse, (t, 2))
        _check_action_values(keyboard, mouse)
        poses = _check_array("poses", poses, (t, 5))
        c2w = c2w_from_poses(poses) if c2w is None else _check_array("c2w", c2w, (t, 4, 4))
        self._current["encoder"].write(frames)
        self._current["video_stats"].add_frames(frames)
        arrays = self._current["arrays"]
        arrays["keyboard"].append(np.asarray(keyboard, np.float32))
        arrays["mouse"].append(np.asarray(mouse, np.float32))
        arrays["poses"].append(np.asarray(poses, np.float32))
        arrays["c2w"].append(np.asarray(c2w, np.float32))

    def end_episode(self) -> int:
        """Publish the current episode; returns its episode index.

        Where it fails before the episodes table has the episode (e.g. a full disk), the episode stays in progress:
        call ``end_episode`` again or ``discard_episode``. Where the table has it and a file derived from the table
        failed (tasks, stats, info.json), the episode is published and the error raised; re-opening the dataset
        rewrites those files."""
        if self._current is None:
            raise DatasetError("end_episode called outside an episode")
        cur = self._current
        encoder: VideoEncoder = cur["encoder"]
        if encoder.num_frames == 0:
            self.discard_episode()
            raise DatasetError("end_episode: the episode has no frames")
        published = len(self._rows)
        try:
            encoder.close()
            arrays = {k: np.concatenate(v) for k, v in cur["arrays"].items()}
            return self._commit(
                encoder.path,
                arrays,
                cur["prompt"],
                seed=cur["seed"],
                split=cur["split"],
                level=cur["level"],
                extra=cur["extra"],
                video_stats=cur["video_stats"],
            )
        finally:
            if len(self._rows) > published:  # in the episodes table: published, whatever failed after
                self._current = None

    def discard_episode(self) -> None:
        """Drop the episode in progress (nothing of it reaches the dataset)."""
        if self._current is not None:
            self._current["encoder"].abort()
            self._current = None

    def add_encoded_episode(
        self,
        video_file: str | Path,
        keyboard: np.ndarray,
        mouse: np.ndarray,
        poses: np.ndarray,
        prompt: str,
        *,
        c2w: np.ndarray | None = None,
        seed: int | None = None,
        split: str = "train",
        level: str = "",
        extra_meta: dict[str, Any] | None = None,
        video_stats: VideoStats | None = None,
    ) -> int:
        """Publish an episode whose mp4 was already encoded elsewhere (e.g. by a worker process).

        ``video_file`` must lie on the dataset's file system; it is moved into place. ``video_stats``:
        the statistics of its frames gathered while they were encoded (one per pixel of every frame);
        without them the video is decoded to compute them.
        """
        if self._current is not None:
            raise DatasetError("an episode is in progress; end or discard it first")
        _check_episode_meta(prompt, seed, split, level, extra_meta)
        t = len(poses)
        arrays = {
            "keyboard": _check_array("keyboard", keyboard, (t, 6)).astype(np.float32),
            "mouse": _check_array("mouse", mouse, (t, 2)).astype(np.float32),
            "poses": _check_array("poses", poses, (t, 5)).astype(np.float32),
        }
        arrays["c2w"] = (c2w_from_poses(poses) if c2w is None else _check_array("c2w", c2w, (t, 4, 4))).astype(
            np.float32
        )
        if video_stats is not None:
            if video_stats.n != t * self.height * self.width:
                raise DatasetError(
                    f"video_stats count {video_stats.n} pixels, the episode has {t} frames of {self.height}x{self.width}"
                )
        else:
            video_stats = VideoStats()
            try:
                video_stats.add_frames(decode_video(Path(video_file)))
            except Exception as e:
                raise DatasetError(f"video {video_file} cannot be decoded ({e})") from e
        return self._commit(
            Path(video_file), arrays, prompt, seed=-1 if seed is None else int(seed), split=split, level=level,
            extra=dict(extra_meta or {}), video_stats=video_stats,
        )  # fmt: skip

    def close(self) -> None:
        self.discard_episode()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _commit(
        self,
        video_tmp: Path,
        arrays: dict[str, np.ndarray],
        prompt: str,
        *,
        seed: int,
        split: str,
        level: str,
        extra,
        video_stats: _RunningStats,
    ) -> int:
        pa, _ = _pa()
        index = len(self._rows)
        t = len(arrays["poses"])
        start = self.num_frames
        tasks = self._tasks + ([prompt] if prompt not in self._tasks else [])
        task_index = tasks.index(prompt)
        data_rel, video_rel, meta_rel = _episode_paths(index)
        columns = _frame_columns(arrays, index, start, self.fps, task_index)
        table = pa.table({k: _vector_column(v) if v.ndim == 2 else pa.array(v) for k, v in columns.items()})
        _write_table_atomic(self.root / data_rel, table)
        video_path = self.root / video_rel
        video_path.parent.mkdir(parents=True, exist_ok=True)
        if Path(video_tmp).exists() or not video_path.exists():  # not moved by a failed attempt of this episode
            _publish(Path(video_tmp), video_path)
        meta_file = index // EPISODES_PER_META_FILE
        row = {
            "episode_index": index,
            "tasks": [prompt],
            "length": t,
            "data/chunk_index": index // CHUNK_SIZE,
            "data/file_index": index % CHUNK_SIZE,
            "dataset_from_index": start,
            "dataset_to_index": start + t,
            f"videos/{VIDEO_KEY}/chunk_index": index // CHUNK_SIZE,
            f"videos/{VIDEO_KEY}/file_index": index % CHUNK_SIZE,
            f"videos/{VIDEO_KEY}/from_timestamp": 0.0,
            f"videos/{VIDEO_KEY}/to_timestamp": t / self.fps,
            "meta/episodes/chunk_index": meta_file // CHUNK_SIZE,
            "meta/episodes/file_index": meta_file % CHUNK_SIZE,
            "seed": seed,
            "split": split,
            "level": level,
            "source": self.source,
            "extra_meta": json.dumps(extra, sort_keys=True),
        }
        rows = [r for r in self._rows if r["episode_index"] // EPISODES_PER_META_FILE == meta_file]
        _write_table_atomic(self.root / meta_rel, pa.Table.from_pylist([*rows, row]))
        self._rows.append(row)
        self._tasks = tasks
        self._add_stats(columns)
        self._stats.setdefault(VIDEO_KEY, _RunningStats()).merge(video_stats)
        self._write_tasks()
        self._write_stats()
        self._write_info()
        return index

    def _write_tasks(self) -> None:
        _write_table_atomic(self.root / TASKS_PATH, _tasks_table(self._tasks))

    def _write_stats(self) -> None:
        frames = self.num_frames
        if not frames:
            (self.root / STATS_PATH).unlink(missing_ok=True)
            return
        stats = {k: v.summary(frames) for k, v in self._stats.items() if k != VIDEO_KEY}
        stats[VIDEO_KEY] = self._stats[VIDEO_KEY].summary(frames, 255.0, (3, 1, 1))
        _write_json_atomic(self.root / STATS_PATH, stats)

    def _write_info(self) -> None:
        splits: dict[str, list[int]] = {}
        for r in self._rows:
            splits.setdefault(r["split"], []).append(r["episode_index"])
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._rows),
            "total_frames": self.num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNK_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "one_episode_per_file": True,
            "fps": self.fps,
            "splits": {k: _split_ranges(v) for k, v in sorted(splits.items())},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": _features(self.height, self.width, self.fps),
            "mg3": {"source": self.source, **self._info_extra},
        }
        _write_json_atomic(self.root / INFO_PATH, info)


class DatasetReader:
    """Read a dataset written by :class:`DatasetWriter` (or any LeRobot v3 dataset with these features).

    Every problem raises :class:`DatasetError` naming the episode; nothing is skipped silently.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.exists():
            raise DatasetError(f"{self.root} is not a dataset: {INFO_PATH} is missing")
        self.info: dict[str, Any] = _read_info(info_path)
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(
                f"{self.root}: expected codebase_version {CODEBASE_VERSION!r}, got {self.info.get('codebase_version')!r}"
            )
        self.fps = float(self.info["fps"])
        self.height, self.width = self.info["features"][VIDEO_KEY]["shape"][:2]
        try:
            self.episodes = [_info_from_row(r) for r in _read_episode_rows(self.root)]
        except KeyError as e:
            raise DatasetError(
                f"{self.root}: the episodes table lacks the column {e}; the dataset is damaged"
            ) from None
        if len(self.episodes) < self.info["total_episodes"]:
            raise DatasetError(
                f"{self.root}: info.json says {self.info['total_episodes']} episodes, "
                f"the episodes table holds only {len(self.episodes)} (episodes lost)"
            )
        if len(self.episodes) > self.info["total_episodes"]:
            # a writer stopped between publishing the table and info.json: the table is the truth
            self.info = {
                **self.info,
                "total_episodes": len(self.episodes),
                "total_frames": sum(e.length for e in self.episodes),
            }

    @property
    def meta(self) -> dict[str, Any]:
        """The generator's extra metadata (``info.json["mg3"]``)."""
        return self.info.get("mg3", {})

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def __len__(self) -> int:
        return len(self.episodes)

    def split_indices(self, split: str) -> list[int]:
        return [e.index for e in self.episodes if e.split == split]

    def load_episode(self, index: int, *, frames: bool = True) -> Episode:
        """Load episode ``index``; ``frames=False`` skips decoding the video."""
        if not 0 <= index < len(self.episodes):
            raise IndexError(f"episode {index} out of range: the dataset holds {len(self.episodes)} episodes")
        info = self.episodes[index]
        arrays = self._load_data(info)
        video = self._load_video(info) if frames else None
        return Episode(info=info, frames=video, **arrays)

    def iter_episodes(self, *, frames: bool = True, split: str | None = None) -> Iterator[Episode]:
        for e in self.episodes:
            if split is None or e.split == split:
                yield self.load_episode(e.index, frames=frames)

    def _load_data(self, info: EpisodeInfo) -> dict[str, np.ndarray]:
        _, pq = _pa()
        path = self.root / info.data_path
        if not path.exists():
            raise DatasetError(f"episode {info.index}: data file {path} is missing")
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise DatasetError(f"episode {info.index}: data file {path} is corrupt ({e})") from e
        if table.num_rows != info.length:
            raise DatasetError(
                f"episode {info.index}: data file {path} has {table.num_rows} rows, expected {info.length}"
            )
        needed = ["episode_index", "frame_index", "action.keyboard", "action.mouse", "observation.state"]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise DatasetError(f"episode {info.index}: data file {path} lacks columns {missing}")
        ep = table.column("episode_index").to_numpy()
        fi = table.column("frame_index").to_numpy()
        if not (ep == info.index).all() or not (fi == np.arange(info.length)).all():
            raise DatasetError(
                f"episode {info.index}: data file {path} holds rows of another episode or frames out of order"
            )

        def vec(name: str, k: int) -> np.ndarray:
            col = table.column(name).combine_chunks()
            return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(info.length, k)

        poses = vec("observation.state", 5)
        if "observation.c2w" in table.column_names:
            c2w = vec("observation.c2w", 16).reshape(-1, 4, 4)
        else:
            c2w = c2w_from_poses(poses).astype(np.float32)
        return {"keyboard": vec("action.keyboard", 6), "mouse": vec("action.mouse", 2), "poses": poses, "c2w": c2w}

    def _load_video(self, info: EpisodeInfo) -> np.ndarray:
        path = self.root / info.video_path
        if not path.exists():
            raise DatasetError(f"episode {info.index}: video file {path} is missing")
        try:
            frames = decode_video(path)
        except Exception as e:
            raise DatasetError(f"episode {info.index}: video file {path} cannot be decoded ({e})") from e
        if frames.shape != (info.length, self.height, self.width, 3):
            raise DatasetError(
                f"episode {info.index}: video file {path} holds frames {list(frames.shape)}, "
                f"expected {[info.length, self.height, self.width, 3]}"
            )
        return frames


def validate_dataset(root: str | Path, *, decode: bool = True) -> DatasetReader:
    """Check every episode of a dataset (data files, and videos when ``decode``); raise one
    :class:`DatasetError` listing every problem, or return the reader when all is well."""
    reader = DatasetReader(root)
    problems: list[str] = []
    total = 0
    for info in reader.episodes:
        if info.dataset_from_index != total:
            problems.append(f"episode {info.index}: dataset_from_index {info.dataset_from_index}, expected {total}")
        total += info.length
        try:
            reader.load_episode(info.index, frames=decode)
        except DatasetError as e:
            problems.append(str(e))
        if not decode and not (reader.root / info.video_path).exists():
            problems.append(f"episode {info.index}: video file {reader.root / info.video_path} is missing")
    if total != reader.info["total_frames"]:
        problems.append(f"info.json says {reader.info['total_frames']} frames, the episodes hold {total}")
    if problems:
        raise DatasetError(f"{reader.root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return reader
