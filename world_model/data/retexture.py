"""Retextured levels: a train level's own map with new looks, a new set for every seed.

A DiT trained on the 56 train levels recalls their rooms: what a texture at a place predicts about what is around
the corner. Generated levels (:mod:`world_model.data.procgen`) give it thousands of layouts, but plain ones: boxes of
rooms without the stairs, windows, skies, lifts and trims of Freedoom's maps, which the test levels have. A
retextured level keeps all of a train level's geometry, things and specials, and swaps its looks consistently: every
wall texture for another of the same size, every floor and ceiling for another floor and ceiling, and the whole
level's light by one offset,
all drawn from what the train levels use (so no texture that only a held-out level has appears). The same commands
from the same point then give the same poses, in rooms that look new.

What is kept as it is: skies (``F_SKY1`` and the ``SKY*`` textures: the sky is the map's, not the sector's),
switches (they keep looking like switches) and the middle textures of two-sided lines (grates, windows and fences:
most are see-through, a solid stand-in would close them). The map is copied lump for lump into a PWAD that ViZDoom
loads on top of the level's own IWAD, which provides the textures; only SIDEDEFS and SECTORS change, so the nodes
stay valid.

    level = retextured_level(get_level("freedoom2/MAP03"), 17)   # named "retextured/17/freedoom2/MAP03"
    wad = retextured_wad(level.wad, level.map, 17)                 # the PWAD's bytes
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from world_model.data.procgen import _name, _pwad, _texture_sizes
from world_model.data.spawn import _map_lumps, map_lumps_in_order, wad_directory

__all__ = ["retextured_wad", "retexture_vocabulary", "Pool", "LIGHT_SHIFT"]

# the whole level's light moves by one offset drawn from this range (Doom's light levels are 0-255)
LIGHT_SHIFT = (-24, 24)
_SIDE = np.dtype([("x", "<i2"), ("y", "<i2"), ("upper", "S8"), ("lower", "S8"), ("middle", "S8"), ("sector", "<u2")])
_LINE = np.dtype(
    [("v1", "<u2"), ("v2", "<u2"), ("flags", "<u2"), ("special", "<u2"), ("tag", "<u2"), ("right", "<u2"),
     ("left", "<u2")]
)  # fmt: skip
_SECTOR = np.dtype(
    [("floor", "<i2"), ("ceiling", "<i2"), ("floor_flat", "S8"), ("ceiling_flat", "S8"), ("light", "<i2"),
     ("special", "<i2"), ("tag", "<i2")]
)  # fmt: skip
_SKY_FLAT = "F_SKY1"


def _raw(name: str) -> bytes:
    return name.encode("ascii")[:8].ljust(8, b"\0")


def _kept_wall(name: str) -> bool:
    """Wall textures a retexturing leaves as they are: none ("-"), skies and switches."""
    return name in ("", "-") or name.startswith(("SKY", "SW1", "SW2"))


@dataclass(frozen=True)
class Pool:
    """Names to draw from, each as often as the train levels use it (``weights`` sum to 1)."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, counts: dict[str, float]) -> Pool:
        names = tuple(sorted(counts))
        total = sum(counts.values())
        return cls(names, tuple(counts[n] / total for n in names))

    def draw(self, rng: np.random.Generator) -> str:
        return self.names[rng.choice(len(self.names), p=self.weights)]


@functools.lru_cache(maxsize=4)
def retexture_vocabulary(wad: str) -> tuple[dict[tuple[int, int], Pool], Pool, Pool]:
    """What a retextured level of IWAD ``wad`` (``freedoom1.wad`` or ``freedoom2.wad``) draws its new looks from:
    (wall textures by (width, height), floor flats, ceiling flats: a light panel stays overhead), each weighted by
    how much wall (the length of its lines) or how many sectors of the train levels show it, so that a retextured
    level is as plain or as busy as they are. Only the train levels are read, and only textures this IWAD has at the
    size the train levels use them: a retextured level never shows a texture that only a validation or test level
    has."""
    from world_model.data.doom import _vizdoom
    from world_model.data.levels import levels_in_split

    root = Path(os.path.dirname(_vizdoom().__file__))
    sizes = _texture_sizes(root / wad)
    have = _flat_names(root / wad) - {_SKY_FLAT}
    walls: dict[tuple[int, int], dict[str, float]] = {}
    flats: dict[str, dict[str, int]] = {"floor_flat": {}, "ceiling_flat": {}}
    for level in levels_in_split("train"):
        level_sizes = _texture_sizes(root / level.wad)
        lumps = _map_lumps(root / level.wad, level.map)
        side = np.frombuffer(lumps["SIDEDEFS"], _SIDE)
        length = _side_lengths(lumps, len(side))
        for field in ("upper", "lower", "middle"):
            names, where = np.unique(side[field], return_inverse=True)
            run = np.bincount(where, weights=length, minlength=len(names))
            for raw, n in zip(names, run):
                name = _name(raw)
                if n > 0 and not _kept_wall(name) and name in sizes and level_sizes.get(name) == sizes[name]:
                    by_name = walls.setdefault(sizes[name], {})
                    by_name[name] = by_name.get(name, 0) + float(n)
        sector = np.frombuffer(lumps["SECTORS"], _SECTOR)
        for field, counts in flats.items():
            for raw, n in zip(*np.unique(sector[field], return_counts=True)):
                if _name(raw) in have:
                    counts[_name(raw)] = counts.get(_name(raw), 0) + int(n)
    return {k: Pool.of(v) for k, v in walls.items()}, Pool.of(flats["floor_flat"]), Pool.of(flats["ceiling_flat"])


