"""Generated levels (world_model.data.procgen): deterministic maps in the train levels' looks that ViZDoom loads,
walks and warps in, and the recorder's share of episodes played on them."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("vizdoom")

from world_model.data.levels import generated_level, get_level, levels_in_split, split_level_prompt  # noqa: E402
from world_model.data.procgen import STEP, _map_walls, generate_map, train_styles  # noqa: E402


def _sectors(udmf: str) -> list[dict[str, str]]:
    return [dict(re.findall(r"(\w+)=([^;]+);", body)) for body in re.findall(r"sector\{([^}]*)\}", udmf)]


def test_a_seed_gives_one_map_and_seeds_differ():
    a, b, c = generate_map(5), generate_map(5), generate_map(6)
    assert a.udmf == b.udmf and a.start == b.start
    np.testing.assert_array_equal(a.geometry.lines, b.geometry.lines)
    assert a.udmf != c.udmf
    assert a.udmf.startswith('namespace = "zdoom";') and a.wad_bytes()[:4] == b"PWAD"


@pytest.mark.parametrize("seed", range(8))
def test_every_map_can_be_walked_from_its_start(seed):
    m = generate_map(seed)
    g = m.geometry
    assert m.rooms >= 2 and m.sectors == len(g.floor)
    start = np.array([m.start[:2]])
    assert g.spawn_mask(start)[0]  # the player starts on open floor, clear of walls, with headroom
    assert np.all(g.ceiling - g.floor >= 64)  # the player (56 high) fits everywhere
    # neighbouring sectors (the two sides of a two-sided line) differ by at most a step: nothing is out of reach
    by_line: dict[tuple[float, ...], list[int]] = {}
    for row, s in zip(g.lines, g.sector):
        by_line.setdefault(tuple(row), []).append(int(s))
    pairs = [s for s in by_line.values() if len(s) == 2]
    assert pairs, "a map of one sector has no rooms joined"
    assert max(abs(g.floor[a] - g.floor[b]) for a, b in pairs) <= STEP
    assert all(len(s) <= 2 for s in by_line.values())


def test_the_looks_are_the_train_levels_walls_only():
    import os

    from world_model.data.doom import _vizdoom

    styles, p = train_styles()
    assert len(styles) == len(p) and abs(p.sum() - 1) < 1e-9 and len(styles) > 100
    root = os.path.dirname(_vizdoom().__file__)
    train = {s.wall for lv in levels_in_split("train") for s in _map_walls(f"{root}/{lv.wad}", lv.map)}
    assert {s.wall for s in styles} <= train
    held = {s.wall for sp in ("validation", "test") for lv in levels_in_split(sp)
            for s in _map_walls(f"{root}/{lv.wad}", lv.map)}  # fmt: skip
    only_held = held - train
    assert only_held, "the held-out levels have walls of their own"
    walls = set(re.findall(r'texture(?:middle|top|bottom)="([^"]+)"', generate_map(3).udmf))
    assert walls and not walls & only_held
    assert all(not w.startswith(("SW1", "SW2")) for w in walls)
    lights = [int(s["lightlevel"]) for s in _sectors(generate_map(3).udmf)]
    assert min(lights) >= 80


def test_generated_levels_are_named_train_levels_with_one_title():
    lv = get_level("generated/17")
    assert lv == generated_level(17) and lv.name == "generated/17" and lv.split == "train"
    assert get_level(lv.name) == lv
    head, look = split_level_prompt(lv.prompt("A bright place."))
    assert look == "A bright place." and "Generated Rooms" in head
    assert generated_level(18).prompt("x") == lv.prompt("x")  # no name to recall a room by
    assert lv not in levels_in_split("train")  # the 56 levels stay the 56 levels
    for bad in ("generated/", "generated/x1", "generated/-3"):
        with pytest.raises(KeyError, match="generated/<seed>"):
            get_level(bad)
    with pytest.raises(ValueError, match=">= 0"):
        generated_level(-1)


def test_vizdoom_loads_a_generated_level_and_warps_in_it(tmp_path):
    from world_model.data.doom import Command, DoomConfig, DoomEngine

    m = generate_map(4)
    with DoomEngine(generated_level(4), DoomConfig(64, 48), seed=1, workdir=tmp_path) as engine:
        frame, pose = engine.reset()
        r = engine.doom_readings()
        assert abs(r["x"] - m.start[0]) < 1 and abs(r["y"] - m.start[1]) < 1  # its own start spot
        assert frame.std() > 5  # walls and floors drawn, not one colour
        for _ in range(8):
            frame, pose, finished = engine.step(Command(forward=True))
        assert not finished
    with DoomEngine(generated_level(4), DoomConfig(64, 48, spawn="anywhere"), seed=2, workdir=tmp_path) as engine:
        frame, pose = engine.reset()  # raises unless the warp lands where the geometry says
        assert m.geometry.sector_at(np.array([[pose[0], -pose[1]]]))[0] >= 0


def test_the_recorder_plays_a_share_of_train_episodes_on_generated_levels():
    from world_model.train.engine_frames import EngineFramesConfig, _plan
    from world_model.train.pipeline import PipelineOptions

    none = [_plan(EngineFramesConfig(frames=100, held_out_every=4), p) for p in range(40)]
    assert not any(p.level.startswith("generated/") for p in none)
    half = [_plan(EngineFramesConfig(frames=100, held_out_every=4, generated_levels=0.5), p) for p in range(200)]
    gen = [p for p in half if p.level.startswith("generated/")]
    assert all(p.split == "train" for p in gen)  # the held-out curve keeps the validation levels
    assert 0.35 < len(gen) / sum(p.split == "train" for p in half) < 0.65
    assert len({p.level for p in gen}) == len(gen)  # a new map for every episode
    assert [p.level for p in half[:20]] == [
        _plan(EngineFramesConfig(frames=100, held_out_every=4, generated_levels=0.5), i).level for i in range(20)
    ]
    with pytest.raises(ValueError, match="generated_levels"):
        EngineFramesConfig(frames=100, generated_levels=1.5)
    with pytest.raises(ValueError, match="fake_data"):
        PipelineOptions(generated_levels=0.5, fake_data=True)
    with pytest.raises(ValueError, match="engine_frames=False"):
        PipelineOptions(generated_levels=0.5, engine_frames=False)


def test_the_recorder_records_generated_episodes(tmp_path):
    from world_model.train.engine_frames import main
    from world_model.train.frames import FrameStore

    out = tmp_path / "frames"
    main(["--out", str(out), "--frames", "120", "--episode-frames", "60", "--size", "48", "64", "--workers", "1",
          "--generated-levels", "1", "--no-progress"])  # fmt: skip
    train = FrameStore.concat([FrameStore.load(p) for p in sorted((out / "train").glob("part-*"))])
    assert len(train.frames) >= 120 and all(lv.startswith("generated/") for lv in train.levels)
    assert all("Generated Rooms" in p for p in train.prompts)


def test_the_bench_compares_generated_and_retextured_with_train_levels(tmp_path):
    from tests.bench_loader import load_bench

    mod = load_bench("generated_levels.py")
    out, png = tmp_path / "r.json", tmp_path / "s.png"
    r = mod.main(["--levels", "1", "--frames", "30", "--workers", "1", "--out", str(out), "--png", str(png)])
    assert r["generated levels"]["episodes"][0]["level"] == "generated/0"
    own = r["train levels"]["episodes"][0]["level"]
    assert not own.startswith(("generated/", "retextured/"))
    assert r["retextured levels"]["episodes"][0]["level"] == f"retextured/0/{own}"
    for group in ("train levels", "retextured levels", "generated levels"):
        assert r[group]["cells"] >= 1 and r[group]["sharpness"] > 0
    assert r["retextured levels"]["cells"] == r["train levels"]["cells"]  # the same map, the same walk
    from PIL import Image

    assert Image.open(png).size == (2 * 128, 3 * 128)  # two views of one episode, a row per group


def test_a_hung_engine_stops_the_recorder_with_what_it_recorded(tmp_path):
    import json
    import time

    from tests.recorder_workers import hang_on_odd_seeds
    from world_model.train.engine_frames import DONE, EngineFramesConfig, _plan, record_frames

    cfg = EngineFramesConfig(frames=64, episode_frames=8, workers=2, shard_frames=8, stall_seconds=20.0)
    t0 = time.perf_counter()
    result = record_frames(tmp_path / "f", cfg, progress=False, worker=hang_on_odd_seeds)
    assert time.perf_counter() - t0 < 60  # not the hour the hung workers sleep
    plans = [_plan(cfg, p) for p in range(16)]
    # the plans that hung (odd seeds) and those queued behind them
    assert result["stalled"] and any(plans[p].seed % 2 for p in result["stalled"])
    assert all(plans[p].seed % 2 == 0 for p in range(min(result["stalled"])))
    assert result["train"] > 0 and result["train"] % 8 == 0  # the episodes that did finish were kept
    assert json.loads((tmp_path / "f" / DONE).read_text()) == result
    with pytest.raises(ValueError, match="stall_seconds"):
        EngineFramesConfig(frames=8, stall_seconds=0)


def test_the_evaluation_has_generated_levels_no_training_episode_plays():
    from mg3_eval.cli import _parser as eval_parser
    from mg3_eval.run import EvalOptions
    from world_model.data.generate import _plan_seed
    from world_model.data.levels import GENERATED_EVAL_SEED

    levels = levels_in_split("generated")
    assert len(levels) == 12 and all(lv.generated >= GENERATED_EVAL_SEED for lv in levels)
    assert max(_plan_seed(s, p) for s in range(3) for p in range(2000)) < GENERATED_EVAL_SEED
    assert EvalOptions(split="generated").split == "generated"
    with pytest.raises(ValueError, match="generated"):
        EvalOptions(split="elsewhere")
    assert eval_parser().parse_args(["--out", "o", "--split", "generated"]).split == "generated"
    with pytest.raises(ValueError, match="generated"):
        levels_in_split("elsewhere")
