"""bench/pose_drift.py: the integrated poses' drift from the engine's over a window."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bench_loader import load_bench


def test_a_track_the_integrator_made_has_no_drift_and_a_slower_one_has():
    from world_model.camera import integrate_poses
    from world_model.config import tiny
    from world_model.train.frames import synthetic_store

    mod = load_bench("pose_drift.py")
    cfg = tiny(32, 32).stream
    frames = synthetic_store(1, 120, (32, 32))
    kb, ms = frames.keyboard, frames.mouse
    track = integrate_poses(torch.as_tensor(kb[None, :-1]), torch.as_tensor(ms[None, :-1]),
                            torch.zeros(1, 5, dtype=torch.float64), cfg)[0].numpy()  # fmt: skip
    gaps, moves = mod.window_drift(track, kb, ms, cfg, 57, 19)
    assert len(gaps) == 4 and max(gaps) < 1e-3 and max(moves) > 10
    gaps, _ = mod.window_drift(frames.poses.astype(np.float64), kb, ms, cfg, 57, 19)  # 4 units a frame, not 12.35
    assert max(gaps) > 10


def test_the_bench_writes_its_numbers(tmp_path):
    pytest.importorskip("vizdoom")
    mod = load_bench("pose_drift.py")
    out = tmp_path / "d.json"
    r = mod.main(["--episodes", "1", "--frames", "120", "--json", str(out)])
    assert r["windows"] == 4 and np.isfinite(r["end_gap"]["median"]) and r["move_speed"] > 0
    assert json.loads(out.read_text())["speed_while_held"].keys() == {"forward or back", "strafe"}
    with pytest.raises(SystemExit):
        mod.main(["--frames", "10"])
