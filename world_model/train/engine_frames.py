"""Training frames straight from the engine: episodes recorded in parallel into FrameStore shards.

The dataset path (:func:`world_model.data.generate.generate_dataset`) writes H.264 video that a
person can watch and LeRobot can read; for training that costs an encode, a decode and the codec's
loss of detail (CRF 20 at 128 px smears exactly the texture a sharp VAE must learn). This module
keeps the raw uint8 frames instead: worker processes play the episodes of the same deterministic
plan (level and seed per plan index), the main process commits them in plan order into shards of
about ``shard_frames`` frames, each a :class:`FrameStore` folder that a trainer can load while
later shards are still being written::

    <out>/train/part-0000/  <out>/train/part-0001/ ...   episodes of the train levels
    <out>/held_out/part-0000/ ...                         episodes of the validation levels
    <out>/done.json                                       written last (frames per split)

Test levels are never played here. A failed episode is retried once, then left out (logged). When no episode
finishes for ``stall_seconds`` (an engine hung), the recorder kills its workers, keeps the episodes that finished
and writes ``done.json`` with the plans it gave up (``"stalled"``), so that trainers waiting for it go on. An
unfinished output folder is refused: recording is deterministic, so it is simply deleted and redone.

    python -m world_model.train.engine_frames --out runs/frames --frames 1000000 --workers 15
"""

from __future__ import annotations

import argparse
import json
import logging
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from world_model.train.frames import FrameStore

__all__ = [
    "EngineFramesConfig",
    "record_frames",
    "record_episode_store",
    "record_whole_episodes",
    "load_shards",
    "shard_folders",
    "ShardFeed",
    "DONE",
]

log = logging.getLogger(__name__)

DONE = "done.json"


@dataclass(frozen=True)
class EngineFramesConfig:
    frames: int  # train frames to record (held-out episodes come on top, one per held_out_every)
    width: int = 128
    height: int = 128
    workers: int = 8
    seed: int = 0
    episode_frames: int = 1000
    held_out_every: int = 10  # every n-th episode plays a validation level
    shard_frames: int = 50_000
    # the share of train episodes that begin anywhere on their level (world_model.data.spawn); held-out episodes
    # begin at the start spot, as the evaluation's do
    spawn_anywhere: float = 0.0
    # the explorer of the train episodes, as changes to ExplorerConfig's defaults ("strafe=0.4": explorer_from_spec);
    # held-out episodes play the defaults, so that the held-out curve measures the same episodes
    explorer: str = ""
    # the share of train episodes played on a generated level (world_model.data.procgen: a new map from each such
    # episode's seed, in the train levels' looks) instead of one of the 56 train levels; held-out episodes play the
    # validation levels
    generated_levels: float = 0.0
    # the share of the other train episodes (those on one of the 56 train levels) that play their level with new looks
    # (world_model.data.retexture: every wall texture, flat and the light swapped, from the episode's seed; the
    # geometry kept): the levels' stairs, windows and skies without their rooms' looks to recall
    retextured_levels: float = 0.0
    # when no episode finishes for this long, the recorder stops: it kills its workers, commits what it has and marks
    # done.json "stalled" (a hung engine must not hold a GPU session's trainers, which wait for done.json, forever)
    stall_seconds: float = 300.0
    # record each frame's inverse depth too (DoomConfig.depth; frames.inverse_depth_map), one value per cell of this
    # many pixels a side: the VAE's spatial stride gives the latent grid, which the flow stages' depth auxiliary
    # learns at (0: no depth)
    depth_stride: int = 0

    def __post_init__(self) -> None:
        from world_model.data.explorer import explorer_from_spec

        explorer_from_spec(self.explorer)  # raises on a bad spec before any episode is recorded
        if self.frames < 1 or self.episode_frames < 1 or self.workers < 1 or self.shard_frames < 1:
            raise ValueError(f"frames, episode_frames, workers and shard_frames must be >= 1, got {self}")
        from world_model.data.generate import check_share

        check_share(self.spawn_anywhere)
        check_share(self.generated_levels, "generated_levels")
        check_share(self.retextured_levels, "retextured_levels")
        if self.stall_seconds <= 0:
            raise ValueError(f"stall_seconds must be > 0, got {self.stall_seconds}")
        if self.held_out_every < 2:
            raise ValueError(f"held_out_every must be >= 2, got {self.held_out_every}")
        if self.depth_stride < 0 or (
            self.depth_stride and (self.width % self.depth_stride or self.height % self.depth_stride)
        ):
            raise ValueError(
                f"depth_stride must be 0 (no depth) or divide the frames' {self.height}x{self.width}, got {self.depth_stride}"
            )


