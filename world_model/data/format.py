"""Datasets of (video, pose, action, prompt) in the LeRobot v3 layout: writer, reader, validation.

Layout (one data file and one video file per episode; ``info.json``'s templates say so)::

    meta/info.json                                  codebase_version "v3.0", fps, features, splits, ...
    meta/tasks.parquet                              prompts: columns task_index, task
    meta/episodes/chunk-000/file-000.parquet        per-episode rows (1000 episodes per file)
    data/chunk-000/file-000.parquet                 per-frame rows of episode 0
    videos/observation.images.rgb/chunk-000/file-000.mp4   H.264 yuv420p video of episode 0

Per-frame columns: episode_index, frame_index, index, timestamp, task_index, ``action.keyboard`` [6]
(multi-hot: 0 W, 1 S, 2 A, 3 D, 4-5 unused), ``action.mouse`` [2] (pitch, yaw in release units of
``StreamConfig.degrees_per_mouse_unit`` degrees per frame), ``observation.state`` [5] (x, y, z, pitch,
yaw) and ``observation.c2w`` [16] (row-major 4x4, see :mod:`world_model.data.poses`).
The action of frame i moves the camera from pose i to pose i + 1 (spec §5.1).

Crash safety: an episode's files are written under temporary names, fsynced and renamed; the
episodes table is the source of truth and is replaced atomically after them; tasks and info.json
are derived from it and rewritten last. Re-opening a dataset deletes temporary and orphan files
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

from world_model.data.poses import c2w_from_poses
from world_model.data.video import VideoEncoder, decode_video

__all__ = [
    "CODEBASE_VERSION",
    "VIDEO_KEY",
    "DatasetError",
    "Episode",
    "EpisodeInfo",
    "DatasetWriter",
    "DatasetReader",
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
        if height % 2 or width % 2:
            raise ValueError(f"frame sides must be even for H.264 yuv420p, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
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
        self._open_existing()
        self._current: dict[str, Any] | None = None

    # ---------------------------------------------------------------- opening / recovery
    def _open_existing(self) -> None:
        info_path = self.root / INFO_PATH
        for tmp in self.root.rglob(f"*{TMP_MARK}-*"):
            tmp.unlink()
        if info_path.exists():
            info = json.loads(info_path.read_text())
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
        self._write_tasks()
        self._write_info()

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
        except BaseException:
            self.discard_episode()
            raise
        return self.end_episode()

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
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"expected a non-empty prompt string, got {prompt!r}")
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
        poses = _check_array("poses", poses, (t, 5))
        c2w = c2w_from_poses(poses) if c2w is None else _check_array("c2w", c2w, (t, 4, 4))
        self._current["encoder"].write(frames)
        arrays = self._current["arrays"]
        arrays["keyboard"].append(np.asarray(keyboard, np.float32))
        arrays["mouse"].append(np.asarray(mouse, np.float32))
        arrays["poses"].append(np.asarray(poses, np.float32))
        arrays["c2w"].append(np.asarray(c2w, np.float32))

    def end_episode(self) -> int:
        """Publish the current episode; returns its episode index."""
        if self._current is None:
            raise DatasetError("end_episode called outside an episode")
        cur, self._current = self._current, None
        encoder: VideoEncoder = cur["encoder"]
        if encoder.num_frames == 0:
            encoder.abort()
            raise DatasetError("end_episode: the episode has no frames")
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
        )

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
    ) -> int:
        """Publish an episode whose mp4 was already encoded elsewhere (e.g. by a worker process).

        ``video_file`` must lie on the dataset's file system; it is moved into place.
        """
        if self._current is not None:
            raise DatasetError("an episode is in progress; end or discard it first")
        t = len(poses)
        arrays = {
            "keyboard": _check_array("keyboard", keyboard, (t, 6)).astype(np.float32),
            "mouse": _check_array("mouse", mouse, (t, 2)).astype(np.float32),
            "poses": _check_array("poses", poses, (t, 5)).astype(np.float32),
        }
        arrays["c2w"] = (c2w_from_poses(poses) if c2w is None else _check_array("c2w", c2w, (t, 4, 4))).astype(
            np.float32
        )
        return self._commit(
            Path(video_file), arrays, prompt, seed=-1 if seed is None else int(seed), split=split, level=level,
            extra=dict(extra_meta or {}),
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
        self, video_tmp: Path, arrays: dict[str, np.ndarray], prompt: str, *, seed: int, split: str, level: str, extra
    ) -> int:
        pa, _ = _pa()
        index = len(self._rows)
        t = len(arrays["poses"])
        start = self.num_frames
        if prompt not in self._tasks:
            self._tasks.append(prompt)
        task_index = self._tasks.index(prompt)
        data_rel, video_rel, meta_rel = _episode_paths(index)
        frame_index = np.arange(t, dtype=np.int64)
        table = pa.table(
            {
                "episode_index": pa.array(np.full(t, index, np.int64)),
                "frame_index": pa.array(frame_index),
                "index": pa.array(start + frame_index),
                "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
                "task_index": pa.array(np.full(t, task_index, np.int64)),
                "action.keyboard": _vector_column(arrays["keyboard"]),
                "action.mouse": _vector_column(arrays["mouse"]),
                "observation.state": _vector_column(arrays["poses"]),
                "observation.c2w": _vector_column(arrays["c2w"].reshape(t, 16)),
            }
        )
        _write_table_atomic(self.root / data_rel, table)
        video_path = self.root / video_rel
        video_path.parent.mkdir(parents=True, exist_ok=True)
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
        self._rows.append(row)
        rows = [r for r in self._rows if r["episode_index"] // EPISODES_PER_META_FILE == meta_file]
        _write_table_atomic(self.root / meta_rel, pa.Table.from_pylist(rows))
        self._write_tasks()
        self._write_info()
        return index

    def _write_tasks(self) -> None:
        pa, _ = _pa()
        table = pa.table({"task_index": pa.array(range(len(self._tasks)), pa.int64()), "task": self._tasks})
        _write_table_atomic(self.root / TASKS_PATH, table)

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
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{info_path} is not valid JSON ({e})") from e
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(
                f"{self.root}: expected codebase_version {CODEBASE_VERSION!r}, got {self.info.get('codebase_version')!r}"
            )
        self.fps = float(self.info["fps"])
        self.height, self.width = self.info["features"][VIDEO_KEY]["shape"][:2]
        self.episodes = [_info_from_row(r) for r in _read_episode_rows(self.root)]
        if len(self.episodes) != self.info["total_episodes"]:
            raise DatasetError(
                f"{self.root}: info.json says {self.info['total_episodes']} episodes, "
                f"the episodes table holds {len(self.episodes)}"
            )

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
