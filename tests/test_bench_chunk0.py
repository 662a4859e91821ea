"""bench/chunk0_onset.py: the per-latent grouping and an end-to-end run on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench_loader import load_bench

ROOT = Path(__file__).resolve().parents[1]


def _module():
    return load_bench("chunk0_onset.py")


def test_per_latent_groups_frames_caps_identical_ones_and_drops_the_tail():
    mod = _module()
    db = np.array(
        [[10.0, 20.0, 30.0, 100.0, 5.0, 5.0, 5.0, 5.0, 7.0], [20.0, 20.0, 20.0, 20.0, 15.0, 15.0, 15.0, 15.0, 9.0]]
    )
    # latent 0: (10 + 20 + 30 + 60) / 4 = 30 and 20 -> 25; latent 1: 5 and 15 -> 10; the ninth frame is no latent
    assert mod.per_latent(db, 4) == [25.0, 10.0]


@pytest.mark.slow
def test_chunk0_onset_runs_on_the_embedded_model(tmp_path):
    out = tmp_path / "onset.json"
    cmd = [sys.executable, str(ROOT / "bench" / "chunk0_onset.py"), str(ROOT / "world_model" / "assets" / "embedded")]
    cmd += ["--episodes", "1", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = [*r["still"].values(), *r["onset"].values()]
    assert len(rows) == 6 and all(len(v) == 14 and all(0 < x <= 60 for x in v) for v in rows)  # 56 frames, 14 latents
    # with no actions the model holds its own first frame closer than the simulator's moving frames are to theirs
    assert r["still"]["model_vs_own_frame0"][0] > r["onset"]["sim_vs_own_frame0"][0]
    assert "still" in proc.stdout and "onset" in proc.stdout
