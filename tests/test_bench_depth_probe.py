"""bench/depth_probe.py: the linear probe of inverse depth on a DiT's features (issue 13's strafes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bench_loader import load_bench


def test_the_ridge_probe_scores_a_linear_relation_near_one_and_noise_near_zero():
    mod = load_bench("depth_probe.py")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    y = x @ rng.normal(size=(8, 4)) + 0.01 * rng.normal(size=(400, 4))
    assert mod.ridge_r2(x[:200], y[:200], x[200:], y[200:], 1e-4) > 0.99
    noise = rng.normal(size=(400, 4))
    assert mod.ridge_r2(x[:200], noise[:200], x[200:], noise[200:], 1e-4) < 0.1


def test_patches_are_laid_out_as_the_dits_tokens():
    import torch

    mod = load_bench("depth_probe.py")
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(1, 2, 3, 4, 4)  # [B, C, F, h, w]
    p = mod.patches(x, 2, 2)
    assert p.shape == (1, 3, 2, 2, 8)
    # frame 1, patch (0, 1): channel 0's pixels (0, 2), (0, 3), (1, 2), (1, 3), then channel 1's
    want = [x[0, c, 1, i, j].item() for c in range(2) for i in (0, 1) for j in (2, 3)]
    assert p[0, 1, 0, 1].tolist() == want


def test_the_probe_runs_on_a_small_model_and_writes_its_table(tmp_path):
    pytest.importorskip("vizdoom")
    mod = load_bench("depth_probe.py")
    out = tmp_path / "p.json"
    r = mod.main(["--model", "tiny-random", "--windows", "4", "--sigmas", "0.5", "--json", str(out)])
    assert set(r["r2"]) == {"position in the view alone", "clean latents' patches",
                            "clean latents' patches and position", "noisy latents' patches, sigma 0.5",
                            "DiT's last hidden states, sigma 0.5"}  # fmt: skip
    assert all(np.isfinite(v) and v <= 1.0 for v in r["r2"].values())
    assert json.loads(out.read_text())["windows"] == 4 and r["target_std"] > 0
    with pytest.raises(SystemExit):
        mod.main(["--model", "tiny-random", "--windows", "2"])
