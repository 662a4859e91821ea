"""Where an episode may begin: random points of a level's floor, from its sectors' outlines.

An episode that starts at the level's start spot shows the start room: the exploring policy stays within a few
hundred map units of where it begins (measured on six train levels, 4,000 frames each: 9 to 29 cells of 128 x 128
units visited in the first 1,000 frames, almost none new after), so 56 train levels teach 56 rooms. Starting at a
point drawn uniformly over a level's floor (ViZDoom's ``warp x y``) shows every part of it.

A point is a spawn point when it lies inside exactly one sector (even-odd rule over that sector's lines), that
sector's ceiling is at least ``headroom`` above its floor (no closed door, crusher or step), and no line of the
level passes within ``radius`` of it (the player's body, 16 units, clear of walls and ledges).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LevelGeometry"]


@dataclass(frozen=True)
class LevelGeometry:
    """A level's sector outlines in map units (Doom's own x, y)."""

    lines: np.ndarray  # float64 [L, 4]: x1, y1, x2, y2; a line shared by two sectors appears once for each
    sector: np.ndarray  # int64 [L], sorted: the sector each row bounds
    floor: np.ndarray  # float64 [S]
    ceiling: np.ndarray  # float64 [S]

    def __post_init__(self) -> None:
        if self.lines.ndim != 2 or self.lines.shape[1] != 4 or len(self.sector) != len(self.lines):
            raise ValueError(f"lines must be [L, 4] with one sector each, got {self.lines.shape}, {self.sector.shape}")
        if len(self.lines) == 0:
            raise ValueError("a level without lines has no floor to spawn on")
        if np.any(np.diff(self.sector) < 0) or self.sector.min() < 0 or self.sector.max() >= len(self.floor):
            raise ValueError("sector indices must be sorted and within the floors given")
        if len(self.ceiling) != len(self.floor):
            raise ValueError("one floor and one ceiling height per sector")

    @classmethod
    def from_sectors(cls, sectors: list[Any]) -> LevelGeometry:
        """From ViZDoom's ``state.sectors`` (``set_sectors_info_enabled(True)`` before ``init``)."""
        rows, owner = [], []
        for s, sec in enumerate(sectors):
            for line in sec.lines:
                rows.append((line.x1, line.y1, line.x2, line.y2))
                owner.append(s)
        floor = np.array([sec.floor_height for sec in sectors], np.float64)
        ceiling = np.array([sec.ceiling_height for sec in sectors], np.float64)
        return cls(np.array(rows, np.float64).reshape(-1, 4), np.array(owner, np.int64), floor, ceiling)

    @classmethod
    def from_wad(cls, wad: str | Path, map_name: str) -> LevelGeometry:
        """From the map's lumps in a Doom-format WAD (VERTEXES, LINEDEFS, SIDEDEFS, SECTORS; what ViZDoom reports
        as ``state.sectors`` at an episode's start, without running a game that reports them: such a game builds
        them into every state, ~8x slower a frame)."""
        lumps = _map_lumps(Path(wad), map_name)
        vertex = np.frombuffer(lumps["VERTEXES"], np.dtype([("x", "<i2"), ("y", "<i2")]))
        line = np.frombuffer(
            lumps["LINEDEFS"],
            np.dtype([("v1", "<u2"), ("v2", "<u2"), ("flags", "<u2"), ("special", "<u2"), ("tag", "<u2"),
                      ("right", "<u2"), ("left", "<u2")]),
        )  # fmt: skip
        side_sector = np.frombuffer(
            lumps["SIDEDEFS"], np.dtype([("x", "<i2"), ("y", "<i2"), ("tex", "S24"), ("sector", "<u2")])
        )["sector"]
        sector = np.frombuffer(
            lumps["SECTORS"],
            np.dtype([("floor", "<i2"), ("ceiling", "<i2"), ("tex", "S16"), ("light", "<i2"), ("special", "<i2"),
                      ("tag", "<i2")]),
        )  # fmt: skip
        xy = np.stack([vertex["x"], vertex["y"]], 1).astype(np.float64)
        seg = np.concatenate([xy[line["v1"]], xy[line["v2"]]], 1)  # [L, 4]
        rows, owner = [], []
        for side in ("right", "left"):  # a two-sided line bounds the sectors of both its sides
            has = line[side] != 0xFFFF
            rows.append(seg[has])
            owner.append(side_sector[line[side][has]].astype(np.int64))
        rows, owner = np.concatenate(rows), np.concatenate(owner)
        order = np.argsort(owner, kind="stable")
        return cls(rows[order], owner[order], sector["floor"].astype(np.float64), sector["ceiling"].astype(np.float64))

    def sector_at(self, points: np.ndarray) -> np.ndarray:
        """int64 [N]: the one sector each point [N, 2] lies in, -1 where it lies in none or in several."""
        px, py = points[:, 0:1], points[:, 1:2]
        x1, y1, x2, y2 = (self.lines[:, i] for i in range(4))
        straddles = (y1 > py) != (y2 > py)  # [N, L]: the line spans the point's height
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        crossings = (straddles & (px < x_cross)).astype(np.int64)  # a ray towards +x crosses the line
        starts = np.flatnonzero(np.r_[True, np.diff(self.sector) != 0])
        inside = np.add.reduceat(crossings, starts, axis=1) % 2 == 1  # [N, sectors that have lines]
        ids = self.sector[starts]
        count = inside.sum(axis=1)
        return np.where(count == 1, ids[inside.argmax(axis=1)], -1)

    def clearance(self, points: np.ndarray) -> np.ndarray:
        """float64 [N]: each point's distance to the nearest line of the level."""
        a, b = self.lines[None, :, 0:2], self.lines[None, :, 2:4]
        p = points[:, None, :]
        ab = b - a
        t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
        return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)

    def spawn_mask(self, points: np.ndarray, *, radius: float = 24.0, headroom: float = 64.0) -> np.ndarray:
        """bool [N]: which points are spawn points (module doc)."""
        sec = self.sector_at(points)
        ok = sec >= 0
        room = np.where(ok, self.ceiling[sec] - self.floor[sec], -np.inf)
        ok &= room >= headroom
        if ok.any():
            ok[ok] = self.clearance(points[ok]) >= radius
        return ok

    def sample(
        self,
        rng: np.random.Generator,
        *,
        radius: float = 24.0,
        headroom: float = 64.0,
        batch: int = 256,
        tries: int = 16,
    ) -> tuple[float, float] | None:
        """One spawn point drawn uniformly over the level's floor (the bounding box, rejected where it is not one);
        None when ``tries`` batches of ``batch`` candidates found none."""
        lo = np.minimum(self.lines[:, 0:2].min(0), self.lines[:, 2:4].min(0))
        hi = np.maximum(self.lines[:, 0:2].max(0), self.lines[:, 2:4].max(0))
        for _ in range(tries):
            points = lo + rng.random((batch, 2)) * (hi - lo)
            ok = np.flatnonzero(self.spawn_mask(points, radius=radius, headroom=headroom))
            if len(ok):
                x, y = points[ok[0]]
                return float(x), float(y)
        return None


