"""bench/embedded_speed.py on the CPU with the tiny random model: the options it measures are the ones it applies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "bench/embedded_speed.py", "--model", "tiny-random", "--device", "cpu", "--chunks", "1"]
    return subprocess.run(
        [*cmd, "--json", str(tmp_path / "out.json"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_sampler_steps_are_applied_and_recorded(tmp_path):
    """--sampler-steps N runs the chunks with N steps (the JSON and the table say so); refused below 1."""
    r = _run(tmp_path, "--sampler-steps", "2", "--context-cache", "both")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["sampler_steps"] == [2] and out["context_cache"] == [False, True]
    assert "2 sampler steps" in r.stdout
    bad = _run(tmp_path, "--sampler-steps", "0")
    assert bad.returncode == 2 and "--sampler-steps must be >= 1" in bad.stderr


def test_context_cache_refresh_settings_are_measured_apart(tmp_path):
    """--context-cache both --context-cache-refresh 0 2: the exact run and one cached run per refresh, each a row."""
    r = _run(tmp_path, "--context-cache", "both", "--context-cache-refresh", "0", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert [row["context_cache"] for row in out["rows"]] == ["off", "on", "on/r2"]
    assert out["context_cache_refresh"] == [0, 2] and "on/r2" in r.stdout
    bad = _run(tmp_path, "--context-cache-refresh", "2")
    assert bad.returncode == 2 and "add --context-cache on or both" in bad.stderr
    r = _run(tmp_path)  # auto, the default: as the device's default runs it (this model names no refresh: exact)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["context_cache"] == [False] and out["context_cache_refresh"] == [0]
