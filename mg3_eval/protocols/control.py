"""Control: video generated from commanded actions (one keyboard class and one yaw class held per
chunk), labelled by an inverse-dynamics model trained on simulator frames of training levels; the
same commands played in the simulator give the ceiling the IDM allows."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mg3_eval.idm import (
    KEYBOARD_CLASSES,
    MOUSE_CLASSES,
    SHIPPED_IDM,
    InverseDynamics,
    accuracy,
    check_idm_file,
    collect_idm_data,
    command_actions,
    confusion,
    data_info,
    idm_scores,
    idm_view,
    motion_labels,
    train_idm,
)
from mg3_eval.rollout import batched, chunk_slices, generate_videos, vae_length, vae_roundtrip
from mg3_eval.simulator import SimStart, doom_config_for, play_commands, rest_starts
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = [
    "commanded_windows",
    "control",
    "control_starts",
    "draw_commands",
    "evaluate_control",
    "feasible_windows",
]


# the control part's commands and windows: yaw per frame in release units, and the windows scored in each chunk
YAW_STEP, SETTLE, STRIDE = 0.15, 12, 4


def commanded_windows(
    slices: Sequence[slice], window: int, settle: int = SETTLE, stride: int = STRIDE
) -> list[tuple[int, int]]:
    """(chunk, window start) of the windows scored in each chunk: after ``settle`` frames (Doom's
    momentum needs about 10 frames to build up or die out), every ``stride`` frames."""
    out = []
    for k, sl in enumerate(slices):
        for t in range(sl.start + settle, sl.stop - window + 1, stride):
            out.append((k, t))
    return out


def draw_commands(
    n: int, slices: Sequence[slice], seed: int, yaw_step: float = YAW_STEP
) -> list[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]:
    """The commands of ``n`` episodes: per chunk of ``slices`` one random (keyboard class, yaw class) held; each as
    (classes, keyboard [T, 6], mouse [T, 2]). The same ``seed`` draws the same commands."""
    rng = np.random.default_rng([seed, 23])
    out = []
    for _ in range(n):
        classes = [(int(rng.integers(0, 5)), int(rng.integers(0, 3))) for _ in slices]
        acts = [command_actions(k, m, sl.stop - sl.start, yaw_step) for (k, m), sl in zip(classes, slices)]
        out.append((classes, np.concatenate([a[0] for a in acts]), np.concatenate([a[1] for a in acts])))
    return out


def feasible_windows(
    moved_kb: np.ndarray, moved_ms: np.ndarray, classes: Sequence[tuple[int, int]], scored: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Per scored window, whether the simulator moved as commanded: the classes of its poses
    (:func:`~mg3_eval.idm.motion_labels`, per window start) equal the chunk's commanded ones (walls stop moves)."""
    return np.array(
        [s < len(moved_kb) and moved_kb[s] == classes[k][0] and moved_ms[s] == classes[k][1] for k, s in scored]
    )


def control_starts(cfg, n: int, split: str, seed: int) -> list[SimStart]:
    """The control part's ``n`` rest starts on ``split`` for ``seed``."""
    return rest_starts(cfg, n, split=split, seed=seed + 2)


