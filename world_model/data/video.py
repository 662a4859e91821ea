"""H.264 mp4 video files (browser-playable: libx264, yuv420p) through PyAV."""

from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from numbers import Real
from pathlib import Path

import numpy as np

from world_model.checks import whole

__all__ = ["VideoEncoder", "decode_video", "fps_fraction", "check_encoding", "check_x264", "X264_PRESETS"]

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


def check_x264(crf: int, preset: str) -> None:
    """Refuse a quality (``crf``) or speed (``preset``) libx264 does not take, naming it."""
    whole(crf, "crf", 0, 51)
    if preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")


def check_encoding(fps: float, height: int, width: int, crf: int, preset: str) -> None:
    """Refuse settings H.264 (libx264, yuv420p) cannot take, naming them, before anything is encoded."""
    if isinstance(fps, bool) or not isinstance(fps, Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    for name, side in (("height", height), ("width", width)):
        whole(side, name, 2)
        if side % 2:
            raise ValueError(f"{name} must be even for H.264 yuv420p, got {side}")
    check_x264(crf, preset)


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("video files need PyAV: pip install 'mg3[data]' (or pip install av)") from e
    return av


def fps_fraction(fps: float) -> Fraction:
    """An exact frame rate for the container (17.5 -> 35/2)."""
    return Fraction(fps).limit_denominator(1001)


class VideoEncoder:
    """Incremental H.264 encoder: ``write(frames)`` any number of times, then ``close()``.

    frames are uint8 [T, H, W, 3] RGB; H and W must be even (yuv420p). ``close()`` flushes and
    fsyncs the file so that a following rename publishes complete data. x264's macroblock-tree
    rate control is off: with it, libx264 (as shipped in PyAV) encodes the same frames differently
    from run to run, and datasets must be reproducible.
    """

    def __init__(
        self, path: str | Path, *, fps: float, height: int, width: int, crf: int = 20, preset: str = "veryfast"
    ):
        check_encoding(fps, height, width, crf, preset)
        av = _av()
        self.path = Path(path)
        self.height, self.width = height, width
        self.num_frames = 0
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream = self._container.add_stream(
            "libx264", rate=fps_fraction(fps), options={"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
        )
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._state = "open"  # then "flushed" (file closed, fsync to do), "closed", or "failed" (flush raised)

    def write(self, frames: np.ndarray) -> None:
        av = _av()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames [T, {self.height}, {self.width}, 3], got {frames.dtype} {tuple(frames.shape)}"
            )
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        self.num_frames += len(frames)

    def close(self) -> None:
        """Flush the encoder, close the file and fsync it. Once done, a no-op; a failed fsync may be retried, a
        failed flush may not (the encoder drains once): the file is then only to :meth:`abort`."""
        if self._state == "closed":
            return
        if self._state == "failed":
            raise RuntimeError(f"the encoder of {self.path} failed while flushing: abort it")
        if self._state == "open" and self.num_frames == 0:  # an mp4 of no frames cannot be written
            self.abort()
            raise ValueError(f"no frames were written to {self.path}: nothing to close (the file is removed)")
        if self._state == "open":
            try:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
            except BaseException:
                self._state = "failed"
                raise
            self._state = "flushed"
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())
        self._state = "closed"

    def abort(self) -> None:
        """Close without caring about the content and delete the file."""
        if self._state in ("open", "failed"):
            with contextlib.suppress(Exception):  # the file is being thrown away
                self._container.close()
        self._state = "closed"
        self.path.unlink(missing_ok=True)


def decode_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3] RGB."""
    av = _av()
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)
