"""Crash-consistent datasets: a writer killed at any point between publishing an episode's files
and info.json leaves a dataset that reads and validates; a damaged info.json is a DatasetError
naming it; a writer that fails to open releases the folder."""

from __future__ import annotations

import fcntl

import numpy as np
import pytest

from world_model.data.format import INFO_PATH, DatasetError, DatasetReader, DatasetWriter, validate_dataset


def _episode(t=9, h=16, w=16, value=40):
    frames = np.full((t, h, w, 3), value, np.uint8)
    poses = np.zeros((t, 5), np.float32)
    poses[:, 0] = np.arange(t)
    return frames, np.zeros((t, 6), np.float32), np.zeros((t, 2), np.float32), poses


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the raising point runs."""


@pytest.mark.parametrize("stage", ["_write_tasks", "_write_stats", "_write_info"])
def test_killed_after_the_episodes_table_reads_consistently(tmp_path, monkeypatch, stage):
    root = tmp_path / "ds"
    w = DatasetWriter(root, fps=16, height=16, width=16)
    w.add_episode(*_episode(value=40), "first")

    def killed(self):
        raise Killed

    monkeypatch.setattr(DatasetWriter, stage, killed)
    with pytest.raises(Killed):
        w.add_episode(*_episode(t=11, value=90), "second")
    monkeypatch.undo()
    w._lock.close()  # the process is gone: its lock with it

    reader = validate_dataset(root)  # the table is the truth: both episodes, every frame
    assert len(reader) == 2 and reader.info["total_frames"] == 20
    ep = reader.load_episode(1)
    assert ep.prompt == "second" and len(ep) == 11 and abs(int(ep.frames[5].mean()) - 90) <= 2
    with DatasetWriter(root, fps=16, height=16, width=16) as w2:  # re-opened: info.json repaired, appends
        w2.add_episode(*_episode(), "third")
    reader = validate_dataset(root)
    assert len(reader) == 3 and reader.info["total_episodes"] == 3


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"fps": 16}', "\udcff"])
def test_damaged_info_json_names_the_file_and_releases_the_lock(tmp_path, text):
    root = tmp_path / "ds"
    with DatasetWriter(root, fps=16, height=16, width=16) as w:
        w.add_episode(*_episode(), "p")
    (root / INFO_PATH).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DatasetError, match=r"info\.json"):
        DatasetReader(root)
    with pytest.raises(DatasetError, match=r"info\.json"):
        DatasetWriter(root, fps=16, height=16, width=16)
    with open(root / "meta" / ".writer.lock", "w") as f:  # nobody holds the folder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)


def test_info_behind_the_table_is_tolerated_but_ahead_is_an_error(tmp_path):
    import json

    root = tmp_path / "ds"
    with DatasetWriter(root, fps=16, height=16, width=16) as w:
        w.add_episode(*_episode(), "p")
    info = json.loads((root / INFO_PATH).read_text())
    info["total_episodes"] = 2
    (root / INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="episodes lost"):
        DatasetReader(root)
