"""Generated levels: a new Freedoom map for every seed, in the looks of the train levels.

56 train levels are 56 sets of rooms; a DiT trained on them draws those rooms back (their chunk-0 gain is ~2 dB
higher than on levels it never saw). A generated level is a new layout from its seed alone: rooms of several
sizes, heights and lights on a grid of 64-unit tiles, joined by corridors (a spanning tree plus a few loops), with
columns, raised or sunken floors, ceiling lights, a second wall texture on some walls and solid decorations that
show parallax when the player walks past them. Each
room's walls, floor, ceiling and light are those of one wall of a train level (a one-sided line's middle texture,
its sector's flats and light level, drawn in proportion to how often the train levels use them), so a generated
level looks like Freedoom and never shows a texture only the held-out levels use.

The map is written in UDMF (``namespace = "zdoom"``) into a PWAD that ViZDoom loads on top of ``freedoom2.wad``
(which provides the textures); ZDoom builds the nodes on load. Floors of neighbouring areas differ by at most 24
units (Doom's step height), ceilings clear the player's 56, so the whole level can be walked.

    level = generated_level(17)          # a Level named "generated/17", split "train"
    m = generate_map(17)                 # its GeneratedMap: UDMF text, sector outlines, the player start
    m.write_wad("gen17.wad")
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from world_model.data.spawn import LevelGeometry, _map_lumps, wad_directory

__all__ = ["GeneratedMap", "Style", "generate_map", "train_styles", "GENERATED_PREFIX", "GENERATED_WAD"]

GENERATED_PREFIX = "generated/"
GENERATED_WAD = "freedoom2.wad"  # the IWAD whose textures a generated map uses
TILE = 64  # map units per grid tile
STEP = 24  # the highest floor step the player climbs
# solid decorations (Doom thing types Freedoom draws): lamps, columns, barrels, torches, trees
# flats drawn as lights (those of them the train levels use on a ceiling beside a wall are the fixtures' flats)
_LIGHT_FLATS = frozenset({"TLITE6_1", "TLITE6_4", "TLITE6_5", "TLITE6_6", "GRNLITE1", "CEIL1_2", "CEIL1_3", "FLAT17",
                          "FLAT2", "FLAT22", "CEIL3_4", "FLOOR1_7"})  # fmt: skip
_DECORATIONS = (2028, 85, 86, 48, 30, 31, 32, 33, 36, 37, 2035, 44, 45, 46, 55, 56, 57, 35, 43, 54)


@dataclass(frozen=True)
class Style:
    """How one area looks: wall texture, floor and ceiling flats, light level (one wall of a train level)."""

    wall: str
    floor: str
    ceiling: str
    light: int


@dataclass(frozen=True)
class _Sector:
    floor: int
    ceiling: int
    style: Style


@dataclass(frozen=True)
class GeneratedMap:
    """A generated map: its UDMF text, its sectors' outlines (for spawn points) and the player's start."""

    seed: int
    udmf: str
    geometry: LevelGeometry
    start: tuple[float, float, float]  # x, y, angle (degrees) in Doom map units
    rooms: int

    @property
    def sectors(self) -> int:
        return len(self.geometry.floor)

    def wad_bytes(self) -> bytes:
        """A PWAD holding the map as MAP01 (marker, TEXTMAP, ENDMAP)."""
        return _pwad([("MAP01", b""), ("TEXTMAP", self.udmf.encode("ascii")), ("ENDMAP", b"")])

    def write_wad(self, path: str | Path) -> Path:
        """Write :meth:`wad_bytes` to ``path`` (atomically: a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.wad_bytes())
        tmp.replace(path)
        return path


def _pwad(lumps: list[tuple[str, bytes]]) -> bytes:
    body, entries, offset = [], [], 12
    for name, data in lumps:
        entries.append(struct.pack("<ii8s", offset, len(data), name.encode("ascii")))
        body.append(data)
        offset += len(data)
    return struct.pack("<4sii", b"PWAD", len(lumps), offset) + b"".join(body) + b"".join(entries)


# ------------------------------------------------------------------------------------------------
# the train levels' looks
# ------------------------------------------------------------------------------------------------