class _Plan(NamedTuple):
    split: str  # "train" or "held_out"
    level: str
    seed: int  # the episode's
    spawn: str  # DoomConfig.spawn
    explorer: str  # explorer_from_spec's spec


def _plan(cfg: EngineFramesConfig, p: int) -> _Plan:
    """Plan index p's episode: deterministic for cfg.seed."""
    from world_model.data.generate import _plan_level, _plan_seed, plan_generated, plan_retextured, plan_spawn
    from world_model.data.levels import levels_in_split, retextured_level

    split = "held_out" if p % cfg.held_out_every == cfg.held_out_every - 1 else "train"
    levels = levels_in_split("validation" if split == "held_out" else "train")
    spawn = plan_spawn(cfg.seed, p, cfg.spawn_anywhere) if split == "train" else "start"
    explorer = cfg.explorer if split == "train" else ""
    seed = _plan_seed(cfg.seed, p)
    if split == "train" and plan_generated(cfg.seed, p, cfg.generated_levels):
        return _Plan(split, f"generated/{seed}", seed, spawn, explorer)  # a new map for this episode alone
    level = _plan_level(cfg.seed, p, levels)
    if split == "train" and plan_retextured(cfg.seed, p, cfg.retextured_levels):
        level = retextured_level(level, seed)  # this level's map with this episode's looks
    return _Plan(split, level.name, seed, spawn, explorer)


