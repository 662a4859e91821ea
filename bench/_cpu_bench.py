"""What the CPU benches share: the machine's record in their JSON and header, and the median time of a call."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from world_model.runtime import cpu_int8_native, cpu_name


def cpu_record() -> dict:
    """The CPU a bench ran on, for its JSON (``cpu_name`` tells the VM's generation apart)."""
    return {
        "device_name": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_int8_native": cpu_int8_native(),
    }


def cpu_line() -> str:
    return f"CPU {cpu_name()}, int8 dot products: {cpu_int8_native()}, threads {torch.get_num_threads()}"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
