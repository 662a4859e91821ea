"""Episodes that begin anywhere on a level: the floor geometry (world_model.data.spawn), the engine's warp, and
the share of episodes the recorders spawn so (generate, engine_frames, the pipeline's option)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from world_model.data.spawn import LevelGeometry


def _square(x0: float, y0: float, x1: float, y1: float) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(x1=a, y1=b, x2=c, y2=d)
        for a, b, c, d in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0))
    ]


def _room_with_pillar() -> LevelGeometry:
    """A 512-unit room (floor 0, ceiling 128) holding a pillar sector 200..300 (floor = ceiling: solid), whose
    four lines bound both sectors, as Doom's two-sided lines do; a low crawlway 1000..1100 (ceiling 40)."""
    pillar = _square(200, 200, 300, 300)
    sectors = [
        SimpleNamespace(floor_height=0.0, ceiling_height=128.0, lines=_square(0, 0, 512, 512) + pillar),
        SimpleNamespace(floor_height=64.0, ceiling_height=64.0, lines=pillar),
        SimpleNamespace(floor_height=0.0, ceiling_height=40.0, lines=_square(1000, 0, 1100, 100)),
    ]
    return LevelGeometry.from_sectors(sectors)


def test_sector_at_counts_crossings_per_sector():
    g = _room_with_pillar()
    points = np.array([[100, 100], [250, 250], [400, 450], [700, 100], [1050, 50], [-5, 10]], np.float64)
    np.testing.assert_array_equal(g.sector_at(points), [0, 1, 0, -1, 2, -1])


def test_spawn_mask_wants_headroom_and_clearance():
    g = _room_with_pillar()
    points = np.array([[100, 100], [250, 250], [10, 100], [185, 250], [1050, 50], [400, 400]], np.float64)
    # pillar (no headroom), 10 from a wall, 15 from the pillar, the crawlway (40 < 64): refused
    np.testing.assert_array_equal(g.spawn_mask(points), [True, False, False, False, False, True])
    np.testing.assert_allclose(g.clearance(points[:4]), [100, 50, 10, 15])


def test_sample_is_uniform_over_the_floor_and_seeded():
    g = _room_with_pillar()
    a = [g.sample(np.random.default_rng([3, i])) for i in range(200)]
    assert a == [g.sample(np.random.default_rng([3, i])) for i in range(200)]
    pts = np.array(a)
    assert g.spawn_mask(pts).all()
    # uniform over the room's free floor: both halves (split at the pillar's centre) about equally often
    left = (pts[:, 0] < 256).mean()
    assert 0.38 < left < 0.62
    low = LevelGeometry.from_sectors(
        [SimpleNamespace(floor_height=0.0, ceiling_height=40.0, lines=_square(0, 0, 99, 99))]
    )
    assert low.sample(np.random.default_rng(0), tries=2) is None


def test_geometry_refuses_malformed_input():
    with pytest.raises(ValueError, match="without lines"):
        LevelGeometry(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="sorted"):
        LevelGeometry(np.zeros((2, 4)), np.array([1, 0]), np.zeros(2), np.ones(2))


def test_plan_spawn_share_is_per_plan():
    from world_model.data.generate import plan_spawn

    assert {plan_spawn(1, p, 0.0) for p in range(100)} == {"start"}
    assert {plan_spawn(1, p, 1.0) for p in range(100)} == {"anywhere"}
    half = [plan_spawn(1, p, 0.5) for p in range(400)]
    assert 150 < half.count("anywhere") < 250
    assert half[:50] == [plan_spawn(1, p, 0.5) for p in range(50)]  # a plan's draw is its own


def test_engine_frames_spawns_train_episodes_only():
    from world_model.train.engine_frames import EngineFramesConfig, _plan

    cfg = EngineFramesConfig(frames=100, spawn_anywhere=1.0, held_out_every=3)
    spawns = {_plan(cfg, p).split: set() for p in range(3)}
    for p in range(30):
        plan = _plan(cfg, p)
        spawns[plan.split].add(plan.spawn)
    assert spawns == {"train": {"anywhere"}, "held_out": {"start"}}
    with pytest.raises(ValueError, match="share"):
        EngineFramesConfig(frames=100, spawn_anywhere=1.5)


def test_options_refuse_a_share_they_cannot_use():
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import GenerateConfig
    from world_model.train.pipeline import PipelineOptions

    with pytest.raises(ValueError, match="spawn"):
        DoomConfig(64, 48, spawn="random")
    with pytest.raises(ValueError, match="share"):
        GenerateConfig(frames=10, spawn_anywhere=-0.1)
    with pytest.raises(ValueError, match="share"):
        PipelineOptions(spawn_anywhere=2.0)
    with pytest.raises(ValueError, match="fake_data"):
        PipelineOptions(spawn_anywhere=0.5, fake_data=True)


def test_the_engine_warps_anywhere_deterministically(tmp_path):
    pytest.importorskip("vizdoom")
    from world_model.data.doom import Command, DoomConfig, DoomEngine, level_geometry
    from world_model.data.levels import get_level

    level = get_level("E1M3")  # the explorer stays in its start room (9 cells of 128 units in 1,000 frames)
    with DoomEngine(level, DoomConfig(64, 48), workdir=tmp_path / "s") as engine:
        _, start = engine.reset(seed=1)
    poses, frames = [], []
    with DoomEngine(level, DoomConfig(64, 48, spawn="anywhere"), workdir=tmp_path / "a") as engine:
        for seed in (1, 2, 1):
            frame, pose = engine.reset(seed=seed)
            r = engine.doom_readings()
            poses.append(pose)
            frames.append(frame)
            assert r["z"] - 41.0 in set(level_geometry(level).floor)  # the eye at the floor's height + 41
            _, after, done = engine.step(Command(forward=True))
            assert not done and np.all(np.isfinite(after))
    np.testing.assert_array_equal(poses[0], poses[2])
    np.testing.assert_array_equal(frames[0], frames[2])
    assert np.linalg.norm(poses[0][:2] - poses[1][:2]) > 1.0  # another seed, another place
    assert np.linalg.norm(poses[0][:2] - start[:2]) > 1.0 and abs(poses[0][3]) < 1e-6  # level, not the start spot


