"""The embedded default model: shipped inside the package, loaded by name, used when no model is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mg3_env import MatrixGameEnv
from world_model.model import EMBEDDED_DIR, load_world_model


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_weights_ship_inside_the_package_within_40_mb():
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    assert 10e6 < weights <= 40e6
    names = {p.name for p in files}
    assert {"config.json", "vae.safetensors", "default_image.png", "default_prompt.txt", "README.md"} <= names


def test_default_loads_by_name_with_its_own_first_frame_and_prompt():
    wm = load_world_model("default")
    assert wm.config.name == "mg3-embedded"
    assert not wm.random_weights
    assert (wm.config.sampler.num_steps, wm.config.sampler.shift) == (8, 3.0)  # 8 since session 46 (model card)
    # a CPU's default runs it with the context cache refreshed every 2nd step (measured in session 47, model card)
    assert wm.config.sampler.context_cache_refresh == 2
    if wm.runtime.device == "cpu":
        assert wm.runtime.context_cache is True and wm.runtime.context_cache_refresh == 2
    assert wm.default_image is not None and wm.default_image.endswith("default_image.png")
    assert "Freedoom" in (wm.default_prompt or "")


def test_the_teacher_is_not_shipped_and_says_where_it_is():
    with pytest.raises(ValueError, match="not shipped"):
        load_world_model("default-teacher")
    with pytest.raises(ValueError, match="not shipped"):  # the same model asked for as the default's base variant
        load_world_model("default", variant="base")  # (was: the distilled default, the variant ignored)


def test_variant_and_seed_are_refused_where_they_would_do_nothing():
    with pytest.raises(ValueError, match="has none"):
        load_world_model("tiny-random", variant="base")
    with pytest.raises(ValueError, match="seed picks the weights of the random models"):
        load_world_model("default", seed=3)
    a, b = load_world_model("tiny-random", seed=1), load_world_model("tiny-random", seed=2)
    assert not torch.equal(next(a.dit.parameters()), next(b.dit.parameters()))


def test_env_without_arguments_runs_the_embedded_model():
    env = MatrixGameEnv()
    obs, info = env.reset(seed=0)
    assert info["model"] == "default" and info["random_weights"] is False
    frames = info["first_chunk_frames"]  # the 57 frames of the priming chunk
    assert frames.shape == (57, 128, 128, 3) and frames.dtype == np.uint8
    assert obs["frames"].shape == (40, 128, 128, 3)
    # a trained model continues the given first frame; random weights would give noise (< 10 dB)
    first = np.asarray(env.vector_env.default_image)  # the model's own first frame (a Freedoom view)
    assert first.shape == (128, 128, 3)
    assert _psnr(frames[1], first) > 15.0
    still = {"keyboard": np.zeros(6, np.float32), "mouse": np.zeros(2, np.float32)}
    obs, *_ = env.step(still)
    assert obs["frames"].shape == (40, 128, 128, 3)
    # standing still keeps the view: the last frame is still close to the start
    assert _psnr(obs["frames"][-1], frames[0]) > 14.0
    env.close()