def control(
    wm: WorldModel,
    idm: InverseDynamics,
    starts: Sequence[SimStart],
    *,
    num_chunks: int = 4,
    yaw_step: float = YAW_STEP,
    settle: int = SETTLE,
    stride: int = STRIDE,
    seed: int = 0,
    batch_size: int = 8,
    sim_through_vae: bool = False,
) -> dict[str, Any]:
    """Generate video from commanded actions (one random keyboard class and yaw class held per
    chunk) and label it with the IDM; the same commands are played in the simulator from the same
    start (``sim_through_vae``: its video passed through the model's VAE, for an IDM trained so). Scores (``model``, ``sim``): IDM accuracy against the commanded classes on the model's
    video and on the simulator's (the simulator's is the ceiling the IDM allows), and the same
    restricted to the windows where the simulator moved as commanded (``feasible``: walls stop the
    player, and a model that learned that is not wrong); ``per_episode``: each episode's accuracies, for pairing."""
    gen = StreamingGenerator(wm)
    first, rest = gen.first_chunk_frames, gen.chunk_frames
    slices = chunk_slices(first, rest, num_chunks)
    doom = doom_config_for(wm.config)
    w = idm.window
    scored = commanded_windows(slices, w, settle, stride)
    res = {"model": ([], []), "sim": ([], []), "feasible": []}  # per episode: predicted keyboard, yaw
    labels_kb, labels_ms = [], []
    moved_kb, moved_ms = [], []  # the classes of what the simulator did (its poses), -1 where ambiguous
    commands = draw_commands(len(starts), slices, seed, yaw_step)
    for idx in batched(len(starts), batch_size):
        g = generate_videos(
            wm,
            np.stack([starts[i].frame for i in idx]),
            [starts[i].prompt for i in idx],
            np.stack([commands[i][1] for i in idx]),
            np.stack([commands[i][2] for i in idx]),
            seeds=[seed + i for i in idx],
        )
        for j, i in enumerate(idx):
            classes, kb, ms = commands[i]
            sim_frames, sim_poses = play_commands(starts[i], doom, kb, ms)
            if sim_through_vae:
                sim_frames = vae_roundtrip(wm, sim_frames[: vae_length(len(sim_frames), wm.config.vae.temporal_stride)])
            lab_kb = np.array([classes[k][0] for k, _ in scored])
            lab_ms = np.array([classes[k][1] for k, _ in scored])
            labels_kb.append(lab_kb)
            labels_ms.append(lab_ms)
            for name, frames in (("model", g.frames[j]), ("sim", sim_frames)):
                ok = [s for _, s in scored if s + w <= len(frames)]
                pk, pm = idm.predict(frames, ok)
                full_k, full_m = np.full(len(scored), -1), np.full(len(scored), -1)
                full_k[: len(ok)], full_m[: len(ok)] = pk, pm  # windows past a level end stay -1 (wrong)
                res[name][0].append(full_k)
                res[name][1].append(full_m)
            mk, mm = motion_labels(sim_poses, w)
            moved_kb.append(np.array([mk[s] if s < len(mk) else -1 for _, s in scored]))
            moved_ms.append(np.array([mm[s] if s < len(mm) else -1 for _, s in scored]))
            res["feasible"].append(feasible_windows(mk, mm, classes, scored))
    lk, lm = np.concatenate(labels_kb), np.concatenate(labels_ms)
    feasible = np.concatenate(res["feasible"])
    sk, sm = np.concatenate(moved_kb), np.concatenate(moved_ms)
    out: dict[str, Any] = {"episodes": len(starts), "chunks": num_chunks, "windows": int(len(lk)), "yaw_step": yaw_step}
    for name in ("model", "sim"):
        pk, pm = np.concatenate(res[name][0]), np.concatenate(res[name][1])
        out[name] = {
            "keyboard_accuracy": accuracy(pk, lk),
            "mouse_accuracy": accuracy(pm, lm),
            "keyboard_confusion": confusion(pk, lk, len(KEYBOARD_CLASSES)),
            "mouse_confusion": confusion(pm, lm, len(MOUSE_CLASSES)),
            "feasible": {
                "keyboard_accuracy": accuracy(pk, lk, feasible),
                "mouse_accuracy": accuracy(pm, lm, feasible),
            },
            # read against what the simulator did with the same commands from the same start (its poses' classes,
            # windows where they are unambiguous), not against the commands: a model that stops at the walls the
            # simulator stops at scores here; on the simulator's own video this is the IDM's accuracy on these windows
            # (walls stop moves, never turns: the mouse's reading equals the commanded one where its class is clear)
            "as_simulated": {
                "keyboard_accuracy": accuracy(pk, sk),
                "mouse_accuracy": accuracy(pm, sm),
                "keyboard_confusion": confusion(pk, sk, len(KEYBOARD_CLASSES)),
            },
            # the yaw read while each key is commanded (a strafe that pans like a turn reads as one)
            "mouse_accuracy_by_keyboard": {c: accuracy(pm, lm, lk == i) for i, c in enumerate(KEYBOARD_CLASSES)},
            # ... split by whether the simulator made the move (a strafe into a wall: the simulator only turns,
            # a model that slides anyway pans more than the turn); None where a key has no such window
            "mouse_accuracy_by_keyboard_feasible": {
                c: accuracy(pm, lm, (lk == i) & feasible) for i, c in enumerate(KEYBOARD_CLASSES)
            },
            "mouse_accuracy_by_keyboard_blocked": {
                c: accuracy(pm, lm, (lk == i) & ~feasible) for i, c in enumerate(KEYBOARD_CLASSES)
            },
            # each episode's share of its windows read right: two models' runs pair by episode (mg3_eval.compare)
            "per_episode": {
                "keyboard": [float(np.mean(p == t)) for p, t in zip(res[name][0], labels_kb)],
                "mouse": [float(np.mean(p == t)) for p, t in zip(res[name][1], labels_ms)],
            },
        }
    out["feasible_windows"] = int(feasible.sum())
    out["feasible_fraction"] = float(feasible.mean()) if len(feasible) else None
    out["as_simulated_windows"] = {"keyboard": int((sk >= 0).sum()), "mouse": int((sm >= 0).sum())}
    return out


