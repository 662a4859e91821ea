"""A headless player: plays an ``mg3 play`` session over its WebSocket the way the page does.

For machines without a browser (the GPU machine the 5B figures are measured on) and for tests. It
follows ``static/play.js``: the frames of each chunk play at the model's frame rate (or at 0.95 x the
generated rate when generation is slower, the page's "adapt" default), a ``played`` report with the
buffered time goes back when a chunk begins to play (it paces the server), input messages follow a
script, and it measures what the page measures: generated frames/s per chunk, key-to-frame latency
(input sent -> the first frame shown of the first chunk generated with it), stalls (no frame when one
was due) and frames shown. :meth:`HeadlessPage.stats` has the shape of the page's ``mg3Play.stats()``.
JPEG decoding is real (PIL, on a worker thread), as the page's ``createImageBitmap`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["HeadlessPage", "InputPhase", "DEFAULT_SCRIPT"]


@dataclass(frozen=True)
class InputPhase:
    """What the player holds for one phase: keys (indices into the hello's key list), arrow look
    ([-1, 1] pitch, yaw) and mouse motion in pixels per 50 ms ([dx, dy])."""

    keys: tuple[int, ...] = ()
    look: tuple[int, int] = (0, 0)
    mouse: tuple[float, float] = (0.0, 0.0)


# the browser benchmark's script: W, W + mouse, nothing, A, D + left arrow, W + mouse back, S, right arrow
DEFAULT_SCRIPT = (
    InputPhase(keys=(0,)),
    InputPhase(keys=(0,), mouse=(12.0, 0.0)),
    InputPhase(),
    InputPhase(keys=(2,)),
    InputPhase(keys=(3,), look=(0, -1)),
    InputPhase(keys=(0,), mouse=(-12.0, 0.0)),
    InputPhase(keys=(1,)),
    InputPhase(look=(0, 1)),
)


class HeadlessPage:
    """One session against ``url`` (the page's address, ``http://host:port/``)."""

    def __init__(self, url: str, *, script: tuple[InputPhase, ...] = DEFAULT_SCRIPT, phase_s: float = 2.5) -> None:
        self.ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
        self.script, self.phase_s = script, phase_s
        self.fps = self.rate = 16.0
        self.episode = -1
        self.queue: deque[tuple[dict[str, Any], int]] = deque()  # (chunk header, frame index)
        self._next_due = 0.0
        self.chunks: list[dict[str, Any]] = []
        self.latencies: list[dict[str, Any]] = []
        self.stalls: list[float] = []  # ms
        self.errors: list[dict[str, Any]] = []
        self.frames_shown = self.frames_received = 0
        self.gen_fps: float | None = None
        self.pose: list[float] | None = None
        self.hello: dict[str, Any] | None = None
        self._seq = 0
        self._pending: tuple[int, float] | None = None  # input seq, time sent
        self._playing = asyncio.Event()
        self._arrived = asyncio.Event()
        self._ws: Any = None

    def stats(self) -> dict[str, Any]:
        """The measurements so far (the page's ``mg3Play.stats()`` fields the benchmark reads)."""
        return {
            "episode": self.episode,
            "chunks": list(self.chunks),
            "framesShown": self.frames_shown,
            "framesReceived": self.frames_received,
            "latencies": list(self.latencies),
            "stalls": list(self.stalls),
            "errors": list(self.errors),
            "genFps": self.gen_fps,
            "rate": self.rate,
            "fps": self.fps,
            "pose": self.pose,
        }

    async def play(self, seconds: float) -> tuple[dict[str, Any], dict[str, Any], float]:
        """Connect, wait for the first frame to show, then play the script for ``seconds``.

        Returns the stats when the script started, the stats at the end and the seconds played.
        """
        from websockets.asyncio.client import connect

        async with connect(self.ws_url, max_size=None) as ws:
            self._ws = ws
            tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._playback())]
            try:
                await asyncio.wait_for(self._playing.wait(), 600)
                start = self.stats()
                t0 = time.monotonic()
                await self._drive(seconds)
                wall = time.monotonic() - t0
                return start, self.stats(), wall
            finally:
                for t in tasks:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    # ------------------------------------------------------------------ server -> page

    async def _receive(self) -> None:
        from mg3_env.play.protocol import decode_chunk

        loop = asyncio.get_running_loop()
        async for message in self._ws:
            if isinstance(message, str):
                msg = json.loads(message)
                if msg["type"] == "hello":
                    self.hello = msg
                    self.fps = self.rate = float(msg["fps"])
                elif msg["type"] == "status" and msg.get("state") == "resetting":
                    self.episode = msg["episode"]  # as the page: drop what is queued, wait for chunk 0
                    self.queue.clear()
                    self._playing.clear()
                    self._arrived.set()
                elif msg["type"] == "error":
                    self.errors.append(msg)
                continue
            received = time.monotonic()
            header, frames = await loop.run_in_executor(None, decode_chunk, message)
            if header["episode"] != self.episode:
                continue
            header["decodeMs"] = (time.monotonic() - received) * 1000
            self.chunks.append({k: v for k, v in header.items() if k != "poses"})
            self.frames_received += len(frames)
            self.queue.extend((header, i) for i in range(len(frames)))
            # as the page: chunk k is encoded while chunk k + 1 is generated, the slower sets the rate
            g = header["frames"] / (max(header["step_ms"], header["encode_ms"]) / 1000)
            self.gen_fps = g if self.gen_fps is None or header["chunk"] == 0 else 0.7 * self.gen_fps + 0.3 * g
            if header["chunk"] == 0:
                self._next_due = time.monotonic()
                self._playing.set()
            else:
                slow = self.gen_fps < self.fps * 0.98
                self.rate = max(1.0, 0.95 * self.gen_fps) if slow else self.fps
            self._arrived.set()

    # ------------------------------------------------------------------ playback

    async def _playback(self) -> None:
        stalled_since: float | None = None
        while True:
            if not self._playing.is_set():
                stalled_since = None
                await self._playing.wait()
                continue
            now = time.monotonic()
            if now < self._next_due:
                await asyncio.sleep(self._next_due - now)
                continue
            if not self.queue:
                if stalled_since is None:
                    stalled_since = self._next_due
                self._arrived.clear()
                await self._arrived.wait()
                continue
            interval = 1.0 / self.rate
            if stalled_since is not None:
                self.stalls.append((now - stalled_since) * 1000)
                stalled_since = None
                self._next_due = now
            header, i = self.queue.popleft()
            self.frames_shown += 1
            self._next_due = max(self._next_due + interval, now - interval)
            self.pose = header["poses"][i]
            if i == 0:
                await self._chunk_started(header, now)

    async def _chunk_started(self, header: dict[str, Any], now: float) -> None:
        buffered_ms = round(len(self.queue) * 1000 / self.rate)
        await self._send(
            {"type": "played", "episode": header["episode"], "chunk": header["chunk"], "buffered_ms": buffered_ms}
        )
        p = self._pending
        if p is not None and header["chunk"] > 0 and header["input_seq"] >= p[0]:
            self.latencies.append({"ms": (now - p[1]) * 1000, "chunk": header["chunk"]})
            self._pending = None

    # ------------------------------------------------------------------ input

    async def _drive(self, seconds: float) -> None:
        keys_n = len(self.hello["keys"]) if self.hello else 6
        t0 = time.monotonic()
        phase = 0
        while time.monotonic() - t0 < seconds:
            ph = self.script[phase % len(self.script)]
            keys = [1 if k in ph.keys else 0 for k in range(keys_n)]
            await self._input(keys, ph.look, (0.0, 0.0), changed=True)
            end = min(t0 + (phase + 1) * self.phase_s, t0 + seconds)
            while time.monotonic() < end:
                await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))
                if ph.mouse != (0.0, 0.0):
                    await self._input(keys, ph.look, ph.mouse, changed=False)
            phase += 1
        await self._input([0] * keys_n, (0, 0), (0.0, 0.0), changed=True)

    async def _input(self, keys: list[int], look, mouse, *, changed: bool) -> None:
        self._seq += 1
        msg = {"type": "input", "seq": self._seq, "keys": keys, "look": [int(v) for v in look], "mouse": list(mouse)}
        await self._send(msg)
        if changed and self._pending is None:
            self._pending = (self._seq, time.monotonic())

    async def _send(self, obj: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a closed connection ends the session's tasks anyway
            await self._ws.send(json.dumps(obj))
