"""Data engine ground truth: recorded poses vs ViZDoom's readings, rotations vs the integrator,
determinism, and resumable generation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vizdoom")
pytest.importorskip("av")

from world_model.config import StreamConfig  # noqa: E402
from world_model.data.doom import Command, DoomConfig, DoomEngine, doom_to_pose  # noqa: E402
from world_model.data.explorer import ExplorerConfig  # noqa: E402
from world_model.data.format import DatasetReader  # noqa: E402
from world_model.data.generate import GenerateConfig, generate_dataset, record_episode  # noqa: E402
from world_model.data.levels import LEVELS, get_level, levels_in_split  # noqa: E402
from world_model.data.poses import c2w_from_poses, wrap_degrees  # noqa: E402

CFG = DoomConfig(width=160, height=120)
ROTATE_ONLY = ExplorerConfig(
    walk=0, walk_turn=0, strafe=0, back=0, walk_and_return=0, turn=1, look=1, pause=0.2, turn_and_return=1,
    look_while_moving=0.0,
)  # fmt: skip


def _reference_rotations(mouse: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Spec §5.1 rotation integration: 15 deg per unit, deadzone 0.02, yaw wrapped."""
    cfg = StreamConfig()
    pitch, yaw = float(start[0]), float(start[1])
    out = [(pitch, yaw)]
    for m_pitch, m_yaw in mouse.astype(np.float64):
        if abs(m_pitch) >= cfg.mouse_deadzone:
            pitch += cfg.degrees_per_mouse_unit * m_pitch
        if abs(m_yaw) >= cfg.mouse_deadzone:
            yaw = float(wrap_degrees(yaw + cfg.degrees_per_mouse_unit * m_yaw))
        out.append((pitch, yaw))
    return np.array(out)


def test_known_actions_match_vizdoom_readings(tmp_path):
    with DoomEngine(get_level("MAP01"), CFG, workdir=tmp_path) as engine:
        frame, pose = engine.reset()
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
        start = engine.doom_readings()
        script = [Command(yaw=3.0)] * 10 + [Command(pitch=2.0)] * 5 + [Command(pitch=-2.0)] * 5
        script += [Command(forward=True)] * 25
        for cmd in script:
            frame, pose, done = engine.step(cmd)
            assert not done
            r = engine.doom_readings()
            np.testing.assert_allclose(pose, doom_to_pose(r["x"], r["y"], r["z"], r["angle"], r["pitch"]))
        r = engine.doom_readings()
    # 10 frames of +3 deg/frame to the right: Doom's counter-clockwise ANGLE drops by 30, our yaw rises by 30
    assert wrap_degrees(start["angle"] - r["angle"]) == pytest.approx(30.0, abs=0.05)
    assert pose[4] == pytest.approx(float(wrap_degrees(-start["angle"] + 30.0)), abs=0.05)
    assert r["pitch"] == pytest.approx(0.0, abs=0.2)  # down 10 deg and back up (Doom quantises per tic)
    # Doom y is flipped, z is the eye height (view bob off)
    assert pose[1] == pytest.approx(-r["y"]) and pose[2] == pytest.approx(r["z"])
    assert r["z"] == pytest.approx(41.0)  # MAP01's start floor is at 0, eye height 41


def test_optical_axis_is_the_walking_direction_and_pitch_looks_down(tmp_path):
    with DoomEngine(get_level("MAP01"), CFG, workdir=tmp_path) as engine:
        engine.reset()
        for _ in range(10):
            _, p0, _ = engine.step(Command(yaw=4.0))
        for _ in range(12):
            _, p1, _ = engine.step(Command(forward=True))
        for _ in range(5):
            _, p2, _ = engine.step(Command(pitch=3.0))
    axis = c2w_from_poses(p0)[:3, 2]
    move = (p1 - p0)[:3]
    assert np.linalg.norm(move[:2]) > 50
    cos = axis[:2] @ move[:2] / np.linalg.norm(axis[:2]) / np.linalg.norm(move[:2])
    assert cos > 0.999
    assert p2[3] == pytest.approx(15.0, abs=0.1)  # Doom PITCH > 0 is looking down ...
    assert c2w_from_poses(p2)[2, 2] < -0.25  # ... and the package's optical axis points down (-Z)


def test_rotations_agree_with_the_integrator(tmp_path):
    ep = record_episode(get_level("E1M1"), 150, seed=4, doom=CFG, explorer=ROTATE_ONLY, workdir=tmp_path)
    assert len(ep.poses) == 150 and not ep.finished_early
    assert np.abs(ep.poses[:, :3] - ep.poses[0, :3]).max() == 0.0  # rotations only: the camera stays put
    assert np.abs(ep.mouse[:, 1]).max() > 0.1 and np.abs(ep.mouse[:, 0]).max() > 0.05
    ref = _reference_rotations(ep.mouse, ep.poses[0, 3:])
    np.testing.assert_allclose(ref[:-1, 0], ep.poses[:, 3], atol=1e-3)
    np.testing.assert_allclose(wrap_degrees(ref[:-1, 1] - ep.poses[:, 4]), 0.0, atol=1e-3)
    camera = pytest.importorskip("world_model.camera")
    import torch

    poses = camera.integrate_poses(
        torch.from_numpy(ep.keyboard[None].astype(np.float64)),
        torch.from_numpy(ep.mouse[None].astype(np.float64)),
        torch.from_numpy(ep.poses[:1]),
        StreamConfig(),
    )[0, :-1].numpy()
    np.testing.assert_allclose(poses[:, 3], ep.poses[:, 3], atol=1e-3)
    np.testing.assert_allclose(wrap_degrees(poses[:, 4] - ep.poses[:, 4]), 0.0, atol=1e-3)


