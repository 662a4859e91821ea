"""The wire format of ``mg3 play``: what the page may send, what the server answers, checked.

Page -> server, text messages (JSON objects, at most :data:`MAX_TEXT_BYTES`):

- ``{"type": "input", "seq": n, "keys": [K x 0/1], "look": [pitch, yaw], "mouse": [dpitch, dyaw]}``:
  the held keys, the held arrow keys (-1, 0, 1 per axis), the mouse motion in degrees since the
  previous input message (at most 360 per axis), ``seq`` increasing.
- ``{"type": "played", "episode": e, "chunk": k, "buffered_ms": b}``: the page began playing chunk k
  with b ms of frames left to play (this paces generation).
- ``{"type": "reset", "image": name or null, "prompt": text or null, "seed": int or null}``: a new
  episode; ``image`` names one of the images offered in ``hello`` ("upload": the last uploaded one).

Page -> server, binary messages: an image upload (PNG, JPEG, WebP, GIF or BMP; at most the
``max_upload_bytes`` of ``hello``). No file path ever comes from the page.

Server -> page: text messages ``hello``, ``busy``, ``error`` (``{"type": "error", "message": ...,
"request": type}``; the session goes on), ``uploaded``, ``status``; and binary chunk messages:
a 4-byte big-endian header length, the JSON header (episode, chunk, frames, poses, input_seq,
timings, grid) and one JPEG holding every frame of the chunk, tiled top to bottom (then left to
right past 65,000 pixels): one image per chunk, encoded once and decoded by the browser in one
``createImageBitmap`` call.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_TEXT_BYTES",
    "ProtocolError",
    "InputMessage",
    "PlayedMessage",
    "ResetMessage",
    "parse_text",
    "decode_upload",
    "encode_frames",
    "pack_chunk",
    "encode_chunk",
    "decode_chunk",
]

MAX_TEXT_BYTES = 16 * 1024
MAX_MOUSE_DEGREES = 360.0
MAX_SEQ = 2**53 - 1  # JavaScript's largest exact integer
MAX_SEED = 2**32 - 1
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_JPEG_MAX_SIDE = 65000


class ProtocolError(ValueError):
    """A message the server refuses; ``request`` is its type when it could be read."""

    def __init__(self, message: str, request: str | None = None) -> None:
        super().__init__(message)
        self.request = request


@dataclass(frozen=True)
class InputMessage:
    seq: int
    keys: np.ndarray  # [K] int8 in {0, 1}
    look: np.ndarray  # [2] int8 in {-1, 0, 1}
    mouse: np.ndarray  # [2] float64 degrees


@dataclass(frozen=True)
class PlayedMessage:
    episode: int
    chunk: int
    buffered_s: float


@dataclass(frozen=True)
class ResetMessage:
    image: str | None
    prompt: str | None
    seed: int | None


def _int(value: Any, name: str, lo: int, hi: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an integer in [{lo}, {hi}], got {_show(value)}", kind)
    if not lo <= value <= hi:
        raise ProtocolError(f"{name} must lie in [{lo}, {hi}], got {value}", kind)
    return value


def _number(value: Any, name: str, limit: float, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{name} must be a finite number, got {_show(value)}", kind)
    if abs(value) > limit:
        raise ProtocolError(f"{name} must lie in [-{limit:g}, {limit:g}], got {value:g}", kind)
    return float(value)


def _list(value: Any, name: str, length: int, kind: str) -> list:
    if not isinstance(value, list) or len(value) != length:
        raise ProtocolError(f"{name} must be a list of {length} numbers, got {_show(value)}", kind)
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (int, float, str, list, dict, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _fields(obj: dict, kind: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    keys = set(obj) - {"type"}
    missing = [k for k in required if k not in keys]
    unknown = sorted(keys - set(required) - set(optional))
    if missing or unknown:
        raise ProtocolError(f"{kind!r} message: missing fields {missing}, unknown fields {unknown}", kind)


def parse_text(text: str, keyboard_dim: int, image_names: tuple[str, ...], max_prompt_chars: int):
    """One text message from the page -> an :class:`InputMessage`, :class:`PlayedMessage` or :class:`ResetMessage`.

    Raises :class:`ProtocolError` with a sentence for the page for anything else.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text messages may have at most {MAX_TEXT_BYTES} bytes, got {len(text.encode())}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"expected a JSON object, could not parse the message ({e})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object with a 'type', got {_show(obj)}")
    kind = obj.get("type")
    if kind == "input":
        _fields(obj, kind, ("seq", "keys", "look", "mouse"))
        seq = _int(obj["seq"], "seq", 0, MAX_SEQ, kind)
        keys = [_int(v, "keys[i]", 0, 1, kind) for v in _list(obj["keys"], "keys", keyboard_dim, kind)]
        look = [_int(v, "look[i]", -1, 1, kind) for v in _list(obj["look"], "look", 2, kind)]
        mouse = [
            _number(v, "mouse[i] (degrees)", MAX_MOUSE_DEGREES, kind) for v in _list(obj["mouse"], "mouse", 2, kind)
        ]
        return InputMessage(seq, np.array(keys, np.int8), np.array(look, np.int8), np.array(mouse, np.float64))
    if kind == "played":
        _fields(obj, kind, ("episode", "chunk", "buffered_ms"))
        episode = _int(obj["episode"], "episode", 0, MAX_SEQ, kind)
        chunk = _int(obj["chunk"], "chunk", 0, MAX_SEQ, kind)
        buffered = _number(obj["buffered_ms"], "buffered_ms", 3_600_000.0, kind)
        if buffered < 0:
            raise ProtocolError(f"buffered_ms must be >= 0, got {buffered:g}", kind)
        return PlayedMessage(episode, chunk, buffered / 1000.0)
    if kind == "reset":
        _fields(obj, kind, (), ("image", "prompt", "seed"))
        image, prompt, seed = obj.get("image"), obj.get("prompt"), obj.get("seed")
        if image is not None and image not in image_names:
            raise ProtocolError(f"image must be one of {list(image_names)} or null, got {_show(image)}", kind)
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ProtocolError(f"prompt must be a non-empty string or null, got {_show(prompt)}", kind)
            if len(prompt) > max_prompt_chars:
                raise ProtocolError(f"prompt has {len(prompt)} characters; at most {max_prompt_chars}", kind)
        if seed is not None:
            seed = _int(seed, "seed", 0, MAX_SEED, kind)
        return ResetMessage(image, prompt, seed)
    if isinstance(kind, str):
        raise ProtocolError(f"unknown message type {_show(kind)}; expected 'input', 'played' or 'reset'")
    raise ProtocolError(f"expected a 'type' field ('input', 'played' or 'reset'), got {_show(kind)}")