def _name(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", "replace").upper()


@functools.lru_cache(maxsize=4)
def _texture_sizes(wad: Path) -> dict[str, tuple[int, int]]:
    """Wall textures of a WAD's TEXTURE1/TEXTURE2 lumps -> (width, height)."""
    out: dict[str, tuple[int, int]] = {}
    with open(wad, "rb") as f:
        where, names = wad_directory(f)
        for lump in ("TEXTURE1", "TEXTURE2"):
            if lump not in names:
                continue
            offset, size = where[names.index(lump)]
            f.seek(offset)
            data = f.read(size)
            count = struct.unpack_from("<i", data, 0)[0]
            for at in struct.unpack_from(f"<{count}i", data, 4):
                name, _, width, height = struct.unpack_from("<8siHH", data, at)
                out[_name(name)] = (width, height)
    return out


def _map_walls(wad: Path, map_name: str) -> list[Style]:
    """One Style per one-sided line of a Doom-format map (its middle texture, its sector's flats and light)."""
    lumps = _map_lumps(Path(wad), map_name)
    line = np.frombuffer(lumps["LINEDEFS"], np.dtype([("pad", "<u2", 5), ("right", "<u2"), ("left", "<u2")]))
    side = np.frombuffer(lumps["SIDEDEFS"], np.dtype([("x", "<i2"), ("y", "<i2"), ("tex", "S8", 3), ("sector", "<u2")]))
    sector = np.frombuffer(
        lumps["SECTORS"],
        np.dtype([("floor", "<i2"), ("ceiling", "<i2"), ("flats", "S8", 2), ("light", "<i2"), ("pad", "<i2", 2)]),
    )
    out = []
    for right in line["right"][line["left"] == 0xFFFF]:
        s = side[right]
        sec = sector[s["sector"]]
        out.append(Style(_name(s["tex"][2]), _name(sec["flats"][0]), _name(sec["flats"][1]), int(sec["light"])))
    return out


def _usable(style: Style, sizes: dict[str, tuple[int, int]]) -> bool:
    if style.wall not in sizes or style.wall.startswith(("SW1", "SW2", "SKY")):
        return False  # switches, skies and missing textures
    width, height = sizes[style.wall]
    tiles = width >= 64 and width & (width - 1) == 0  # the software renderer tiles power-of-two widths
    return tiles and height >= 64 and 80 <= style.light <= 255 and style.floor != "F_SKY1"


@functools.lru_cache(maxsize=1)
def train_styles() -> tuple[tuple[Style, ...], np.ndarray]:
    """The looks of the train levels' walls and how often each occurs: (styles, probabilities).

    Only train levels are read (their one-sided lines), so a generated level never shows a wall that only a
    validation or test level has. Walls that do not tile (switches, narrow or non-power-of-two textures), skies as
    walls and very dark rooms are left out."""
    from world_model.data.doom import _vizdoom
    from world_model.data.levels import levels_in_split

    root = Path(os.path.dirname(_vizdoom().__file__))
    counts: dict[Style, int] = {}
    generated_sizes = _texture_sizes(root / GENERATED_WAD)
    for level in levels_in_split("train"):
        sizes = _texture_sizes(root / level.wad)
        for style in _map_walls(root / level.wad, level.map):
            # the texture must exist in the IWAD the generated map loads with, at the same size
            if _usable(style, sizes) and _usable(style, generated_sizes):
                counts[style] = counts.get(style, 0) + 1
    if not counts:
        raise RuntimeError("no usable wall of the train levels was found")
    styles = tuple(sorted(counts, key=lambda s: (s.wall, s.floor, s.ceiling, s.light)))
    p = np.array([counts[s] for s in styles], np.float64)
    return styles, p / p.sum()


# ------------------------------------------------------------------------------------------------
# the layout
# ------------------------------------------------------------------------------------------------


@dataclass
class _Room:
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int

    @property
    def centre(self) -> tuple[int, int]:
        return (self.x0 + self.x1) // 2, (self.y0 + self.y1) // 2

    def overlaps(self, o: _Room, gap: int) -> bool:
        return not (self.x1 + gap <= o.x0 or o.x1 + gap <= self.x0 or self.y1 + gap <= o.y0 or o.y1 + gap <= self.y0)


def _place_rooms(rng: np.random.Generator, size: int, count: int) -> list[_Room]:
    rooms: list[_Room] = []
    for _ in range(count * 40):
        if len(rooms) == count:
            break
        w, h = (int(v) for v in rng.integers(3, 13, 2))
        x0, y0 = int(rng.integers(1, size - w - 1)), int(rng.integers(1, size - h - 1))
        room = _Room(x0, y0, x0 + w, y0 + h)
        if not any(room.overlaps(o, 2) for o in rooms):
            rooms.append(room)
    return rooms


def _links(rng: np.random.Generator, rooms: list[_Room]) -> list[tuple[int, int]]:
    """A minimum spanning tree over the rooms' centres (Prim), plus a loop or two between near rooms."""
    c = np.array([r.centre for r in rooms], np.float64)
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    inside, links = {0}, []
    while len(inside) < len(rooms):
        best = min((dist[i, j], i, j) for i in inside for j in range(len(rooms)) if j not in inside)
        links.append((best[1], best[2]))
        inside.add(best[2])
    pairs = [(i, j) for i in range(len(rooms)) for j in range(i + 1, len(rooms))]
    linked = {tuple(sorted(p)) for p in links}
    for i, j in sorted(pairs, key=lambda p: dist[p]):
        if (i, j) not in linked and rng.random() < 0.15:
            links.append((i, j))
    return links


@functools.lru_cache(maxsize=8)
def generate_map(seed: int, *, size: int = 40) -> GeneratedMap:
    """The map of generated level ``seed`` (deterministic: the same seed gives the same map everywhere; cached, as
    an episode's engine writes its WAD and its spawn point reads its geometry).

    ``size`` is the grid's side in 64-unit tiles (40: 2,560 map units, the extent of a mid-sized Freedoom level)."""
    if size < 16:
        raise ValueError(f"size must be >= 16 tiles, got {size}")
    rng = np.random.default_rng([int(seed) % (2**63), 0x6E4])
    styles, p = train_styles()

    def style() -> Style:
        return styles[int(rng.choice(len(styles), p=p))]

    lights = sorted({st.ceiling for st in styles} & _LIGHT_FLATS)
    rooms = _place_rooms(rng, size, int(rng.integers(6, 13)))
    grid = np.full((size, size), -1, np.int64)  # [x, y] -> sector, -1 = solid
    sectors: list[_Sector] = []

    def add(sector: _Sector) -> int:
        sectors.append(sector)
        return len(sectors) - 1

    room_floor = [int(rng.choice([0, 8, 16, 24])) for _ in rooms]  # any two differ by <= STEP: all walkable
    room_sector = []
    for r, floor in zip(rooms, room_floor):
        look = style()
        outdoor = look.ceiling == "F_SKY1"
        height = int(rng.choice([192, 256, 320])) if outdoor else int(rng.choice([96, 128, 128, 160, 192, 256]))
        s = add(_Sector(floor, floor + height, look))
        grid[r.x0 : r.x1, r.y0 : r.y1] = s
        room_sector.append(s)
    # inside a room: a raised or sunken floor (a step away from the room's), then columns on single tiles
    for r, s in zip(rooms, room_sector):
        w, h = r.x1 - r.x0, r.y1 - r.y0
        base = sectors[s]
        if w >= 6 and h >= 6 and rng.random() < 0.4:
            pw, ph = int(rng.integers(2, w - 3)), int(rng.integers(2, h - 3))
            px, py = r.x0 + int(rng.integers(2, w - pw - 1)), r.y0 + int(rng.integers(2, h - ph - 1))
            dz = int(rng.choice([-24, -16, 16, 24]))
            look = base.style if rng.random() < 0.5 else Style(base.style.wall, style().floor, base.style.ceiling,
                                                               base.style.light)  # fmt: skip
            grid[px : px + pw, py : py + ph] = add(_Sector(base.floor + dz, base.ceiling, look))
        if w >= 5 and h >= 5:
            for _ in range(int(rng.integers(0, 5))):
                cx, cy = r.x0 + int(rng.integers(1, w - 1)), r.y0 + int(rng.integers(1, h - 1))
                ring = grid[cx - 1 : cx + 2, cy - 1 : cy + 2]
                if (cx, cy) != r.centre and np.all(ring == s):
                    grid[cx, cy] = -1
        # light fixtures: single ceiling tiles 8 units lower, a light flat of the train levels, brighter
        if lights and base.style.ceiling != "F_SKY1":
            for _ in range(int(rng.integers(0, 5))):
                cx, cy = r.x0 + int(rng.integers(0, w)), r.y0 + int(rng.integers(0, h))
                if grid[cx, cy] == s:
                    light = min(255, base.style.light + int(rng.choice([32, 48, 64])))
                    look = Style(base.style.wall, base.style.floor, lights[int(rng.integers(len(lights)))], light)
                    grid[cx, cy] = add(_Sector(base.floor, base.ceiling - 8, look))
    # corridors: L-shaped, 1-3 tiles wide, carved through solid tiles only
    for a, b in _links(rng, rooms):
        (ax, ay), (bx, by) = rooms[a].centre, rooms[b].centre
        width = int(rng.choice([1, 2, 2, 3]))
        floor = min(room_floor[a], room_floor[b])
        s = add(_Sector(floor, max(room_floor[a], room_floor[b]) + int(rng.choice([96, 112, 128])), style()))
        corner = (bx, ay) if rng.random() < 0.5 else (ax, by)
        for (x0, y0), (x1, y1) in (((ax, ay), corner), (corner, (bx, by))):
            xs = range(min(x0, x1), max(x0, x1) + width)
            ys = range(min(y0, y1), max(y0, y1) + width)
            for x in xs:
                for y in ys:
                    if 0 < x < size - 1 and 0 < y < size - 1 and grid[x, y] == -1:
                        grid[x, y] = s
        # columns never cut a corridor off: a corridor's tiles are carved after them, through solid tiles
    grid = _keep_reachable(grid, rooms[0].centre)
    accents = {s: style().wall for s in room_sector}  # a second wall texture of each room
    udmf, geometry = _udmf(grid, sectors, rng, accents)
    sx, sy = rooms[0].centre
    start = ((sx + 0.5) * TILE, (sy + 0.5) * TILE, float(rng.integers(0, 8) * 45))
    things = _decorations(rng, grid, rooms, room_sector, start)
    udmf += _thing(*start, 1) + "".join(_thing(x, y, 0.0, t) for x, y, t in things)
    return GeneratedMap(int(seed), udmf, geometry, start, len(rooms))


def _keep_reachable(grid: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Solid wherever the start's tile cannot be reached through open tiles (4-neighbours)."""
    seen = np.zeros(grid.shape, bool)
    stack = [start]
    seen[start] = True
    while stack:
        x, y = stack.pop()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nx < grid.shape[0] and 0 <= ny < grid.shape[1] and not seen[nx, ny] and grid[nx, ny] >= 0:
                seen[nx, ny] = True
                stack.append((nx, ny))
    return np.where(seen, grid, -1)


def _decorations(rng, grid, rooms, room_sector, start) -> list[tuple[float, float, int]]:
    out = []
    for r, s in zip(rooms, room_sector):
        for _ in range(int(rng.integers(0, 4))):
            x, y = int(rng.integers(r.x0, r.x1)), int(rng.integers(r.y0, r.y1))
            ring = grid[max(x - 1, 0) : x + 2, max(y - 1, 0) : y + 2]
            px, py = (x + 0.5) * TILE, (y + 0.5) * TILE
            if np.all(ring == s) and abs(px - start[0]) + abs(py - start[1]) > 2 * TILE:
                out.append((px, py, int(rng.choice(_DECORATIONS))))
    return out


def _thing(x: float, y: float, angle: float, kind: int) -> str:
    flags = "skill1=true;skill2=true;skill3=true;skill4=true;skill5=true;single=true;coop=true;dm=true;"
    return f"thing{{x={x:.1f};y={y:.1f};angle={int(angle)};type={kind};{flags}}}\n"


def _edge_runs(grid: np.ndarray):
    """The tile edges across the grid's second axis where the sector changes, merged along its first axis into runs
    of the same pair: (j, i0, i1, sector of tile [i, j - 1], sector of tile [i, j]) for i in [i0, i1), -1 = solid.
    ``grid`` gives the horizontal edges of a [x, y] grid; its transpose the vertical ones."""
    size_i, size_j = grid.shape
    padded = np.full((size_i, size_j + 2), -1, np.int64)
    padded[:, 1:-1] = grid
    for j in range(size_j + 1):
        run = None
        for i in range(size_i + 1):
            pair = (int(padded[i, j]), int(padded[i, j + 1])) if i < size_i else None
            if run is not None and pair != run[1]:
                yield j, run[0], i, *run[1]
                run = None
            if pair is not None and pair[0] != pair[1] and run is None:
                run = (i, pair)


def _udmf(grid: np.ndarray, sectors: list[_Sector], rng, accents: dict[int, str]) -> tuple[str, LevelGeometry]:
    """Lines along the tile edges where the sector changes (runs of equal sectors merged into one line), the
    UDMF text of vertices, sides, lines and sectors, and the sectors' outlines."""
    used = np.unique(grid[grid >= 0])
    renumber = {int(s): i for i, s in enumerate(used)}
    segments: list[tuple[tuple[int, int], tuple[int, int], int, int]] = []  # v1, v2, front, back (-1: none)

    for y, x0, x1, below, above in _edge_runs(grid):  # horizontal edges: going +x the front side is below
        segments.append(((x0, y), (x1, y), below, above) if below >= 0 else ((x1, y), (x0, y), above, below))
    for x, y0, y1, left, right in _edge_runs(grid.T):  # vertical edges: going +y the front side is the right tile
        segments.append(((x, y0), (x, y1), right, left) if right >= 0 else ((x, y1), (x, y0), left, right))

    vertex: dict[tuple[int, int], int] = {}
    out = ['namespace = "zdoom";\n']
    vtext, stext, ltext = [], [], []
    rows, owner = [], []
    for v1, v2, front, back in segments:
        for v in (v1, v2):
            if v not in vertex:
                vertex[v] = len(vertex)
                vtext.append(f"vertex{{x={v[0] * TILE}.0;y={v[1] * TILE}.0;}}\n")
        sides = []
        for s in (front, back):
            if s < 0:
                continue
            look = sectors[s].style
            if back < 0:  # a wall: now and then in the accent of its area
                wall = accents[s] if s in accents and rng.random() < 0.25 else look.wall
                stext.append(f'sidedef{{sector={renumber[s]};texturemiddle="{wall}";}}\n')
            else:
                stext.append(f'sidedef{{sector={renumber[s]};texturetop="{look.wall}";texturebottom="{look.wall}";}}\n')
            sides.append(len(stext) - 1)
            rows.append((v1[0] * TILE, v1[1] * TILE, v2[0] * TILE, v2[1] * TILE))
            owner.append(renumber[s])
        if back < 0:
            ltext.append(f"linedef{{v1={vertex[v1]};v2={vertex[v2]};sidefront={sides[0]};blocking=true;}}\n")
        else:
            ltext.append(
                f"linedef{{v1={vertex[v1]};v2={vertex[v2]};sidefront={sides[0]};sideback={sides[1]};twosided=true;}}\n"
            )
    sec_text = []
    for s in used:
        sec = sectors[int(s)]
        sec_text.append(
            f'sector{{heightfloor={sec.floor};heightceiling={sec.ceiling};texturefloor="{sec.style.floor}";'
            f'textureceiling="{sec.style.ceiling}";lightlevel={sec.style.light};}}\n'
        )
    out += vtext + stext + ltext + sec_text
    order = np.argsort(np.array(owner), kind="stable")
    geometry = LevelGeometry(
        np.array(rows, np.float64)[order],
        np.array(owner, np.int64)[order],
        np.array([sectors[int(s)].floor for s in used], np.float64),
        np.array([sectors[int(s)].ceiling for s in used], np.float64),
    )
    return "".join(out), geometry