def test_record_episode_is_deterministic(tmp_path):
    a = record_episode(get_level("MAP02"), 80, seed=11, doom=CFG, workdir=tmp_path)
    b = record_episode(get_level("MAP02"), 80, seed=11, doom=CFG, workdir=tmp_path)
    c = record_episode(get_level("MAP02"), 80, seed=12, doom=CFG, workdir=tmp_path)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.poses, b.poses)
    np.testing.assert_array_equal(a.keyboard, b.keyboard)
    assert a.prompt == b.prompt and "Filtration Tunnels (MAP02)" in a.prompt
    assert not np.array_equal(a.keyboard, c.keyboard)
    assert a.keyboard[:, 4:].max() == 0 and set(np.unique(a.keyboard)) <= {0.0, 1.0}
    moved = np.linalg.norm(np.diff(a.poses[:, :2], axis=0), axis=1)
    assert moved.max() < 64 and moved.sum() > 100  # the explorer walks


def test_resolution_crop_and_intrinsics():
    assert DoomConfig(160, 120).intrinsics() == (80.0, 80.0, 80.0, 60.0)
    fx, fy, cx, cy = DoomConfig(128, 128).intrinsics()  # 200x150 render, 150x150 crop, resize
    assert fx == pytest.approx(100 * 128 / 150) and fy == pytest.approx(fx) and (cx, cy) == (64, 64)
    fx, fy, _, _ = DoomConfig(320, 180).intrinsics()  # 16:9 crop of 320x240 keeps 90 deg horizontally
    assert fx == pytest.approx(160.0)
    with pytest.raises(ValueError, match="even"):
        DoomConfig(161, 120)


def test_levels_split_by_level():
    names = {s: {lv.name for lv in levels_in_split(s)} for s in ("train", "validation", "test")}
    assert sum(len(v) for v in names.values()) == len(LEVELS) == 68
    assert not (names["train"] & names["validation"]) and not (names["train"] & names["test"])
    assert len(names["validation"]) == 6 and len(names["test"]) == 6


def test_generate_is_resumable_and_deterministic(tmp_path):
    cfg = GenerateConfig(
        frames=150, width=64, height=48, workers=1, seed=5, episode_frames=60, levels=("MAP01", "E1M1")
    )
    first = generate_dataset(tmp_path / "a", cfg, progress=False)
    assert len(first) == 3 and first.num_frames == 180  # whole episodes
    assert {e.level for e in first.episodes} == {"freedoom2/MAP01", "freedoom1/E1M1"}
    assert {e.split for e in first.episodes} == {"train"}
    assert first.meta["camera"]["fx"] == pytest.approx(32.0)
    # the stated frame rate is the one the engine produces: 35 tics/s / 2 tics per frame
    assert first.fps == DoomConfig(64, 48).fps == 17.5 and first.info["fps"] == 17.5
    import av

    with av.open(str(next((tmp_path / "a/videos").rglob("*.mp4")))) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(17.5)
    from world_model.data.summary import ACTION_CLASSES, summarize

    s = summarize(tmp_path / "a")
    assert s["fps"] == 17.5 and s["hours"] == pytest.approx(180 / 17.5 / 3600)
    h = s["action_histogram"]
    assert h["frames"] == 180 and set(ACTION_CLASSES) <= set(h["classes"])
    assert sum(h["classes"].values()) == pytest.approx(1.0)
    # a stale temporary file from a crash is cleaned; a second run with more frames continues
    (tmp_path / "a/.staging/plan-0000009.mp4.tmp-1").write_bytes(b"junk")
    more = generate_dataset(tmp_path / "a", _more(cfg), progress=False)
    assert len(more) == 5 and not list((tmp_path / "a").rglob("*.tmp-*"))
    assert [e.extra["plan"] for e in more.episodes] == [0, 1, 2, 3, 4]
    fresh = generate_dataset(tmp_path / "b", _more(cfg), progress=False)
    for i in range(5):
        x, y = more.load_episode(i), fresh.load_episode(i)
        assert x.info.level == y.info.level and x.info.seed == y.info.seed
        np.testing.assert_array_equal(x.poses, y.poses)
        np.testing.assert_array_equal(x.mouse, y.mouse)
        np.testing.assert_array_equal(x.frames, y.frames)
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(tmp_path / "a", GenerateConfig(frames=10, width=64, height=48, seed=6), progress=False)
    assert len(DatasetReader(tmp_path / "a")) == 5


