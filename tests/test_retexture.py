"""Retextured levels (world_model.data.retexture): a train level's own map with new looks from a seed, which ViZDoom
plays with the level's poses, and the recorder's share of train episodes played so."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

pytest.importorskip("vizdoom")

from world_model.data.levels import generated_level, get_level, levels_in_split, retextured_level  # noqa: E402
from world_model.data.retexture import _SECTOR, _SIDE, LIGHT_SHIFT, retexture_vocabulary, retextured_wad  # noqa: E402
from world_model.data.spawn import map_lumps_in_order  # noqa: E402


def _root() -> str:
    from world_model.data.doom import _vizdoom

    return os.path.dirname(_vizdoom().__file__)


def _pwad_lumps(data: bytes) -> list[tuple[str, bytes]]:
    kind, count, at = struct.unpack_from("<4sii", data, 0)
    assert kind == b"PWAD"
    out = []
    for i in range(count):
        offset, size, name = struct.unpack_from("<ii8s", data, at + 16 * i)
        out.append((name.rstrip(b"\0").decode(), data[offset : offset + size]))
    return out


def _names(raw: np.ndarray) -> list[str]:
    return [r.rstrip(b"\0").decode().upper() for r in raw]


def test_retextured_levels_are_named_by_seed_and_level_and_keep_its_split_and_prompt():
    base = get_level("freedoom2/MAP03")
    lv = retextured_level(base, 17)
    assert lv.name == "retextured/17/freedoom2/MAP03" and get_level(lv.name) == lv
    assert (lv.wad, lv.map, lv.split, lv.title) == (base.wad, base.map, base.split, base.title)
    assert lv.prompt("A dark place.") == base.prompt("A dark place.")
    assert retextured_level(get_level("E1M1"), 0).name == "retextured/0/freedoom1/E1M1"
    for bad in ("retextured/", "retextured/x/freedoom2/MAP03", "retextured/17", "retextured/17/"):
        with pytest.raises(KeyError, match="retextured/<seed>/<level>"):
            get_level(bad)
    with pytest.raises(KeyError, match="unknown level"):
        get_level("retextured/17/freedoom2/MAP99")
    with pytest.raises(ValueError, match="only a Freedoom level"):
        retextured_level(generated_level(3), 1)
    with pytest.raises(ValueError, match="only a Freedoom level"):
        retextured_level(lv, 1)
    with pytest.raises(ValueError, match=">= 0"):
        retextured_level(base, -1)


@pytest.mark.parametrize("name", ["freedoom1/E1M2", "freedoom2/MAP05"])
def test_a_retextured_map_keeps_its_geometry_and_swaps_looks_of_the_same_size_from_the_train_levels(name):
    from world_model.data.procgen import _texture_sizes

    level = get_level(name)
    wad = retextured_wad(level.wad, level.map, 5)
    assert wad == retextured_wad(level.wad, level.map, 5) and wad != retextured_wad(level.wad, level.map, 6)
    own = map_lumps_in_order(f"{_root()}/{level.wad}", level.map)
    new = _pwad_lumps(wad)
    assert [n for n, _ in new] == [n for n, _ in own] and new[0] == (level.map, b"")
    for (n, a), (_, b) in zip(own, new):
        if n not in ("SIDEDEFS", "SECTORS"):
            assert a == b, f"{n} changed: the geometry, things and nodes stay as they are"
    old_side, new_side = (np.frombuffer(dict(x)["SIDEDEFS"], _SIDE) for x in (own, new))
    old_sec, new_sec = (np.frombuffer(dict(x)["SECTORS"], _SECTOR) for x in (own, new))
    for f in ("x", "y", "sector"):
        np.testing.assert_array_equal(old_side[f], new_side[f])
    for f in ("floor", "ceiling", "special", "tag"):
        np.testing.assert_array_equal(old_sec[f], new_sec[f])

    sizes = _texture_sizes(f"{_root()}/{level.wad}")
    walls_by_size, floors, ceilings = retexture_vocabulary(level.wad)
    vocabulary = {w for pool in walls_by_size.values() for w in pool.names}
    changed = 0
    mapping: dict[str, str] = {}
    for f in ("upper", "lower", "middle"):
        for a, b in zip(_names(old_side[f]), _names(new_side[f])):
            if a == b:
                continue
            changed += 1
            assert b in vocabulary and sizes[b] == sizes[a]  # a wall of the same size, one the train levels use
            assert not a.startswith(("SKY", "SW1", "SW2"))  # skies and switches stay
            assert mapping.setdefault(a, b) == b  # one texture, one stand-in
    assert changed > len(old_side) // 4
    # see-through middles of two-sided lines stay
    line = np.frombuffer(dict(own)["LINEDEFS"], np.dtype([("pad", "<u2", 5), ("right", "<u2"), ("left", "<u2")]))
    two = line["right"][line["left"] != 0xFFFF]
    assert _names(old_side["middle"][two]) == _names(new_side["middle"][two])
    for f, pool in (("floor_flat", floors), ("ceiling_flat", ceilings)):
        for a, b in zip(_names(old_sec[f]), _names(new_sec[f])):
            assert (a == b == "F_SKY1") or (a != "F_SKY1" and b in pool.names)
    shift = new_sec["light"].astype(int) - old_sec["light"]
    inside = (old_sec["light"] + LIGHT_SHIFT[0] >= 0) & (old_sec["light"] + LIGHT_SHIFT[1] <= 255)
    assert len(set(shift[inside])) == 1 and LIGHT_SHIFT[0] <= shift[inside][0] <= LIGHT_SHIFT[1]


def test_the_vocabulary_holds_no_wall_only_the_held_out_levels_have():
    def walls(split: str) -> set[str]:
        out: set[str] = set()
        for lv in levels_in_split(split):
            side = np.frombuffer(dict(map_lumps_in_order(f"{_root()}/{lv.wad}", lv.map))["SIDEDEFS"], _SIDE)
            out.update(*(_names(side[f]) for f in ("upper", "lower", "middle")))
        return out

    train = walls("train")
    only_held = (walls("validation") | walls("test")) - train
    assert only_held, "the held-out levels have walls of their own"
    for wad in ("freedoom1.wad", "freedoom2.wad"):
        by_size, floors, ceilings = retexture_vocabulary(wad)
        vocabulary = {w for pool in by_size.values() for w in pool.names}
        assert len(vocabulary) > 50 and vocabulary <= train and not vocabulary & only_held
        assert floors.names and ceilings.names and "F_SKY1" not in floors.names + ceilings.names
        for pool in (*by_size.values(), floors, ceilings):
            assert abs(sum(pool.weights) - 1) < 1e-9 and min(pool.weights) > 0


def test_vizdoom_plays_a_retextured_level_with_its_poses_and_new_frames(tmp_path):
    from world_model.data.doom import DoomConfig
    from world_model.data.generate import record_episode

    base = get_level("freedoom2/MAP05")
    cfg = DoomConfig(64, 48, spawn="anywhere")
    a = record_episode(base, 40, seed=3, doom=cfg, workdir=tmp_path)
    b = record_episode(retextured_level(base, 9), 40, seed=3, doom=cfg, workdir=tmp_path)
    assert len(a.frames) == len(b.frames) == 40
    np.testing.assert_array_equal(a.poses, b.poses)  # the same map, the same moves
    np.testing.assert_array_equal(a.keyboard, b.keyboard)
    assert np.abs(a.frames.astype(int) - b.frames).mean() > 10  # in new looks


def test_the_recorder_retextures_a_share_of_the_train_episodes_on_freedoom_levels(tmp_path):
    from world_model.train.engine_frames import EngineFramesConfig, _plan, main
    from world_model.train.frames import FrameStore
    from world_model.train.pipeline import PipelineOptions

    cfg = EngineFramesConfig(frames=100, held_out_every=4, generated_levels=0.5, retextured_levels=0.5)
    plans = [_plan(cfg, p) for p in range(400)]
    re_ = [p for p in plans if p.level.startswith("retextured/")]
    gen = [p for p in plans if p.level.startswith("generated/")]
    train = sum(p.split == "train" for p in plans)
    assert all(p.split == "train" for p in re_)  # the held-out curve keeps the validation levels as they are
    assert 0.15 < len(re_) / train < 0.35 and 0.4 < len(gen) / train < 0.6  # half of the other half
    assert all(get_level(p.level).split == "train" and get_level(p.level).retexture == p.seed for p in re_)
    without = EngineFramesConfig(frames=100, held_out_every=4, generated_levels=0.5)
    # the same episodes otherwise: the share draws apart from the generated levels' and the levels' own order
    for p, q in zip(plans, (_plan(without, i) for i in range(400))):
        assert p.level == q.level or p.level == f"retextured/{q.seed}/{q.level}"
    with pytest.raises(ValueError, match="retextured_levels"):
        EngineFramesConfig(frames=100, retextured_levels=-0.1)
    with pytest.raises(ValueError, match="fake_data"):
        PipelineOptions(retextured_levels=0.5, fake_data=True)
    with pytest.raises(ValueError, match="engine_frames=False"):
        PipelineOptions(retextured_levels=0.5, engine_frames=False)

    out = tmp_path / "frames"
    main(["--out", str(out), "--frames", "60", "--episode-frames", "30", "--size", "48", "64", "--workers", "1",
          "--retextured-levels", "1", "--no-progress"])  # fmt: skip
    store = FrameStore.concat([FrameStore.load(p) for p in sorted((out / "train").glob("part-*"))])
    assert len(store.frames) >= 60 and all(lv.startswith("retextured/") for lv in store.levels)


def test_the_evaluations_retextured_split_plays_the_train_episodes_in_other_looks(tmp_path):
    from mg3_eval.run import EvalOptions
    from mg3_eval.simulator import record_test_episodes
    from world_model.config import tiny
    from world_model.data.levels import EVAL_SPLITS

    train, looks = levels_in_split("train"), levels_in_split("retextured")
    assert "retextured" in EVAL_SPLITS and [lv.name for lv in train] == [lv.name.split("/", 2)[2] for lv in looks]
    assert all(lv.retexture >= 2**31 for lv in looks)  # no recorder's episode draws such a seed
    assert len({lv.retexture for lv in looks}) == len(looks)
    EvalOptions(split="retextured")  # the evaluation takes it
    a = record_test_episodes(tiny(32, 32), 2, 30, split="train", workdir=tmp_path)
    b = record_test_episodes(tiny(32, 32), 2, 30, split="retextured", workdir=tmp_path)
    for x, y in zip(a, b):
        assert y.level == f"retextured/{get_level(y.level).retexture}/{x.level}" and y.seed == x.seed
        np.testing.assert_array_equal(x.poses, y.poses)  # episode for episode: the same commands, the same walk
        np.testing.assert_array_equal(x.keyboard, y.keyboard)
        assert np.abs(x.frames.astype(int) - y.frames).mean() > 5
