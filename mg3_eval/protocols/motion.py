"""Motion: does the picture move as the simulator's does under each kind of action? From rest starts
on held-out levels, the first chunk is played once in the simulator and once by the model (the same
start frame, prompt and per-frame actions) for each of: standing still, yaw at two rates, pitch at
two rates, walking forward and strafing (both directions of each turn, tilt and strafe). Each video
is measured with :func:`~mg3_eval.metrics.motion_measures` (pan, tilt, expansion, frame-to-frame
change); the breakdown gives each measure for the simulator and the model and their ratio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mg3_eval.metrics import motion_measures
from mg3_eval.rollout import batched, generate_videos
from mg3_eval.simulator import SimStart, doom_config_for, play_command_sets
from world_model.checks import whole
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["Motion", "motions", "motion_actions", "motion_ratios", "motion"]

_KEYS = {"forward": 0, "back": 1, "left": 2, "right": 3}  # W S A D in the MG3 keyboard vector
_MEASURES = ("pan", "tilt", "expansion", "change")
_SIGNED = ("pan", "tilt", "expansion")  # multiplied by the direction's sign before averaging
# below these simulator values a ratio means nothing (px/frame, zoom/frame, luma/pixel)
_RATIO_FLOOR = {"pan": 0.2, "tilt": 0.2, "expansion": 0.002, "change": 0.5}
_PRIMARY = {"yaw": "pan", "pitch": "tilt", "forward": "expansion", "strafe": "pan"}
PITCH_SPAN_DEGREES = 15.0  # a pitch command stops after this many degrees (Doom clamps the view's pitch)


@dataclass(frozen=True)
class Motion:
    """One commanded motion: ``group`` (still, yaw_slow, pitch_fast, forward, strafe ...) of ``kind``
    (still, yaw, pitch, forward, strafe); ``sign`` +1 for right / down / forward, -1 for the
    opposite; ``key`` a held key or None; ``pitch`` and ``yaw`` per frame in release units."""

    group: str
    kind: str
    sign: float
    key: str | None = None
    pitch: float = 0.0
    yaw: float = 0.0


def motions(yaw_rates: Sequence[float] = (0.1, 0.25), pitch_rates: Sequence[float] = (0.05, 0.1)) -> list[Motion]:
    """The motions of the breakdown: still; yaw and pitch at each rate (named ``yaw_slow``,
    ``yaw_fast`` ... in rate order; both directions); forward; strafe (both directions)."""
    if len(yaw_rates) != 2 or len(pitch_rates) != 2:
        raise ValueError(f"expected two yaw rates and two pitch rates, got {list(yaw_rates)} and {list(pitch_rates)}")
    out = [Motion("still", "still", 1.0)]
    for kind, rates in (("yaw", sorted(yaw_rates)), ("pitch", sorted(pitch_rates))):
        for speed, rate in zip(("slow", "fast"), rates):
            for sign in (1.0, -1.0):
                out.append(Motion(f"{kind}_{speed}", kind, sign, **{kind: sign * float(rate)}))
    out.append(Motion("forward", "forward", 1.0, key="forward"))
    out += [Motion("strafe", "strafe", 1.0, key="right"), Motion("strafe", "strafe", -1.0, key="left")]
    return out


def motion_actions(
    m: Motion, frames: int, degrees_per_unit: float, keyboard_dim: int = 6
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-frame actions of ``m``: keyboard [T, K], mouse [T, 2] (pitch, yaw), and the number of
    frames it moves (a pitch command holds for :data:`PITCH_SPAN_DEGREES`, then stops)."""
    moving = frames
    if m.pitch:
        moving = min(frames, max(2, round(PITCH_SPAN_DEGREES / (abs(m.pitch) * degrees_per_unit))))
    kb = np.zeros((frames, keyboard_dim), np.float32)
    ms = np.zeros((frames, 2), np.float32)
    if m.key is not None:
        kb[:moving, _KEYS[m.key]] = 1.0
    ms[:moving] = (m.pitch, m.yaw)
    return kb, ms, moving


def motion_ratios(sim: dict[str, float], model: dict[str, float]) -> dict[str, float | None]:
    """model / simulator for each measure; None where the simulator's value is too small to divide by."""
    return {k: model[k] / sim[k] if abs(sim[k]) >= _RATIO_FLOOR[k] else None for k in _MEASURES}


def _measure(frames: np.ndarray, moving: int) -> dict[str, float]:
    """Measures of a chunk [T, H, W, 3] from frame 1 (the model's frame 0 is its rendering of the
    given image): pairs (1, 2) ... of which the first ``moving - 1`` move."""
    video = frames[1:]
    return motion_measures(video, max(1, min(moving - 1, len(video) - 1)))


