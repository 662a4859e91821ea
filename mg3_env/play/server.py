"""The ``mg3 play`` server: the page, a WebSocket per player, a bounded number of sessions.

Transport: the ``websockets`` library (asyncio). Why it: it has no dependencies of its own, it is
maintained since 2013 and tested against the Autobahn suite, it gives the limits this server needs
as arguments (``max_size`` of a message, ping timeouts, queue bounds) and its ``process_request``
hook answers the page's two plain GET requests, so no web framework is needed. WebRTC was not
chosen: chunks are generated whole (seconds each on a CPU), so a lower-latency media path gains
nothing, and it would re-encode a live stream where one JPEG per chunk is encoded once.

Safety: binds 127.0.0.1 unless told otherwise (then a warning is printed); WebSocket connections
from another origin (a page of another site in the same browser) are refused; every message is
checked (:mod:`mg3_env.play.protocol`); the page never names a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from mg3_env.play.compute import ComputeThread

__all__ = ["PlayServer", "ServerThread", "main"]

log = logging.getLogger("mg3.play")

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/play.js": ("play.js", "text/javascript; charset=utf-8")}
_WS_PATH = "/ws"


def _import_websockets():
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise ImportError("mg3 play needs the 'websockets' package: pip install 'mg3[play]'") from None


class PlayServer:
    """Serves the play page and one :class:`~mg3_env.env.MatrixGameEnv` per connection.

    Args:
        model: a loaded :class:`~world_model.model.WorldModel` (shared by the sessions).
        image, prompt: the first frame and prompt of every new session (default: the model's).
        max_sessions: players at once; a further connection gets a ``busy`` answer.
        record: dataset folder; every played episode is written there through
            :class:`~mg3_env.wrappers.record.RecordEpisodes` (one session at a time).
        max_chunks: chunks per episode (then a new episode starts by itself).
        max_upload_bytes: largest accepted image upload.
        jpeg_quality: quality of the per-chunk JPEG.
        compute: the thread that does all torch work (:class:`~mg3_env.play.compute.ComputeThread`);
            pass the one the model was loaded on (see that module for why), else the server makes its
            own. :meth:`close` ends it only if the server made it.
    """

    def __init__(
        self,
        model: Any,
        *,
        image: str | Path | None = None,
        prompt: str | None = None,
        max_sessions: int = 1,
        record: str | Path | None = None,
        max_chunks: int = 100,
        max_upload_bytes: int = 4 * 1024 * 1024,
        jpeg_quality: int = 90,
        compute: ComputeThread | None = None,
    ) -> None:
        from mg3_env.spaces import load_image, validate_prompt
        from mg3_env.vector import default_image_path

        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if record is not None and max_sessions > 1:
            raise ValueError(
                f"--record takes one session at a time (one dataset writer per folder), got max_sessions={max_sessions}"
            )
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must lie in [1, 95], got {jpeg_quality}")
        s = model.config.stream
        start = image if image is not None else (model.default_image or default_image_path())
        load_image(start, s.height, s.width)  # fail now, not in the first session
        self.model = model
        self.max_prompt_chars = model.config.text.max_prompt_chars
        self.prompt = validate_prompt(prompt, self.max_prompt_chars) if prompt is not None else None
        start_label = Path(start).name if image is not None else "the model's first frame"
        self.image_choices: dict[str, tuple[str, Any]] = {
            "start": (start_label, str(start)),
            "street": ("packaged street scene", default_image_path()),
        }
        self.max_sessions = max_sessions
        self.record = Path(record) if record is not None else None
        self.max_chunks = max_chunks
        self.max_upload_bytes = max_upload_bytes
        self.jpeg_quality = jpeg_quality
        self.sessions: set = set()
        self._next_id = 0
        self._pages = {
            path: ((resources.files("mg3_env.play") / "static" / name).read_bytes(), ctype)
            for path, (name, ctype) in _STATIC.items()
        }
        self._own_compute = compute is None
        self.compute = ComputeThread() if compute is None else compute
        try:  # checks max_chunks against the model before anyone connects
            self.compute.call(lambda: self.make_env().close())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End the compute thread if this server made it."""
        if self._own_compute:
            self.compute.close()

    def make_env(self):
        """A new env for one session (wrapped by the recorder with ``record``)."""
        from mg3_env.env import MatrixGameEnv

        env = MatrixGameEnv(
            model=self.model, image=self.image_choices["start"][1], prompt=self.prompt, max_chunks=self.max_chunks
        )
        if self.record is not None:
            from mg3_env.wrappers.record import RecordEpisodes

            env = RecordEpisodes(env, self.record)
        return env

    def hello(self, sid: int) -> dict[str, Any]:
        """The first message of a session: what the page needs to know about the model."""
        from mg3_env.spaces import KEYBOARD_KEYS

        cfg = self.model.config
        kdim = cfg.dit.action_config.keyboard_dim_in if cfg.dit.action_config is not None else 6
        return {
            "type": "hello",
            "session": sid,
            "model": self.model.describe(),
            "fps": float(cfg.stream.fps),
            "height": cfg.stream.height,
            "width": cfg.stream.width,
            "keys": list(KEYBOARD_KEYS[:kdim]),
            "images": [{"name": k, "label": v[0]} for k, v in self.image_choices.items()],
            "prompt": self.prompt,
            "max_prompt_chars": self.max_prompt_chars,
            "max_upload_bytes": self.max_upload_bytes,
            "max_chunks": self.max_chunks,
            "recording": self.record is not None,
        }

    # ------------------------------------------------------------------ connections

    def _process_request(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = request.path.split("?", 1)[0]
        if path == _WS_PATH:
            origin, host = request.headers.get("Origin"), request.headers.get("Host")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {origin} may not connect\n")
            return None  # go on with the WebSocket handshake
        if path not in self._pages:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        body, ctype = self._pages[path]
        headers = Headers(
            [
                ("Content-Type", ctype),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                (
                    "Content-Security-Policy",
                    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'",
                ),
            ]
        )
        return Response(200, "OK", headers, body)

    async def _handle(self, ws: Any) -> None:
        from mg3_env.play.session import Session

        if len(self.sessions) >= self.max_sessions:
            n = self.max_sessions
            await ws.send(
                json.dumps(
                    {
                        "type": "busy",
                        "max_sessions": n,
                        "message": f"busy: this server plays {n} session{'s' if n > 1 else ''} at a time and "
                        "all are taken; try again when one ends",
                    }
                )
            )
            await ws.close(1013, "busy")
            return
        self._next_id += 1
        session = Session(self, ws, self._next_id)
        self.sessions.add(session)
        log.info("session %d: connected (%d of %d)", session.sid, len(self.sessions), self.max_sessions)
        try:
            await session.run()
        except Exception:  # one session's failure never ends the server
            log.exception("session %d failed", session.sid)
        finally:
            self.sessions.discard(session)
            log.info("session %d: closed", session.sid)

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 8765):
        """Listen on ``host:port`` (0: any free port) while the context lasts; yields the page's URL."""
        _import_websockets()
        from websockets.asyncio.server import serve

        async with serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.max_upload_bytes + 64 * 1024,
            compression=None,  # JPEG does not compress further
            ping_interval=20,
            ping_timeout=60,
        ) as server:
            bound = server.sockets[0].getsockname()
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            yield f"http://{shown}:{bound[1]}/"


