"""Inputs that used to go silently wrong: 16-bit images, alpha, bf16/fp16 tensors, complex actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mg3_env.spaces import load_image, validate_action


def _grey16():
    return (np.arange(16 * 24, dtype=np.uint32).reshape(16, 24) * 170).astype(np.uint16)  # 0 ... 65110


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = _grey16()
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)  # a 16-bit greyscale PNG
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = load_image(path, 16, 24)
    want = np.round(grey / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(want[..., None], 3, axis=2))
    assert (out == 255).mean() < 0.01  # not 98% white
    rgb16 = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_image(rgb16, 16, 24), np.repeat(want[..., None], 3, axis=2))


def test_alpha_opaque_dropped_transparent_refused(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    np.testing.assert_array_equal(load_image(rgba, 8, 8), rgba[..., :3])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(load_image(tmp_path / "opaque.png", 8, 8), rgba[..., :3])
    rgba[:4, :, 3] = 0  # the hidden RGB (200, 0, 0) must not show
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    for image in (rgba, tmp_path / "clear.png", Image.fromarray(rgba)):
        with pytest.raises(ValueError, match="transparent pixels"):
            load_image(image, 8, 8)
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "pal.png", transparency=int(np.asarray(pal)[0, 0]))  # a palette entry in use
    with pytest.raises(ValueError, match="transparent"):
        load_image(tmp_path / "pal.png", 8, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_are_accepted(dtype):
    x = torch.linspace(0, 1, 8 * 8 * 3).reshape(8, 8, 3).to(dtype)
    out = load_image(x, 8, 8)
    np.testing.assert_array_equal(out, np.round(x.float().numpy() * 255).astype(np.uint8))
    kb, ms = validate_action(
        {"keyboard": torch.tensor([1, 0, 0, 0, 0, 0]), "mouse": torch.tensor([0.0, 0.1], dtype=dtype)}, 4
    )
    assert ms[0, 1] == pytest.approx(0.1, abs=1e-3)
    if dtype == torch.float16:  # a float16 numpy array too (its own rounding: within 1 level)
        assert np.abs(load_image(x.numpy(), 8, 8).astype(int) - out).max() <= 1


@pytest.mark.parametrize(
    "mouse",
    [np.array([0.0, 0.1 + 0.5j]), np.array([0.0, 0.1], np.complex64), torch.tensor([0.0, 0.1], dtype=torch.complex64)],
)
def test_complex_actions_are_refused(mouse):
    with pytest.raises(TypeError, match="real numbers"):
        validate_action({"keyboard": np.zeros(6), "mouse": mouse}, 4)
    with pytest.raises(TypeError, match="real numbers"):
        validate_action({"keyboard": np.zeros(6, np.complex128), "mouse": np.zeros(2)}, 4)
