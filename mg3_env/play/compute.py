"""One thread for all of the play server's torch work: loading the model, making envs, every step.

Why one thread: PyTorch's CPU kernels run in OpenMP parallel regions, and GNU OpenMP (the runtime
of the PyTorch wheels) gives every thread that starts a parallel region its own team of worker
threads, kept for the thread's lifetime. Once two threads have done parallel work (say the main
thread loaded the model and a worker thread steps the env), the process manages more OpenMP
threads than the machine has cores, and libgomp then throttles its spin-waits: each worker goes to
sleep between two parallel regions and is woken by a futex for the next, for every one of the
thousands of small kernels of a chunk. Measured on the 2-core CPU with the embedded model (model
loaded on the main thread, env stepped on a worker thread): 2.5-4.4 s per chunk instead of 1.7-1.9 s
when load and steps share one thread (``/tmp`` scripts, described in the stop-15 closing note).
So the server keeps a single compute thread and does everything that touches torch on it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ComputeThread"]

T = TypeVar("T")


class ComputeThread:
    """A single worker thread that runs callables in order.

    ``call(fn, ...)`` blocks until ``fn`` has run on the thread (for setup code), ``await
    run(fn, ...)`` does the same from asyncio without blocking the event loop. Work submitted by
    several sessions runs one item at a time, which is what the cores (or the one GPU) allow anyway.
    """

    def __init__(self, name: str = "mg3-compute") -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._ident: int | None = None
        self.call(self._note_ident)  # start the thread now; remember which it is

    def _note_ident(self) -> None:
        self._ident = threading.get_ident()

    @property
    def ident(self) -> int | None:
        """``threading.get_ident()`` of the compute thread."""
        return self._ident

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the compute thread and return its result (or raise its error)."""
        if threading.get_ident() == self._ident:  # already on it: a nested call would wait for itself
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await`` form of :meth:`call`: the event loop goes on while ``fn`` runs."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Let queued work finish, then end the thread."""
        self._pool.shutdown(wait=True)
