"""Bad input gives one clear line that names it (session 51's audit): command-line tools exit 2 without a traceback,
the library raises ValueError / TypeError naming the argument before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mg3_env.cli import main as mg3
from mg3_env.vector import MatrixGameVectorEnv
from world_model.runtime import RuntimeOptions


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--model", "tiny-random", "--image", "missing.png"], "mg3 demo: image path 'missing.png' does not"),
        (["demo", "--model", "nope"], "mg3 demo: unknown model 'nope'"),
        (["data", "summary", "."], "is not a dataset"),
        (["data", "generate", "--out", "g", "--frames", "10", "--preset", "bogus"], "preset must be one of"),
        (["data", "generate", "--out", "g", "--frames", "10", "--levels", "NOPE"], "unknown level 'NOPE'"),
        (["rollouts", "--model", "tiny-random", "--out", "r", "--policy", "nope"], "mg3 rollouts: "),
    ],
)
def test_a_command_says_what_is_wrong_in_one_line(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert mg3(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()  # a refused generate made nothing


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--chunks", "0"], "--chunks: expected an integer >= 1"),
        (["demo", "--seed", "-1"], "--seed: a seed must lie in"),
        (["rollouts", "--num-envs", "0", "--out", "r"], "--num-envs: expected an integer >= 1"),
        (["data", "generate", "--out", "g", "--frames", "10", "--seed", "-1"], "--seed: a seed must lie in"),
    ],
)
def test_a_bad_count_or_seed_is_refused_by_the_parser(capsys, argv, says):
    with pytest.raises(SystemExit) as done:
        mg3(argv)
    assert done.value.code == 2 and says in capsys.readouterr().err


def test_the_training_command_refuses_a_missing_run_and_a_budget_of_nothing(tmp_path, capsys):
    from world_model.train.__main__ import main as train

    with pytest.raises(SystemExit):
        train(["status", "--run", str(tmp_path / "nope")])
    assert "no such run folder" in capsys.readouterr().err  # was {"pipeline": null} and exit 0
    with pytest.raises(SystemExit):
        train(["all", "--run", str(tmp_path / "r"), "--budget-minutes", "-5"])  # was: an untrained export, exit 0
    assert "minutes > 0" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "status.json").write_text("{bad")
    with pytest.raises(SystemExit):
        train(["status", "--run", str(tmp_path / "bad")])
    assert "status.json is not valid JSON" in capsys.readouterr().err


def test_idm_build_refuses_a_folder_for_its_file_before_the_work(tmp_path, capsys):
    from mg3_eval.idm_build import main as idm_build

    with pytest.raises(SystemExit):
        idm_build(["--out", str(tmp_path), "--frames", "10"])
    assert "is a folder" in capsys.readouterr().err


def test_runtime_options_name_a_bad_device_dtype_or_type():
    from world_model.model import load_world_model

    with pytest.raises(ValueError, match="device must be a device name"):
        RuntimeOptions(device="gpu")
    with pytest.raises(ValueError, match="text_device must be a device name"):
        RuntimeOptions(text_device="bogus")
    with pytest.raises(ValueError, match="device must be a device name"):
        RuntimeOptions.for_device("gpu")
    assert RuntimeOptions(dtype="bfloat16").dtype == torch.bfloat16  # was "must be ... bfloat16, got bfloat16"
    with pytest.raises(TypeError, match="runtime must be a RuntimeOptions"):
        load_world_model("tiny-random", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="0 CUDA device"):
            load_world_model("tiny-random", RuntimeOptions(device="cuda", dtype=torch.bfloat16))


def test_the_vector_env_checks_its_arguments_before_the_model_loads():
    with pytest.raises(ValueError, match="autoreset_mode must be"):
        MatrixGameVectorEnv(1, model="no-such-model", autoreset_mode="next_step")
    with pytest.raises(TypeError, match="reward_fn must be a callable"):
        MatrixGameVectorEnv(1, model="no-such-model", reward_fn=5)


def test_a_bad_reward_or_options_is_named_and_the_step_undone():
    v = MatrixGameVectorEnv(1, model="tiny-random", reward_fn=lambda obs, action, info: "high")
    with pytest.raises(TypeError, match="options must be a dict"):
        v.reset(options="gray.png")
    v.reset(seed=0)
    with pytest.raises(ValueError, match="reward_fn returned 'high'"):
        v.step({"keyboard": np.zeros((1, 6)), "mouse": np.zeros((1, 2))})
    assert v.stream_states[0].chunk == [1]  # undone: the next chunk is still chunk 1
    v.close()


def test_recording_and_encoding_settings_are_checked_up_front(tmp_path):
    from mg3_env.wrappers.record import RecordVectorEpisodes
    from world_model.data.format import DatasetWriter
    from world_model.data.video import VideoEncoder

    with pytest.raises(ValueError, match="max_episodes"):
        RecordVectorEpisodes(MatrixGameVectorEnv(1, model="tiny-random"), tmp_path / "r", max_episodes=0)
    for bad, says in [
        ({"fps": float("nan")}, "fps must be a finite number"),
        ({"height": 0}, "height must be an int >= 2"),
        ({"crf": -5}, r"crf must be an int in \[0, 51\]"),
        ({"preset": "bogus"}, "preset must be one of"),
    ]:
        with pytest.raises(ValueError, match=says):
            DatasetWriter(tmp_path / "d", **{"fps": 16, "height": 16, "width": 16, **bad})
    enc = VideoEncoder(tmp_path / "empty.mp4", fps=16, height=16, width=16)
    with pytest.raises(ValueError, match="no frames were written"):
        enc.close()  # was a FileNotFoundError from inside PyAV
    assert not (tmp_path / "empty.mp4").exists()


def test_seeds_are_checked_where_numpy_would_fail_inside():
    from mg3_env.rollouts import rollouts
    from mg3_eval.run import EvalOptions

    with pytest.raises(ValueError, match="seed must be"):
        EvalOptions(seed=-1)
    with pytest.raises(ValueError, match="seed must be"):
        rollouts("tiny-random", out="unused", seed=-5, progress=False)


def test_an_exported_folder_without_its_config_is_named_so(tmp_path):
    import shutil

    from world_model.checkpoint import CheckpointError
    from world_model.model import EMBEDDED_DIR, load_world_model

    shutil.copy(EMBEDDED_DIR / "vae.safetensors", tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):  # was: a missing release file, Wan2.2_VAE.pth
        load_world_model(str(tmp_path))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda info: info["features"].pop("observation.images.rgb"), "shape"),
        (lambda info: info.update(fps="x"), "fps"),
        (lambda info: info.update(total_episodes="1"), "total_episodes"),
        (lambda info: info.pop("total_frames"), "total_frames"),
    ],
)
def test_a_damaged_info_json_is_a_dataset_error_naming_the_field(tmp_path, change, says):
    """These were KeyError / TypeError / ValueError from inside the reader (its docstring: every problem raises
    DatasetError)."""
    import json

    from world_model.data.format import INFO_PATH, DatasetError, DatasetReader, DatasetWriter

    with DatasetWriter(tmp_path, fps=16, height=16, width=16) as w:
        w.add_episode(np.zeros((3, 16, 16, 3), np.uint8), np.zeros((3, 6)), np.zeros((3, 2)), np.zeros((3, 5)), "p")
    info = json.loads((tmp_path / INFO_PATH).read_text())
    change(info)
    (tmp_path / INFO_PATH).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=says):
        DatasetReader(tmp_path)


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"seed": "x"}, "seed must be"),
        ({"seed": 2**70}, "seed must be"),
        ({"level": 5}, "level must be a string"),
        ({"extra_meta": {"a": object()}}, "extra_meta must hold JSON values"),
    ],
)
def test_episode_metadata_is_checked_before_anything_is_written(tmp_path, meta, says):
    """These failed inside pyarrow or json after the episode's video was encoded."""
    from world_model.data.format import DatasetReader, DatasetWriter

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with DatasetWriter(tmp_path, fps=16, height=16, width=16) as w:
        with pytest.raises(ValueError, match=says):
            w.add_episode(frames, np.zeros((3, 6)), np.zeros((3, 2)), np.zeros((3, 5)), "p", **meta)
        assert w.add_episode(frames, np.zeros((3, 6)), np.zeros((3, 2)), np.zeros((3, 5)), "p", seed=3) == 0
    assert len(DatasetReader(tmp_path)) == 1


