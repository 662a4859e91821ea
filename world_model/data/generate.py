"""Dataset generation from ViZDoom: one episode at a time, or many in parallel, resumable.

The plan is deterministic for a seed: plan index p plays level ``_plan_level(seed, p)`` with
episode seed ``_plan_seed(seed, p)``; episodes are committed in plan order. Workers encode each
episode into ``<out>/.staging`` (temporary names, then renamed); the main process publishes staged
episodes through :class:`DatasetWriter`. A crash loses at most the episodes in flight; a second run
with the same arguments continues where the first stopped and reuses finished staged episodes.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from world_model.checks import MAX_SEED, whole
from world_model.config import StreamConfig
from world_model.data.doom import DOOM_TIC_RATE, Command, DoomConfig, DoomEngine, describe_look
from world_model.data.explorer import Explorer, ExplorerConfig
from world_model.data.format import TMP_MARK, DatasetReader, DatasetWriter, VideoStats
from world_model.data.levels import LEVELS, Level, get_level
from world_model.data.poses import wrap_degrees
from world_model.data.video import VideoEncoder, check_x264

__all__ = [
    "RecordedEpisode", "record_episode", "GenerateConfig", "generate_dataset", "plan_spawn", "plan_generated",
    "check_share", "DEGREES_PER_MOUSE_UNIT",
]  # fmt: skip

log = logging.getLogger(__name__)

DEGREES_PER_MOUSE_UNIT = StreamConfig().degrees_per_mouse_unit  # 15 deg per unit per frame (spec §5.1)


@dataclass
class RecordedEpisode:
    """T frames of one played episode. ``mouse[i]`` = (pose[i+1] - pose[i]) rotation / 15 deg."""

    level: Level
    seed: int
    prompt: str
    keyboard: np.ndarray  # float32 [T, 6]
    mouse: np.ndarray  # float32 [T, 2] (pitch, yaw) release units
    poses: np.ndarray  # float64 [T, 5]
    frames: np.ndarray | None  # uint8 [T, H, W, 3], None when streamed to a video file
    finished_early: bool
    num_stuck: int
    uses: int
    depth: np.ndarray | None = None  # float32 [T, H, W] map units, with DoomConfig(depth=True) (DoomEngine.depth)


def record_episode(
    level: Level,
    num_frames: int,
    *,
    seed: int,
    doom: DoomConfig | None = None,
    explorer: ExplorerConfig | None = None,
    video: VideoEncoder | None = None,
    workdir: str | Path | None = None,
    max_step: float = 64.0,
) -> RecordedEpisode:
    """Play ``num_frames`` frames of ``level`` with the exploring policy.

    Frames go to ``video`` when given (and are not kept), else into the result. The mouse action of
    a frame is the measured rotation to the next frame in release units, so the recorded actions and
    poses agree exactly with the package's integrator for rotations. The episode is shorter when the
    level ends (an exit was used) or when the camera jumps more than ``max_step`` map units in one
    frame (a teleporter: no action explains it, so the episode stops before it).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    doom = doom or DoomConfig()
    policy = Explorer(seed, explorer or ExplorerConfig())
    keyboard, mouse, poses, kept, depths = [], [], [], [], []
    uses = 0
    finished = False
    with DoomEngine(level, doom, seed=seed, workdir=workdir) as engine:
        frame, pose = engine.reset()
        depth = engine.depth() if doom.depth else None
        prompt = level.prompt(describe_look(frame))
        for _ in range(num_frames):
            cmd: Command = policy.act(pose)
            next_frame, next_pose, finished = engine.step(cmd)
            if not finished and np.linalg.norm(next_pose[:3] - pose[:3]) > max_step:
                finished = True  # teleported
            if finished:  # this frame's action has no usable outcome, so the frame is not recorded
                break
            uses += cmd.use
            poses.append(pose)
            keyboard.append(cmd.keyboard())
            mouse.append((next_pose[3] - pose[3], float(wrap_degrees(next_pose[4] - pose[4]))))
            if video is not None:
                video.write(frame)
            else:
                kept.append(frame)
            if depth is not None:
                depths.append(depth)
                depth = engine.depth()
            frame, pose = next_frame, next_pose
    t = len(poses)
    return RecordedEpisode(
        level=level,
        seed=seed,
        prompt=prompt,
        keyboard=np.array(keyboard, np.float32).reshape(t, 6),
        mouse=(np.array(mouse, np.float64).reshape(t, 2) / DEGREES_PER_MOUSE_UNIT).astype(np.float32),
        poses=np.array(poses, np.float64).reshape(t, 5),
        frames=np.stack(kept) if kept else None,
        finished_early=finished,
        num_stuck=policy.num_stuck,
        uses=uses,
        depth=np.stack(depths) if depths else None,
    )