def motion(
    wm: WorldModel,
    starts: Sequence[SimStart],
    *,
    yaw_rates: Sequence[float] = (0.1, 0.25),
    pitch_rates: Sequence[float] = (0.05, 0.1),
    seed: int = 0,
    batch_size: int = 8,
    lead_chunks: int = 0,
) -> dict[str, Any]:
    """The per-action breakdown over ``starts``: for each group of :func:`motions`, the mean signed
    measures of the simulator and the model (over starts and directions), their ratios, and
    ``right_way``: the fraction of runs in which the model's main measure of the group (pan for yaw
    and strafe, tilt for pitch, expansion for forward) has the simulator's sign. ``thumbnails``: the
    last frame of every motion from the first start, the simulator's then the model's (uint8
    [2M, H, W, 3], labels in ``thumbnail_labels``).

    ``lead_chunks`` = k > 0: the motion is the (k+1)-th chunk's, after k chunks of standing still (both the
    simulator and the model), and its measures are that chunk's (``lead_frames`` before it): what a rollout that
    is already under way does with a new action; 0 measures the first chunk."""
    whole(lead_chunks, "lead_chunks")
    gen = StreamingGenerator(wm)
    t = gen.chunk_frames if lead_chunks else gen.first_chunk_frames
    lead = gen.first_chunk_frames + (lead_chunks - 1) * gen.chunk_frames if lead_chunks else 0
    cfg = wm.config
    unit = cfg.stream.degrees_per_mouse_unit
    kdim = cfg.dit.action_config.keyboard_dim_in if cfg.dit.action_config is not None else 6
    doom = doom_config_for(cfg)
    plan = motions(yaw_rates, pitch_rates)
    runs = [(s, m) for s in starts for m in plan]
    actions = [_after(lead, *motion_actions(m, t, unit, kdim)) for _, m in runs]
    measured: dict[str, dict[str, list]] = {m.group: {"sim": [], "model": [], "right_way": []} for m in plan}
    sims: list[tuple[dict[str, float], np.ndarray] | None] = []  # per run: measures, last frame; None: cut short
    for k, start in enumerate(starts):
        sets = [a[:2] for a in actions[k * len(plan) : (k + 1) * len(plan)]]
        for (frames, _), (_, _, moving) in zip(play_command_sets(start, doom, sets), actions[k * len(plan) :]):
            enough = len(frames) >= lead + t
            sims.append((_measure(frames[lead : lead + t], moving), frames[lead + t - 1]) if enough else None)
    skipped = 0
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # run of the first start -> last frames (sim, model)
    for idx in batched(len(runs), batch_size):
        g = generate_videos(
            wm,
            np.stack([runs[i][0].frame for i in idx]),
            [runs[i][0].prompt for i in idx],
            np.stack([actions[i][0] for i in idx]),
            np.stack([actions[i][1] for i in idx]),
            seeds=[seed + i // len(plan) for i in idx],  # one seed per start: the motions differ only in actions
        )
        for j, i in enumerate(idx):
            m, moving = runs[i][1], actions[i][2]
            if sims[i] is None:  # the level ended on the way
                skipped += 1
                continue
            if i < len(plan):
                thumbs[i] = (sims[i][1], g.frames[j, -1])
            pair = {"sim": sims[i][0], "model": _measure(g.frames[j, lead : lead + t], moving)}
            for who, v in pair.items():
                measured[m.group][who].append({k: m.sign * v[k] if k in _SIGNED else v[k] for k in _MEASURES})
            main = _PRIMARY.get(m.kind)
            if main is not None:
                measured[m.group]["right_way"].append(bool(np.sign(pair["model"][main]) == np.sign(pair["sim"][main])))
    groups: dict[str, Any] = {}
    for m in plan:
        if m.group in groups or not measured[m.group]["sim"]:
            continue
        r = measured[m.group]
        sim = {k: float(np.mean([x[k] for x in r["sim"]])) for k in _MEASURES}
        model = {k: float(np.mean([x[k] for x in r["model"]])) for k in _MEASURES}
        rate = abs(m.yaw or m.pitch)
        groups[m.group] = {
            "kind": m.kind,
            "rate": rate or None,
            "degrees_per_frame": rate * unit or None,
            "runs": len(r["sim"]),
            "sim": sim,
            "model": model,
            "ratio": motion_ratios(sim, model),
            "right_way": float(np.mean(r["right_way"])) if r["right_way"] else None,
        }
    return {
        "starts": len(starts),
        "levels": sorted({s.level for s in starts}),
        "frames": t,
        "lead_frames": lead,
        "units": {"pan": "px/frame", "tilt": "px/frame", "expansion": "zoom - 1 per frame", "change": "luma/pixel"},
        "skipped_runs": skipped,
        "actions": groups,
        "thumbnails": np.stack([thumbs[i][0] for i in sorted(thumbs)] + [thumbs[i][1] for i in sorted(thumbs)]),
        "thumbnail_labels": [f"sim {_label(plan[i])}" for i in sorted(thumbs)]
        + [f"model {_label(plan[i])}" for i in sorted(thumbs)],
    }


def _after(lead: int, kb: np.ndarray, ms: np.ndarray, moving: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A motion's actions after ``lead`` frames of standing still."""
    if lead:
        kb = np.concatenate([np.zeros((lead, kb.shape[1]), kb.dtype), kb])
        ms = np.concatenate([np.zeros((lead, 2), ms.dtype), ms])
    return kb, ms, moving


def _label(m: Motion) -> str:
    side = {"yaw": ("right", "left"), "pitch": ("down", "up"), "strafe": ("right", "left")}.get(m.kind)
    return m.group if side is None else f"{m.group} {side[0] if m.sign > 0 else side[1]}"