_MAP_LUMPS = ("VERTEXES", "LINEDEFS", "SIDEDEFS", "SECTORS")
# the lumps of a Doom-format map after its marker lump (E1M1, MAP01)
_MAP_LUMP_NAMES = frozenset(
    {"THINGS", "LINEDEFS", "SIDEDEFS", "VERTEXES", "SEGS", "SSECTORS", "NODES", "SECTORS", "REJECT", "BLOCKMAP"}
)


def wad_directory(f) -> tuple[list[tuple[int, int]], list[str]]:
    """An open WAD file's directory: (offset, size) of each lump and its name, in order."""
    import struct

    kind, count, at = struct.unpack("<4sii", f.read(12))
    if kind not in (b"IWAD", b"PWAD"):
        raise ValueError(f"{f.name} is not a WAD file")
    f.seek(at)
    raw = [struct.unpack("<ii8s", f.read(16)) for _ in range(count)]
    return [(o, s) for o, s, _ in raw], [n.rstrip(b"\0").decode("ascii", "replace") for _, _, n in raw]


def map_lumps_in_order(wad: str | Path, map_name: str) -> list[tuple[str, bytes]]:
    """The marker lump of map ``map_name`` (e.g. E1M1 or MAP01) and every map lump after it, in the WAD's order, as
    (name, bytes); a map without ``_MAP_LUMPS`` (not in Doom's format) raises."""
    with open(wad, "rb") as f:
        where, names = wad_directory(f)
        if map_name not in names:
            raise ValueError(f"{wad} holds no map {map_name}")
        i = names.index(map_name)
        out = [(map_name, b"")]
        for (offset, size), name in zip(where[i + 1 :], names[i + 1 :]):
            if name not in _MAP_LUMP_NAMES:
                break
            f.seek(offset)
            out.append((name, f.read(size)))
    missing = [n for n in _MAP_LUMPS if n not in {name for name, _ in out}]
    if missing:
        raise ValueError(f"{wad}: map {map_name} lacks {missing} (only Doom-format maps are read)")
    return out


def _map_lumps(wad: Path, map_name: str) -> dict[str, bytes]:
    """The lumps ``_MAP_LUMPS`` of map ``map_name`` (:func:`map_lumps_in_order`)."""
    return {name: data for name, data in map_lumps_in_order(wad, map_name) if name in _MAP_LUMPS}
