"""bench/gpu/plan_session.py: the flags a GPU session's stages run with."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _plan(*args: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "bench/gpu/plan_session.py", "bench/results/train_throughput_h200.json", "20", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    tokens = out.stdout.split()
    return dict(zip(tokens[::2], tokens[1::2], strict=True))


def test_the_session_commands_own_flags_win_over_the_plan():
    plain = _plan()
    assert "--memory-lr" in plain and "--memory-batch" in plain
    # the session command's flags reach the run through pipeline.json; the plan must not override them
    given = _plan("--given=--seed 25 --memory-lr 5e-05 --memory_batch=64 --frames 300000")
    assert "--memory-lr" not in given and "--memory-batch" not in given
    assert given == {k: v for k, v in plain.items() if k not in ("--memory-lr", "--memory-batch")}