class ServerThread:
    """A :class:`PlayServer` on its own event loop in a daemon thread (for tests and notebooks).

    ``with ServerThread(server) as url: ...`` serves on 127.0.0.1 and a free port, and closes the
    server (:meth:`PlayServer.close`) at the end.
    """

    def __init__(self, server: PlayServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server, self.host, self.port = server, host, port
        self.url: str | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mg3-play-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with self.server.serving(self.host, self.port) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:  # reported by __enter__
            self._error = e
            self._ready.set()

    def __enter__(self) -> str:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        self.server.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """``mg3 play``: serve the play page until Ctrl+C."""
    from world_model.runtime import CONTEXT_CACHE_CHOICES, CONTEXT_CACHE_HELP

    p = argparse.ArgumentParser(
        prog="mg3 play", description="Walk through a world model in the browser (keyboard and mouse)."
    )
    p.add_argument("--model", default="default", help="registry name or model folder (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--image", default=None, help="first frame (PNG/JPEG); default: the model's own")
    p.add_argument("--prompt", default=None, help="prompt; default: the model's own")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--record", default=None, metavar="DIR", help="write every played episode as a dataset in DIR")
    p.add_argument("--max-sessions", type=int, default=1, help="players at once (default 1); others get 'busy'")
    p.add_argument("--max-chunks", type=int, default=100, help="chunks per episode before a new one starts")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps per chunk (default: the model's; fewer are faster and blurrier, e.g. 3 for the "
        "embedded model to keep real time on a 2-core CPU)",
    )
    g = p.add_argument_group("runtime options (world_model.runtime.RuntimeOptions)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each DiT block: faster chunks after a cold start (about 2.5 minutes for the 5B on an H200)",
    )
    g.add_argument(
        "--quantize",
        choices=("fp8", "int8", "none"),
        default=None,
        help="8-bit linears in the DiT blocks: fp8 (Ada/Hopper GPUs), int8 (CPU), none (default: the device's, on a "
        "CPU int8 in fp32 for the embedded model where the CPU has int8 dot products)",
    )
    g.add_argument("--attention", default="auto", help="attention backend (auto, sdpa, cudnn, flash, ...)")
    g.add_argument("--context-cache", choices=tuple(CONTEXT_CACHE_CHOICES), default="auto", help=CONTEXT_CACHE_HELP)
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    _import_websockets()
    if not 0 <= args.port <= 65535:
        p.error(f"--port must lie in [0, 65535], got {args.port}")
    import torch

    from world_model.checkpoint import CheckpointError
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    compute = ComputeThread()  # the model is loaded on the thread that will step it (see mg3_env.play.compute)
    try:
        runtime = RuntimeOptions.for_device(
            args.device,
            compile=args.compile,
            attention=args.attention,
            context_cache=CONTEXT_CACHE_CHOICES[args.context_cache],
            **({"quantize": None if args.quantize == "none" else args.quantize} if args.quantize else {}),
            **({"dtype": torch.bfloat16} if args.quantize == "fp8" else {}),  # FP8 computes in bf16 (on a GPU)
        )
        model = compute.call(load_world_model, args.model, runtime)
    except (ValueError, CheckpointError) as e:  # a bad or unrunnable option, a bad model folder: said before serving
        compute.close()
        print(f"mg3 play: {e}", file=sys.stderr)
        return 2
    if args.steps is not None:
        model = model.with_sampler(num_steps=args.steps)
    try:
        server = PlayServer(
            model,
            image=args.image,
            prompt=args.prompt,
            max_sessions=args.max_sessions,
            record=args.record,
            max_chunks=args.max_chunks,
            compute=compute,
        )
    except (ValueError, OSError, TypeError) as e:  # OSError: e.g. --record names a file
        compute.close()
        print(f"mg3 play: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(
            f"WARNING: serving on {args.host}: anyone who can reach this port can play, use the machine's "
            "compute and upload images; there is no authentication.",
            file=sys.stderr,
        )

    async def run() -> None:
        async with server.serving(args.host, args.port) as url:
            s = model.config.stream
            print(f"mg3 play: {url}  (model {model.name}, {s.width}x{s.height} at {s.fps:g} frames/s; Ctrl+C stops)")
            if args.record:
                print(f"recording every episode into {args.record}")
            sys.stdout.flush()
            await asyncio.Future()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except OSError as e:  # the port is taken, the host unknown
        print(f"mg3 play: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    finally:
        server.close()
        compute.close()
    return 0
