"""bench/pose_source_gap.py: a model's chunks conditioned on recorded against integrated poses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bench_loader import load_bench


def test_the_bench_scores_both_pose_sources_on_the_same_windows(tmp_path):
    pytest.importorskip("vizdoom")
    mod = load_bench("pose_source_gap.py")
    out = tmp_path / "g.json"
    r = mod.main(["--model", "tiny-random", "--episodes", "1", "--sampler-steps", "2", "--json", str(out)])
    assert set(r["mean"]) == {"recorded", "integrated"} and r["windows"] == 1 and r["sampler_steps"] == 2
    for row in r["mean"].values():
        assert np.isfinite(row["psnr_model"]) and np.isfinite(row["gain_next_db"])
    # the same frames and noise: chunk 0's repeat-first reference does not depend on the camera code
    assert r["mean"]["recorded"]["psnr_repeat"] == r["mean"]["integrated"]["psnr_repeat"]
    gap = r["integrated_minus_recorded"]["psnr_model"]["diff"]
    assert gap == r["mean"]["integrated"]["psnr_model"] - r["mean"]["recorded"]["psnr_model"]
    assert json.loads(out.read_text())["split"] == "test"
    with pytest.raises(SystemExit):
        mod.main(["--episodes", "0"])