@pytest.mark.parametrize(
    ("keyboard", "mouse", "says"),
    [
        (0.5, 0.0, "keyboard must be multi-hot"),
        (-1.0, 0.0, "keyboard must be multi-hot"),  # the null action of guidance, not a key press
        (0.0, 1.5, "mouse must lie in \\[-1, 1\\]"),
    ],
)
def test_a_dataset_takes_only_actions_the_env_takes(tmp_path, keyboard, mouse, says):
    """add_episode wrote keys of 0.5 and a mouse of 1.5, which the env refuses to replay."""
    from world_model.data.format import DatasetReader, DatasetWriter

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with DatasetWriter(tmp_path, fps=16, height=16, width=16) as w:
        with pytest.raises(ValueError, match=says):
            w.add_episode(frames, np.full((3, 6), keyboard), np.full((3, 2), mouse), np.zeros((3, 5)), "p")
        assert w.add_episode(frames, np.ones((3, 6)), np.full((3, 2), -1.0), np.zeros((3, 5)), "p") == 0
    assert len(DatasetReader(tmp_path)) == 1


@pytest.mark.parametrize(
    ("section", "key", "value", "says"),
    [
        ("stream", "fps", "fast", "StreamConfig.fps must be a number"),  # loaded, and the env ran at 'fast' fps
        ("stream", "fps", 0, "fps must be a finite number > 0"),
        ("text", "max_prompt_chars", "x", "TextConfig.max_prompt_chars must be an integer"),
        ("dit", "num_layers", "ten", "num_layers must be an integer"),
    ],
)
def test_an_exported_config_with_a_wrong_field_is_named(tmp_path, section, key, value, says):
    import json
    import shutil

    from world_model.checkpoint import CheckpointError
    from world_model.model import EMBEDDED_DIR, load_world_model

    folder = tmp_path / "m"
    shutil.copytree(EMBEDDED_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    config[section][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=says):
        load_world_model(str(folder))


def test_image_errors_say_what_was_given():
    from mg3_env.spaces import load_image

    with pytest.raises(ValueError, match="image path is empty"):  # was: "image path '.' does not exist"
        load_image("", 16, 16)
    with pytest.raises(ValueError, match=r"got \[1.00000011"):  # was [1, 1], which hid the overflow
        load_image(np.full((16, 16, 3), 1.0000001, np.float32), 16, 16)