def _side_lengths(lumps: dict[str, bytes], sides: int) -> np.ndarray:
    """The length in map units of the line each of a map's ``sides`` sidedefs is on: how much wall it draws."""
    vertex = np.frombuffer(lumps["VERTEXES"], "<i2").reshape(-1, 2).astype(np.float64)  # x, y
    line = np.frombuffer(lumps["LINEDEFS"], _LINE)
    span = np.hypot(*(vertex[line["v2"]] - vertex[line["v1"]]).T)
    out = np.zeros(sides)
    for field in ("right", "left"):
        keep = line[field] < sides  # 0xFFFF: no side
        np.add.at(out, line[field][keep], span[keep])
    return out


@functools.lru_cache(maxsize=4)
def _flat_names(wad: Path) -> frozenset[str]:
    """The flats of a WAD: the lumps between its F_START and F_END markers."""
    with open(wad, "rb") as f:
        _, names = wad_directory(f)
    upper = [n.upper() for n in names]
    start = next((i for i, n in enumerate(upper) if n in ("F_START", "FF_START")), None)
    end = next((i for i, n in enumerate(upper) if n in ("F_END", "FF_END")), None)
    if start is None or end is None:
        raise ValueError(f"{wad} has no flats (no F_START / F_END markers)")
    return frozenset(n for n in upper[start + 1 : end] if not n.endswith(("_START", "_END")))


def retextured_wad(wad: str, map_name: str, seed: int) -> bytes:
    """A PWAD holding map ``map_name`` of IWAD ``wad`` (a file name in ViZDoom's folder) with the looks of seed
    ``seed``: every wall texture the train levels use swapped for one of the same size (one mapping for the whole
    level, so a texture's walls stay alike), every flat but the sky's for another flat the train levels use in the
    same place (floor or ceiling), each drawn as often as the train levels show it (:func:`retexture_vocabulary`),
    and every sector's light moved by one offset in :data:`LIGHT_SHIFT` (kept in 0-255). The same seed gives the
    same bytes."""
    from world_model.data.doom import _vizdoom

    root = Path(os.path.dirname(_vizdoom().__file__))
    sizes = _texture_sizes(root / wad)
    walls_by_size, floors, ceilings = retexture_vocabulary(wad)
    rng = np.random.default_rng([int(seed), 0x5E7E])
    lumps = map_lumps_in_order(root / wad, map_name)
    byname = dict(lumps)
    side = np.frombuffer(byname["SIDEDEFS"], _SIDE).copy()
    sector = np.frombuffer(byname["SECTORS"], _SECTOR).copy()
    line = np.frombuffer(byname["LINEDEFS"], _LINE)

    wall_map: dict[bytes, bytes] = {}
    for raw in sorted(set(side["upper"]) | set(side["lower"]) | set(side["middle"])):
        name = _name(raw)
        pool = walls_by_size.get(sizes.get(name, (0, 0)))
        if not _kept_wall(name) and pool is not None:
            wall_map[raw] = _raw(pool.draw(rng))
    flat_maps: dict[str, dict[bytes, bytes]] = {}
    for field, pool in (("floor_flat", floors), ("ceiling_flat", ceilings)):
        flat_maps[field] = {raw: _raw(pool.draw(rng)) for raw in sorted(set(sector[field])) if _name(raw) != _SKY_FLAT}
    shift = int(rng.integers(LIGHT_SHIFT[0], LIGHT_SHIFT[1] + 1))

    # the middle texture of a two-sided line stays (see the module doc): only one-sided lines' middles change
    two_sided = np.zeros(len(side), bool)
    for field in ("right", "left"):
        i = line[field][(line["left"] != 0xFFFF) & (line[field] != 0xFFFF)]
        two_sided[i[i < len(side)]] = True
    for field in ("upper", "lower", "middle"):
        swap = np.ones(len(side), bool) if field != "middle" else ~two_sided
        side[field] = [wall_map.get(t, t) if s else t for t, s in zip(side[field], swap)]
    for field in ("floor_flat", "ceiling_flat"):
        sector[field] = [flat_maps[field].get(t, t) for t in sector[field]]
    sector["light"] = np.clip(sector["light"].astype(np.int32) + shift, 0, 255)

    byname.update(SIDEDEFS=side.tobytes(), SECTORS=sector.tobytes())
    return _pwad([(name, byname[name] if name != map_name else b"") for name, _ in lumps])
