"""The shipped inverse-dynamics model (mg3_eval/assets/idm.safetensors), which the control part reads video with by
default, and the command that builds it (``python -m mg3_eval.idm_build``)."""

from __future__ import annotations

import numpy as np
import pytest

from mg3_eval.idm import KEYBOARD_CLASSES, MOUSE_CLASSES, SHIPPED_IDM, InverseDynamics, command_actions


def _embedded_config():
    from world_model.model import EMBEDDED_DIR, read_exported_config

    return read_exported_config(EMBEDDED_DIR / "config.json")


def test_the_shipped_idm_reads_turns_and_stillness_in_the_simulator():
    """Played on test levels (never trained on): standing, turning left and turning right at the control part's
    rate, each for a chunk; after Doom's momentum settles the IDM names the yaw of nearly every window."""
    from mg3_eval.simulator import doom_config_for, play_commands, rest_starts

    net, info = InverseDynamics.load(SHIPPED_IDM), InverseDynamics.info(SHIPPED_IDM)
    assert (net.window, net.size) == (5, 64) and not net.training
    assert info["view"] == "simulator video" and info["train_frames"] == 288_000
    assert info["held_out_mouse_accuracy"] >= 0.9 and info["held_out_keyboard_accuracy"] >= 0.95
    cfg = _embedded_config()
    blocks = [("none", "none"), ("none", "yaw_left"), ("none", "yaw_right"), ("forward", "none")]
    n, settle, hits = 40, 12, []
    for start in rest_starts(cfg, 3, split="test"):
        acts = [command_actions(KEYBOARD_CLASSES.index(k), MOUSE_CLASSES.index(m), n, 0.15) for k, m in blocks]
        kb, ms = np.concatenate([a[0] for a in acts]), np.concatenate([a[1] for a in acts])
        frames, _ = play_commands(start, doom_config_for(cfg), kb, ms)
        assert len(frames) == len(kb) + 1
        for b, (_, yaw) in enumerate(blocks):
            starts = list(range(1 + b * n + settle, 1 + (b + 1) * n - net.window + 1, 4))
            _, pm = net.predict(frames, starts)
            hits += list(pm == MOUSE_CLASSES.index(yaw))
    assert np.mean(hits) >= 0.85, np.mean(hits)


def test_idm_build_writes_an_idm_with_its_recipe_and_scores(tmp_path, capsys):
    from mg3_eval.idm_build import main

    out = tmp_path / "idm.safetensors"
    assert (
        main(["--out", str(out), "--frames", "300", "--held-out-frames", "120", "--epochs", "1", "--size", "32"]) == 0
    )
    info = InverseDynamics.info(out)
    assert InverseDynamics.load(out).size == 32 and info["train_frames"] == 300 and info["epochs"] == 1
    assert info["view"] == "simulator video" and info["resolution"] == [128, 128] and info["held_out_windows"] > 0
    assert 0 <= info["held_out_mouse_accuracy"] <= 1 and len(info["held_out_mouse_confusion"]) == 3
    assert "held-out (test levels" in capsys.readouterr().out
    for bad in (["--frames", "0"], ["--size", "8"], ["--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(["--out", str(tmp_path / "bad.safetensors"), *bad])
        assert e.value.code == 2, bad
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "no" / "such" / "idm.safetensors")])
    assert not (tmp_path / "bad.safetensors").exists()
