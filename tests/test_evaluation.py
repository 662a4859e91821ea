"""Evaluation metrics and protocols (mg3_eval) on cases with known answers, and one
end-to-end ``mg3 eval`` on the smoke export of the training pipeline."""

from __future__ import annotations

import dataclasses
import json
import math
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from mg3_eval.idm import (
    KEYBOARD_CLASSES,
    MOUSE_CLASSES,
    IDMData,
    command_actions,
    idm_predict,
    motion_labels,
    train_idm,
)
from mg3_eval.metrics import (
    PSNR_CAP_DB,
    frame_stats,
    image_scale,
    image_shift,
    motion_measures,
    psnr,
    psnr_pooled,
    relative_change,
    repeat_first_psnr,
    sharpness,
    sharpness_ratio,
)
from mg3_eval.protocols.controllability import delta_psnr, shuffled_actions
from mg3_eval.protocols.fidelity import fidelity
from mg3_eval.protocols.memory import go_and_return_actions
from mg3_eval.protocols.motion import motion_ratios
from mg3_eval.report import TARGETS
from mg3_eval.rollout import chunk_slices
from mg3_eval.run import PARTS, RECORDED_PARTS, EvalOptions
from mg3_eval.simulator import SimEpisode
from world_model.camera import integrate_poses
from world_model.config import StreamConfig
from world_model.data.levels import levels_in_split


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: threads gain nothing, and with the cores shared OpenMP's waiting
    makes such small ops 10-50x slower. One thread keeps the file under 20 s on a busy machine too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _poses(keyboard: np.ndarray, mouse: np.ndarray) -> np.ndarray:
    """The package's integrator: per-frame actions [T, .] -> poses [T + 1, 5] from the origin."""
    p = integrate_poses(
        torch.from_numpy(keyboard)[None],
        torch.from_numpy(mouse)[None],
        torch.zeros(1, 5, dtype=torch.float64),
        StreamConfig(),
    )
    return p[0].numpy()


# ---- frame metrics ---------------------------------------------------------------------------------


def test_psnr_known_values_and_identical_frames():
    a = np.full((3, 8, 8, 3), 100, np.uint8)
    assert np.all(psnr(a, a) == PSNR_CAP_DB)
    b = a + 10  # mse 100 -> 10 log10(255^2 / 100)
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255**2 / 100), rtol=1e-12)
    # broadcasting of the leading axes: [2, 1] x [1, 3] -> [2, 3]
    assert psnr(a[:2, None], b[None]).shape == (2, 3)
    with pytest.raises(ValueError, match="one size"):
        psnr(a, np.zeros((3, 4, 4, 3), np.uint8))