def _more(cfg: GenerateConfig) -> GenerateConfig:
    from dataclasses import replace

    return replace(cfg, frames=250)


def test_explorer_fuzz_limits_and_deadzone():
    from world_model.data.explorer import Explorer

    cfg = ExplorerConfig()
    moving = 0
    for seed in range(40):
        policy, pose = Explorer(seed, cfg), np.zeros(5)
        for i in range(300):
            cmd = policy.act(pose)
            for rot in (cmd.pitch, cmd.yaw):
                assert rot == 0 or abs(rot) >= 0.5  # never inside the release's 0.3 deg mouse deadzone
            step = 10.0 if (cmd.forward or cmd.back or cmd.left or cmd.right) and i % 100 < 70 else 0.0
            pose = pose + np.array([step, 0, 0, cmd.pitch, cmd.yaw])  # walls block 30% of the time
            assert abs(pose[3]) <= cfg.pitch_limit + 1e-9
            moving += cmd.forward
    assert moving > 0.2 * 40 * 300  # walking forward is the main behaviour
    # a blocked walker is detected as stuck and recovers (USE, back up, turn)
    policy, pose = Explorer(0, cfg), np.zeros(5)
    for _ in range(200):
        cmd = policy.act(pose)
        pose = pose + np.array([0, 0, 0, cmd.pitch, cmd.yaw])
    assert policy.num_stuck > 0


def _synthetic_run(seed: int, frames: int, cfg: ExplorerConfig | None = None):
    """The explorer against a simple world: translation moves 10 units except 15% of the time (walls)."""
    from world_model.data.explorer import Explorer

    policy, pose = Explorer(seed, cfg or ExplorerConfig()), np.zeros(5)
    mouse, keys, poses = [], [], []
    for i in range(frames):
        cmd = policy.act(pose)
        step = 10.0 if (cmd.forward or cmd.back or cmd.left or cmd.right) and i % 100 < 85 else 0.0
        poses.append(pose)
        pose = pose + np.array([step, 0, 0, cmd.pitch, cmd.yaw])
        mouse.append((cmd.pitch / 15.0, cmd.yaw / 15.0))
        keys.append(cmd.keyboard())
    return np.array(mouse), np.array(keys), np.array(poses)


# floors (fraction of frames) that every balanced dataset must reach; "turn >=8" is not a goal
ACTION_FLOORS = {
    "still": 0.03, "forward": 0.06, "back": 0.02, "strafe": 0.03, "turn 0.3-2": 0.05, "turn 2-4": 0.05,
    "turn 4-8": 0.05, "pitch up": 0.02, "pitch down": 0.02, "forward+turn": 0.05, "back+turn": 0.003,
    "strafe+turn": 0.02, "move+pitch": 0.05,
}  # fmt: skip


def test_explorer_teaches_every_action():
    from world_model.data.summary import ACTION_CLASSES, action_histogram

    runs = [_synthetic_run(seed, 1000) for seed in range(12)]
    h = action_histogram(*(np.concatenate(x) for x in zip(*runs)))
    assert set(ACTION_FLOORS) | {"turn >=8"} == set(ACTION_CLASSES) and "other" not in h["classes"]
    low = {k: v for k, v in h["classes"].items() if v < ACTION_FLOORS.get(k, 0.0)}
    assert not low, f"classes under their floor: {low}"
    assert h["pitch"]["any"] >= 0.15 and min(h["pitch"]["up"], h["pitch"]["down"]) >= 0.06
    assert h["pitch"]["while moving"] >= 0.05 and h["pitch"]["pose |pitch| >= 1 deg"] >= 0.15
    assert min(h["yaw_rate"][b] for b in ("0.3-2", "2-4", "4-8")) >= 0.08
    # look = 0 keeps the camera level
    mouse, _, poses = _synthetic_run(0, 1000, ExplorerConfig(look=0.0))
    assert np.abs(mouse[:, 0]).max() == 0 and np.abs(poses[:, 3]).max() == 0


def test_explorer_is_deterministic_for_a_seed():
    a, b, c = _synthetic_run(3, 600), _synthetic_run(3, 600), _synthetic_run(4, 600)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_explorer_pitches_both_ways_in_vizdoom(tmp_path):
    from world_model.data.summary import action_histogram

    ep = record_episode(get_level("MAP01"), 800, seed=1, doom=DoomConfig(64, 48), workdir=tmp_path)
    h = action_histogram(ep.mouse, ep.keyboard, ep.poses)
    assert h["pitch"]["any"] >= 0.12 and min(h["pitch"]["up"], h["pitch"]["down"]) >= 0.04, h["pitch"]
    assert np.abs(ep.poses[:, 3]).max() <= ExplorerConfig().pitch_limit + 0.1
    for k in ("still", "forward", "strafe", "turn 0.3-2", "turn 2-4", "turn 4-8", "forward+turn", "move+pitch"):
        assert h["classes"][k] > 0.01, (k, h["classes"])