# ------------------------------------------------------------------------------------------------
# parallel, resumable generation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateConfig:
    """What ``mg3 data generate`` makes."""

    frames: int
    width: int = 160
    height: int = 120
    workers: int = 1
    seed: int = 0
    episode_frames: int = 1000
    levels: tuple[str, ...] | None = None  # names (e.g. "MAP01"); None = all Freedoom levels
    tics_per_frame: int = 2
    crf: int = 20
    preset: str = "veryfast"
    max_retries: int = 2
    explorer: ExplorerConfig = field(default_factory=ExplorerConfig)
    # the share of the train levels' episodes that begin anywhere on the level (plan_spawn); validation and test
    # levels' episodes begin at the start spot, as the evaluation's do
    spawn_anywhere: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.episode_frames < 1 or self.workers < 1:
            raise ValueError("frames, episode_frames and workers must be >= 1")
        check_share(self.spawn_anywhere)
        check_x264(self.crf, self.preset)  # a bad one failed every episode's encoder
        whole(self.seed, "seed", 0, MAX_SEED)
        try:
            self.level_list()
        except KeyError as e:  # an unknown level name
            raise ValueError(e.args[0]) from None
        DoomConfig(self.width, self.height, self.tics_per_frame)  # validates the resolution

    def level_list(self) -> tuple[Level, ...]:
        return LEVELS if self.levels is None else tuple(get_level(n) for n in self.levels)


def _plan_seed(seed: int, plan: int) -> int:
    return int(np.random.SeedSequence([seed, plan]).generate_state(1)[0] & 0x7FFFFFFF)


def check_share(share: float, name: str = "spawn_anywhere") -> None:
    """Refuse a share of episodes (``spawn_anywhere``, ``generated_levels``, ...) outside [0, 1]."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{name} is a share in [0, 1], got {share}")


def _plan_lot(seed: int, plan: int, salt: int) -> float:
    """A uniform draw in [0, 1) from (seed, plan) alone, so that a plan's episode is the same however many plans run;
    ``salt`` keeps the draws of different choices apart."""
    return float(np.random.default_rng([seed, plan, salt]).random())


def plan_spawn(seed: int, plan: int, share: float) -> str:
    """Where plan ``plan``'s episode begins (DoomConfig.spawn): "anywhere" for a ``share`` of the plans."""
    if share <= 0.0:
        return "start"
    return "anywhere" if _plan_lot(seed, plan, 13) < share else "start"


def plan_generated(seed: int, plan: int, share: float) -> bool:
    """Whether plan ``plan``'s train episode plays a generated level (world_model.data.procgen): true for a
    ``share`` of the plans."""
    return share > 0.0 and _plan_lot(seed, plan, 17) < share


def plan_retextured(seed: int, plan: int, share: float) -> bool:
    """Whether plan ``plan``'s train episode on a Freedoom level plays it with new looks (world_model.data.retexture):
    true for a ``share`` of the plans, drawn apart from :func:`plan_generated`'s."""
    return share > 0.0 and _plan_lot(seed, plan, 23) < share