def test_pooled_psnr_counts_each_frame_by_its_error_not_by_the_cap():
    a = np.full((4, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[3] += 10  # one frame of four differs: mse 100 / 4
    np.testing.assert_allclose(psnr_pooled(b, a), 10 * np.log10(255**2 / 25), rtol=1e-12)
    assert psnr(b, a).mean() > 75  # three frames at the cap dominate the per-frame mean
    np.testing.assert_allclose(psnr_pooled(b[3:], a[3:]), psnr(b[3], a[3]), rtol=1e-12)  # one frame: the same
    assert psnr_pooled(np.stack([a, b]), np.stack([a, a])).shape == (2,)  # [N, T, H, W, 3] -> [N]
    assert psnr_pooled(a, a) == PSNR_CAP_DB
    with pytest.raises(ValueError, match="one shape"):
        psnr_pooled(a, a[:3])


def test_repeat_first_baseline():
    rng = np.random.default_rng(0)
    static = np.repeat(rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), 5, 0)
    assert np.all(repeat_first_psnr(static) == PSNR_CAP_DB)
    moving = static.copy()
    moving[3:] = 255 - moving[3:]
    r = repeat_first_psnr(moving)
    assert np.all(r[:3] == PSNR_CAP_DB) and np.all(r[3:] < 20)


def test_frame_stats_on_synthetic_frames():
    flat = np.full((2, 16, 16, 3), 80, np.uint8)
    s = frame_stats(flat)
    np.testing.assert_allclose(s["brightness"], 80.0)
    np.testing.assert_allclose(s["contrast"], 0.0, atol=1e-9)
    np.testing.assert_allclose(s["sharpness"], 0.0, atol=1e-9)
    checker = ((np.indices((16, 16)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    sharp = np.repeat(checker[None, :, :, None], 3, -1)
    blurred = (
        (sharp.astype(np.float64) + np.roll(sharp, 1, 1) + np.roll(sharp, 1, 2) + np.roll(sharp, (1, 1), (1, 2))) / 4
    ).astype(np.uint8)
    ss, sb = frame_stats(sharp), frame_stats(blurred)
    assert ss["sharpness"][0] > 10 * max(sb["sharpness"][0], 1e-9)
    assert ss["contrast"][0] == pytest.approx(100.0)
    brighter = frame_stats((flat.astype(np.float64) * 1.1).astype(np.uint8))
    assert relative_change(s["brightness"].mean(), brighter["brightness"].mean()) == pytest.approx(0.1)
    assert relative_change(2.0, 2.0) == 0.0 and relative_change(0.0, 1.0) == float("inf")


# ---- control labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(len(KEYBOARD_CLASSES)))
@pytest.mark.parametrize("m", range(len(MOUSE_CLASSES)))
def test_commanded_actions_are_labelled_as_commanded(k, m):
    """Integrated with the package's integrator, every commanded (keyboard, yaw) class is measured
    back as that class in every window (including the turns while moving)."""
    kb, ms = command_actions(k, m, 30, yaw_step=0.15)
    assert kb.shape == (30, 6) and ms.shape == (30, 2)
    lk, lm = motion_labels(_poses(kb, ms), window=5)
    assert len(lk) == 31 - 5 + 1
    assert np.all(lk == k) and np.all(lm == m)


def test_motion_labels_mark_ambiguous_windows():
    # forward, then a sudden switch to right strafe: windows spanning the switch are ambiguous
    kb = np.zeros((20, 6), np.float32)
    kb[:10, 0] = 1
    kb[10:, 3] = 1
    ms = np.zeros((20, 2), np.float32)
    ms[:10, 1] = 0.2  # yaw right, then still: windows across the change are ambiguous too
    lk, lm = motion_labels(_poses(kb, ms), window=5)
    assert lk[0] == 1 and lk[-1] == 4 and lm[0] == 2 and lm[-1] == 0
    assert lm[8] == -1  # frames 8..12: yaw changes 8, 9 then 0, 0
    assert (lk == -1).any() or (lk[6:10] != lk[0]).any()


# ---- the inverse-dynamics model ----------------------------------------------------------------------


# (dy, dx) crop shift per frame of the lower half ("floor") for each keyboard class: walking forward
# brings the floor towards the camera (the view window moves up the texture), strafing right moves
# the view window right; the upper half ("far wall") shifts horizontally with the yaw class.
_FLOOR_SHIFT = {0: (0, 0), 1: (-2, 0), 2: (2, 0), 3: (0, -2), 4: (0, 2)}
_WALL_SHIFT = (0, -2, 2)  # none, yaw left, yaw right


def _doom_like_clips(n_clips: int, seed: int, length: int = 10, size: int = 24, window: int = 5):
    """Clips of two smooth random textures moving rigidly, with the symmetry of a first-person view:
    the lower half moves with the keyboard class, the upper half with the yaw class (clip c has
    keyboard class c % 5 and yaw class (c // 5) % 3). A horizontal mirror swaps left/right of both,
    as the IDM's mirror augmentation assumes."""
    rng = np.random.default_rng(seed)
    half = size // 2
    clips = []
    for c in range(n_clips):
        k, m = c % len(KEYBOARD_CLASSES), (c // len(KEYBOARD_CLASSES)) % len(MOUSE_CLASSES)
        tex = rng.integers(0, 256, (2, size + 40, size + 40)).astype(np.float64)
        tex = (tex + np.roll(tex, 1, 1) + np.roll(tex, 1, 2) + np.roll(tex, (1, 1), (1, 2))) / 4
        (ky, kx), mx = _FLOOR_SHIFT[k], _WALL_SHIFT[m]
        frames = [
            np.concatenate(
                [
                    tex[0, 20 : 20 + half, 20 + mx * t : 20 + mx * t + size],
                    tex[1, 20 + ky * t : 20 + ky * t + size - half, 20 + kx * t : 20 + kx * t + size],
                ]
            )
            for t in range(length)
        ]
        n = length - window + 1
        clips.append((np.stack(frames).round().astype(np.uint8), np.full(n, k), np.full(n, m)))
    return clips


def test_idm_learns_a_synthetic_easy_task():
    """Every keyboard and yaw class is recovered from held-out clips. The mirror augmentation must
    swap the labels as the image swaps (with the wrong swap, accuracy falls to about 0.75)."""
    train = IDMData.build(_doom_like_clips(150, seed=0), window=5)
    test = IDMData.build(_doom_like_clips(30, seed=1), window=5)
    assert len(train) == 150 * 6 and train.stacks(np.array([0, 7])).shape == (2, 5, 24, 24)
    net = train_idm(train, epochs=12, batch_size=32, lr=3e-3, width=16, size=24)
    pk, pm = idm_predict(net, test)
    assert set(test.keyboard) == set(range(len(KEYBOARD_CLASSES))) and set(test.mouse) == set(range(len(MOUSE_CLASSES)))
    assert (pk == test.keyboard).mean() >= 0.9, (pk, test.keyboard)
    assert (pm == test.mouse).mean() >= 0.9, (pm, test.mouse)


def test_idm_training_shows_its_steps_when_asked(capsys):
    data = IDMData.build(_doom_like_clips(10, seed=0), window=5)
    train_idm(data, epochs=1, batch_size=32, width=8, size=24, progress=True)
    err = capsys.readouterr().err
    assert "IDM training" in err and f"{math.ceil(len(data) / 32)}/{math.ceil(len(data) / 32)}" in err
    train_idm(data, epochs=1, batch_size=32, width=8, size=24)  # quiet by default (library calls)
    assert "IDM training" not in capsys.readouterr().err


def test_idm_files_keep_their_shape_and_options_refuse_a_mismatched_size(tmp_path):
    from safetensors.torch import save_file

    from mg3_eval.idm import InverseDynamics
    from mg3_eval.run import EvalOptions

    torch.manual_seed(0)
    net = InverseDynamics(window=5, width=8, size=128)
    net.save(tmp_path / "idm.safetensors")
    back = InverseDynamics.load(tmp_path / "idm.safetensors")
    assert (back.window, back.size, back.features[0].out_channels) == (5, 128, 8) and not back.training
    x = torch.randint(0, 255, (2, 5, 32, 32), dtype=torch.uint8)
    assert all(torch.equal(a, b) for a, b in zip(net.eval()(x), back(x)))
    old = InverseDynamics()  # a file of before the metadata: the defaults it was trained with
    save_file(old.state_dict(), str(tmp_path / "old.safetensors"))
    assert InverseDynamics.saved_size(tmp_path / "old.safetensors") == 64
    assert InverseDynamics.load(tmp_path / "old.safetensors").size == 64
    EvalOptions(parts=("control",), idm=str(tmp_path / "idm.safetensors"), idm_size=128)
    with pytest.raises(ValueError, match="sees 128-pixel frames: pass --idm-size 128"):
        EvalOptions(parts=("control",), idm=str(tmp_path / "idm.safetensors"))
    with pytest.raises(ValueError, match="idm_size must be >= 16"):
        EvalOptions(parts=("control",), idm="train", idm_size=8)
    net.save(tmp_path / "vae.safetensors", {"view": "simulator video through the model's VAE", "epochs": 3})
    assert InverseDynamics.info(tmp_path / "vae.safetensors")["epochs"] == 3
    assert InverseDynamics.info(tmp_path / "old.safetensors") == {}
    EvalOptions(parts=("control",), idm=str(tmp_path / "vae.safetensors"), idm_size=128, idm_vae=True)
    with pytest.raises(ValueError, match="was trained on simulator video through the model's VAE: pass idm_vae"):
        EvalOptions(parts=("control",), idm=str(tmp_path / "vae.safetensors"), idm_size=128)


def test_idm_options_apply_only_where_they_do_something(tmp_path):
    """The training options need idm="train"; the shipped IDM reads sharp 64-pixel frames; a missing file is refused."""
    from mg3_eval.run import EvalOptions

    EvalOptions(parts=("control",), idm="train", idm_train_frames=300, idm_epochs=1, idm_vae=True, idm_size=128)
    for bad, match in (
        (dict(idm_train_frames=300), "idm_train_frames apply to idm='train', not to idm='shipped'"),
        (dict(idm_epochs=3, idm=str(tmp_path)), "idm_epochs apply to idm='train'"),
        (dict(idm_vae=True), "the shipped IDM reads the simulator's own frames"),
        (dict(idm_size=128), "the shipped IDM reads the simulator's own frames at 64 pixels"),
        (dict(idm=str(tmp_path / "none.safetensors")), "idm must be shipped, train or an IDM file"),
    ):
        with pytest.raises(ValueError, match=match):
            EvalOptions(parts=("control",), **bad)


def test_idm_data_windows_stay_inside_clips():
    clips = [(np.full((7, 4, 4), i, np.uint8), np.array([0, -1, 1]), np.array([0, 0, -1])) for i in range(3)]
    data = IDMData.build(clips, window=5)
    assert len(data) == 9
    stacks = data.stacks(np.arange(9)).numpy()
    assert all(len(np.unique(s)) == 1 for s in stacks)  # no window mixes two clips
    kept = data.labelled()
    assert len(kept) == 3 and np.all(kept.keyboard >= 0) and np.all(kept.mouse >= 0)


# ---- memory protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize("away,walk", [(3, 0), (4, 1), (6, 2)])
def test_go_and_return_returns_to_the_start_pose(away, walk):
    kb, ms, chunks = go_and_return_actions(57, 40, away_chunks=away, walk_chunks=walk)
    assert chunks == away + 2 and len(kb) == len(ms) == 57 + (chunks - 1) * 40
    poses = _poses(kb, ms)
    # actions are float32 (as the env takes them): the rounded turn rate leaves ~1e-5 degrees after a
    # full turn, and walking back along that heading ~1e-4 map units (of > 100 walked)
    tol = np.array([1e-3, 1e-3, 1e-9, 1e-9, 1e-4])  # x, y, z, pitch, yaw
    first, last = chunk_slices(57, 40, chunks)[0], chunk_slices(57, 40, chunks)[-1]
    assert np.all(np.abs(poses[first.stop - 1]) < 1e-9)  # standing still at the start in chunk 0 ...
    assert np.all(np.abs(poses[last.start :]) < tol), poses[-1]  # ... and back there in the last chunk
    half = poses[57 + away * 40 // 2]
    far = abs(abs(half[4]) - 180) < 1 if walk == 0 else np.hypot(*half[:2]) > 100
    assert far, half  # the trajectory really goes away
    with pytest.raises(ValueError):
        go_and_return_actions(57, 40, away_chunks=3, walk_chunks=1)


# ---- protocols on the smoke export ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_export(tmp_path_factory):
    from world_model.train.pipeline import PipelineOptions, run_pipeline
    from world_model.train.teacher import export_teacher

    run = tmp_path_factory.mktemp("eval_run")
    run_pipeline(run, PipelineOptions.smoke())
    export_teacher(run)
    return run / "export"


def test_fidelity_of_a_static_scene(smoke_export):
    """A scene that never changes: repeat-first is perfect; the model's curve has one value per chunk."""
    from world_model.model import load_world_model

    wm = load_world_model(smoke_export)
    s = wm.config.stream
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, s.height, s.width, 3), dtype=np.uint8)
    t = 57 + 40
    ep = SimEpisode(
        "none",
        0,
        "a static scene",
        np.repeat(frame, t, 0),
        np.zeros((t, 6), np.float32),
        np.zeros((t, 2), np.float32),
        np.zeros((t, 5)),
    )
    r = fidelity(wm, [ep], num_chunks=2)
    assert r["psnr_repeat"] == [PSNR_CAP_DB, PSNR_CAP_DB]
    assert len(r["psnr_model"]) == 2 and all(0 < x < PSNR_CAP_DB for x in r["psnr_model"])
    assert len(r["sharpness_ratio"]) == 2 and all(0 < x < 10 for x in r["sharpness_ratio"])  # noise: sharp truth
    assert r["chunk0"]["gain_db"] == pytest.approx(r["chunk0"]["psnr_model"] - PSNR_CAP_DB)
    assert r["chunk0"]["gain_per_episode"] == [pytest.approx(r["chunk0"]["gain_db"])]
    assert r["chunk0"]["identical_frames"] == 56  # every frame after the first is frame 0
    pooled = r["chunk0"]["pooled"]  # repeat-first is exact: the cap, pooled too
    assert pooled["psnr_repeat"] == PSNR_CAP_DB and 0 < pooled["psnr_model"] < PSNR_CAP_DB
    assert pooled["gain_db"] == pytest.approx(pooled["psnr_model"] - PSNR_CAP_DB)
    assert pooled["repeat_per_episode"] == [PSNR_CAP_DB] and len(pooled["per_episode"]) == 1
    per_latent = r["chunk0"]["per_latent"]  # 56 generated frames of chunk 0 = 14 latents of 4
    assert len(per_latent["model"]) == len(per_latent["vae"]) == 14 and per_latent["repeat"] == [PSNR_CAP_DB] * 14
    assert np.mean(per_latent["model"]) == pytest.approx(r["chunk0"]["psnr_model"])
    assert r["finite"] and r["seconds_first_chunk"] > 0
    with pytest.raises(ValueError, match="episodes need"):
        fidelity(wm, [ep], num_chunks=3)


_FIRST_PARTS = ("fidelity", "distillation", "control", "memory", "stability", "speed")  # the rest: test_new_parts_smoke


def test_mg3_eval_end_to_end(smoke_export, tmp_path, capsys):
    """The first six parts on an exported folder (with its many-step teacher in base_model/), reduced
    sizes; then control and distillation again with the IDM of the first run and an explicit teacher."""
    from mg3_env.cli import main

    out = tmp_path / "eval"
    sizes = {"--episodes": 1, "--fidelity-chunks": 2, "--control-chunks": 2, "--idm-held-out-frames": 120}
    sizes |= {"--memory-away-chunks": 1, "--stability-chunks": 3, "--stability-edge-chunks": 1, "--speed-chunks": 1}
    small = [str(x) for kv in sizes.items() for x in kv]
    train_idm = ["--idm", "train", "--idm-train-frames", "300", "--idm-epochs", "1"]
    parts = ["--parts", ",".join(_FIRST_PARTS), *train_idm]
    assert main(["eval", "--model", str(smoke_export), "--out", str(out), *small, *parts]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"fidelity", "distillation", "control", "memory", "stability", "speed", "targets"} <= set(m)
    assert m["model"]["resolution"] == [32, 32] and m["model"]["model"] == str(smoke_export)
    assert m["runtime"] == {"device": "cpu", "dtype": "float32"}  # the suite pins fp32 (conftest)
    assert len(m["fidelity"]["psnr_model"]) == 2 and m["fidelity"]["levels"][0].startswith("freedoom")
    assert m["fidelity"]["levels"][0] in {lv.name for lv in levels_in_split("test")}
    assert m["distillation"]["teacher"]["steps"] > m["distillation"]["student"]["steps"]
    assert 0 <= m["control"]["model"]["keyboard_accuracy"] <= 1 and m["control"]["idm"]["held_out_windows"] > 0
    assert m["targets"]["control_mouse"]["reference"] == m["control"]["sim"]["mouse_accuracy"]
    assert np.isfinite(m["memory"]["psnr_return_memory_on"]) and np.isfinite(m["memory"]["psnr_return_memory_off"])
    assert m["stability"]["finite"] is True and len(m["stability"]["per_chunk"]["sharpness"]) == 3
    assert m["stability"]["episodes_count"] == 1 and m["stability"]["windows"]["start"] == [1, 1]  # --episodes 1
    assert m["targets"]["stability_contrast"]["reference"] == m["stability"]["simulator"]["relative_change"]["contrast"]
    assert m["speed"]["frames_per_s"] > 0
    ours = {k for k, (path, _) in TARGETS.items() if path.split(".")[0] in _FIRST_PARTS}
    assert set(m["targets"]) == ours and all(t["value"] is not None for t in m["targets"].values())
    for png in ("fidelity_psnr.png", "fidelity_strip.png", "stability.png", "stability_frames.png"):
        assert (out / png).stat().st_size > 1000, png
    table = capsys.readouterr().out
    assert "fidelity_psnr" in table and "target" in table

    again = tmp_path / "again"
    args = ["--parts", "control,distillation", "--idm", str(out / "idm.safetensors"), "--teacher", str(smoke_export)]
    small = ["--episodes", "1", "--control-chunks", "2", "--idm-held-out-frames", "120"]  # the other parts' refused
    assert main(["eval", "--model", str(smoke_export), "--out", str(again), *small, *args]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert set(m2) & set(PARTS) == {"control", "distillation"} and not (again / "idm.safetensors").exists()
    assert m2["distillation"]["teacher"] == m["distillation"]["teacher"] | {"seconds_first_chunk": ANY}
    assert m2["control"]["idm"]["loaded_from"] == str(out / "idm.safetensors")
    for k in ("held_out_keyboard_accuracy", "held_out_mouse_accuracy"):
        assert m2["control"]["idm"][k] == m["control"]["idm"][k], k
    assert m["control"]["idm"]["view"] == "simulator video" == m2["control"]["idm"]["trained"]["view"]
    trained = m2["control"]["idm"]["trained"]
    assert (
        trained["train_frames"] == 300
        and trained["held_out_mouse_accuracy"] == m["control"]["idm"]["held_out_mouse_accuracy"]
    )
    by_key = m["control"]["model"]["mouse_accuracy_by_keyboard"]
    assert set(by_key) == {"none", "forward", "back", "left", "right"}
    feas, blocked = (m["control"]["model"][f"mouse_accuracy_by_keyboard_{k}"] for k in ("feasible", "blocked"))
    assert set(feas) == set(blocked) == set(by_key)
    for k, acc in by_key.items():  # each key's windows split in two: its accuracy lies between the parts'
        parts = [v for v in (feas[k], blocked[k]) if v is not None]
        assert (acc is None) == (not parts) and (acc is None or min(parts) - 1e-9 <= acc <= max(parts) + 1e-9), k
    sim_moved = m["control"]["as_simulated_windows"]  # read against what the simulator did, where unambiguous
    assert 0 < sim_moved["keyboard"] <= m["control"]["windows"] and 0 < sim_moved["mouse"] <= m["control"]["windows"]
    for who in ("model", "sim"):
        moved = m["control"][who]["as_simulated"]
        assert 0 <= moved["keyboard_accuracy"] <= 1 and 0 <= moved["mouse_accuracy"] <= 1
        assert sum(map(sum, moved["keyboard_confusion"])) == sim_moved["keyboard"]
    per_ep = m["control"]["model"]["per_episode"]  # each episode's windows: their mean is the whole run's
    assert len(per_ep["keyboard"]) == len(per_ep["mouse"]) == m["control"]["episodes"]
    assert np.mean(per_ep["mouse"]) == pytest.approx(m["control"]["model"]["mouse_accuracy"])

    vae_view = tmp_path / "vae_view"  # the IDM trained and scored on simulator video through the VAE
    args = [*small, "--parts", "control", *train_idm, "--idm-vae", "--context-cache", "on"]
    assert main(["eval", "--model", str(smoke_export), "--out", str(vae_view), *args]) == 0
    m3 = json.loads((vae_view / "metrics.json").read_text())
    assert m3["runtime"] == {"device": "cpu", "dtype": "float32", "context_cache": True}  # --context-cache reached it
    assert m3["control"]["idm"]["view"] == "simulator video through the model's VAE"
    assert m3["control"]["idm"]["held_out_windows"] > 0 and 0 <= m3["control"]["sim"]["mouse_accuracy"] <= 1
    for wrong in (["--idm", str(vae_view / "idm.safetensors")], ["--idm", str(out / "idm.safetensors"), "--idm-vae"]):
        with pytest.raises(SystemExit) as e:  # an IDM read on the other kind of video: refused before anything runs
            main(
                [
                    "eval",
                    "--model",
                    str(smoke_export),
                    "--out",
                    str(tmp_path / "no"),
                    *small,
                    "--parts",
                    "control",
                    *wrong,
                ]
            )
        assert e.value.code == 2 and not (tmp_path / "no").exists()

    shipped = tmp_path / "shipped"  # the default: the package's IDM
    assert main(["eval", "--model", str(smoke_export), "--out", str(shipped), *small, "--parts", "control"]) == 0
    m4 = json.loads((shipped / "metrics.json").read_text())["control"]["idm"]
    assert m4["loaded_from"] == "shipped" and m4["trained"]["train_frames"] == 288_000
    assert not (shipped / "idm.safetensors").exists()


def test_vae_roundtrip_keeps_shape_and_is_the_vae_reconstruction():
    from mg3_eval.rollout import vae_length, vae_roundtrip
    from world_model.model import load_world_model

    wm = load_world_model("tiny-random")
    s = wm.config.stream
    frames = np.random.default_rng(0).integers(0, 256, (9, s.height, s.width, 3), dtype=np.uint8)
    out = vae_roundtrip(wm, frames)
    assert out.shape == frames.shape and out.dtype == np.uint8
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        rec, _ = wm.vae.decode(wm.vae.encode(x), first_chunk=True)
    expect = ((rec[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(out, expect)
    assert [vae_length(n, 4) for n in (0, 1, 4, 5, 8, 9, 178)] == [0, 1, 1, 5, 5, 9, 177]


def test_mg3_eval_reports_bad_arguments_and_missing_models(tmp_path, monkeypatch, capsys):
    """No traceback: a missing embedded model or folder is exit code 2 with the reason, and a bad
    option is a usage error; nothing is written."""
    import world_model.model
    from mg3_env.cli import main

    out = tmp_path / "eval"
    monkeypatch.setattr(world_model.model, "EMBEDDED_DIR", tmp_path / "no-embedded-model")
    assert main(["eval", "--out", str(out)]) == 2  # --model default
    assert "embedded default model's weights are missing" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "cannot load model" in capsys.readouterr().err
    bad_options = (["--parts", "fidelity,colour"], ["--episodes", "0"], ["--stability-chunks", "16"], ["--idm", "x.st"])
    spawn_for_all = ["--spawn", "anywhere"]  # with every part: motion, control, memory ... begin at their own starts
    for bad in (*bad_options, ["--teacher", str(tmp_path)], ["--split", "all"], spawn_for_all, ["--spawn", "x"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--model", "tiny-random", "--out", str(out), *bad])
        assert e.value.code == 2, bad
    assert "colour" not in capsys.readouterr().out and not out.exists()
    teacher = tmp_path / "teacher"  # base_model/ but no config.json or VAE beside it
    (teacher / "base_model").mkdir(parents=True)
    args = ["--parts", "distillation", "--episodes", "1", "--teacher", str(teacher)]
    assert main(["eval", "--model", "tiny-random", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "cannot load a model the evaluation needs" in err and str(teacher) in err


def test_the_evaluation_plays_a_pinned_explorer(monkeypatch, tmp_path):
    """Recorded episodes and rest starts play EVAL_EXPLORER, every ExplorerConfig field pinned, whatever the data
    explorer's defaults become (a new default would move every episode and unpair the stored references)."""
    import dataclasses

    import mg3_eval.simulator as sim
    import world_model.data.explorer as explorer_module
    from world_model.config import tiny
    from world_model.data.explorer import ExplorerConfig

    assert set(sim.EVAL_EXPLORER) == {f.name for f in dataclasses.fields(ExplorerConfig)}
    assert sim.eval_explorer(look=False).look == 0.0 and sim.eval_explorer().look == sim.EVAL_EXPLORER["look"]
    real = ExplorerConfig.__init__

    def more_strafes(self, *args, **kwargs):  # the data's explorer with another default: the evaluation's unmoved
        real(self, *args, **{"strafe": 0.9, **kwargs})

    reference = sim.record_test_episodes(tiny(32, 32), 1, 40, split="test", workdir=tmp_path)
    monkeypatch.setattr(explorer_module.ExplorerConfig, "__init__", more_strafes)
    assert ExplorerConfig().strafe == 0.9
    moved = sim.record_test_episodes(tiny(32, 32), 1, 40, split="test", workdir=tmp_path)
    np.testing.assert_array_equal(moved[0].keyboard, reference[0].keyboard)
    np.testing.assert_array_equal(moved[0].frames, reference[0].frames)


def test_recorded_parts_name_their_episode_and_chunk_options():
    """Each part on the recorded episodes is a part, and the option fields it reads its counts from exist."""
    opts = EvalOptions(parts=tuple(RECORDED_PARTS))
    for part, fields in RECORDED_PARTS.items():
        assert part in PARTS
        assert all(isinstance(getattr(opts, f), int) and getattr(opts, f) >= 1 for f in fields if f is not None)


# ---- sharpness, image motion ---------------------------------------------------------------------------


def _smooth_world(shape=(200, 400), seed=0, passes=2) -> np.ndarray:
    """A smooth random luma texture (float, 0-255), larger than the views cut from it."""
    w = np.random.default_rng(seed).uniform(0, 255, shape)
    for _ in range(passes):
        w = (w + np.roll(w, 1, 0) + np.roll(w, 1, 1) + np.roll(w, (1, 1), (0, 1))) / 4
    return w


def _rgb(y: np.ndarray) -> np.ndarray:
    """Luma [..., H, W] -> grey uint8 frames [..., H, W, 3]."""
    return np.repeat(np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None], 3, -1)


def test_sharpness_falls_with_blur_and_is_zero_when_flat():
    sharp = _rgb(_smooth_world(passes=1)[None, :64, :64])
    y = sharp[..., 0].astype(np.float64)
    blurred = _rgb(sum(np.roll(y, (dy, dx), (1, 2)) for dy in range(-2, 3) for dx in range(-2, 3)) / 25)
    assert sharpness_ratio(sharp, sharp) == pytest.approx(1.0)
    assert 0 < sharpness_ratio(blurred, sharp) < 0.6  # a 5x5 box blur
    assert sharpness_ratio(sharp, blurred) > 1.6
    flat = np.full((2, 16, 16, 3), 90, np.uint8)
    assert np.all(sharpness(flat) == 0) and sharpness_ratio(sharp, flat) is None
    # a vertical edge of height 50: every row of the 15 (of W - 1 = 15) columns ... one column of 50
    edge = np.zeros((1, 16, 16, 3), np.uint8)
    edge[:, :, 8:] = 50
    assert sharpness(edge)[0] == pytest.approx(50 / 15)


@pytest.mark.parametrize("dx,dy", [(-6, 0), (0, 0), (2, 0), (0, 5), (0, -3), (4, -7)])
def test_image_shift_recovers_a_known_pan_and_tilt_with_the_sign(dx, dy):
    """A view moved dx pixels right and dy down (content moving left and up) reads (+dx, +dy); a pan
    does not leak into the tilt or the other way round."""
    w = _smooth_world()
    a = w[50:114, 100:164]
    np.testing.assert_allclose(image_shift(a, w[50 + dy : 114 + dy, 100 + dx : 164 + dx]), [dx, dy], atol=0.05)


def test_image_shift_is_subpixel_and_batched():
    w = _smooth_world(passes=3)
    a = w[50:114, 100:164]
    half = 0.5 * (w[50:114, 102:166] + w[50:114, 103:167])  # content 2.5 px to the left
    np.testing.assert_allclose(image_shift(a, half), [2.5, 0], atol=0.15)
    got = image_shift(np.stack([a, a]), np.stack([w[50:114, 103:167], w[49:113, 97:161]]))
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, [[3, 0], [-3, -1]], atol=0.05)
    with pytest.raises(ValueError, match="max_shift"):
        image_shift(a, a, max_shift=40)


def _zoom(y: np.ndarray, s: float) -> np.ndarray:
    """Luma [H, W] magnified s times about its centre (bilinear)."""
    h, w = y.shape
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, w), torch.linspace(-1, 1, h), indexing="xy"), -1)
    src = torch.from_numpy(y).float()[None, None]
    return torch.nn.functional.grid_sample(src, grid[None] / s, align_corners=True)[0, 0].double().numpy()


def test_image_scale_recovers_a_known_zoom():
    y = _smooth_world(passes=3)[:96, :96]
    for s in (1.0, 1.06, 0.93):
        assert image_scale(y, _zoom(y, s)) == pytest.approx(s, abs=0.004), s
    w = _smooth_world(passes=3)
    a, panned = w[50:146, 100:196], w[52:148, 105:201]  # content 5 px left, 2 px up: no zoom
    shift = image_shift(a, panned)
    assert image_scale(a, panned, shift) == pytest.approx(1.0, abs=0.004)


def test_motion_measures_of_a_panning_world_and_the_ratios():
    """A world panning 3 px per frame for 6 frames, then still: pan 3 per moving frame whether all
    pairs or only the moving ones are given; a model panning half as fast has ratio 0.5."""
    w = _smooth_world()
    x = [100 + 3 * min(t, 6) for t in range(12)]
    sim = _rgb(np.stack([w[50:114, c : c + 64] for c in x]))
    m = motion_measures(sim, moving_pairs=6)
    assert m["pan"] == pytest.approx(3.0, abs=0.1) and abs(m["tilt"]) < 0.1 and abs(m["expansion"]) < 0.01
    assert m["change"] > 1.0 and motion_measures(sim[:1].repeat(5, 0))["change"] == 0.0
    half = _rgb(np.stack([w[50:114, 100 + (c - 100) // 2 : 164 + (c - 100) // 2] for c in x]))
    r = motion_ratios(m, motion_measures(half, moving_pairs=6))
    assert r["pan"] == pytest.approx(0.5, abs=0.05)
    assert r["tilt"] is None and r["expansion"] is None  # nothing to divide by


def test_motions_cover_every_kind_and_pitch_stops_in_range():
    from mg3_eval.protocols.motion import PITCH_SPAN_DEGREES, motion_actions, motions

    plan = motions((0.1, 0.25), (0.05, 0.1))
    groups = {m.group for m in plan}
    assert groups == {"still", "yaw_slow", "yaw_fast", "pitch_slow", "pitch_fast", "forward", "strafe"}
    assert len(plan) == 12 and {m.sign for m in plan if m.group == "pitch_fast"} == {1.0, -1.0}
    unit = StreamConfig().degrees_per_mouse_unit
    for m in plan:
        kb, ms, moving = motion_actions(m, 57, unit)
        assert kb.shape == (57, 6) and ms.shape == (57, 2)
        if m.kind == "pitch":
            assert abs(ms[:, 0].sum()) * unit == pytest.approx(PITCH_SPAN_DEGREES, rel=0.1) and moving < 57
            assert np.all(ms[moving:] == 0) and np.sign(ms[0, 0]) == m.sign
        else:
            assert moving == 57
        if m.kind == "yaw":
            assert np.all(np.sign(ms[:, 1]) == m.sign)
    with pytest.raises(ValueError, match="two yaw rates"):
        motions((0.1,), (0.05, 0.1))


# ---- controllability ---------------------------------------------------------------------------------


def _pan_world(yaw: np.ndarray, seed: int, noise: float = 6.0) -> np.ndarray:
    """A synthetic world: clip i pans a texture by yaw[i, t] pixels per frame (integers), with
    per-frame noise. yaw [N, T] -> frames uint8 [N, T, 32, 32, 3]."""
    w = _smooth_world((64, 600), seed=7)
    rng = np.random.default_rng(seed)
    x = 250 + np.concatenate([np.zeros((len(yaw), 1), int), np.cumsum(yaw[:, :-1], 1)], 1)
    y = np.stack([np.stack([w[16:48, c : c + 32] for c in row]) for row in x])
    return _rgb(y + rng.normal(0, noise, y.shape))


def test_controllability_delta_psnr_rewards_following_the_actions():
    """Clips with true vs shuffled actions: a world that follows its actions scores a clear ΔPSNR,
    one that ignores them 0 (it makes the same video either way)."""
    rng = np.random.default_rng(0)
    yaw = np.repeat(rng.integers(-3, 4, (5, 4)), 8, axis=1)  # 5 clips, 4 blocks of 8 frames
    kb, ms = np.zeros((5, 32, 6), np.float32), np.zeros((5, 32, 2), np.float32)
    ms[..., 1] = yaw
    kb_s, ms_s = shuffled_actions(kb, ms)
    assert not any(np.array_equal(ms[i], ms_s[i]) for i in range(5))  # no clip keeps its own actions
    assert sorted(map(tuple, ms_s[..., 1])) == sorted(map(tuple, ms[..., 1]))  # the same actions, moved
    truth = _pan_world(yaw, seed=0)
    slices = [slice(1, 16), slice(16, 32)]
    following = delta_psnr(
        truth, _pan_world(ms[..., 1].astype(int), 1), _pan_world(ms_s[..., 1].astype(int), 1), slices
    )
    assert following["delta_db"] > 3 and following["psnr_true"] > following["psnr_shuffled"]
    assert len(following["delta_db_per_chunk"]) == 2 and len(following["delta_db_per_clip"]) == 5
    still = np.zeros((5, 32), int)
    ignoring = delta_psnr(truth, _pan_world(still, 1), _pan_world(still, 1), slices)
    assert ignoring["delta_db"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        shuffled_actions(kb[:1], ms[:1])


def test_target_forms():
    from mg3_eval.report import _met

    assert _met(0.9, "within 0.8-1.2 of the simulator's") and not _met(1.3, "within 0.8-1.2 x")
    assert _met(27.5, ">= 27 dB") and not _met(0.2, "<= 0.15") and _met(True, "true")
    assert _met(5.0, "-") is None and _met(None, ">= 1 dB") is None


# ---- the new parts end to end ------------------------------------------------------------------------


def test_new_parts_smoke(tmp_path, capsys):
    """reset, sharpness, controllability and motion on the tiny random model through ``mg3 eval``
    (simulator frames of the test levels at 64x64); they are part of the default set."""
    from mg3_env.cli import main

    new = ("reset", "sharpness", "controllability", "motion")
    assert set(new) <= set(PARTS) and not set(new) & set(_FIRST_PARTS)
    out = tmp_path / "eval"
    args = ["--parts", ",".join(new), "--episodes", "1", "--sharpness-chunks", "1", "--controllability-chunks", "1"]
    assert main(["eval", "--model", "tiny-random", "--out", str(out), *args]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) & set(PARTS) == set(new)
    r = m["reset"]
    assert r["starts"] == 1 and 0 < r["psnr_reset_frame"] < PSNR_CAP_DB and r["sharpness_reset_frame"] > 0
    assert r["psnr_vae"] > 0 and r["sharpness_vae"] > 0
    assert m["sharpness"]["ratio"] > 0 and m["sharpness"]["sim"] > 0 and len(m["sharpness"]["ratio_per_chunk"]) == 1
    assert set(m["sharpness"]["grid_share"]) == {"2", "4", "8", "16"}
    assert 0 <= m["sharpness"]["grid_share_max_sim"] <= m["sharpness"]["grid_share_max_sim"] + 1
    assert m["sharpness"]["grid_share_max"] == max(m["sharpness"]["grid_share"].values())
    c = m["controllability"]
    assert c["episodes"] == 2 and c["finite"] and np.isfinite(c["delta_db"])  # --episodes 1: two for the shuffle
    assert c["delta_db"] == pytest.approx(c["psnr_true"] - c["psnr_shuffled"])
    mo = m["motion"]["actions"]
    assert set(mo) == {"still", "yaw_slow", "yaw_fast", "pitch_slow", "pitch_fast", "forward", "strafe"}
    # the simulator's own motion, measured: turning right pans, looking down tilts, walking expands
    assert mo["yaw_fast"]["sim"]["pan"] > mo["yaw_slow"]["sim"]["pan"] > 0.5
    assert mo["pitch_fast"]["sim"]["tilt"] > mo["pitch_slow"]["sim"]["tilt"] > 0.3
    assert mo["forward"]["sim"]["expansion"] > 0.01 and mo["forward"]["sim"]["change"] > mo["still"]["sim"]["change"]
    expected = {k for k, (path, _) in TARGETS.items() if path.split(".")[0] in new}
    assert set(m["targets"]) == expected and m["targets"]["reset_psnr"]["reference"] == r["psnr_vae"]
    for png in ("reset_frames.png", "motion_frames.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "controllability" in capsys.readouterr().out


def test_motion_in_a_later_chunk_after_standing_still():
    """lead_chunks=1: a first chunk standing still, then the motion for one chunk, measured on that chunk (the
    simulator's too: turning right still pans, looking down still tilts); a negative count raises."""
    from mg3_eval.protocols.motion import motion
    from mg3_eval.simulator import rest_starts
    from world_model.generator import StreamingGenerator
    from world_model.model import load_world_model

    wm = load_world_model("tiny-random")
    gen = StreamingGenerator(wm)
    r = motion(wm, rest_starts(wm.config, 1), lead_chunks=1)
    assert r["frames"] == gen.chunk_frames and r["lead_frames"] == gen.first_chunk_frames
    a = r["actions"]
    assert a["yaw_fast"]["sim"]["pan"] > 0.5 and a["pitch_fast"]["sim"]["tilt"] > 0.3
    assert a["still"]["sim"]["change"] < a["yaw_fast"]["sim"]["change"]
    with pytest.raises(ValueError, match="lead_chunks"):
        motion(wm, [], lead_chunks=-1)


def test_eval_sampler_flags_reach_the_evaluated_model(monkeypatch, tmp_path, capsys):
    """--action-guidance S, --memory-guidance S and --sampler-steps N: the evaluated model's sampler carries them (what the generator
    reads); out-of-range values are usage errors before any model loads, and a model guided with the release's CFG
    refuses action guidance."""
    import dataclasses

    import mg3_eval.run
    import world_model.model
    from mg3_eval.cli import main

    class Evaluated(Exception):
        pass

    def fake_run(wm, out, opts, runtime=None):
        raise Evaluated(wm)

    monkeypatch.setattr(mg3_eval.run, "run_evaluation", fake_run)
    out = str(tmp_path / "eval")
    with pytest.raises(Evaluated) as e:
        main(["--model", "tiny-random", "--out", out, "--action-guidance", "2.5"])
    wm = e.value.args[0]
    assert wm.config.sampler.action_guidance == 2.5 and wm.config.sampler.num_steps == 3
    with pytest.raises(Evaluated) as e:
        main(["--model", "tiny-random", "--out", out])
    assert e.value.args[0].config.sampler.action_guidance == 1.0
    with pytest.raises(SystemExit) as e:
        main(["--model", "tiny-random", "--out", out, "--action-guidance", "0.5"])
    assert e.value.code == 2
    with pytest.raises(Evaluated) as e:  # --memory-guidance S the same way
        main(["--model", "tiny-random", "--out", out, "--memory-guidance", "2"])
    assert e.value.args[0].config.sampler.memory_guidance == 2.0
    with pytest.raises(SystemExit) as e:
        main(["--model", "tiny-random", "--out", out, "--memory-guidance", "0.5"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["--model", "tiny-random", "--out", out, "--action-guidance", "2", "--memory-guidance", "2"]) == 2
    assert "choose one" in capsys.readouterr().err  # one kind of guidance at a time
    with pytest.raises(Evaluated) as e:  # --sampler-steps N: the evaluated model samples in N steps
        main(["--model", "tiny-random", "--out", out, "--sampler-steps", "6"])
    assert e.value.args[0].config.sampler.num_steps == 6
    with pytest.raises(SystemExit) as e:
        main(["--model", "tiny-random", "--out", out, "--sampler-steps", "0"])
    assert e.value.code == 2
    cfg_guided = wm.config.sampler.replace(action_guidance=1.0, guidance_scale=5.0)  # the release's base model
    base = dataclasses.replace(wm, config=wm.config.replace(sampler=cfg_guided))
    monkeypatch.setattr(world_model.model, "load_world_model", lambda *a, **k: base)
    capsys.readouterr()
    assert main(["--model", "tiny-random", "--out", out, "--action-guidance", "2"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_grid_share_sees_a_fixed_grid_not_the_world_s_own_detail():
    """A 4-pixel pattern added at the same phase to every frame of a moving world (a decoder's screen door)
    holds a large share of the fine detail at period 4 (and its multiple 8), none at period 2; the world's
    own detail, which moves, averages out; sharpness cannot tell the two apart."""
    from mg3_eval.metrics import grid_share

    rng = np.random.default_rng(0)
    world = _smooth_world(passes=3)
    frames = np.stack([np.roll(world, (3 * t, 5 * t), (0, 1))[:64, :64] for t in range(16)])  # a moving view
    clean = _rgb(frames)
    dots = np.zeros((4, 4))
    dots[0, 0], dots[2, 2] = 20.0, -20.0  # a diamond of dots every 4 pixels
    screen = _rgb(frames + np.tile(dots, (16, 16))[None] + rng.normal(0, 0.5, frames.shape))
    assert grid_share(clean, 4) < 0.005 and grid_share(clean, 2) < 0.005
    assert grid_share(screen, 4) > 0.1 and grid_share(screen, 8) > 0.05
    assert grid_share(screen, 2) < 0.01
    assert sharpness_ratio(screen, clean) > 1.1  # counted as detail by the gradient


def test_pooled_sharpness_ignores_a_pixel_grid_and_still_sees_blur():
    """A 2-pixel checkerboard added to a blurred frame raises the full-resolution gradient (the
    artefact counts as sharpness) but not the half-resolution one; a real blur lowers both."""
    sharp = _rgb(_smooth_world(passes=1)[None, :64, :64])
    y = sharp[..., 0].astype(np.float64)
    blurred_y = sum(np.roll(y, (dy, dx), (1, 2)) for dy in range(-2, 3) for dx in range(-2, 3)) / 25
    checker = 12.0 * ((np.indices((64, 64)).sum(0) % 2) * 2 - 1)  # +-12 luma, period 2
    blurred, gridded = _rgb(blurred_y), _rgb(blurred_y + checker)
    assert sharpness_ratio(gridded, sharp) > 1.5 * sharpness_ratio(blurred, sharp)
    assert sharpness_ratio(gridded, sharp, pooled=True) == pytest.approx(
        sharpness_ratio(blurred, sharp, pooled=True), rel=0.02
    )
    assert sharpness_ratio(blurred, sharp, pooled=True) < 0.8


def test_stability_windows_compare_the_same_phase_of_the_explorers_plan():
    """The end window begins a whole number of plan periods after the start window (the same views of the
    go-and-return plan); a rollout too short for one falls back to the last chunks and says so."""
    from mg3_eval.protocols.stability import edge_windows

    assert edge_windows(121, 8, 8) == (range(1, 9), range(113, 121), True)
    assert edge_windows(61, 8, 8) == (range(1, 9), range(49, 57), True)  # not the last 8 chunks: another phase
    assert edge_windows(61, 5, 8) == (range(1, 6), range(49, 54), True)
    assert edge_windows(3, 1, 8) == (range(1, 2), range(2, 3), False)
    for bad in ((10, 5, 8), (3, 0, 8), (20, 4, 0)):
        with pytest.raises(ValueError, match="edge_chunks"):
            edge_windows(*bad)


def test_stability_over_several_episodes_beside_the_simulator():
    """Two starts rolled out together: per-episode curves and changes, their mean, and the simulator's per-chunk
    statistics along the same actions (its first chunk stands still: about the start frame's statistics, animated textures aside)."""
    from mg3_eval.protocols.stability import stability
    from mg3_eval.simulator import rest_starts
    from world_model.model import load_world_model

    wm = load_world_model("tiny-random")
    starts = rest_starts(wm.config, 2)
    st = stability(wm, starts, num_chunks=18, edge_chunks=8)
    assert st["phase_aligned"] and st["windows"] == {"start": [1, 8], "end": [9, 16], "period": 8}
    assert st["finite"] and st["levels"] == [s.level for s in starts] and len(st["episodes"]) == 2
    for k in ("brightness", "contrast", "sharpness"):
        per_episode = [e["relative_change"][k] for e in st["episodes"]]
        assert st["relative_change"][k] == pytest.approx(np.mean(per_episode))
        sims = [e["simulator"]["relative_change"][k] for e in st["episodes"]]
        assert st["simulator"]["relative_change"][k] == pytest.approx(np.mean(sims))
    for e, s in zip(st["episodes"], starts):
        assert all(len(v) == 18 for v in (*e["per_chunk"].values(), *e["simulator"]["per_chunk"].values()))
        still = frame_stats(s.frame[None])
        assert e["simulator"]["per_chunk"]["brightness"][0] == pytest.approx(float(still["brightness"][0]), rel=0.01)
        w = e["per_chunk"]["contrast"]
        assert e["start"]["contrast"] == pytest.approx(np.mean(w[1:9])) and e["end"]["contrast"] == pytest.approx(
            np.mean(w[9:17])
        )
    assert st["per_chunk"] == st["episodes"][0]["per_chunk"] and st["thumbnails"].shape[0] == 5
    assert st["simulator_thumbnails"].shape == st["thumbnails"].shape
    assert stability(wm, starts[:1], num_chunks=3, edge_chunks=1, simulator=False)["phase_aligned"] is False
    with pytest.raises(ValueError, match="at least one start"):
        stability(wm, [], num_chunks=3, edge_chunks=1)


def test_iter_commands_plays_what_play_commands_plays():
    """The streaming replay yields the same frames and poses, the start first."""
    from mg3_eval.simulator import doom_config_for, iter_commands, play_commands, rest_starts
    from world_model.model import load_world_model

    cfg = load_world_model("tiny-random").config
    start = rest_starts(cfg, 1)[0]
    kb = np.zeros((30, 6), np.float32)
    kb[:, 0] = 1
    ms = np.full((30, 2), [0.0, 0.2], np.float32)
    frames, poses = play_commands(start, doom_config_for(cfg), kb, ms)
    streamed = list(iter_commands(start, doom_config_for(cfg), kb, ms))
    assert len(streamed) == len(frames) == 31 and np.array_equal(streamed[0][0], start.frame)
    assert np.array_equal(np.stack([f for f, _ in streamed]), frames)
    assert np.array_equal(np.stack([p for _, p in streamed]), poses)


def test_eval_refuses_options_of_parts_it_does_not_run(tmp_path, capsys):
    """A part's flag given with --parts that leave the part out would do nothing: refused before anything loads."""
    from mg3_eval.cli import main
    from mg3_eval.run import option_part

    out = str(tmp_path / "eval")
    for extra, said in (
        (["--parts", "reset", "--fidelity-chunks", "5"], "--fidelity-chunks: options of parts"),
        (["--parts", "memory", "--idm", "train", "--idm-epochs", "3"], "--idm, --idm-epochs: options of parts"),
        (["--parts", "fidelity", "--teacher-episodes", "2"], "--teacher-episodes: options of parts"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["--model", "tiny-random", "--out", out, *extra])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    # every option belongs to one part, or to all of them
    every = {"parts", "split", "spawn", "seed", "batch_size"}
    for f in dataclasses.fields(EvalOptions):
        assert (option_part(f.name) is None) == (f.name in every), f.name
        assert option_part(f.name) in (None, *PARTS)


def test_control_refuses_idm_training_options_for_an_idm_it_loads(tmp_path):
    from mg3_eval.protocols.control import evaluate_control
    from world_model.model import load_world_model

    with pytest.raises(ValueError, match="idm_epochs apply to idm='train', not to idm='shipped'"):
        evaluate_control(load_world_model("tiny-random"), tmp_path, idm="shipped", idm_epochs=3)
