"""The scripts in examples/ run as their docstrings say (on the tiny random model, a few chunks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_explore_writes_its_video_and_dataset(tmp_path):
    from world_model.data.format import DatasetReader

    done = _run(
        str(ROOT / "examples/explore.py"), "--model", "tiny-random", "--chunks", "2", "--out", "ex", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ex" / "demo.mp4").stat().st_size > 0
    assert len(DatasetReader(tmp_path / "ex" / "dataset")) == 1


def test_random_vector_rollout_logs_every_envs_pose(tmp_path):
    done = _run(
        str(ROOT / "examples/random_vector_rollout.py"), "--model", "tiny-random", "--num-envs", "2", "--chunks", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith("chunk ")]
    assert [line.split(":")[0] for line in logged] == [
        "chunk 1 env 0",
        "chunk 1 env 1",
        "chunk 2 env 0",
        "chunk 2 env 1",
    ]


@pytest.mark.parametrize("script", ["explore.py", "random_vector_rollout.py"])
def test_a_count_of_zero_is_refused(tmp_path, script):
    done = _run(str(ROOT / "examples" / script), "--chunks", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--chunks" in done.stderr
