"""Train prompts without the level's name (PipelineOptions.prompt_title, encode.titled_episodes): the DiT has to read
the first frame instead of recalling a train level from its title."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from world_model.config import tiny
from world_model.data.levels import levels_in_split, split_level_prompt
from world_model.train.frames import FrameStore, synthetic_store

LOOK = "A dark place of brown walls and floors, seen from eye height without weapon or HUD."


def _level_store(episodes: int, frames: int = 40) -> FrameStore:
    """synthetic_store's world with level prompts (two levels in turn)."""
    store = synthetic_store(episodes, frames, (32, 32))
    levels = levels_in_split("train")[:2]
    store.prompts = [levels[e % 2].prompt(LOOK) for e in range(episodes)]
    return store


def test_the_level_prompt_splits_into_its_title_and_its_look():
    level = levels_in_split("test")[0]
    title, look = split_level_prompt(level.prompt(LOOK))
    assert look == LOOK and title.endswith(" level.") and level.title in title and level.map in title
    with pytest.raises(ValueError, match="not a level prompt"):
        split_level_prompt(LOOK)


def test_titled_episodes_draws_about_the_share_the_same_way_every_time():
    from world_model.train.encode import titled_episodes

    store = _level_store(300, 8)
    assert titled_episodes(store, 1.0).all() and not titled_episodes(store, 0.0).any()
    half = titled_episodes(store, 0.5)
    assert 0.4 < half.mean() < 0.6 and np.array_equal(half, titled_episodes(store, 0.5))
    assert np.all(titled_episodes(store, 0.3) <= half)  # a lower share drops the titles of a superset
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="title_share"):
            titled_episodes(store, bad)


def test_encode_store_gives_the_untitled_episodes_their_look_sentence():
    from world_model.text import make_text_encoder
    from world_model.train.autoencoder import identity_stats
    from world_model.train.encode import encode_store, titled_episodes
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae, text = WanVAE(identity_stats(cfg.vae)).eval(), make_text_encoder(cfg.text)
    asked: list[str] = []

    class Recording:
        def encode(self, prompts):
            asked.extend(prompts)
            return text.encode(prompts)

    store = _level_store(6)
    full = encode_store(vae, store, 9, Recording(), progress=False)
    assert sorted(asked) == sorted(set(store.prompts)) and len(full.text) == 2
    asked.clear()
    bare = encode_store(vae, store, 9, Recording(), progress=False, title_share=0.0)
    assert asked == [LOOK] and len(bare.text) == 1 and torch.equal(bare.latents, full.latents)
    torch.testing.assert_close(bare.text[0], text.encode([LOOK])[0].float())
    asked.clear()
    store = _level_store(40)
    some = encode_store(vae, store, 9, Recording(), progress=False, title_share=0.5)
    keep = titled_episodes(store, 0.5)
    assert 0 < keep.sum() < len(keep) and LOOK in asked and len(some.text) == 3
    episode = np.searchsorted(store.starts, some.seg_start.numpy(), side="right") - 1
    for s, e in enumerate(episode):  # every segment carries its episode's prompt, with or without the title
        want = store.prompts[e] if keep[e] else LOOK
        torch.testing.assert_close(some.text[some.seg_prompt[s]], text.encode([want])[0].float())


def test_the_option_reaches_the_train_split_only_and_refuses_what_it_cannot_do(monkeypatch, tmp_path):
    from world_model.train import encode, pipeline
    from world_model.train.__main__ import _parser

    assert _parser().parse_args(["encode", "--run", "r", "--prompt-title", "0.25"]).opt_prompt_title == 0.25
    seen = []

    class Encoded:
        num_segments = 1

        def save(self, folder):
            pass

    def fake_encode(vae, store, segment_latents, text, **kw):
        seen.append(kw["title_share"])
        return Encoded()

    from world_model.train.autoencoder import identity_stats
    from world_model.vae import WanVAE

    monkeypatch.setattr(encode, "encode_store", fake_encode)
    monkeypatch.setattr(pipeline, "_need", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "_frames", lambda run, split: _level_store(1))
    monkeypatch.setattr(pipeline, "_teacher_vae", lambda *a, **k: WanVAE(identity_stats(tiny(32, 32).vae)).eval())
    opts = dataclasses.replace(pipeline.PipelineOptions.smoke(), fake_data=False, vae_train_encoder=False)
    (tmp_path / "latents").mkdir()
    z = tiny(32, 32).vae.z_dim
    (tmp_path / "latents" / "stats.json").write_text(json.dumps({"mean": [0.0] * z, "std": [1.0] * z}))
    pipeline._stage_encode(tmp_path, dataclasses.replace(opts, prompt_title=0.25), None)
    assert seen == [0.25, 1.0]  # the train split, then the held-out one with its titles
    for bad in (-0.5, 1.01):
        with pytest.raises(ValueError, match="prompt_title"):
            dataclasses.replace(opts, prompt_title=bad)
    with pytest.raises(ValueError, match="fake_data"):
        dataclasses.replace(opts, fake_data=True, prompt_title=0.5)
