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


def fake_mg3(tmp_path: Path, reference: Path) -> tuple[Path, str]:
    """A stand-in ``mg3`` command for the bench shell scripts' tests: it records its arguments in
    ``tmp_path/args`` and writes ``reference`` as the run's metrics.json under its ``--out``. Returns (the script,
    a PATH that finds it first and this interpreter next)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "mg3"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" > {tmp_path}/args\n'
        'while [ $# -gt 0 ]; do if [ "$1" = --out ]; then out=$2; fi; shift; done\n'
        f'mkdir -p "$out" && cp {reference} "$out/metrics.json"\n'
    )
    fake.chmod(0o755)
    return fake, f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