def record_episode_store(args: tuple[str, int, int, int, int, str, str, int]) -> FrameStore:
    """One episode -> a one-episode FrameStore (uint8 frames, actions, poses, prompt): the recorder pool's worker.
    ``args``: level name, seed, frames, width, height, spawn (DoomConfig.spawn), explorer spec (explorer_from_spec),
    depth stride (EngineFramesConfig.depth_stride; 0: no depth)."""
    from world_model.data.doom import DoomConfig
    from world_model.data.explorer import explorer_from_spec
    from world_model.data.generate import record_episode
    from world_model.data.levels import get_level
    from world_model.train.frames import inverse_depth_map

    level, seed, length, width, height, spawn, explorer, depth_stride = args
    doom = DoomConfig(width, height, spawn=spawn, depth=depth_stride > 0)
    ep = record_episode(get_level(level), length, seed=seed, doom=doom, explorer=explorer_from_spec(explorer))
    depth = None
    if depth_stride:
        depth = inverse_depth_map(ep.depth, (height // depth_stride, width // depth_stride))
    return FrameStore(
        frames=ep.frames,
        mouse=ep.mouse,
        keyboard=ep.keyboard,
        poses=ep.poses.astype(np.float32),
        starts=np.array([0, len(ep.poses)], np.int64),
        prompts=[ep.prompt],
        levels=[level],
        fps=doom.fps,
        depth=depth,
    )


def record_whole_episodes(
    split: str, episodes: int, frames: int, size: tuple[int, int], *, seed: int = 0, depth_stride: int = 0
) -> FrameStore:
    """``episodes`` episodes of exactly ``frames`` frames ([H, W] ``size``) from random points of the split's levels
    (a level each in turn, seeds ``seed``, ``seed`` + 1, ...; the default explorer), in one FrameStore: the benches'
    windows. Episodes a level exit or a teleporter cut short are left out; at most 3 x ``episodes`` are played."""
    from world_model.data.levels import levels_in_split

    levels = levels_in_split(split)
    stores = []
    for i in range(episodes * 3):
        level = levels[i % len(levels)]
        store = record_episode_store((level.name, seed + i, frames, size[1], size[0], "anywhere", "", depth_stride))
        if len(store.frames) == frames:
            stores.append(store)
        if len(stores) == episodes:
            break
    if not stores:
        raise RuntimeError(f"no episode of the {split} levels lasted {frames} frames")
    return FrameStore.concat(stores)


class _ShardWriter:
    def __init__(self, folder: Path, shard_frames: int) -> None:
        self.folder, self.shard_frames = folder, shard_frames
        self.episodes: list[FrameStore] = []
        self.parts = len(shard_folders(folder)) if folder.exists() else 0
        self.frames = 0  # committed frames

    def add(self, ep: FrameStore) -> None:
        self.episodes.append(ep)
        if sum(len(e.frames) for e in self.episodes) >= self.shard_frames:
            self.flush()

    def flush(self) -> None:
        if not self.episodes:
            return
        eps, self.episodes = self.episodes, []
        store = FrameStore.concat(eps)
        tmp = self.folder / f".part-{self.parts:04d}.tmp"
        store.save(tmp)
        tmp.rename(self.folder / f"part-{self.parts:04d}")  # a shard appears whole or not at all
        self.parts += 1
        self.frames += len(store.frames)
        # timed in the recorder's log (engine_frames.log on the GPU machine): how long the trainers wait for data
        log.info("%s: shard %d written, %d frames in this split", self.folder.name, self.parts - 1, self.frames)


def record_frames(
    out: str | Path, cfg: EngineFramesConfig, *, progress: bool = True, worker=record_episode_store
) -> dict[str, int]:
    """Record episodes until the train split holds ``cfg.frames`` frames; returns frames per split (and, when no
    episode finished for ``cfg.stall_seconds``, ``"stalled"``: the plans still running, whose workers were killed).
    ``worker`` plays one episode (:func:`record_episode_store`; a picklable stand-in in tests)."""
    from tqdm.auto import tqdm

    out = Path(out)
    if (out / DONE).exists():
        return json.loads((out / DONE).read_text())
    writers = {
        "train": _ShardWriter(out / "train", cfg.shard_frames),
        "held_out": _ShardWriter(out / "held_out", max(1, cfg.shard_frames // cfg.held_out_every)),
    }
    if any(w.parts or any(w.folder.glob(".part-*")) for w in writers.values() if w.folder.exists()):
        raise FileExistsError(f"{out} holds shards of an unfinished run; delete it (recording is deterministic)")
    for w in writers.values():
        w.folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.frames, unit="frame", disable=not progress)
    log.info("recording %d train frames with %d workers", cfg.frames, cfg.workers)
    ready: dict[int, FrameStore | None] = {}
    stalled: list[int] = []
    next_commit = next_plan = 0
    attempts: dict[int, int] = {}
    running: dict[Future, int] = {}

    def submit(pool: ProcessPoolExecutor, p: int) -> None:
        plan = _plan(cfg, p)
        args = (plan.level, plan.seed, cfg.episode_frames, cfg.width, cfg.height, plan.spawn, plan.explorer)
        args += (cfg.depth_stride,)
        running[pool.submit(worker, args)] = p

    def commit(p: int, ep: FrameStore | None) -> None:
        if ep is not None:
            split = _plan(cfg, p).split
            writers[split].add(ep)
            if split == "train":
                bar.update(len(ep.frames))

    def planned_train() -> int:  # train frames committed or in flight (upper bound per episode)
        in_flight = sum(1 for p in [*running.values(), *ready] if _plan(cfg, p).split == "train")
        return (
            writers["train"].frames
            + sum(len(e.frames) for e in writers["train"].episodes)
            + (in_flight * cfg.episode_frames)
        )

    with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
        while True:
            while len(running) < 2 * cfg.workers and planned_train() < cfg.frames:
                submit(pool, next_plan)
                next_plan += 1
            if not running:
                break
            finished, _ = wait(running, timeout=cfg.stall_seconds, return_when=FIRST_COMPLETED)
            if not finished:
                stalled = sorted(running.values())
                log.error(
                    "no episode finished in %.0f s (plans %s: %s): stopping with the frames recorded",
                    cfg.stall_seconds, stalled, sorted({_plan(cfg, p).level for p in stalled}),
                )  # fmt: skip
                _kill_workers(pool)
                break
            for fut in finished:
                p = running.pop(fut)
                try:
                    ready[p] = fut.result()
                except Exception as e:  # noqa: BLE001 - an engine crash costs one episode, not the run
                    attempts[p] = attempts.get(p, 0) + 1
                    log.warning("plan %d failed (attempt %d): %s", p, attempts[p], e)
                    if attempts[p] < 2:
                        submit(pool, p)
                    else:
                        ready[p] = None
            while next_commit in ready:
                commit(next_commit, ready.pop(next_commit))
                next_commit += 1
    for p in sorted(ready):  # after a stall: the episodes that finished behind the plans that hung
        commit(p, ready.pop(p))
    for w in writers.values():
        w.flush()
    bar.close()
    result: dict = {s: w.frames for s, w in writers.items()}
    if stalled:
        result["stalled"] = stalled
    (out / DONE).write_text(json.dumps(result) + "\n")
    return result


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes (hung in an engine: shutdown would wait for them forever) and drop its queue."""
    for proc in list(getattr(pool, "_processes", {}).values()):  # CPython's executor keeps them there (3.9-3.13)
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def shard_folders(folder: str | Path) -> list[Path]:
    """The complete shards of one split, in order."""
    return sorted(p for p in Path(folder).glob("part-*") if p.is_dir())


def load_shards(folder: str | Path, *, skip: int = 0) -> list[FrameStore]:
    """The shards of one split (after the first ``skip``), memory-mapped."""
    return [FrameStore.load(p) for p in shard_folders(folder)[skip:]]


class ShardFeed:
    """The shards of one split that a trainer has not taken yet, while a recorder may still write."""

    def __init__(self, folder: str | Path, *, taken: int = 0) -> None:
        self.folder, self.taken = Path(folder), taken

    @property
    def finished(self) -> bool:
        return (self.folder.parent / DONE).exists()

    def new(self) -> list[FrameStore]:
        stores = load_shards(self.folder, skip=self.taken)
        self.taken += len(stores)
        return stores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Record raw training frames from ViZDoom into FrameStore shards.")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-frames", type=int, default=50_000)
    p.add_argument("--episode-frames", type=int, default=1000)
    p.add_argument("--spawn-anywhere", type=float, default=0.0, help="share of train episodes begun anywhere (0-1)")
    p.add_argument(
        "--explorer", default="", help='the train episodes\' explorer, changes to its defaults ("strafe=0.4")'
    )
    p.add_argument(
        "--generated-levels", type=float, default=0.0, help="share of train episodes on generated levels (0-1)"
    )
    p.add_argument(
        "--retextured-levels",
        type=float,
        default=0.0,
        help="share of the other train episodes that play their level with new looks (0-1)",
    )
    p.add_argument(
        "--stall-seconds", type=float, default=300.0, help="stop when no episode finishes for this long (default 300)"
    )
    p.add_argument(
        "--depth-stride", type=int, default=0, help="record inverse depth, a value per cell of this many pixels (0: no)"
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = EngineFramesConfig(
        a.frames,
        width=a.size[1],
        height=a.size[0],
        workers=a.workers,
        seed=a.seed,
        episode_frames=a.episode_frames,
        shard_frames=a.shard_frames,
        spawn_anywhere=a.spawn_anywhere,
        explorer=a.explorer,
        generated_levels=a.generated_levels,
        retextured_levels=a.retextured_levels,
        stall_seconds=a.stall_seconds,
        depth_stride=a.depth_stride,
    )
    print(json.dumps(record_frames(a.out, cfg, progress=not a.no_progress)))


if __name__ == "__main__":
    main()