def _plan_level(seed: int, plan: int, levels: tuple[Level, ...]) -> Level:
    block, i = divmod(plan, len(levels))
    order = np.random.default_rng([seed, block, 7]).permutation(len(levels))
    return levels[order[i]]


@dataclass(frozen=True)
class _Job:
    plan: int
    level: str
    length: int
    seed: int
    doom: DoomConfig
    explorer: ExplorerConfig
    staging: str
    crf: int
    preset: str

    def stem(self) -> Path:
        return Path(self.staging) / f"plan-{self.plan:07d}"


def _run_job(job: _Job) -> dict[str, Any]:
    """Worker: record one episode into ``<staging>/plan-XXXXXXX.{mp4,npz}`` (complete or absent)."""
    stem = job.stem()
    video_tmp = Path(f"{stem}.mp4{TMP_MARK}-{os.getpid()}")
    npz_tmp = Path(f"{stem}.npz{TMP_MARK}-{os.getpid()}")
    encoder = VideoEncoder(
        video_tmp, fps=job.doom.fps, height=job.doom.height, width=job.doom.width, crf=job.crf, preset=job.preset
    )
    stats = VideoStats()  # counted here, in the worker, so that publishing need not decode the video again

    class Counted:
        def write(self, frames: np.ndarray) -> None:
            frames = np.asarray(frames)
            encoder.write(frames)
            stats.add_frames(frames[None] if frames.ndim == 3 else frames)

    try:
        ep = record_episode(
            get_level(job.level), job.length, seed=job.seed, doom=job.doom, explorer=job.explorer, video=Counted()
        )
        encoder.close()
    except BaseException:
        encoder.abort()
        raise
    meta = {
        "plan": job.plan, "level": job.level, "length": int(len(ep.poses)), "planned_length": job.length,
        "seed": job.seed, "prompt": ep.prompt, "finished_early": ep.finished_early, "num_stuck": ep.num_stuck,
        "uses": ep.uses,
    }  # fmt: skip
    os.replace(video_tmp, f"{stem}.mp4")
    with open(npz_tmp, "wb") as f:
        fields = ("n", "s1", "s2", "lo", "hi")
        counted = {f"video_{k}": getattr(stats, k) for k in fields} if stats.n else {}
        np.savez(f, keyboard=ep.keyboard, mouse=ep.mouse, poses=ep.poses, meta=json.dumps(meta), **counted)
        f.flush()
        os.fsync(f.fileno())
    os.replace(npz_tmp, f"{stem}.npz")  # the npz is the marker of a complete staged episode
    return meta


def _load_staged(job: _Job) -> dict[str, Any] | None:
    stem = job.stem()
    npz, mp4 = Path(f"{stem}.npz"), Path(f"{stem}.mp4")
    if not (npz.exists() and mp4.exists()):
        return None
    try:
        with np.load(npz) as z:
            meta = json.loads(str(z["meta"]))
    except Exception:  # noqa: BLE001 - a damaged staged file is simply redone
        return None
    same = (meta["level"], meta["seed"], meta["planned_length"]) == (job.level, job.seed, job.length)
    return meta if same else None


