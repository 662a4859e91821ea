"""A small JSON status file (and a JSONL metrics log) that a detached run keeps up to date.

Poll it from anywhere with ``cat <run>/status.json``; plot ``<run>/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["reopen", "StatusFile", "read_status"]


class StatusFile:
    """Writes ``status.json`` atomically and appends to ``metrics.jsonl`` in ``run_dir``."""

    def __init__(self, run_dir: str | Path, stage: str) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "status.json"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.data: dict[str, Any] = {
            "stage": stage,
            "state": "starting",
            "pid": os.getpid(),
            "started": time.time(),
            "step": 0,
            "total_steps": 0,
            "metrics": {},
            "eval": {},
        }

    @classmethod
    def existing(cls, run_dir: str | Path, stage: str) -> StatusFile:
        """The status as ``status.json`` holds it (a fresh one when there is none), to write on: for a
        process that continues what another one recorded there (e.g. the frame recorder's pid)."""
        st = cls(run_dir, stage)
        st.data.update(read_status(run_dir) or {})
        return st

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.data["updated"] = time.time()
        tmp = self.path.with_name(f".status-{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float) + "\n")
        tmp.replace(self.path)

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        """Append one line ``{"step", "kind", "time", **values}`` to metrics.jsonl."""
        row = {"step": step, "kind": kind, "time": time.time(), **values}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")


def reopen(run_dir: str | Path) -> None:
    """Mark a finished stage ``stopped`` (keeping its step and metrics) so that the pipeline trains it further."""
    data = read_status(run_dir)
    if data is None:
        raise FileNotFoundError(f"{run_dir} has no status.json: nothing to reopen")
    StatusFile.existing(run_dir, data.get("stage", Path(run_dir).name)).update(state="stopped")


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status dict, or None when it has not started."""
    p = Path(run_dir) / "status.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}): the run's status cannot be read") from None
