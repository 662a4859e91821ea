"""``mg3 play``: walk through a world model in the browser with keyboard and mouse.

``mg3 play [--model M] [--image I] [--prompt P] [--port N] [--record DIR]`` serves a page on
127.0.0.1; each connection gets its own :class:`~mg3_env.env.MatrixGameEnv`. Parts:

- :mod:`~mg3_env.play.server`: the page, the WebSocket, the session bound, the command line;
- :mod:`~mg3_env.play.session`: one connection (generation ahead of playback, each chunk's JPEG
  encoded while the next one is generated);
- :mod:`~mg3_env.play.compute`: the one thread that loads the model and runs every env call;
- :mod:`~mg3_env.play.controls`: keys and mouse -> the next chunk's action;
- :mod:`~mg3_env.play.pacing`: when to generate the next chunk;
- :mod:`~mg3_env.play.protocol`: the messages, checked, and the per-chunk JPEG;
- :mod:`~mg3_env.play.client`: a browserless page (playback, reports, measurements) for benchmarks;
- :mod:`~mg3_env.play.browser`: the system Chromium's headless flags (browser tests, ``bench/play.py``).

Needs the ``play`` extra (``pip install 'mg3[play]'``: the ``websockets`` package).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PlayServer", "ServerThread"]


def __getattr__(name: str) -> Any:  # the server imports torch through the env; load it on first use
    if name in __all__:
        from mg3_env.play import server

        return getattr(server, name)
    raise AttributeError(f"module 'mg3_env.play' has no attribute {name!r}")