def generate_dataset(out: str | Path, cfg: GenerateConfig, *, progress: bool = True) -> DatasetReader:
    """Generate (or continue generating) a dataset of at least ``cfg.frames`` frames in ``out``.

    Every episode is planned with ``cfg.episode_frames`` frames (shorter only when its level ends),
    so the dataset for N frames is a prefix of the dataset for M > N frames with the same seed.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    doom = DoomConfig(cfg.width, cfg.height, cfg.tics_per_frame)
    levels = cfg.level_list()
    staging = out / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    for tmp in staging.glob(f"*{TMP_MARK}-*"):
        tmp.unlink()
    info_extra = _info_extra(cfg, doom, levels)
    info_path = out / "meta" / "info.json"
    if info_path.exists():
        old = json.loads(info_path.read_text()).get("mg3", {}).get("generate")
        if old is not None and old != info_extra["generate"]:
            raise ValueError(
                f"{out} was generated with other settings ({old}); use another folder or the same settings"
            )
    writer = DatasetWriter(
        out, fps=doom.fps, height=cfg.height, width=cfg.width, source="vizdoom-freedoom", robot_type="doom-player",
        info_extra=info_extra, crf=cfg.crf, preset=cfg.preset,
    )  # fmt: skip
    try:
        reader = DatasetReader(out)
        outcome: dict[int, int] = {e.extra["plan"]: e.length for e in reader.episodes if "plan" in e.extra}
        failed: list[int] = list(writer.info_extra.get("failed_plans", []))
        outcome.update({p: 0 for p in failed})
        bar = tqdm(total=cfg.frames, initial=min(writer.num_frames, cfg.frames), unit="frame", disable=not progress)
        ctx = get_context("spawn")
        pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx)
        next_plan, streak = 0, [0]
        try:
            while True:
                done_frames = sum(outcome.get(p, 0) for p in range(next_plan))
                shortfall = cfg.frames - done_frames
                if shortfall <= 0:
                    break
                wave = [
                    _Job(p, lv.name, cfg.episode_frames, _plan_seed(cfg.seed, p), replace(doom, spawn=spawn),
                         cfg.explorer, str(staging), cfg.crf, cfg.preset)
                    for p in range(next_plan, next_plan + -(-shortfall // cfg.episode_frames))
                    for lv in [_plan_level(cfg.seed, p, levels)]
                    for spawn in [plan_spawn(cfg.seed, p, cfg.spawn_anywhere if lv.split == "train" else 0.0)]
                ]  # fmt: skip
                next_plan += len(wave)
                pool = _run_wave(
                    [j for j in wave if j.plan not in outcome], pool, ctx, writer, outcome, failed, cfg, bar, streak
                )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    finally:
        writer.close()
    if failed:
        log.warning("plans %s failed %d times each and were left out", failed, cfg.max_retries + 1)
    return DatasetReader(out)


def _run_wave(jobs: list[_Job], pool, ctx, writer, outcome, failed, cfg: GenerateConfig, bar, streak: list[int]):
    """Run jobs on the pool, committing finished episodes in plan order; returns the (maybe new) pool.

    A job that raises or whose worker dies is retried ``cfg.max_retries`` times, then recorded as
    failed (``info.json["mg3"]["failed_plans"]``). When failures keep coming with no success in
    between, generation stops with an error instead of burning through every plan: ``streak`` ([count]) is the
    failures since the last success, counted across waves (a wave of one plan per wave never reached the limit).
    """
    order = [j.plan for j in jobs]
    by_plan = {j.plan: j for j in jobs}
    ready: dict[int, dict[str, Any] | None] = {}
    for j in jobs:
        meta = _load_staged(j)
        if meta is not None:
            ready[j.plan] = meta
    pending = deque(j for j in jobs if j.plan not in ready)
    running: dict[Future, _Job] = {}
    attempts: Counter[int] = Counter()

    def fail(j: _Job, err: object) -> None:
        attempts[j.plan] += 1
        streak[0] += 1
        log.warning("plan %d (%s) failed (attempt %d): %s", j.plan, j.level, attempts[j.plan], err)
        if streak[0] > 3 * (cfg.max_retries + 1) * cfg.workers:
            raise RuntimeError(f"episode generation keeps failing (last: plan {j.plan}, {j.level}: {err})")
        if attempts[j.plan] > cfg.max_retries:
            ready[j.plan] = None
            failed.append(j.plan)
            writer.update_info_extra(failed_plans=sorted(failed))
        else:
            pending.appendleft(j)

    def restart(pool):
        pool.shutdown(wait=False, cancel_futures=True)
        return ProcessPoolExecutor(cfg.workers, mp_context=ctx)

    while order:
        while order and order[0] in ready:
            plan = order.pop(0)
            meta = ready.pop(plan)
            if meta is None:
                outcome[plan] = 0
                continue
            _commit_staged(writer, by_plan[plan], meta)
            outcome[plan] = meta["length"]
            bar.update(meta["length"])
        if not order:
            break
        while pending and len(running) < 2 * cfg.workers:
            j = pending.popleft()
            try:
                running[pool.submit(_run_job, j)] = j
            except BrokenProcessPool:
                pending.appendleft(j)
                pool = restart(pool)
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        broken = False
        for fut in done:
            j = running.pop(fut)
            err = fut.exception()
            if err is None:
                ready[j.plan] = fut.result()
                streak[0] = 0
            else:
                broken |= isinstance(err, BrokenProcessPool)
                fail(j, repr(err))
        if broken:  # a worker died: every running job is lost with the pool
            for j in running.values():
                fail(j, "its worker pool broke")
            running.clear()
            pool = restart(pool)
    return pool


def _commit_staged(writer: DatasetWriter, job: _Job, meta: dict[str, Any]) -> None:
    stem = job.stem()
    with np.load(f"{stem}.npz") as z:
        keyboard, mouse, poses = z["keyboard"], z["mouse"], z["poses"]
        stats = None  # staged before the workers counted them: publishing decodes the video
        if "video_n" in z.files:
            stats = VideoStats(int(z["video_n"]), z["video_s1"], z["video_s2"], z["video_lo"], z["video_hi"])
    level = get_level(job.level)
    extra = {k: meta[k] for k in ("plan", "finished_early", "num_stuck", "uses")} | {"spawn": job.doom.spawn}
    writer.add_encoded_episode(
        f"{stem}.mp4", keyboard, mouse, poses, meta["prompt"], seed=job.seed, split=level.split, level=level.name,
        extra_meta=extra, video_stats=stats,
    )  # fmt: skip
    Path(f"{stem}.npz").unlink()


def _info_extra(cfg: GenerateConfig, doom: DoomConfig, levels: tuple[Level, ...]) -> dict[str, Any]:
    fx, fy, cx, cy = doom.intrinsics()
    return {
        "generate": {
            "seed": cfg.seed, "width": cfg.width, "height": cfg.height, "episode_frames": cfg.episode_frames,
            "tics_per_frame": cfg.tics_per_frame, "levels": [lv.name for lv in levels],
            "explorer": asdict(cfg.explorer),
            # only when used: a dataset generated before the option existed continues with the same settings
            **({"spawn_anywhere": cfg.spawn_anywhere} if cfg.spawn_anywhere else {}),
        },
        "camera": {
            "model": "pinhole", "fx": fx, "fy": fy, "cx": cx, "cy": cy, "horizontal_fov_deg_native": 90.0,
            "note": "4:3 render, centre crop, resize; pitch is drawn by y-shearing in the software renderer",
        },
        "conventions": {
            "state": "(x, y, z, pitch, yaw): Doom map units and degrees; x = X_doom, y = -Y_doom, z = eye height; "
            "yaw = -ANGLE (positive = right turn); pitch positive = looking down",
            "c2w": "Rz(yaw) Ry(pitch) A, translation = position * 0.01 (world_model.data.poses)",
            "action.mouse": f"(pitch, yaw) change to the next frame / {DEGREES_PER_MOUSE_UNIT} deg",
            "action.keyboard": "W S A D multi-hot, indices 4-5 unused; USE presses are not recorded",
            "tics_per_frame": cfg.tics_per_frame, "tic_rate": DOOM_TIC_RATE,
            "fps": f"tic_rate / tics_per_frame = {doom.fps:g} frames/s (the top-level fps)",
        },
        "degrees_per_mouse_unit": DEGREES_PER_MOUSE_UNIT,
        "splits_by_level": {s: [lv.name for lv in levels if lv.split == s] for s in ("train", "validation", "test")},
    }  # fmt: skip
