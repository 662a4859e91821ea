"""Dataset format: LeRobot v3 layout, round trips, crash safety, validation, clips, pose convention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("av")
import pyarrow.parquet as pq  # noqa: E402

from world_model.data.clips import ClipSampler, ClipSpec  # noqa: E402
from world_model.data.format import (  # noqa: E402
    DatasetError,
    DatasetReader,
    DatasetWriter,
    validate_dataset,
)
from world_model.data.poses import c2w_from_poses  # noqa: E402

H, W = 48, 64


def _episode(t: int, seed: int):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.stack(
        [
            np.stack([(xx * 4 + 3 * i) % 256, (yy * 5 + i) % 256, np.full_like(xx, 40 * seed % 256)], -1)
            for i in range(t)
        ]
    ).astype(np.uint8)
    keyboard = (rng.random((t, 6)) < 0.3).astype(np.float32)
    keyboard[:, 4:] = 0
    mouse = rng.normal(0, 0.1, (t, 2)).astype(np.float32)
    poses = np.cumsum(rng.normal(0, 5, (t, 5)), 0)
    return frames, keyboard, mouse, poses


def _write(root: Path, lengths=(20, 13, 9)) -> list[tuple]:
    eps = [_episode(t, i) for i, t in enumerate(lengths)]
    with DatasetWriter(root, fps=17.5, height=H, width=W, source="test") as w:
        for i, (f, k, m, p) in enumerate(eps):
            assert w.add_episode(f, k, m, p, f"prompt {i % 2}", seed=i, split="test" if i == 1 else "train") == i
    return eps


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_layout_is_lerobot_v3(tmp_path):
    _write(tmp_path)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_frames"] == 42 and info["total_tasks"] == 2
    assert info["fps"] == 17.5
    assert info["splits"] == {"test": "1:2", "train": "0:1,2:3"}
    feats = info["features"]
    assert feats["observation.images.rgb"]["dtype"] == "video"
    assert feats["observation.images.rgb"]["info"]["video.codec"] == "h264"
    assert feats["action.keyboard"]["shape"] == [6] and feats["action.mouse"]["shape"] == [2]
    assert feats["observation.state"]["shape"] == [5] and feats["observation.c2w"]["shape"] == [16]
    assert info["data_path"].format(chunk_index=0, file_index=2) == "data/chunk-000/file-002.parquet"
    assert (tmp_path / "videos/observation.images.rgb/chunk-000/file-002.mp4").exists()
    tasks = pq.read_table(tmp_path / "meta/tasks.parquet").to_pylist()
    assert tasks == [{"task_index": 0, "task": "prompt 0"}, {"task_index": 1, "task": "prompt 1"}]
    rows = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["dataset_from_index"] for r in rows] == [0, 20, 33]
    assert rows[1]["videos/observation.images.rgb/to_timestamp"] == pytest.approx(13 / 17.5)
    data = pq.read_table(tmp_path / "data/chunk-000/file-001.parquet")
    assert data.column("index").to_pylist() == list(range(20, 33))
    assert data.column("task_index").to_pylist() == [1] * 13
    assert data.column("timestamp").to_numpy()[-1] == pytest.approx(12 / 17.5)


def test_round_trip(tmp_path):
    eps = _write(tmp_path)
    reader = validate_dataset(tmp_path)
    assert len(reader) == 3 and reader.num_frames == 42
    for i, (f, k, m, p) in enumerate(eps):
        ep = reader.load_episode(i)
        assert ep.prompt == f"prompt {i % 2}" and ep.info.seed == i
        np.testing.assert_array_equal(ep.keyboard, k)
        np.testing.assert_array_equal(ep.mouse, m)
        np.testing.assert_allclose(ep.poses, p, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(ep.c2w, c2w_from_poses(p), atol=1e-5)
        assert ep.frames.shape == f.shape and ep.frames.dtype == np.uint8
        assert _psnr(ep.frames, f) > 30
    assert reader.split_indices("test") == [1]


def test_incremental_equals_whole(tmp_path):
    f, k, m, p = _episode(17, 3)
    with DatasetWriter(tmp_path / "a", fps=17.5, height=H, width=W) as w:
        w.add_episode(f, k, m, p, "x")
    with DatasetWriter(tmp_path / "b", fps=17.5, height=H, width=W) as w:
        w.begin_episode("x")
        for s in (slice(0, 5), slice(5, 6), slice(6, 17)):
            w.add_frames(f[s], k[s], m[s], p[s])
        w.end_episode()
    a, b = DatasetReader(tmp_path / "a").load_episode(0), DatasetReader(tmp_path / "b").load_episode(0)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.poses, b.poses)


def test_bad_input_is_rejected(tmp_path):
    f, k, m, p = _episode(5, 0)
    with DatasetWriter(tmp_path, fps=17.5, height=H, width=W) as w:
        with pytest.raises(ValueError, match="keyboard"):
            w.add_episode(f, k[:, :4], m, p, "x")
        with pytest.raises(ValueError, match="frames"):
            w.add_episode(f[:, :10], k, m, p, "x")
        with pytest.raises(DatasetError, match="begin_episode"):
            w.add_frames(f, k, m, p)
        assert w.num_episodes == 0
    with pytest.raises(DatasetError, match="fps"):
        DatasetWriter(tmp_path, fps=30, height=H, width=W)


def test_reopen_appends_and_cleans_orphans(tmp_path):
    _write(tmp_path)
    # a crash after an episode's files were published but before the episodes table was updated
    data = tmp_path / "data/chunk-000"
    (data / "file-003.parquet").write_bytes((data / "file-000.parquet").read_bytes())
    (data / "file-003.parquet.tmp-123").write_bytes(b"partial")
    with DatasetWriter(tmp_path, fps=17.5, height=H, width=W) as w:
        assert w.num_episodes == 3
        assert not (data / "file-003.parquet").exists() and not (data / "file-003.parquet.tmp-123").exists()
        f, k, m, p = _episode(7, 9)
        assert w.add_episode(f, k, m, p, "new") == 3
    reader = validate_dataset(tmp_path)
    assert reader.episodes[3].dataset_from_index == 42 and reader.num_frames == 49


_CRASH = """
import os, sys
import numpy as np
from world_model.data.format import DatasetWriter
w = DatasetWriter(sys.argv[1], fps=17.5, height=48, width=64)
w.begin_episode("crashing")
n = 80  # enough frames for the encoder to start writing the temporary file
w.add_frames(np.zeros((n, 48, 64, 3), np.uint8), np.zeros((n, 6)), np.zeros((n, 2)), np.zeros((n, 5)))
os._exit(1)
"""


def test_crash_mid_episode_corrupts_nothing(tmp_path):
    _write(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert list(tmp_path.rglob("*.tmp-*")), "the crashed episode should have left a temporary file"
    with DatasetWriter(tmp_path, fps=17.5, height=H, width=W) as w:
        assert w.num_episodes == 3
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert validate_dataset(tmp_path).num_frames == 42


def test_missing_or_corrupt_files_name_the_episode(tmp_path):
    _write(tmp_path)
    (tmp_path / "videos/observation.images.rgb/chunk-000/file-001.mp4").unlink()
    path = tmp_path / "data/chunk-000/file-002.parquet"
    path.write_bytes(path.read_bytes()[:100])
    reader = DatasetReader(tmp_path)
    reader.load_episode(0)
    with pytest.raises(DatasetError, match="episode 1: video file .* is missing"):
        reader.load_episode(1)
    with pytest.raises(DatasetError, match="episode 2: data file .* is corrupt"):
        reader.load_episode(2, frames=False)
    with pytest.raises(DatasetError) as e:
        validate_dataset(tmp_path)
    assert "2 problem(s)" in str(e.value) and "episode 1" in str(e.value) and "episode 2" in str(e.value)


def test_truncated_video_is_detected(tmp_path):
    _write(tmp_path)
    f, k, m, p = _episode(5, 1)
    with DatasetWriter(tmp_path / "short", fps=17.5, height=H, width=W) as w:
        w.add_episode(f, k, m, p, "x")
    # swap in a video with fewer frames than the episode claims
    src = tmp_path / "short/videos/observation.images.rgb/chunk-000/file-000.mp4"
    dst = tmp_path / "videos/observation.images.rgb/chunk-000/file-000.mp4"
    dst.write_bytes(src.read_bytes())
    with pytest.raises(DatasetError, match=r"episode 0: video file .* holds frames \[5"):
        DatasetReader(tmp_path).load_episode(0)


def test_clip_sampler_chunk_structure(tmp_path):
    lengths = (60, 9)
    eps = _write(tmp_path, lengths)
    reader = DatasetReader(tmp_path)
    loaded = list(reader.iter_episodes())
    spec = ClipSpec(past_latents=1, new_latents=2, first_latents=3, first_clip_prob=0.2)
    sampler = ClipSampler(loaded, spec, seed=0)
    assert [e.info.index for e in sampler.episodes] == [0, 1]  # both have >= 9 frames
    seen_first = seen_later = False
    for _ in range(40):
        c = sampler.sample()
        ep = loaded[c.episode]
        if c.first:
            seen_first = True
            assert c.start == 0 and len(c.frames) == 9 and len(c.memory_latents) == 0
        else:
            seen_later = True
            assert c.start % 4 == 1 and len(c.frames) == 12 and c.start + 12 <= len(ep)
            start_latent = (c.start + 3) // 4
            np.testing.assert_array_equal(c.memory_latents, np.arange(1, start_latent))
            for j, lat in enumerate(c.memory_latents):
                np.testing.assert_array_equal(c.memory_frames[j], ep.frames[4 * lat - 3 : 4 * lat + 1])
                np.testing.assert_array_equal(c.memory_c2w[j], ep.c2w[4 * lat])
        np.testing.assert_array_equal(c.frames, ep.frames[c.start : c.start + len(c.frames)])
        np.testing.assert_array_equal(c.mouse, eps[c.episode][2][c.start : c.start + len(c.frames)])
    assert seen_first and seen_later
    with pytest.raises(ValueError, match="start_latent"):
        sampler.clip(loaded[0], start_latent=1)


def test_c2w_convention():
    poses = np.array([[100.0, -50.0, 41.0, 0.0, 0.0], [0, 0, 0, 0.0, 90.0], [0, 0, 0, 30.0, 0.0]])
    c2w = c2w_from_poses(poses)
    axis = c2w[:, :3, 2]  # camera z (optical axis) in the world
    np.testing.assert_allclose(axis[0], [1, 0, 0], atol=1e-12)  # yaw 0 looks along +X (forward)
    np.testing.assert_allclose(axis[1], [0, 1, 0], atol=1e-12)  # positive yaw turns right, to +Y
    assert axis[2][2] < -0.49  # positive pitch looks down
    np.testing.assert_allclose(c2w[0, :3, 3], [1.0, -0.5, 0.41])  # translation = position * 0.01
    assert np.allclose(np.linalg.det(c2w[:, :3, :3]), -1.0)  # left-handed world, OpenCV camera (spec §5.1)


def test_c2w_matches_package_camera():
    camera = pytest.importorskip("world_model.camera")
    if not hasattr(camera, "c2w_from_poses"):
        pytest.skip("world_model.camera.c2w_from_poses not available yet")
    import torch

    poses = np.random.default_rng(0).normal(0, 60, (16, 5))
    ours = c2w_from_poses(poses)
    theirs = camera.c2w_from_poses(torch.from_numpy(poses)).double().numpy()
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, atol=1e-5)


def test_writer_lock(tmp_path):
    with DatasetWriter(tmp_path, fps=17.5, height=H, width=W), pytest.raises(DatasetError, match="another"):
        DatasetWriter(tmp_path, fps=17.5, height=H, width=W)


def test_video_stats_from_histograms_equal_the_float_sums():
    from world_model.data.format import VideoStats, _RunningStats

    frames, *_ = _episode(30, 1)
    fast = VideoStats()
    fast.add_frames(frames[:0])  # no frames: nothing counted
    fast.add_frames(frames[:11])
    fast.add_frames(frames[11:])
    ref = _RunningStats()
    ref.add(frames, (0, 1, 2))
    assert fast.n == ref.n == 30 * H * W
    for k in ("s1", "s2", "lo", "hi"):
        np.testing.assert_array_equal(getattr(fast, k), getattr(ref, k))
    with pytest.raises(ValueError, match="uint8 frames"):
        fast.add_frames(frames.astype(np.float32))


def test_an_encoded_episode_with_its_stats_is_published_without_decoding_its_video(tmp_path, monkeypatch):
    """add_encoded_episode(video_stats=...): the statistics gathered while encoding, no second decode;
    a count that does not match the episode is refused before anything is published."""
    import world_model.data.format as fmt
    from world_model.data.format import VideoStats
    from world_model.data.video import VideoEncoder

    frames, keyboard, mouse, poses = _episode(12, 2)[:4]
    with DatasetWriter(tmp_path / "a", fps=17.5, height=H, width=W) as w:
        w.begin_episode("a prompt")
        w.add_frames(frames, keyboard, mouse, poses)
        w.end_episode()
    expected = json.loads((tmp_path / "a" / "meta" / "stats.json").read_text())

    stats = VideoStats()
    stats.add_frames(frames)
    monkeypatch.setattr(fmt, "decode_video", lambda *a, **k: pytest.fail("decoded again"))
    with DatasetWriter(tmp_path / "b", fps=17.5, height=H, width=W) as w:
        for name, s in (("bad.mp4", VideoStats()), ("good.mp4", stats)):
            enc = VideoEncoder(tmp_path / "b" / name, fps=17.5, height=H, width=W)
            enc.write(frames)
            enc.close()
            if name == "bad.mp4":
                with pytest.raises(DatasetError, match="video_stats count 0 pixels"):
                    w.add_encoded_episode(tmp_path / "b" / name, keyboard, mouse, poses, "a prompt", video_stats=s)
                assert w.num_episodes == 0
            else:
                w.add_encoded_episode(tmp_path / "b" / name, keyboard, mouse, poses, "a prompt", video_stats=s)
    got = json.loads((tmp_path / "b" / "meta" / "stats.json").read_text())
    assert got["observation.images.rgb"] == expected["observation.images.rgb"]


@pytest.mark.parametrize("failing", ["the video's move", "the episodes table"])
def test_a_failed_end_episode_keeps_the_episode_for_a_retry(tmp_path, monkeypatch, failing):
    """A full disk while an episode is published: the episode stays in progress (it used to be dropped), and
    ``end_episode`` again publishes it whole, also where the first try had already moved its video."""
    import world_model.data.format as fmt

    publish, seen = fmt._publish, []

    def full_once(tmp, final):
        hit = final.suffix == ".mp4" if failing == "the video's move" else "meta/episodes" in final.as_posix()
        if hit and not seen:
            seen.append(final)
            raise OSError("disk full")
        publish(tmp, final)

    f, k, m, p = _episode(17, 3)
    with DatasetWriter(tmp_path / "ds", fps=17.5, height=H, width=W) as w:
        w.add_episode(*_episode(9, 1), "first")
        w.begin_episode("second", seed=5)
        w.add_frames(f, k, m, p)
        monkeypatch.setattr(fmt, "_publish", full_once)
        with pytest.raises(OSError, match="disk full"):
            w.end_episode()
        with pytest.raises(DatasetError, match="begin_episode called twice"):
            w.begin_episode("third")  # still in progress
        assert w.end_episode() == 1
    reader = validate_dataset(tmp_path / "ds")
    ep = reader.load_episode(1)
    assert len(reader) == 2 and ep.prompt == "second" and len(ep) == 17 and _psnr(ep.frames, f) > 30
    assert not [q for q in (tmp_path / "ds").rglob("*") if ".tmp" in q.name]


def test_add_episode_is_all_or_nothing(tmp_path, monkeypatch):
    import world_model.data.format as fmt

    def full(tmp, final):
        raise OSError("disk full")

    with DatasetWriter(tmp_path / "ds", fps=17.5, height=H, width=W) as w:
        publish = fmt._publish
        monkeypatch.setattr(fmt, "_publish", full)
        with pytest.raises(OSError, match="disk full"):
            w.add_episode(*_episode(9, 1), "first")
        monkeypatch.setattr(fmt, "_publish", publish)
        assert w.add_episode(*_episode(9, 2), "second") == 0  # no episode left in progress
    reader = validate_dataset(tmp_path / "ds")
    assert [e.prompt for e in (reader.load_episode(0),)] == ["second"]


def test_a_video_whose_flush_failed_is_not_published_by_a_retry(tmp_path):
    """A retried close after a failed flush would fsync and hand over a truncated file: it raises instead."""
    from world_model.data.video import VideoEncoder

    enc = VideoEncoder(tmp_path / "a.mp4", fps=16, height=H, width=W)
    enc.write(_episode(3, 0)[0])

    class FullDisk:
        def encode(self, frame=None):
            raise OSError("disk full")

    enc._stream = FullDisk()
    with pytest.raises(OSError, match="disk full"):
        enc.close()
    with pytest.raises(RuntimeError, match="abort it"):
        enc.close()
    enc.abort()
    assert not (tmp_path / "a.mp4").exists()