def test_generate_records_the_spawn_of_each_episode(tmp_path):
    pytest.importorskip("vizdoom")
    pytest.importorskip("av")
    from world_model.data.generate import GenerateConfig, generate_dataset

    cfg = GenerateConfig(
        frames=40, width=64, height=48, seed=2, episode_frames=20, levels=("E1M1", "E1M9"), spawn_anywhere=1.0
    )
    reader = generate_dataset(tmp_path / "d", cfg, progress=False)
    spawns = {e.level: e.extra["spawn"] for e in reader.episodes}
    assert spawns == {"freedoom1/E1M1": "anywhere", "freedoom1/E1M9": "start"}  # E1M9: a validation level
    assert reader.meta["generate"]["spawn_anywhere"] == 1.0
    from world_model.data.summary import format_summary, summarize

    summary = summarize(tmp_path / "d")
    assert summary["frames_per_spawn"] == {"anywhere": 20, "start": 20} and summary["cells_visited"] >= 2
    assert "per spawn {'anywhere': 20, 'start': 20}" in format_summary(summary)


def test_the_pipeline_hands_the_share_to_the_recorder_it_starts(tmp_path, monkeypatch):
    import subprocess

    from world_model.train.engine_frames import main as recorder_main
    from world_model.train.pipeline import PipelineOptions, run_stage

    started = []

    class Started(Exception):
        pass

    def fake_popen(cmd, **kwargs):
        started.append(cmd)
        raise Started

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    with pytest.raises(Started):
        run_stage(tmp_path / "run", "data", PipelineOptions(spawn_anywhere=0.75, frames=1000, seed=4))
    (cmd,) = started
    assert cmd[cmd.index("--spawn-anywhere") + 1] == "0.75"
    # the recorder's own command line parses it into its config (run for 0 frames: refused before recording)
    with pytest.raises(ValueError, match="share"):
        recorder_main([*cmd[3:], "--spawn-anywhere", "1.5"])


def test_no_secret_message_is_drawn_over_the_frames(tmp_path):
    """MAP08, seed 505, spawned anywhere, lands in a secret sector: ZDoom prints "A SECRET IS REVEALED!" in gold
    across the frame (167 gold pixels in the first frame before the engine turned the message off)."""
    pytest.importorskip("vizdoom")
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import record_episode
    from world_model.data.levels import get_level

    ep = record_episode(get_level("MAP08"), 2, seed=505, doom=DoomConfig(128, 128, spawn="anywhere"), workdir=tmp_path)
    x = ep.frames[0].astype(int)
    gold = (x[..., 0] > 180) & (x[..., 1] > 120) & (x[..., 2] < 90) & (x[..., 0] - x[..., 2] > 120)
    assert gold.sum() < 10


def test_the_evaluation_records_episodes_begun_anywhere(tmp_path):
    pytest.importorskip("vizdoom")
    from mg3_eval.simulator import record_test_episodes
    from world_model.config import tiny

    cfg = tiny(32, 32)
    start = record_test_episodes(cfg, 2, 12, split="train", workdir=tmp_path)
    anywhere = record_test_episodes(cfg, 2, 12, split="train", workdir=tmp_path, spawn="anywhere")
    again = record_test_episodes(cfg, 2, 12, split="train", workdir=tmp_path, spawn="anywhere")
    assert [e.level for e in anywhere] == [e.level for e in start]
    for s, a, b in zip(start, anywhere, again):
        assert np.linalg.norm(s.poses[0, :2] - a.poses[0, :2]) > 1.0
        np.testing.assert_array_equal(a.frames, b.frames)


def test_the_wad_geometry_is_what_vizdoom_reports(tmp_path):
    """LevelGeometry.from_wad against ViZDoom's own ``state.sectors``: the same floors and ceilings, every line
    ViZDoom lists; the WAD's rows add the second side of a line with one sector on both sides (an inner line of a
    sector, which the even-odd rule must count twice to cancel: ViZDoom lists it once)."""
    pytest.importorskip("vizdoom")
    from collections import Counter

    import vizdoom

    from world_model.data.doom import level_geometry
    from world_model.data.levels import get_level

    level = get_level("E1M1")
    game = vizdoom.DoomGame()
    game.set_doom_game_path(str(Path(vizdoom.__file__).parent / level.wad))
    game.set_doom_map(level.map)
    game.set_doom_config_path(str(tmp_path / "_vizdoom.ini"))
    game.set_window_visible(False)
    game.set_sound_enabled(False)
    game.set_sectors_info_enabled(True)
    game.init()
    try:
        game.new_episode()
        reported = LevelGeometry.from_sectors(game.get_state().sectors)
    finally:
        game.close()
    wad = level_geometry(level)
    np.testing.assert_array_equal(wad.floor, reported.floor)
    np.testing.assert_array_equal(wad.ceiling, reported.ceiling)
    rows = lambda g: Counter((int(s), tuple(line)) for s, line in zip(g.sector, g.lines))  # noqa: E731
    extra = rows(wad) - rows(reported)
    assert not rows(reported) - rows(wad) and 0 < sum(extra.values()) < 20
    assert all(rows(wad)[key] == 2 for key in extra)  # both sides of an inner line
