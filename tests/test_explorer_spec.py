"""The explorer of the training data as changes to its defaults (``explorer_from_spec``), carried from the
pipeline's ``--explorer`` to the recorder's train episodes, and what it changes in the actions recorded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from world_model.data.explorer import Explorer, ExplorerConfig, explorer_from_spec

ONLY_STRAFE = "walk=0,walk_turn=0,turn=0,look=0,back=0,pause=0,turn_and_return=0,walk_and_return=0"


def test_a_spec_changes_the_named_fields_and_refuses_the_rest():
    assert explorer_from_spec("") == ExplorerConfig()
    cfg = explorer_from_spec(" strafe=0.4, stuck_frames=12 ,use_when_stuck=false")
    assert (cfg.strafe, cfg.stuck_frames, cfg.use_when_stuck) == (0.4, 12, False)
    assert dataclasses.replace(cfg, strafe=0.2, stuck_frames=8, use_when_stuck=True) == ExplorerConfig()
    assert explorer_from_spec("walk=0.5", base=cfg).strafe == 0.4  # on top of another config
    assert explorer_from_spec("look=0.5", base=ExplorerConfig(look=0)).look == 0.5  # the field's kind, not the value's
    for bad, match in [
        ("strafes=0.4", "name=value with a name of"),
        ("strafe", "name=value"),
        ("strafe=much", "strafe takes a float"),
        ("stuck_frames=2.5", "stuck_frames takes a int"),
        ("use_when_stuck=maybe", "use_when_stuck takes a bool"),
        ("strafe=0.4,strafe=0.3", "twice"),
        ("strafe=-1", "behaviour weights"),  # ExplorerConfig's own checks hold
    ]:
        with pytest.raises(ValueError, match=match):
            explorer_from_spec(bad)


def _strafe_share(cfg: ExplorerConfig) -> float:
    """Frames of strafe keys without W/S or rotation, the explorer against a world where every move goes 10 units."""
    strafes = frames = 0
    for seed in range(8):
        policy, pose = Explorer(seed, cfg), np.zeros(5)
        for _ in range(1000):
            cmd = policy.act(pose)
            moving = cmd.forward or cmd.back or cmd.left or cmd.right
            pose = pose + np.array([10.0 if moving else 0.0, 0, 0, cmd.pitch, cmd.yaw])
            strafes += (cmd.left != cmd.right) and not (cmd.forward or cmd.back or cmd.yaw or cmd.pitch)
            frames += 1
    return strafes / frames


def test_a_larger_strafe_weight_records_more_strafes_without_a_turn():
    base, more = _strafe_share(ExplorerConfig()), _strafe_share(explorer_from_spec("strafe=0.4"))
    assert more > 1.5 * base > 0


def test_the_recorder_changes_the_train_episodes_only():
    from world_model.train.engine_frames import EngineFramesConfig, _plan

    cfg = EngineFramesConfig(frames=100, held_out_every=3, explorer="strafe=0.4")
    plans = [_plan(cfg, p) for p in range(9)]
    assert {p.explorer for p in plans if p.split == "train"} == {"strafe=0.4"}
    assert {p.explorer for p in plans if p.split == "held_out"} == {""}  # the held-out curve's episodes stay
    with pytest.raises(ValueError, match="name=value"):
        EngineFramesConfig(frames=100, explorer="strafes=0.4")


def test_the_pipeline_refuses_an_explorer_it_would_not_play():
    from world_model.train.__main__ import _parser
    from world_model.train.pipeline import PipelineOptions

    assert PipelineOptions(explorer="strafe=0.4").explorer == "strafe=0.4"
    with pytest.raises(ValueError, match="name=value"):
        PipelineOptions(explorer="strafe")
    with pytest.raises(ValueError, match="fake_data"):
        PipelineOptions(explorer="strafe=0.4", fake_data=True)
    with pytest.raises(ValueError, match="engine_frames=False"):
        PipelineOptions(explorer="strafe=0.4", engine_frames=False)
    args = _parser().parse_args(["all", "--run", "r", "--explorer", "strafe=0.4"])
    assert args.opt_explorer == "strafe=0.4"


def test_the_recorder_plays_the_explorer_it_is_given(tmp_path):
    pytest.importorskip("vizdoom")
    from world_model.train.engine_frames import main
    from world_model.train.frames import FrameStore

    out = tmp_path / "frames"
    main(["--out", str(out), "--frames", "120", "--episode-frames", "60", "--size", "48", "64", "--workers", "1",
          "--explorer", ONLY_STRAFE, "--no-progress"])  # fmt: skip
    train = FrameStore.concat([FrameStore.load(p) for p in sorted((out / "train").glob("part-*"))])
    kb = train.keyboard
    strafe = (kb[:, 2] != kb[:, 3]) & (kb[:, 0] == 0) & (kb[:, 1] == 0)
    # the rest: recoveries from walls (USE, back up, turn away); the default explorer strafes without a turn ~4 %
    assert len(kb) >= 120 and strafe.mean() > 0.4


def test_the_data_engine_cli_takes_an_explorer(capsys):
    from world_model.data.cli import _parser

    args = _parser().parse_args(["generate", "--out", "d", "--frames", "10", "--explorer", "strafe=0.4,look=0"])
    assert args.explorer == ExplorerConfig(strafe=0.4, look=0.0)
    assert _parser().parse_args(["generate", "--out", "d", "--frames", "10"]).explorer is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["generate", "--out", "d", "--frames", "10", "--explorer", "strafes=0.4"])
    assert "strafes=0.4" in capsys.readouterr().err
