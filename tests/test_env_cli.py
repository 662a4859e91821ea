"""The mg3 command: demo writes an mp4 and a dataset; data dispatches to the data engine CLI."""

from __future__ import annotations

import pytest

from mg3_env.cli import main
from world_model.data.format import DatasetReader
from world_model.data.video import decode_video


def test_demo_writes_video_and_dataset(tmp_path, capsys):
    assert main(["demo", "--model", "tiny-random", "--chunks", "2", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "demo.mp4") in out and str(tmp_path / "dataset") in out
    frames = decode_video(tmp_path / "demo.mp4")
    assert frames.shape == (57 + 2 * 40, 64, 64, 3)
    reader = DatasetReader(tmp_path / "dataset")
    assert len(reader) == 1 and len(reader.load_episode(0, frames=False)) == 57 + 2 * 40
    # the strip: input image, reset frame, chunks 1 and 2, each 64 px (scaled x2) under a 14-px label
    from PIL import Image

    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (4 * (128 + 4), 128 + 16)


def test_data_dispatch_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "--help"])
    assert e.value.code == 0
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_demo_context_cache_reaches_the_loaded_model(monkeypatch, tmp_path, capsys):
    import world_model.model

    seen = []

    def fake_load(name, runtime):
        seen.append(runtime)
        raise ValueError("stop here")

    monkeypatch.setattr(world_model.model, "load_world_model", fake_load)
    for flag in ([], ["--context-cache", "on"], ["--context-cache", "off"]):  # a load's ValueError: one line, rc 2
        assert main(["demo", "--model", "tiny-random", "--out", str(tmp_path), "--device", "cpu", *flag]) == 2
        assert capsys.readouterr().err == "mg3 demo: stop here\n"
    assert [r.context_cache for r in seen] == ["auto", True, False]  # auto: the model's (resolved at load)
