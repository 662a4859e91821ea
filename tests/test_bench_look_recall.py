"""bench/look_recall.py: the paired chunk-0 gains of a model's train-level and retextured runs."""

from __future__ import annotations

import json

import pytest

from tests.bench_loader import load_bench


def _run(split: str, model: list[float], repeat: list[float], **options) -> dict:
    opts = {"split": split, "seed": 0, "spawn": "start", "fidelity_episodes": len(model), "fidelity_chunks": 10}
    pooled = {"per_episode": model, "repeat_per_episode": repeat}
    return {"model": {"model": "M", "sampler_steps": 16}, "options": {**opts, **options},
            "fidelity": {"chunk0": {"pooled": pooled}}}  # fmt: skip


def test_it_pairs_the_gains_over_each_runs_own_baseline(tmp_path):
    mod = load_bench("look_recall.py")
    train = _run("train", [22.0, 20.0, 19.0], [20.0, 19.0, 18.0])  # gains 2, 1, 1
    looks = _run("retextured", [19.0, 18.5, 16.0], [18.0, 18.0, 16.0])  # gains 1, 0.5, 0
    r = mod.main(
        [_write(tmp_path / "t.json", train), _write(tmp_path / "r.json", looks), "--json", str(tmp_path / "o")]
    )
    assert r["gain_train_db"] == pytest.approx(4 / 3) and r["gain_retextured_db"] == pytest.approx(0.5)
    assert r["recall_db"] == pytest.approx(5 / 6) and r["train_better"] == 3 and r["recall_se_db"] > 0
    assert json.loads((tmp_path / "o").read_text())["episodes"] == 3


def test_runs_that_cannot_be_paired_are_refused():
    mod = load_bench("look_recall.py")
    train = _run("train", [20.0], [19.0])
    with pytest.raises(ValueError, match="--split retextured"):
        mod.look_recall(train, _run("test", [20.0], [19.0]))
    with pytest.raises(ValueError, match="seed"):
        mod.look_recall(train, _run("retextured", [20.0], [19.0], seed=1))
    old = _run("retextured", [20.0], [19.0])
    del old["fidelity"]["chunk0"]["pooled"]["repeat_per_episode"]
    with pytest.raises(ValueError, match="before session 54"):
        mod.look_recall(train, old)


def _write(path, metrics: dict) -> str:
    path.write_text(json.dumps(metrics))
    return str(path)
