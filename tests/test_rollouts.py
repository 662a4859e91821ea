"""Recording on the vector env and mg3 rollouts: every env's episodes in one dataset, read back
episode by episode equal to what each env generated (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mg3_env.cli import main
from mg3_env.vector import MatrixGameVectorEnv
from mg3_env.wrappers.record import RecordingError, RecordVectorEpisodes
from world_model.config import tiny
from world_model.data.format import STATS_PATH, DatasetReader, validate_dataset
from world_model.data.video import VideoEncoder, decode_video
from world_model.model import random_world_model


@pytest.fixture(scope="module")
def model():
    return random_world_model(tiny(16, 16))


def test_vector_recording_equals_what_each_env_generated(model, tmp_path):
    env = MatrixGameVectorEnv(4, model=model, max_chunks=2)
    rec = RecordVectorEpisodes(env, tmp_path / "ds", max_episodes=6)
    generated: dict[int, list] = {i: [] for i in range(4)}  # per env: its episodes' (frames, keyboard, pose)
    obs, info = rec.reset(seed=[1, 2, 3, 4], options={"prompt": ["p0", "p1", "p2", "p3"]})
    for i in range(4):
        generated[i].append(
            [(info["first_chunk_frames"][i], info["first_chunk_keyboard"][i], info["first_chunk_pose"][i])]
        )
    rng = np.random.default_rng(0)
    while not rec.done:
        action = {"keyboard": rng.integers(0, 2, (4, 6)), "mouse": rng.uniform(-0.1, 0.1, (4, 2))}
        obs, _, _, truncated, info = rec.step(action)
        for i in range(4):
            if info.get("_first_chunk_frames", np.zeros(4, bool))[i]:
                generated[i].append(
                    [(info["first_chunk_frames"][i], info["first_chunk_keyboard"][i], info["first_chunk_pose"][i])]
                )
            else:
                generated[i][-1].append((obs["frames"][i], info["keyboard"][i], obs["pose"][i]))
    rec.close()
    assert len(rec.episodes_written) == 6
    reader = validate_dataset(tmp_path / "ds")
    assert len(reader) == 6
    taken = {i: 0 for i in range(4)}
    for index, env_i in zip(rec.episodes_written, rec.episode_envs):
        ep = reader.load_episode(index)
        chunks = generated[env_i][taken[env_i]]
        taken[env_i] += 1
        frames = np.concatenate([c[0] for c in chunks])
        assert len(ep) == 57 + 2 * 40 == len(frames)
        np.testing.assert_array_equal(ep.keyboard, np.concatenate([c[1] for c in chunks]))
        np.testing.assert_array_equal(ep.poses, np.concatenate([c[2] for c in chunks]).astype(np.float32))
        # the frames as H.264 gives them back: the generated frames through the same encoder
        ref = tmp_path / f"ref{index}.mp4"
        enc = VideoEncoder(ref, fps=reader.fps, height=16, width=16)
        enc.write(frames)
        enc.close()
        np.testing.assert_array_equal(ep.frames, decode_video(ref))
        assert ep.prompt == (f"p{env_i}" if taken[env_i] == 1 else env.default_prompt)
        assert (
            json.loads(reader.episodes[index].extra_meta)["env"] == env_i
            if hasattr(reader.episodes[index], "extra_meta")
            else True
        )
    stats = json.loads((tmp_path / "ds" / STATS_PATH).read_text())
    assert stats["observation.state"]["count"] == [6 * 137]


def test_vector_recording_encodes_the_envs_in_parallel_and_reports_a_failed_encoder(model, tmp_path, monkeypatch):
    """Each step's chunks are encoded on the recorder's threads, one env per task; an encoder that fails
    is raised after the others have finished their chunk, and every episode in progress keeps its video
    and its table in step."""
    import threading

    threads: list[str] = []
    fail = {"on": False}
    write = VideoEncoder.write

    def spy(self, frames):
        threads.append(threading.current_thread().name)
        if fail["on"] and len(threads) == 2:  # the second encoder of the step fails
            raise OSError("disk full")
        return write(self, frames)

    monkeypatch.setattr(VideoEncoder, "write", spy)
    auto = RecordVectorEpisodes(MatrixGameVectorEnv(3, model=model), tmp_path / "cpu")
    assert auto._pool is None  # the model on the CPU: its threads hold the cores, encoding stays sequential
    auto.close()
    with pytest.raises(ValueError, match="encode_threads"):
        RecordVectorEpisodes(MatrixGameVectorEnv(3, model=model), tmp_path / "bad", encode_threads=0)
    rec = RecordVectorEpisodes(MatrixGameVectorEnv(3, model=model, max_chunks=3), tmp_path / "ds", encode_threads=3)
    rec.reset(seed=[1, 2, 3])
    assert len(threads) == 3 and all(t.startswith("mg3-record") for t in threads)
    threads.clear()
    fail["on"] = True
    action = {"keyboard": np.zeros((3, 6)), "mouse": np.zeros((3, 2))}
    with pytest.raises(RecordingError, match="disk full") as failed:
        rec.step(action)
    assert isinstance(failed.value.__cause__, OSError) and len(failed.value.result) == 5  # the step, handed back
    assert failed.value.result[0]["frames"].shape[:2] == (3, 40)
    assert len(threads) == 3  # every env's encoder ran its chunk before the error was raised
    # each episode in progress: its video and its table in step (the failed env: 57, the others 97)
    for ep in rec._open:
        assert ep["encoder"].num_frames == sum(len(a) for a in ep["arrays"]["keyboard"]) in (57, 97)
    assert sorted(ep["encoder"].num_frames for ep in rec._open) == [57, 97, 97]
    rec.close()


def test_mg3_rollouts_command(tmp_path, capsys, monkeypatch):
    import world_model.model as wm

    m = random_world_model(tiny(16, 16))
    monkeypatch.setattr(wm, "load_world_model", lambda *a, **k: m)
    rc = main(["rollouts", "--model", "tiny", "--num-envs", "4", "--episodes", "5", "--max-chunks", "1",
               "--policy", "explorer", "--out", str(tmp_path / "ds")])  # fmt: skip
    assert rc == 0 and "5 episodes" in capsys.readouterr().out
    reader = DatasetReader(tmp_path / "ds")
    assert len(reader) == 5 and all(e.length == 97 for e in reader.episodes)
    assert main(["rollouts", "--model", "tiny", "--policy", "bogus", "--out", str(tmp_path / "x")]) == 2
    assert "module:callable" in capsys.readouterr().err  # one line, no traceback
    assert not (tmp_path / "x").exists()  # the policy is checked before the dataset is made (and locked)


def test_a_loaded_model_refuses_a_device_or_runtime_it_would_not_use(model, tmp_path):
    from mg3_env.rollouts import rollouts
    from world_model.runtime import RuntimeOptions

    with pytest.raises(ValueError, match="runs on its own"):
        rollouts(model, device="cpu", out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="runs with its own"):
        MatrixGameVectorEnv(2, model=model, runtime=RuntimeOptions(device="cpu"))


def test_one_envs_failed_encoder_loses_no_other_envs_episode(model, tmp_path, monkeypatch):
    """An env that autoresets in the step where another env's encoder fails still gets its new episode opened
    (the failure used to skip it: that episode was never written)."""
    write, fail = VideoEncoder.write, {"encoder": None}

    def failing(self, frames):
        if self is fail["encoder"]:
            raise OSError("disk full")
        return write(self, frames)

    monkeypatch.setattr(VideoEncoder, "write", failing)
    rec = RecordVectorEpisodes(MatrixGameVectorEnv(2, model=model, max_chunks=3), tmp_path / "ds")
    action = {"keyboard": np.zeros((2, 6)), "mouse": np.zeros((2, 2))}
    rec.reset(seed=[1, 2])
    rec.step(action)
    rec.reset(options={"reset_mask": [False, True]})  # the envs out of phase: env 1 starts again
    rec.step(action)
    rec.step(action)  # env 0's third step: truncated (max_chunks)
    fail["encoder"] = rec._open[1]["encoder"]
    with pytest.raises(RecordingError):
        rec.step(action)  # env 0 autoresets, env 1's encoder fails
    assert rec._open[0] is not None and rec._open[0]["encoder"].num_frames == 57  # env 0's new episode, recorded
    fail["encoder"] = None
    rec.close()
    reader = DatasetReader(tmp_path / "ds")
    assert [e.length for e in reader.episodes if e.extra["env"] == 0] == [57 + 3 * 40, 57]