# the IDM the control part trains with idm="train" (EvalOptions' defaults too)
IDM_TRAIN_FRAMES = 24_000
IDM_EPOCHS = 10


def evaluate_control(
    wm: WorldModel,
    out: Path,
    *,
    split: str = "test",
    episodes: int = 36,
    chunks: int = 4,
    idm: str = "shipped",
    idm_train_frames: int | None = None,
    idm_held_out_frames: int = 4_000,
    idm_epochs: int | None = None,
    idm_vae: bool = False,
    idm_size: int = 64,
    seed: int = 0,
    batch_size: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    """The control part of ``mg3 eval``: the IDM (``idm``: "shipped", :data:`SHIPPED_IDM`; "train", one trained
    here on ``idm_train_frames`` simulator frames of training levels (default 24,000) for ``idm_epochs`` (default
    10), saved as ``out/idm.safetensors``; else the path of a saved one, where those two are refused) scored on
    held-out simulator frames of ``split``, then :func:`control` from rest starts of ``split``. ``idm_vae``: the IDM
    reads simulator video passed through the model's VAE (trained so here, or a saved one that was). ``idm_size``:
    the longest side of the luma frames the IDM sees (a loaded IDM's own must match). ``progress``: bars of the IDM's
    data and training (minutes on a CPU)."""

    given = [k for k, v in (("idm_train_frames", idm_train_frames), ("idm_epochs", idm_epochs)) if v is not None]
    if idm != "train" and given:
        raise ValueError(f"{', '.join(given)} apply to idm='train', not to idm={idm!r}")
    cfg = wm.config
    t0 = time.perf_counter()
    vae_of = wm if idm_vae else None
    view = idm_view(idm_vae)
    collect = dict(vae_of=vae_of, size=idm_size, progress=progress)
    if idm == "train":
        idm_train_frames = IDM_TRAIN_FRAMES if idm_train_frames is None else idm_train_frames
        idm_epochs = IDM_EPOCHS if idm_epochs is None else idm_epochs
        train = collect_idm_data(cfg, idm_train_frames, split="train", seed=seed, **collect)
        t1 = time.perf_counter()
        net = train_idm(train, epochs=idm_epochs, seed=seed, size=idm_size, progress=progress)
        idm_info: dict[str, Any] = {
            "view": view,
            "train_frames": idm_train_frames,
            **data_info(train),
            "epochs": idm_epochs,
            "seed": seed,
            "train_seconds": time.perf_counter() - t1,
        }
    else:
        path = SHIPPED_IDM if idm == "shipped" else Path(idm)
        check_idm_file(path, size=idm_size, vae=idm_vae)
        net = InverseDynamics.load(path)
        idm_info = {"loaded_from": "shipped" if idm == "shipped" else str(path), "trained": InverseDynamics.info(path)}
    held = collect_idm_data(cfg, idm_held_out_frames, split=split, seed=seed + 7, **collect)
    scores = idm_scores(net, held)
    idm_info.update(
        frame_size=idm_size,
        view=view,
        held_out_levels=f"{split} split",
        **{f"held_out_{k}": v for k, v in scores.items()},
        seconds=time.perf_counter() - t0,
    )
    if idm == "train":  # with its recipe and held-out scores (InverseDynamics.info), for --idm PATH later
        net.save(out / "idm.safetensors", idm_info)
    starts = control_starts(cfg, episodes, split, seed)
    res = control(
        wm,
        net,
        starts,
        num_chunks=chunks,
        seed=seed,
        batch_size=batch_size,
        sim_through_vae=idm_vae,
    )
    return {"idm": idm_info, **res}
