"""The simulator's depth (DoomConfig.depth, DoomEngine.depth) and the chunk-0 geometric oracle (mg3_eval.oracle)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mg3_eval.oracle import camera_axes, reproject

ROOT = Path(__file__).resolve().parents[1]
K = (64.0, 64.0, 32.0, 32.0)  # fx, fy, cx, cy of a 64 x 64 frame (90 degrees across)


def _textured(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_camera_axes_follow_the_package_convention():
    f, r = camera_axes(np.array([0, 0, 0, 0, 0.0]))
    np.testing.assert_allclose(f, [1, 0], atol=1e-12)
    np.testing.assert_allclose(r, [0, 1], atol=1e-12)  # yaw 0 looks along +x, right is +y (Doom's y mirrored)
    f, r = camera_axes(np.array([0, 0, 0, 0, 90.0]))
    np.testing.assert_allclose(f, [0, 1], atol=1e-12)
    np.testing.assert_allclose(r, [-1, 0], atol=1e-12)


def test_reproject_same_pose_is_the_frame():
    src, depth = _textured(), np.full((64, 64), 200.0)
    pose = np.array([10.0, -5.0, 41.0, 0.0, 30.0])
    out, moved = reproject(src, depth, pose, depth, pose, K)
    np.testing.assert_array_equal(out, src)
    assert moved.all()


def test_reproject_sideways_step_shifts_a_wall_by_its_parallax():
    # a wall facing the camera 128 units away; a step of 8 units to the right moves it 64 * 8 / 128 = 4 px left
    src, depth = _textured(), np.full((64, 64), 128.0)
    p0 = np.array([0.0, 0.0, 41.0, 0.0, 0.0])
    p1 = p0 + np.array([0.0, 8.0, 0.0, 0.0, 0.0])  # right of yaw 0 is +y
    out, moved = reproject(src, depth, p0, depth, p1, K)
    np.testing.assert_array_equal(out[:, :-4], src[:, 4:])
    assert moved[:, :-4].all() and not moved[:, -4:].any()  # the new columns at the right edge: not in frame 0
    np.testing.assert_array_equal(out[:, -4:], src[:, -4:])  # ... so they repeat frame 0
    fill = np.zeros_like(src)
    out, _ = reproject(src, depth, p0, depth, p1, K, fill=fill)
    assert (out[:, -4:] == 0).all() and np.array_equal(out[:, :-4], src[:, 4:])


def test_reproject_walking_forward_magnifies_about_the_centre():
    # a picture that is linear in x and y, which bilinear sampling reproduces exactly
    i, j = np.mgrid[0:64, 0:64].astype(np.float64)
    src = np.repeat((60 + 2 * j + i)[..., None], 3, axis=2).astype(np.uint8)
    p0 = np.array([0.0, 0.0, 41.0, 0.0, 0.0])
    p1 = p0 + np.array([64.0, 0.0, 0.0, 0.0, 0.0])  # half way to a wall 128 units ahead: twice the size
    out, moved = reproject(src, np.full((64, 64), 128.0), p0, np.full((64, 64), 64.0), p1, K)
    assert moved.all()
    # the pixel at (u, v) shows what frame 0 had half way to the centre: at (32 + (u - 32) / 2, ...), centres at +0.5
    j0, i0 = 32 + (j + 0.5 - 32) / 2 - 0.5, 32 + (i + 0.5 - 32) / 2 - 0.5
    np.testing.assert_allclose(out[..., 0], 60 + 2 * j0 + i0, atol=0.5)


def test_reproject_hides_what_something_nearer_covered():
    src, p0 = _textured(), np.array([0.0, 0.0, 41.0, 0.0, 0.0])
    src_depth = np.full((64, 64), 128.0)
    src_depth[:, 20:40] = 40.0  # a pillar in front of the wall in frame 0 ...
    p1 = p0 + np.array([0.0, 8.0, 0.0, 0.0, 0.0])
    dst_depth = np.full((64, 64), 128.0)  # ... that frame t (say, after it moved away) sees past
    _, moved = reproject(src, src_depth, p0, dst_depth, p1, K)
    assert not moved[:, 17:35].any()  # the wall behind the pillar was hidden in frame 0
    assert moved[:, :15].all()


def test_reproject_refuses_frames_of_two_sizes():
    with pytest.raises(ValueError, match="one size"):
        reproject(_textured(), np.ones((64, 64)), np.zeros(5), np.ones((32, 32)), np.zeros(5), K)


# ------------------------------------------------------------------------------------------- the simulator's depth


def test_depth_is_off_unless_asked():
    pytest.importorskip("vizdoom")
    from world_model.data.doom import DoomConfig, DoomEngine
    from world_model.data.levels import get_level

    with DoomEngine(get_level("generated/5"), DoomConfig(64, 48)) as engine:
        engine.reset(seed=1)
        with pytest.raises(RuntimeError, match="depth=True"):
            engine.depth()


def test_depth_measures_map_units_along_the_view():
    """Walking straight ahead at a wall, the depth in the middle of the picture falls by the distance walked
    (DEPTH_UNIT's calibration), and the frames are the same as without the depth buffer."""
    pytest.importorskip("vizdoom")
    from world_model.data.doom import Command, DoomConfig, DoomEngine
    from world_model.data.levels import get_level

    level = get_level("generated/5")
    runs = {}
    for depth in (False, True):
        with DoomEngine(level, DoomConfig(128, 128, spawn="anywhere", depth=depth), seed=3) as engine:
            frames, poses, depths = [], [], []
            frame, pose = engine.reset(seed=3)
            for _ in range(12):
                frames.append(frame)
                poses.append(pose)
                if depth:
                    depths.append(engine.depth())
                frame, pose, _ = engine.step(Command(forward=True))
            runs[depth] = (np.stack(frames), np.stack(poses), depths)
    np.testing.assert_array_equal(runs[False][0], runs[True][0])
    _, poses, depths = runs[True]
    assert depths[0].shape == (128, 128) and depths[0].dtype == np.float32
    f0, _ = camera_axes(poses[0])
    walked = float((poses[-1, :2] - poses[0, :2]) @ f0)
    centre = [float(d[58:70, 58:70].mean()) for d in (depths[0], depths[-1])]
    assert walked > 80
    assert centre[0] - centre[1] == pytest.approx(walked, rel=0.1)


def test_recorded_episodes_carry_depth_and_the_oracle_bench_scores_them(tmp_path):
    pytest.importorskip("vizdoom")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import chunk0_oracle
    finally:
        sys.path.pop(0)
    from mg3_eval.simulator import record_test_episodes
    from world_model.config import WorldModelConfig

    cfg = WorldModelConfig.load(ROOT / "world_model/assets/embedded/config.json")
    plain = record_test_episodes(cfg, 1, 60, split="test", seed=0)
    deep = record_test_episodes(cfg, 1, 60, split="test", seed=0, depth=True)
    assert plain[0].depth is None
    np.testing.assert_array_equal(plain[0].frames, deep[0].frames)
    assert deep[0].depth.shape == deep[0].frames.shape[:3]

    out = tmp_path / "oracle.json"
    chunk0_oracle.main(["--episodes", "1", "--chunks", "1", "--blurs", "10", "--json", str(out)])
    r = json.loads(out.read_text())
    assert set(r["summary"]) == {"oracle", "oracle_blur_fill", "blur_10"}
    ep = r["per_episode"][0]
    assert 0.0 < ep["moved_share"] <= 1.0 and ep["oracle"] > ep["repeat"] - 3.0
    # a metrics file of other episodes is refused, not paired
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"fidelity": {"chunk0": {"pooled": {"psnr_repeat": 1.0, "per_episode": [2.0]}}}}))
    with pytest.raises(SystemExit, match="not the metrics"):
        chunk0_oracle.main(["--episodes", "1", "--chunks", "1", "--metrics", str(bad)])