def decode_upload(data: bytes, max_bytes: int, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """An uploaded image -> uint8 [H, W, 3]; size, format and pixel count checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise ProtocolError(f"the image has {len(data)} bytes; at most {max_bytes} are accepted", "upload")
    if not data:
        raise ProtocolError("the upload is empty; expected a PNG, JPEG, WebP, GIF or BMP image", "upload")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format not in UPLOAD_FORMATS:
                raise ProtocolError(f"image format {im.format} is not accepted; use one of {UPLOAD_FORMATS}", "upload")
            w, h = im.size
            if w * h > max_pixels or w < 1 or h < 1:
                raise ProtocolError(
                    f"the image is {w} x {h} pixels; at most {max_pixels} pixels are accepted", "upload"
                )
            im.seek(0)
            return np.asarray(im.convert("RGB"))
    except ProtocolError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ProtocolError(f"could not decode the image ({type(e).__name__}: {e})", "upload") from None


def _grid(frames: int, height: int) -> tuple[int, int]:
    rows = max(1, min(frames, _JPEG_MAX_SIDE // height))
    return rows, -(-frames // rows)


def encode_frames(frames: np.ndarray, quality: int = 90) -> tuple[bytes, dict[str, Any]]:
    """Frames uint8 [T, H, W, 3] -> one JPEG of them all and its layout (frames, height, width, grid)."""
    from PIL import Image

    t, h, w, _ = frames.shape
    rows, cols = _grid(t, h)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(t):
        c, r = divmod(i, rows)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), {"frames": t, "height": h, "width": w, "grid": [rows, cols]}


def pack_chunk(header: dict[str, Any], jpeg: bytes) -> bytes:
    """A binary chunk message: 4-byte big-endian header length, JSON header, JPEG."""
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + jpeg


def encode_chunk(header: dict[str, Any], frames: np.ndarray, quality: int = 90) -> bytes:
    """A binary chunk message for frames uint8 [T, H, W, 3] (:func:`encode_frames` + :func:`pack_chunk`)."""
    jpeg, layout = encode_frames(frames, quality)
    return pack_chunk({**header, **layout}, jpeg)


def decode_chunk(message: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The inverse of :func:`encode_chunk` (for tests and non-browser clients): header, frames [T, H, W, 3]."""
    from PIL import Image

    (n,) = struct.unpack(">I", message[:4])
    header = json.loads(message[4 : 4 + n])
    sheet = np.asarray(Image.open(io.BytesIO(message[4 + n :])).convert("RGB"))
    h, w, rows = header["height"], header["width"], header["grid"][0]
    frames = [
        sheet[(i % rows) * h : (i % rows + 1) * h, (i // rows) * w : (i // rows + 1) * w]
        for i in range(header["frames"])
    ]
    return header, np.stack(frames)
