"""bench/pose_oracle_control.py: the control part's yaw with the simulator's poses instead of the integrated ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bench_loader import load_bench


def test_relative_poses_keep_every_pose_relative_to_another():
    from world_model.camera import c2w_from_poses, rigid_inverse

    mod = load_bench("pose_oracle_control.py")
    rng = np.random.default_rng(0)
    p = np.concatenate(
        [rng.uniform(-500, 500, (6, 3)), rng.uniform(-30, 30, (6, 1)), rng.uniform(-180, 180, (6, 1))], 1
    )
    rel = mod.relative_poses(p)
    assert np.allclose(rel[0], [0, 0, 0, p[0, 3], 0])
    a, b = c2w_from_poses(torch.from_numpy(p)), c2w_from_poses(torch.from_numpy(rel))
    for k in range(1, 6):  # what the window conditioning sees: each pose in the frame of another
        torch.testing.assert_close(rigid_inverse(b[:1]) @ b[k : k + 1], rigid_inverse(a[:1]) @ a[k : k + 1])
        torch.testing.assert_close(
            rigid_inverse(b[k - 1 : k]) @ b[k : k + 1], rigid_inverse(a[k - 1 : k]) @ a[k : k + 1]
        )


def test_the_bench_runs_both_pose_sources_on_a_small_model(tmp_path):
    pytest.importorskip("vizdoom")
    mod = load_bench("pose_oracle_control.py")
    out = tmp_path / "o.json"
    r = mod.main(["--model", "tiny-random", "--episodes", "2", "--chunks", "2", "--json", str(out)])
    assert set(r["rows"]) == {"sim", "integrated", "simulator_poses"}
    assert r["episodes"] + r["episodes_left_out"] == 2 and r["windows"] > 0
    for row in r["rows"].values():
        assert 0 <= row["mouse_accuracy"] <= 1 and len(row["per_episode_mouse"]) == r["episodes"]
    assert json.loads(out.read_text())["rows"]["sim"]["mouse_accuracy"] == r["rows"]["sim"]["mouse_accuracy"]
