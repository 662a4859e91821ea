"""The Freedoom 1 and 2 levels shipped with ViZDoom: names, titles, train/validation/test split; generated levels.

Titles are the levels' own names (the ``HUSTR_*`` strings of the WADs' DEHACKED lumps). The split is
by level so that evaluation can use levels never trained on: in the fixed order below (Freedoom 1
E1M1..E4M9, then Freedoom 2 MAP01..MAP32), level i goes to validation if i % 10 == 8, to test if
i % 10 == 9, else to train (56 / 6 / 6 levels).

Generated levels (:mod:`world_model.data.procgen`) are named ``generated/<seed>``: a new map for every seed, in the
looks of the train levels, always in the train split. Retextured levels (:mod:`world_model.data.retexture`) are named
``retextured/<seed>/<level>``: a level's own map with new looks for every seed, in its level's split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from world_model.checks import whole

__all__ = [
    "Level",
    "LEVELS",
    "SPLITS",
    "EVAL_SPLITS",
    "get_level",
    "generated_level",
    "retextured_level",
    "levels_in_split",
    "split_level_prompt",
]

SPLITS = ("train", "validation", "test")
# what levels_in_split (and so the evaluation) takes: the splits, 12 generated levels no training episode plays and the
# train levels retextured with looks no training episode has
EVAL_SPLITS = (*SPLITS, "generated", "retextured")

_FREEDOOM1 = (
    "Outer Prison", "Communications Center", "Waste Disposal", "Supply Depot", "Armory", "Training Facility",
    "Xenobiotic Materials Lab", "Outpost Quarry", "Nutrient Recycling",
    "Elemental Gate", "Shifter", "Reclaimed Facilities", "Flooded Installation", "Underground Hub",
    "Hidden Sector", "Control Complex", "Containment Cell", "Fortress 31",
    "Land of the Lost", "Geothermal Tunnels", "Sacrificial Bastion", "Oblation Temple", "Infernal Hallows",
    "Igneous Intrusion", "No Regrets", "Ancient Lair", "Acquainted With Grief",
    "Maintenance Area", "Research Complex", "Central Computing", "Hydroponic Facility", "Engineering Station",
    "Command Center", "Waste Treatment", "Launch Bay", "Operations",
)  # fmt: skip
_FREEDOOM2 = (
    "Hydroelectric Plant", "Filtration Tunnels", "Crude Processing Center", "Containment Bay", "Sludge Burrow",
    "Janus Terminal", "Logic Gate", "Astronomy Complex", "Datacenter", "Deadly Outlands",
    "Dimensional Rift Observatory", "Railroads", "Station Earth", "Nuclear Zone", "Hostile Takeover",
    "Urban Jungle", "City Capitol", "Aquatics Lab", "Sewage Control", "Blood Ember Fortress", "Under Realm",
    "Remanasu", "Underground Facility", "Abandoned Teleporter Lab", "Persistence of Memory", "Dark Depths",
    "Palace of Red", "Grim Redoubt", "Melting Point", "Jaws of Defeat", "Be Quiet", "Not Sure",
)  # fmt: skip


@dataclass(frozen=True)
class Level:
    """One level: ``wad`` is ``freedoom1.wad`` or ``freedoom2.wad``, ``map`` e.g. ``E1M1`` or ``MAP01``;
    ``generated`` the seed of a generated level (its map is MAP01 of a PWAD made from the seed, on freedoom2.wad);
    ``retexture`` the seed of a retextured level's looks (its map is ``map`` of ``wad`` with new textures, flats and
    light: a PWAD made from the seed on ``wad``)."""

    wad: str
    map: str
    title: str
    split: str
    generated: int | None = None
    retexture: int | None = None

    @property
    def name(self) -> str:
        """A unique name such as ``freedoom2/MAP01``, ``generated/17`` or ``retextured/17/freedoom2/MAP01``."""
        if self.generated is not None:
            return f"generated/{self.generated}"
        own = f"{self.wad.removesuffix('.wad')}/{self.map}"
        return own if self.retexture is None else f"retextured/{self.retexture}/{own}"

    def prompt(self, look: str) -> str:
        """The level's prompt: its title and map plus a short description of how it looks. Every generated level
        has the same title (no name to recall a room by)."""
        if self.generated is not None:
            return f"First-person walk through {self.title} (a generated map), a Freedoom: Phase 2 level. {look}"
        game = "Freedoom: Phase 1" if self.wad == "freedoom1.wad" else "Freedoom: Phase 2"
        return f"First-person walk through {self.title} ({self.map}), a {game} level. {look}"


def split_level_prompt(prompt: str) -> tuple[str, str]:
    """A :meth:`Level.prompt` -> (the sentence naming the level, the look sentence)."""
    head, sep, look = prompt.partition(" level. ")
    if not sep or not head.startswith("First-person walk through "):
        raise ValueError(f"not a level prompt (First-person walk through ... level. LOOK): {prompt!r}")
    return head + " level.", look


def _build() -> tuple[Level, ...]:
    names = [("freedoom1.wad", f"E{e}M{m}") for e in range(1, 5) for m in range(1, 10)]
    names += [("freedoom2.wad", f"MAP{m:02d}") for m in range(1, 33)]
    titles = _FREEDOOM1 + _FREEDOOM2
    out = []
    for i, ((wad, map_), title) in enumerate(zip(names, titles, strict=True)):
        split = "validation" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        out.append(Level(wad, map_, title, split))
    return tuple(out)


LEVELS: tuple[Level, ...] = _build()


GENERATED_TITLE = "Generated Rooms"


def generated_level(seed: int) -> Level:
    """Generated level ``seed`` (>= 0): a train level whose map :func:`world_model.data.procgen.generate_map` makes."""
    seed = whole(seed, "a generated level's seed")
    return Level("freedoom2.wad", "MAP01", GENERATED_TITLE, "train", generated=seed)


def retextured_level(level: Level, seed: int) -> Level:
    """``level``'s map with the looks of seed ``seed`` (>= 0; :func:`world_model.data.retexture.retextured_wad`): the
    same geometry, title and split."""
    seed = whole(seed, "a retextured level's seed")
    if level.generated is not None or level.retexture is not None:
        raise ValueError(f"only a Freedoom level is retextured, got {level.name}")
    return replace(level, retexture=seed)


def get_level(name: str) -> Level:
    """A level by name: ``freedoom2/MAP01``, or just ``MAP01`` / ``E1M1``; ``generated/17`` for a generated one,
    ``retextured/17/freedoom2/MAP01`` for a retextured one."""
    if name.startswith("retextured/"):
        digits, _, own = name.removeprefix("retextured/").partition("/")
        if not digits.isdigit() or not own:
            raise KeyError(f"a retextured level is named retextured/<seed>/<level> (seed: digits), got {name!r}")
        return retextured_level(get_level(own), int(digits))
    if name.startswith("generated/"):
        digits = name.removeprefix("generated/")
        if not digits.isdigit():
            raise KeyError(f"a generated level is named generated/<seed> (digits), got {name!r}")
        return generated_level(int(digits))
    for level in LEVELS:
        if name in (level.name, level.map):
            return level
    raise KeyError(f"unknown level {name!r}; known levels are e.g. {LEVELS[0].name}, {LEVELS[-1].name}")


# generated and retextured levels for evaluation: seeds from 2**31 up, which no recorder's episode draws (their seeds
# are below 2**31)
GENERATED_EVAL_SEED = 2**31
GENERATED_EVAL_LEVELS = 12


def levels_in_split(split: str) -> tuple[Level, ...]:
    """The levels of ``split``; ``"generated"``: 12 generated levels no training episode plays (for evaluation);
    ``"retextured"``: the train levels in their order, each with looks no training episode has (seeds from
    :data:`GENERATED_EVAL_SEED` up): an episode of this split plays the same commands to the same poses as the same
    episode of ``"train"``, in other looks, so that the two runs tell what a model recalls of the levels' looks."""
    if split == "generated":
        return tuple(generated_level(GENERATED_EVAL_SEED + i) for i in range(GENERATED_EVAL_LEVELS))
    if split == "retextured":
        return tuple(retextured_level(lv, GENERATED_EVAL_SEED + i) for i, lv in enumerate(levels_in_split("train")))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    return tuple(level for level in LEVELS if level.split == split)
