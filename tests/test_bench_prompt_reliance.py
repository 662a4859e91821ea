"""bench/prompt_reliance.py: the prompt variants it plays chunk 0 under."""

from __future__ import annotations

import numpy as np
import pytest

from mg3_eval.simulator import SimEpisode
from tests.bench_loader import load_bench
from world_model.data.levels import levels_in_split, split_level_prompt


def _episodes(names: list[str]) -> list[SimEpisode]:
    by_name = {lv.name: lv for lv in levels_in_split("train")}
    z = np.zeros((1, 4, 4, 3), np.uint8)
    look = "A dark place of brown walls and floors, seen from eye height without weapon or HUD."
    return [SimEpisode(n, 0, by_name[n].prompt(look), z, z[:, 0, 0], z[:, 0, :2], z[:, 0, 0]) for n in names]


def test_the_variants_swap_or_drop_the_title_and_keep_the_look():
    mod = load_bench("prompt_reliance.py")
    train = [lv.name for lv in levels_in_split("train")]
    eps = _episodes([train[0], train[0], train[1]])
    recorded = mod.variant_prompts(eps, "as recorded")
    assert recorded == [e.prompt for e in eps]
    title = [split_level_prompt(p)[0] for p in recorded]
    looks = mod.variant_prompts(eps, "look only")
    assert looks == [split_level_prompt(p)[1] for p in recorded] and all(lk.startswith("A dark place") for lk in looks)
    swapped = mod.variant_prompts(eps, "another level's title")
    for i, s in enumerate(swapped):
        head, look = split_level_prompt(s)
        assert look == looks[i] and head != title[i] and head in title  # a real title, never the episode's own
    assert split_level_prompt(swapped[0])[0] == title[2]  # the next episode of another level


def test_the_variants_refuse_what_they_cannot_do():
    mod = load_bench("prompt_reliance.py")
    train = [lv.name for lv in levels_in_split("train")]
    with pytest.raises(ValueError, match="two levels"):
        mod.variant_prompts(_episodes([train[0], train[0]]), "another level's title")
    with pytest.raises(ValueError, match="unknown variant"):
        mod.variant_prompts(_episodes([train[0], train[1]]), "no such")
    with pytest.raises(ValueError, match="not a level prompt"):
        split_level_prompt("a picture of a room")
