"""The bench scripts (bench/*.py, not a package) as modules, for the tests of their pieces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_bench(path: str) -> ModuleType:
    """``bench/<path>`` (e.g. "memory_views.py", "gpu/eval_snapshots.py") imported afresh, registered in
    ``sys.modules`` under its file name (dataclasses and pickling look a module up there)."""
    file = ROOT / "bench" / path
    name = "bench_" + file.stem
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
