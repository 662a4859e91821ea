"""bench/strafe_pathways.py: the pan measure, the camera code's modes, and the recording's strafe pan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.bench_loader import load_bench


def test_the_pan_is_the_shift_between_frames():
    mod = load_bench("strafe_pathways.py")
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (32, 96, 3)).astype(np.uint8)
    frames = np.stack([wide[:, 20 - 3 * i : 84 - 3 * i] for i in range(5)])  # the view slides 3 pixels a frame
    assert mod.horizontal_pan(frames) == 3.0
    assert mod.horizontal_pan(np.stack([wide[:, :64]] * 4)) == 0.0


def test_the_bands_tell_a_step_aside_from_a_turn():
    mod = load_bench("strafe_pathways.py")
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 255, (30, 120, 3)).astype(np.uint8)
    turn = np.stack([wide[:, 30 - 2 * i : 94 - 2 * i] for i in range(5)])
    assert mod.band_pans(turn) == [2.0, 2.0, 2.0] and mod.parallax(mod.band_pans(turn)) == 0.0
    # a step aside: the near top and bottom bands slide 4 pixels a frame, the far middle 1
    step = np.concatenate([turn[:, :10] * 0, turn[:, 10:20], turn[:, 20:] * 0], axis=1)
    for i in range(5):
        step[i, :10] = wide[:10, 30 - 4 * i : 94 - 4 * i]
        step[i, 10:20] = wide[10:20, 30 - i : 94 - i]
        step[i, 20:] = wide[20:, 30 - 4 * i : 94 - 4 * i]
    assert mod.band_pans(step) == [4.0, 1.0, 4.0] and mod.parallax(mod.band_pans(step)) == 3.0


def test_the_camera_code_modes_change_the_poses_and_are_undone():
    import world_model.generator as generator
    from world_model.camera import integrate_poses
    from world_model.config import StreamConfig

    mod = load_bench("strafe_pathways.py")
    kb = torch.zeros(1, 8, 6, dtype=torch.float64)
    kb[..., 0] = 1  # W held
    mouse = torch.zeros(1, 8, 2, dtype=torch.float64)
    mouse[..., 1] = 0.2
    start = torch.zeros(1, 5, dtype=torch.float64)
    cfg = StreamConfig()
    walk = integrate_poses(kb, mouse, start, cfg)
    for mode in ("keys", "still", "strafe"):
        with mod.camera_code(mode):
            poses = generator.integrate_poses(kb, mouse, start, cfg)
        np.testing.assert_allclose(poses[..., 3:], walk[..., 3:])  # the mouse is integrated as given
        moved = (poses[0, -1, :2] - poses[0, 0, :2]).norm()
        if mode == "keys":
            torch.testing.assert_close(poses, walk)
        elif mode == "still":
            assert moved == 0
        else:
            strafe = kb.clone()
            strafe[..., 0], strafe[..., 2] = 0, 1
            torch.testing.assert_close(poses, integrate_poses(strafe, mouse, start, cfg))
    assert generator.integrate_poses is integrate_poses


def test_a_recordings_strafe_pan(tmp_path):
    pytest.importorskip("vizdoom")
    from world_model.train.engine_frames import main

    out = tmp_path / "frames"
    main(["--out", str(out), "--frames", "200", "--episode-frames", "100", "--size", "64", "64", "--workers", "1",
          "--explorer", "walk=0,walk_turn=0,turn=0,look=0,back=0,pause=0,turn_and_return=0,walk_and_return=0",
          "--no-progress"])  # fmt: skip
    result = load_bench("strafe_pathways.py").recorded_strafe_pan(str(out), samples=50)
    assert result["pairs"] == 50 and result["strafe_share"] > 0.3  # 4 in 10 strafes turn
    assert result["pan"] > 0.5 and 0 < result["moving_share"] <= 1  # strafing slides the view


def test_more_starts_than_one_need_random_points(capsys):
    mod = load_bench("strafe_pathways.py")
    for argv in (["--starts", "2"], ["--starts", "0", "--spawn", "anywhere"]):
        with pytest.raises(SystemExit):
            mod.main(argv)  # refused before any model or engine is loaded
        assert "--starts" in capsys.readouterr().err
