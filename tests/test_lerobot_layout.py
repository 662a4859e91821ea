"""Datasets as LeRobot's own reader sees them: meta/tasks.parquet indexed by the task string,
meta/stats.json per feature (videos per channel), both right after appends and re-opening."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from world_model.data.format import STATS_PATH, TASKS_PATH, VIDEO_KEY, DatasetReader, DatasetWriter


def _episode(rng, t, h=16, w=16):
    # smooth images (H.264 keeps them close): a gradient per channel, a brightness per frame
    ramp = np.linspace(0, 1, w)[None, None, :, None] * np.array([60.0, 120.0, 200.0])
    level = rng.uniform(20, 50, (t, 1, 1, 1))
    frames = np.broadcast_to(ramp + level, (t, h, w, 3)).round().astype(np.uint8)
    kb = rng.integers(0, 2, (t, 6)).astype(np.float32)
    ms = rng.uniform(-0.1, 0.1, (t, 2)).astype(np.float32)
    poses = np.cumsum(rng.normal(size=(t, 5)), axis=0).astype(np.float32)
    return frames, kb, ms, poses


def _lerobot_tasks(root):
    """What ``lerobot.datasets.io_utils.load_tasks`` returns: pd.read_parquet, index named 'task';
    LeRobotDataset's item["task"] = tasks.iloc[task_index].name."""
    table = pq.read_table(root / TASKS_PATH)
    meta = json.loads(table.schema.metadata[b"pandas"])
    assert meta["index_columns"] == ["task"]  # pandas restores the task string as the index
    try:
        import pandas as pd
    except ImportError:
        names = table.column("task").to_pylist()
        order = table.column("task_index").to_pylist()
        return lambda i: names[i], dict(zip(names, order))
    tasks = pd.read_parquet(root / TASKS_PATH)
    tasks.index.name = "task"
    return lambda i: tasks.iloc[i].name, dict(zip(tasks.index, tasks["task_index"]))


def test_tasks_and_stats_as_lerobot_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    prompts = ["a red room", "a blue corridor", "a red room"]
    with DatasetWriter(root, fps=16, height=16, width=16) as w:
        for p, t in zip(prompts[:2], (20, 30)):
            w.add_episode(*_episode(rng, t), p, seed=1)
    with DatasetWriter(root, fps=16, height=16, width=16) as w:  # re-opened: appended, stats updated
        w.begin_episode(prompts[2])
        frames, kb, ms, poses = _episode(rng, 25)
        w.add_frames(frames[:10], kb[:10], ms[:10], poses[:10])
        w.add_frames(frames[10:], kb[10:], ms[10:], poses[10:])
        w.end_episode()

    task_of, index_of = _lerobot_tasks(root)
    assert index_of == {"a red room": 0, "a blue corridor": 1}
    reader = DatasetReader(root)
    data = pq.read_table(sorted((root / "data").rglob("*.parquet"))[1])
    assert task_of(data.column("task_index")[0].as_py()) == "a blue corridor"

    stats = json.loads((root / STATS_PATH).read_text())
    eps = [reader.load_episode(i) for i in range(3)]
    state = np.concatenate([e.poses for e in eps])
    s = stats["observation.state"]
    assert s["count"] == [75]
    np.testing.assert_allclose(s["mean"], state.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["std"], state.std(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s["min"], state.min(0))
    np.testing.assert_allclose(s["max"], state.max(0))
    kb = np.concatenate([e.keyboard for e in eps])
    np.testing.assert_allclose(stats["action.keyboard"]["mean"], kb.mean(0), rtol=1e-6)
    assert stats["episode_index"]["max"] == [2.0] and stats["index"]["max"] == [74.0]
    assert stats["task_index"]["mean"] == pytest.approx([30 / 75])
    v = stats[VIDEO_KEY]
    assert np.asarray(v["mean"]).shape == (3, 1, 1) and v["count"] == [75]
    pixels = np.concatenate([e.frames for e in eps]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.asarray(v["mean"]).ravel(), pixels.mean(0), atol=0.02)  # H.264 is lossy
    np.testing.assert_allclose(np.asarray(v["std"]).ravel(), pixels.std(0), atol=0.03)
    assert min(np.asarray(v["min"]).ravel()) >= 0 and max(np.asarray(v["max"]).ravel()) <= 1


def test_stats_recomputed_for_a_dataset_without_them(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    with DatasetWriter(root, fps=16, height=16, width=16) as w:
        w.add_episode(*_episode(rng, 12), "p")
    want = json.loads((root / STATS_PATH).read_text())
    (root / STATS_PATH).unlink()  # written before stats.json existed
    with DatasetWriter(root, fps=16, height=16, width=16):
        pass
    got = json.loads((root / STATS_PATH).read_text())
    for key in want:
        if key != VIDEO_KEY:
            np.testing.assert_allclose(got[key]["mean"], want[key]["mean"], rtol=1e-6)
    np.testing.assert_allclose(got[VIDEO_KEY]["mean"], want[VIDEO_KEY]["mean"], atol=0.02)  # from the decoded video
