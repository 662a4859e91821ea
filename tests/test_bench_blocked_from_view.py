"""bench/blocked_from_view.py: its classifier, its AUC and its run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bench_loader import load_bench


def test_the_auc_ranks_and_the_net_learns_a_rule_the_frame_holds():
    mod = load_bench("blocked_from_view.py")
    y = np.array([0, 0, 1, 1])
    assert mod.auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0 and mod.auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    rng = np.random.default_rng(0)
    # blocked where the side of the key pressed is bright: mirroring a frame swaps left and right, which the
    # training's flips must honour for the rule to stay learnable
    frames = rng.integers(0, 60, (512, 64, 64)).astype(np.uint8)
    keys = rng.integers(3, 5, 512)
    bright = rng.random(512) < 0.5
    for i in np.flatnonzero(bright):
        frames[i, :, :32] += 150 if keys[i] == 3 else 0
        frames[i, :, 32:] += 150 if keys[i] == 4 else 0
    frames = frames[:, None]  # [N, 1, h, w]: the frame alone
    net = mod.train(frames, keys, bright.astype(np.int64), epochs=6, seed=0)
    with torch.no_grad():
        score = torch.sigmoid(net(torch.from_numpy(frames), torch.from_numpy(keys))).numpy()
    assert mod.auc(score, bright.astype(int)) > 0.95


def test_the_bench_writes_its_numbers(tmp_path):
    pytest.importorskip("vizdoom")
    mod = load_bench("blocked_from_view.py")
    out = tmp_path / "b.json"
    r = mod.main(
        ["--frames", "3000", "--held-out-frames", "1500", "--epochs", "1", "--history", "8", "--json", str(out)]
    )
    assert (
        r["history"] == [8] and r["train_samples"] > 0 and set(r["test"]) == {"all", "forward", "back", "left", "right"}
    )
    assert sum(r["test"][k]["samples"] for k in ("forward", "back", "left", "right")) == r["test"]["all"]["samples"]
    assert all("auc" in row and 0 <= row["accuracy"] <= 1 for row in r["test"].values() if row["samples"])
    assert json.loads(out.read_text())["auc"] == r["auc"] or np.isnan(r["auc"])
    with pytest.raises(SystemExit):
        mod.main(["--frames", "0"])
