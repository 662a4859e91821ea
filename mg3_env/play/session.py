"""One player's connection: a :class:`~mg3_env.env.MatrixGameEnv`, its input and its pacing.

Three asyncio tasks share the session's state on the event loop: the receiver validates every
message from the page and updates the input (:class:`~mg3_env.play.controls.Controls`), the
pacing (:class:`~mg3_env.play.pacing.Pacer`) or the reset request; the generator resets and steps
the env on the server's compute thread (:mod:`mg3_env.play.compute`; one thread for all torch work)
and hands each chunk's frames to the session's encoder thread (one JPEG per chunk) without waiting
for it, so that encoding chunk k overlaps generating chunk k + 1 (at 704x1280 a 40-frame JPEG takes
~0.3 s of a core of the 2-core test machine); the sender sends everything in the order it was queued. A bad message
gets an ``error`` answer and the session goes on; an error inside the env ends the session (close
code 1011), never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mg3_env.play.controls import Controls
from mg3_env.play.pacing import Pacer
from mg3_env.play.protocol import (
    InputMessage,
    PlayedMessage,
    ProtocolError,
    ResetMessage,
    decode_upload,
    encode_frames,
    pack_chunk,
    parse_text,
)

if TYPE_CHECKING:
    from mg3_env.play.server import PlayServer

__all__ = ["Session"]

log = logging.getLogger("mg3.play")


class Session:
    """The state of one connection; :meth:`run` lasts as long as the connection."""

    def __init__(self, server: PlayServer, ws: Any, sid: int) -> None:
        self.server = server
        self.ws = ws
        self.sid = sid
        self.env: Any = None
        self.controls: Controls | None = None
        self.pacer = Pacer()
        self.episode = -1
        self.next_chunk = 0
        self.episode_over = True
        self.reset_request: ResetMessage | None = None
        self.image: Any = server.image_choices["start"][1]
        self.prompt: str | None = server.prompt
        self.uploaded: np.ndarray | None = None
        self.wake = asyncio.Event()
        self.rng = np.random.default_rng()
        # what goes to the page, in order: ready messages, or encodings still running on the encoder
        self.outbox: asyncio.Queue[str | bytes | asyncio.Future] = asyncio.Queue()
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix=f"mg3-play-encode-{sid}")

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> None:
        try:
            self.env = await self.server.compute.run(self.server.make_env)
            v = self.env.unwrapped.vector_env
            self.controls = Controls(v.keyboard_dim, v.frames_per_chunk)
            self.pacer.chunk_s = v.frames_per_chunk / float(self.server.model.config.stream.fps)
            self._send_json(self.server.hello(self.sid))
            self._request_reset(ResetMessage(None, None, None))
            sender = asyncio.create_task(self._send_all())
            generator = asyncio.create_task(self._generate())
            receiver = asyncio.create_task(self._receive())
            tasks = (generator, receiver, sender)
            done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            failed = next((t for t in (generator, sender) if t in done and t.exception() is not None), None)
            if failed is not None:
                e = failed.exception()
                log.error("session %d: generation failed: %s", self.sid, e, exc_info=e)
                with contextlib.suppress(Exception):
                    error = {"type": "error", "message": f"generation failed: {e}", "request": None}
                    await self.ws.send(json.dumps(error))  # directly: the sender has stopped
                    await self.ws.close(1011, "generation failed")
        finally:
            self.encoder.shutdown(wait=False, cancel_futures=True)
            if self.env is not None:
                await self.server.compute.run(self.env.close)  # publishes a recorded episode

    def _send_json(self, obj: dict[str, Any]) -> None:
        """Queue ``obj`` for the page, after everything queued before it (chunks still encoding included)."""
        self.outbox.put_nowait(json.dumps(obj))

    def _send_chunk(self, header: dict[str, Any], frames: np.ndarray) -> None:
        """Queue a chunk: its JPEG is encoded on the encoder thread while the generator goes on."""
        self.outbox.put_nowait(asyncio.get_running_loop().run_in_executor(self.encoder, self._encode, header, frames))

    async def _send_all(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            item = await self.outbox.get()
            try:
                await self.ws.send(await item if isinstance(item, asyncio.Future) else item)
            except ConnectionClosed:  # the page left: the session ends as the receiver sees it
                return

    # ------------------------------------------------------------------ page -> server

    async def _receive(self) -> None:
        names = (*self.server.image_choices, "upload")
        async for message in self.ws:
            try:
                if isinstance(message, bytes):
                    await self._upload(message)
                    continue
                msg = parse_text(message, self.controls.keyboard_dim, names, self.server.max_prompt_chars)
                if isinstance(msg, InputMessage):
                    self.controls.update(msg.seq, msg.keys, msg.look, msg.mouse)
                elif isinstance(msg, PlayedMessage):
                    if msg.episode == self.episode:
                        self.pacer.note_played(msg.chunk, msg.buffered_s, time.monotonic())
                        self.wake.set()
                else:
                    if msg.image == "upload" and self.uploaded is None:
                        raise ProtocolError("no image has been uploaded yet; upload one first", "reset")
                    self._request_reset(msg)
            except ProtocolError as e:
                self._send_json({"type": "error", "message": str(e), "request": e.request})

    async def _upload(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, decode_upload, data, self.server.max_upload_bytes)
        self.uploaded = image
        self._send_json({"type": "uploaded", "height": int(image.shape[0]), "width": int(image.shape[1])})

    def _request_reset(self, msg: ResetMessage) -> None:
        self.episode += 1
        self.reset_request = msg
        self.wake.set()
        self._send_json({"type": "status", "state": "resetting", "episode": self.episode})

    # ------------------------------------------------------------------ generation

    async def _generate(self) -> None:
        while True:
            if self.reset_request is not None:
                msg, self.reset_request = self.reset_request, None
                await self._reset(msg)
                continue
            now = time.monotonic()
            start = None if self.episode_over else self.pacer.start_time(self.next_chunk, now)
            if start is None or start > now:
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), None if start is None else start - now)
                continue
            action, seq = self.controls.take_action()
            episode, chunk = self.episode, self.next_chunk
            t0 = time.monotonic()
            header, frames, truncated = await self.server.compute.run(self._step, action, seq, episode, chunk)
            if self.reset_request is not None:  # a reset came during the step: drop the chunk
                continue
            self.pacer.note_step(time.monotonic() - t0)
            self._send_chunk(header, frames)
            self.next_chunk += 1
            if truncated:
                self.episode_over = True
                self._send_json(
                    {
                        "type": "status",
                        "state": "episode_end",
                        "episode": self.episode,
                        "message": f"the episode reached {self.server.max_chunks} chunks; a new one starts",
                    }
                )
                self._request_reset(ResetMessage(None, None, None))

    async def _reset(self, msg: ResetMessage) -> None:
        before = self.image, self.prompt  # kept where the env refuses the new ones
        if msg.image == "upload":
            self.image = self.uploaded
        elif msg.image is not None:
            self.image = self.server.image_choices[msg.image][1]
        if msg.prompt is not None:
            self.prompt = msg.prompt
        seed = int(self.rng.integers(0, 2**32)) if msg.seed is None else msg.seed
        self.controls.new_episode()
        self.pacer.new_episode()
        episode, seq = self.episode, self.controls.seq
        t0 = time.monotonic()
        try:
            header, frames = await self.server.compute.run(self._first_chunk, seed, episode, seq)
        except (ValueError, TypeError) as e:  # e.g. an image or prompt the env refuses
            self.image, self.prompt = before  # the next reset (the automatic one too) goes back to them
            self.episode_over = True
            self._send_json({"type": "error", "message": f"reset failed: {e}", "request": "reset"})
            return
        if self.reset_request is not None:
            return
        if self.pacer.expected_step_s is None:  # a first estimate: the reset's time per frame
            self.pacer.note_step((time.monotonic() - t0) * self.controls.frames / len(frames))
        self.episode_over = False
        self.next_chunk = 1
        self._send_chunk(header, frames)

    # ------------------------------------------------------------------ compute thread

    def _first_chunk(self, seed: int, episode: int, seq: int) -> tuple[dict[str, Any], np.ndarray]:
        t0 = time.perf_counter()
        options = {"image": self.image, "prompt": self.prompt}
        _, info = self.env.reset(seed=seed, options={k: v for k, v in options.items() if v is not None})
        frames = info["first_chunk_frames"]
        step_s = time.perf_counter() - t0
        header = self._header(episode, 0, seq, info["first_chunk_pose"], step_s, len(frames))
        header.update(seed=seed, prompt=info["prompt"], image=self._image_label())
        return header, frames

    def _step(
        self, action: dict[str, np.ndarray], seq: int, episode: int, chunk: int
    ) -> tuple[dict[str, Any], np.ndarray, bool]:
        t0 = time.perf_counter()
        obs, _, _, truncated, info = self.env.step(action)
        step_s = time.perf_counter() - t0
        header = self._header(episode, chunk, seq, obs["pose"], step_s, len(obs["frames"]))
        header.update(keyboard=action["keyboard"][0].tolist(), mouse=np.round(action["mouse"].mean(0), 4).tolist())
        return header, obs["frames"], bool(truncated)

    def _header(self, episode: int, chunk: int, seq: int, poses: np.ndarray, step_s: float, n: int) -> dict:
        return {
            "type": "chunk",
            "episode": episode,
            "chunk": chunk,
            "input_seq": seq,
            "poses": np.round(np.asarray(poses, np.float64), 3).tolist(),
            "step_ms": round(step_s * 1000, 1),
            "gen_fps": round(n / step_s, 2),
        }

    def _encode(self, header: dict, frames: np.ndarray) -> bytes:  # on the encoder thread
        t0 = time.perf_counter()
        jpeg, layout = encode_frames(frames, self.server.jpeg_quality)
        header.update(layout, encode_ms=round((time.perf_counter() - t0) * 1000, 1))
        return pack_chunk(header, jpeg)

    def _image_label(self) -> str:
        if isinstance(self.image, (str, os.PathLike)):
            return Path(self.image).name
        return "uploaded image" if self.image is not None else "model default"
