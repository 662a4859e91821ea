"""The whole training pipeline in one run folder, stage by stage, each skippable and resumable.

Stages (in order): ``data`` -> ``vae`` -> ``decoder`` -> ``encode`` -> ``base`` -> ``memory`` ->
``dmd`` -> ``export``. Run folder layout::

    <run>/pipeline.json            the options of the run (config preset, steps, ...)
    <run>/status.json              pipeline status (current stage, per-stage states, budget)
    <run>/data/{dataset,train,held_out}   engine dataset (LeRobot layout) and decoded FrameStores
    <run>/<stage>/{status.json,metrics.jsonl,checkpoints/}   one folder per training stage
    <run>/latents/{train,held_out,stats.json}
    <run>/export/                  the shipped model folder (world_model.train.export)

A stage whose status says ``done`` is skipped; ``stopped`` (its share of the time budget ran out)
or ``failed`` ones resume from their last checkpoint when run again. Later stages accept a
``stopped`` predecessor (they use its last checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from world_model.config import WorldModelConfig, embedded, tiny
from world_model.train.status import StatusFile, read_status

if TYPE_CHECKING:
    from world_model.train.clips import LatentStore

__all__ = ["STAGES", "PipelineOptions", "run_config", "run_stage", "run_pipeline"]

log = logging.getLogger(__name__)

STAGES = ("data", "vae", "decoder", "encode", "base", "memory", "dmd", "sharpen", "export")
# share of the pipeline's time budget per stage
BUDGET_SHARE = {
    "data": 0.04,
    "vae": 0.12,
    "decoder": 0.06,
    "encode": 0.04,
    "base": 0.36,
    "memory": 0.22,
    "dmd": 0.15,
    "sharpen": 0.05,
    "export": 0.01,
}


def _tiny32() -> WorldModelConfig:
    """tiny() at 32x32 with a half-width (pruned) decoder: exercises every stage in seconds."""
    cfg = tiny(32, 32)
    return cfg.replace(vae=cfg.vae.replace(pruning_rate=0.5))


PRESETS = {"embedded": embedded, "tiny": tiny, "tiny32": _tiny32}


COMPILABLE = ("vae", "decoder", "base", "memory")
SHARPEN_DECODERS = ("pruned", "full")


@dataclass
class PipelineOptions:
    """Everything a run needs; saved as ``<run>/pipeline.json`` on the first call."""

    config: str = "embedded"
    # the DiT's blocks when not the preset's (0: the preset's): a model grown by world_model.train.grow (blocks
    # appended, each the identity at first) trains on with its carried weights
    dit_layers: int = 0
    # the few-step sampler's steps when not the preset's (0: the preset's, 4): what the held-out evaluations, the
    # own-history and sharpen stages and the dmd student sample with, and what the export's config says (the
    # shipped model samples in 5 since session 19: a student distilled for 5 steps must train in 5)
    sampler_steps: int = 0
    # the VAE encoder's base width when not the preset's (0: the preset's, 32). The encoder runs once per reset on
    # the env's side (the decoder every frame), so its width costs training time and reset time, not frames/s; a
    # change makes new latents: the VAE trains from scratch and the DiT with it
    vae_encoder_dim: int = 0
    fake_data: bool = False  # synthetic frames instead of the ViZDoom engine (tests)
    engine_frames: bool = True  # raw uint8 shards recorded beside training (False: H.264 dataset, decoded once)
    frames: int = 400_000  # frames to generate (train frames when engine_frames)
    vae_start_frames: int = 50_000  # engine_frames: the VAE starts once this many train frames exist
    episode_frames: int = 1000
    workers: int = 16
    seed: int = 0
    segment_latents: int = 65  # latents per pre-encoded segment (chunks 0..5)
    # spacing of the train split's segment starts in latents (0: segment_latents, disjoint). Chunk-0 windows start
    # only at a segment's first frame: disjoint 257-frame segments of 1000-frame episodes give 3 starts an episode,
    # one of them the spawn; 32 gives 6 (each frame encoded twice). The held-out split stays disjoint.
    segment_stride: int = 0
    # the train split's segments encoded a second time mirrored left-right (frames flipped; yaw, strafe keys and the
    # lateral coordinate mirrored: encode.encode_store): twice the scenes for the DiT stages. Session 36: the shipped
    # model's chunk-0 gain over repeat-first (pooled) was +2.08 dB on 18 episodes of the train levels and +0.80 on
    # the test levels: it knows the levels it saw. The held-out split stays as recorded
    mirror: bool = False
    # the share of train episodes that begin at a random point and heading of their level instead of its start
    # spot (engine_frames; world_model.data.spawn): the explorer stays near where it begins (6 train levels, 1,000
    # frames: 9-29 cells of 128 map units), so start-spot episodes show each level's start room and little else
    spawn_anywhere: float = 0.0
    # the train episodes' explorer, as changes to ExplorerConfig's defaults ("strafe=0.4": explorer_from_spec;
    # engine_frames); the held-out episodes play the defaults, so that the held-out curve measures the same episodes
    explorer: str = ""
    # the share of train episodes whose prompt names their level (encode.titled_episodes); the rest carry the look
    # sentence alone. Session 40 (bench/prompt_reliance.py): the shipped model's chunk-0 gain on train levels fell by
    # 1.1 dB with another level's title in the prompt: it recalls levels by name, which no unseen level and no user's
    # picture has. The held-out split keeps the titles, so that the held-out curve measures the same prompts
    prompt_title: float = 1.0
    # the share of train episodes played on generated levels (world_model.data.procgen; engine_frames): a new map
    # for every such episode, in the train levels' looks, against 56 levels whose rooms the DiT learns to recall
    generated_levels: float = 0.0
    # the share of the other train episodes (on the 56 train levels) played with new looks (world_model.data.retexture;
    # engine_frames): the levels' geometry in looks no other episode has (session 52's teacher recalled +0.06 +- 0.32 dB
    # of the train levels' looks: bench/look_recall.py)
    retextured_levels: float = 0.0
    vae_steps: int = 20_000
    vae_batch: int = 16
    vae_lr: float = 3e-4
    vae_ssim: float = 0.5  # weight of (1 - SSIM)
    vae_gan_start: int = -1  # step of the vae stage from which the patch discriminator is on (-1: off)
    # False: the vae stage trains the decoder only, so the latents (and a DiT trained on them in an
    # earlier session) stay valid while the decoder sharpens
    vae_train_encoder: bool = True
    decoder_gan_start: int = -1  # the same for the decoder stage
    gan_weight: float = 0.05
    gan_lambda_every: int = 1  # steps between measurements of the adaptive GAN weight (VAEOptions.gan_lambda_every)
    gan_ramp: int = 0  # steps over which the decoders' adversarial term ramps in from its start
    gan_translate: int = 0  # the discriminators' random shift of their inputs, pixels (VAEOptions.disc_translate)
    vae_grid: float = 0.0  # the vae and decoder stages' grid penalty on the decoded frames (VAEOptions.grid_weight)
    decoder_steps: int = 8_000
    base_steps: int = 60_000
    base_batch: int = 32
    base_lr: float = 2e-4
    memory_steps: int = 30_000
    memory_batch: int = 24
    memory_lr: float = 1e-4
    dmd_steps: int = 6_000
    dmd_batch: int = 8
    dmd_cold_start: int = 600
    # the student's and the critic's learning rates (DMDOptions; the release's 5e-7 / 1e-7 are for 5B)
    dmd_lr: float = 2e-6
    dmd_critic_lr: float = 4e-6
    dmd_rollout_reuse: int = 1  # steps one DMD self-rollout serves (DMDOptions.rollout_reuse)
    dmd_regression: float = 0.0  # weight of the student's regression to the teacher's sample (DMDOptions)
    dmd_teacher_steps: int = 0  # the sampler steps of the teacher's sample (0: the student's; DMDOptions.teacher_steps)
    dmd_teacher_memory_guidance: float = 1.0  # memory guidance of the teacher's sample (DMDOptions; 1: off)
    dmd_weight: float = 1.0  # the distribution-matching term's weight (0: the regression alone, no critic)
    dmd_target_reuse: int = 1  # with the regression alone: steps one teacher sample serves (DMDOptions.target_reuse)
    # Adam's beta1 for the student and the critic (DMD2's 0: no momentum, for the distribution-matching term's
    # alternating updates; the regression alone is plain supervised learning, where 0.9 averages its noisy gradients)
    dmd_beta1: float = 0.0
    dmd_regression_target: str = "exit"  # "exit" or "chain" (DMDOptions.regression_target)
    # the sharpen stage (world_model.train.sharpen): the shipped decoder (sharpen_decoder) trained adversarially on
    # the DiT's own latents; its batch of true clips is vae_batch, its learning rate vae_lr
    sharpen_steps: int = 4_000
    sharpen_gen_batch: int = 8  # generated crops per step (SharpenOptions.gen_batch)
    sharpen_anchor: float = 1.0  # weight of the low-pass anchor to the starting decoder (SharpenOptions)
    sharpen_gan_ramp: int = 200  # steps over which its adversarial term ramps in (its discriminator starts fresh)
    sharpen_grid: float = 0.0  # weight of its fixed-grid penalty (SharpenOptions.grid_weight; off: see there)
    sharpen_ema: float = 0.999  # decay of the moving average it hands on (SharpenOptions.ema_decay; 0: off)
    sharpen_snapshot_every: int = 500  # its decoder written every that many steps (sharpen/snapshots; 0: none)
    sharpen_pool: int = 64  # generated chunks held at once (SharpenOptions.pool_size)
    sharpen_refresh: int = 25  # steps between refreshes of the pool (SharpenOptions.refresh_every)
    # the decoder it sharpens: "pruned" (the decoder stage's, shipped until session 30) or "full" (the vae stage's
    # full decoder, the one shipped since session 30; its encoder stays frozen, so the latents and the DiT stay
    # valid), which the export then ships in place of the pruned one
    sharpen_decoder: str = "pruned"
    # stages that torch.compile their network, comma-separated: the flow stages' DiT blocks ("base", "memory"), the
    # VAE stages' training encode and decode ("vae", "decoder"); "" or "none": none ("true": base,memory)
    # (true/false: both/none). Per-block compilation took ~95 s cold on an H200 (2026-12-01) for a 2.2-2.4x faster
    # step, so it pays in a stage of more than ~3 minutes only
    compile: str = ""
    # share of the flow stages' continuation batches conditioned on the model's own previous chunk
    # (FlowOptions.p_own_history; aimed at the exposure gap: the evaluation's gain_next_rollout_held_db and
    # sharpness_next_rollout below their true-history values)
    own_history: float = 0.0
    # share of the flow stages' training samples whose actions are replaced by the null actions
    # (FlowOptions.p_drop_actions): what SamplerConfig.action_guidance needs; 0.1 suggested, 0 (off) kept
    # as the default so that runs continuing earlier sessions' weights keep their recipe
    action_dropout: float = 0.0
    # share of the flow stages' batches that are continuation chunks (past latents and memory as context), the rest
    # chunk 0 from the image latent alone (FlowOptions.p_continue; the release's 0.8). Chunk 0 is what the held-out
    # evaluation's gain_db measures over repeating the first frame (+2.08 dB on session 18's held-out episodes, +0.07
    # on session 19's, where the continuation's gain_next_db was +3.06) and what a user sees first after a reset: a
    # lower share trains it more
    p_continue: float = 0.8
    # share of a flow stage's time budget at its end over which the learning rate decays linearly to 5 %
    # (FlowOptions.cooldown_s; the decay of a warmup-stable-decay schedule, so that the stage ends on
    # annealed weights): the memory stage's weights are the ones exported; 0 (off) by default
    base_cooldown: float = 0.0
    memory_cooldown: float = 0.0
    # weight of the flow stages' depth auxiliary (FlowOptions.depth_weight; 0: off): the recorder then records each
    # frame's inverse depth at the latent grid (EngineFramesConfig.depth_stride), the encode stage keeps it per latent
    # (mirrored with the frames), and a training-only head on the DiT's last hidden states learns to predict it.
    # Every model since session 27 slides a strafe by about the training average whatever the room's depth
    # (bench/strafe_pathways.py), which the IDM reads as a turn: the geometry a strafe's parallax needs
    depth_weight: float = 0.0
    # the poses every stage's clips take their camera code and memory retrieval from (clips.CAMERA_POSES):
    # "recorded" (the engine's; every model up to session 52) or "integrated" (from the actions, as the env does at
    # inference: the DiT then learns what the engine makes of a command, acceleration, glide and walls included,
    # where the recorded poses showed it the outcome instead of the command). Changing it changes the conditioning a
    # carried DiT was trained on
    camera_poses: str = "recorded"
    shares: str = ""  # budget shares overriding BUDGET_SHARE, e.g. "vae=0.3,base=0.4"
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 0.0  # also a checkpoint this often in wall time (LoopOptions; 0: by steps only)
    eval_every: int = 2000
    eval_at_start: bool = False  # each stage also evaluates before its first step (LoopOptions.eval_at_start)
    eval_segments: int = 16
    progress: bool = True

    @classmethod
    def smoke(cls) -> PipelineOptions:
        """Seconds on a CPU: tiny config, synthetic data, a few steps per stage."""
        return cls(
            config="tiny32",
            fake_data=True,
            engine_frames=False,
            frames=200,
            episode_frames=100,
            segment_latents=25,
            vae_steps=2,
            vae_batch=2,
            decoder_steps=2,
            base_steps=3,
            base_batch=2,
            memory_steps=3,
            memory_batch=2,
            dmd_steps=3,
            dmd_batch=1,
            dmd_cold_start=1,
            sharpen_steps=2,
            sharpen_snapshot_every=1,
            sharpen_ema=0.5,  # the moving average, moving within two steps
            sharpen_gen_batch=1,
            checkpoint_every=2,
            eval_every=0,
            eval_segments=1,
            progress=False,
        )

    def save(self, run: Path) -> None:
        (run / "pipeline.json").write_text(json.dumps(asdict(self), indent=1) + "\n")

    def __post_init__(self) -> None:
        if not 0.0 <= self.action_dropout < 1.0:
            raise ValueError(f"action_dropout must be in [0, 1), got {self.action_dropout}")
        if not 0.0 <= self.p_continue <= 1.0:
            raise ValueError(f"p_continue must be in [0, 1], got {self.p_continue}")
        from world_model.data.generate import check_share

        check_share(self.spawn_anywhere)
        defaults = {f.name: f.default for f in fields(self)}
        if self.vae_start_frames != defaults["vae_start_frames"] and (self.fake_data or not self.engine_frames):
            raise ValueError("vae_start_frames is when the VAE starts beside the engine_frames recorder: not with "
                             "fake_data or engine_frames=False, which make the whole dataset first")  # fmt: skip
        if self.workers != defaults["workers"] and self.fake_data:
            raise ValueError("workers are the ViZDoom engine's processes; fake_data makes its frames in this one")
        if self.spawn_anywhere and self.fake_data:
            raise ValueError("spawn_anywhere needs the ViZDoom engine's levels; fake_data has none")
        if self.explorer:
            from world_model.data.explorer import explorer_from_spec

            explorer_from_spec(self.explorer)
            if self.fake_data or not self.engine_frames:
                raise ValueError(
                    "explorer changes the engine_frames recorder's train episodes; "
                    "fake_data has no explorer and the H.264 dataset path (engine_frames=False) plays the defaults"
                )
        check_share(self.generated_levels, "generated_levels")
        if self.generated_levels and (self.fake_data or not self.engine_frames):
            raise ValueError(
                "generated_levels is a share of the engine_frames recorder's train episodes; "
                "fake_data has no levels and the H.264 dataset path (engine_frames=False) plays the Freedoom levels"
            )
        check_share(self.retextured_levels, "retextured_levels")
        if self.retextured_levels and (self.fake_data or not self.engine_frames):
            raise ValueError(
                "retextured_levels is a share of the engine_frames recorder's train episodes; "
                "fake_data has no levels and the H.264 dataset path (engine_frames=False) plays the levels as they are"
            )
        from world_model.train.clips import CAMERA_POSES

        if self.camera_poses not in CAMERA_POSES:
            raise ValueError(f"camera_poses must be one of {CAMERA_POSES}, got {self.camera_poses!r}")
        if not self.depth_weight >= 0:
            raise ValueError(f"depth_weight must be >= 0, got {self.depth_weight}")
        if self.depth_weight and not (self.fake_data or self.engine_frames):
            raise ValueError(
                "depth_weight needs depth maps, which the engine_frames recorder (and fake_data) make; "
                "the H.264 dataset path (engine_frames=False) has none"
            )
        check_share(self.prompt_title, "prompt_title")
        if self.prompt_title < 1.0 and self.fake_data:
            raise ValueError(
                "prompt_title below 1 drops the level names of level prompts; fake_data's prompts have none"
            )
        if not 0 <= self.segment_stride <= self.segment_latents:
            raise ValueError(f"segment_stride must be in [0, segment_latents] (0: disjoint), got {self.segment_stride}")
        if self.vae_encoder_dim < 0:
            raise ValueError(f"vae_encoder_dim must be >= 1 (0: the preset's), got {self.vae_encoder_dim}")
        if self.dit_layers < 0:
            raise ValueError(f"dit_layers must be >= 1 (0: the preset's), got {self.dit_layers}")
        if self.sampler_steps < 0:
            raise ValueError(f"sampler_steps must be >= 1 (0: the preset's), got {self.sampler_steps}")
        if self.sharpen_decoder not in SHARPEN_DECODERS:
            raise ValueError(f"sharpen_decoder must be one of {SHARPEN_DECODERS}, got {self.sharpen_decoder!r}")
        _dmd_opts(self)  # the distillation's options raise now, not when its stage starts after the others
        value = self.compile
        if isinstance(value, bool) or str(value).lower() in ("true", "false", "none"):
            value = "base,memory" if str(value).lower() == "true" else ""
        stages = [s.strip() for s in str(value).split(",") if s.strip()]
        bad = [s for s in stages if s not in COMPILABLE]
        if bad:
            raise ValueError(f"compile: stages among {', '.join(COMPILABLE)} (comma-separated), got {bad}")
        self.compile = ",".join(stages)

    def compiles(self, stage: str) -> bool:
        """Whether ``stage``'s network is compiled."""
        return bool(stage) and stage in self.compile.split(",")

    @classmethod
    def load(cls, run: Path) -> PipelineOptions:
        data = json.loads((run / "pipeline.json").read_text())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def preset_config(opts: PipelineOptions) -> WorldModelConfig:
    """The preset with the run's own shape options (``dit_layers``, ``vae_encoder_dim``) and sampler steps."""
    cfg = PRESETS[opts.config]()
    if opts.sampler_steps:
        cfg = cfg.replace(sampler=cfg.sampler.replace(num_steps=opts.sampler_steps))
    if opts.dit_layers:
        cfg = cfg.replace(dit=cfg.dit.replace(num_layers=opts.dit_layers))
    if opts.vae_encoder_dim:
        cfg = cfg.replace(vae=cfg.vae.replace(encoder_dim=opts.vae_encoder_dim))
    return cfg


def run_config(run: Path, opts: PipelineOptions) -> WorldModelConfig:
    """:func:`preset_config` with the measured latent statistics (once the ``encode`` stage has run)."""
    cfg = preset_config(opts)
    stats = run / "latents" / "stats.json"
    if stats.exists():
        s = json.loads(stats.read_text())
        cfg = cfg.replace(vae=cfg.vae.replace(latent_mean=tuple(s["mean"]), latent_std=tuple(s["std"])))
    return cfg


def _folder(stage: str) -> str:
    return "latents" if stage == "encode" else stage


def _stage_state(run: Path, stage: str) -> str | None:
    st = read_status(run / _folder(stage))
    return None if st is None else st.get("state")


def _stage_done(run: Path, stage: str) -> bool:
    return _stage_state(run, stage) == "done"


def _need(run: Path, stage: str, *, for_stage: str) -> None:
    """``stage`` must be done, or stopped at its deadline with a checkpoint (good enough to go on);
    data that is still being recorded (``growing``) is good enough for the VAE."""
    ok = ("done", "stopped", "growing") if (stage, for_stage) == ("data", "vae") else ("done", "stopped")
    if _stage_state(run, stage) not in ok:
        raise RuntimeError(f"stage {for_stage!r} needs stage {stage!r} first (see {run / _folder(stage)}/status.json)")


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


def _stage_data(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.train.frames import FrameStore, synthetic_store

    cfg = run_config(run, opts)
    h, w = cfg.stream.height, cfg.stream.width
    out = run / "data"
    if opts.engine_frames and not opts.fake_data:
        # the status as an earlier call left it: a recorder it started is still recording (the GPU
        # session runs `train data`, then `train all`; a fresh status restarted it under itself)
        return _start_engine_frames(run, opts, StatusFile.existing(out, "data"))
    status = StatusFile(out, "data")
    status.update(state="running")
    if opts.fake_data:
        n_ep = max(2, opts.frames // opts.episode_frames)
        stride = cfg.vae.spatial_stride
        store = synthetic_store(
            n_ep + 1,
            opts.episode_frames,
            (h, w),
            seed=opts.seed,
            levels=["train"] * n_ep + ["held"],
            depth_grid=(h // stride, w // stride) if opts.depth_weight else None,
        )
        train, held = store.split({"held"})
    else:
        from world_model.data.generate import GenerateConfig, generate_dataset

        gen = GenerateConfig(
            frames=opts.frames,
            width=w,
            height=h,
            workers=opts.workers,
            seed=opts.seed,
            episode_frames=opts.episode_frames,
            spawn_anywhere=opts.spawn_anywhere,
        )
        reader = generate_dataset(out / "dataset", gen, progress=opts.progress)
        train = FrameStore.from_dataset(out / "dataset", episodes=reader.split_indices("train"))
        held = FrameStore.from_dataset(out / "dataset", episodes=reader.split_indices("validation"))
    if held.num_episodes == 0:
        raise RuntimeError("no held-out (validation-level) episodes were generated; generate more frames")
    train.save(out / "train")
    held.save(out / "held_out")
    summary = {"train_frames": len(train.frames), "held_out_frames": len(held.frames), "episodes": train.num_episodes}
    status.update(state="done", metrics=summary)
    return dict(status.data)


def _start_engine_frames(run: Path, opts: PipelineOptions, status: StatusFile) -> dict:
    """Start the raw-frame recorder (:mod:`world_model.train.engine_frames`) as a process of its own
    and return once the VAE can start (``vae_start_frames`` train frames and a held-out shard): the
    data stage is then ``growing``, and the VAE stage takes later shards as they land."""
    import subprocess
    import sys

    from world_model.train.engine_frames import DONE, shard_folders

    cfg = run_config(run, opts)
    frames = run / "data" / "frames"
    if (frames / DONE).exists():
        status.update(state="done", metrics=json.loads((frames / DONE).read_text()))
        return dict(status.data)
    if status.data.get("state") != "growing" or not _alive(status.data.get("pid")):
        if frames.exists():
            import shutil

            shutil.rmtree(frames)  # an unfinished recording is redone (it is deterministic)
        frames.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "world_model.train.engine_frames", "--out", str(frames),
            "--frames", str(opts.frames), "--size", str(cfg.stream.height), str(cfg.stream.width),
            "--workers", str(opts.workers), "--seed", str(opts.seed), "--no-progress",
            "--episode-frames", str(opts.episode_frames), "--spawn-anywhere", str(opts.spawn_anywhere),
            "--explorer", opts.explorer, "--generated-levels", str(opts.generated_levels),
            "--retextured-levels", str(opts.retextured_levels),
            "--shard-frames", str(max(opts.episode_frames, min(50_000, opts.frames // 10))),
            "--depth-stride", str(cfg.vae.spatial_stride if opts.depth_weight else 0),
        ]  # fmt: skip
        log_file = open(run / "data" / "engine_frames.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        status.update(state="growing", pid=proc.pid)
    t0 = time.time()
    while True:
        n_train = sum(_frames_in(p) for p in shard_folders(frames / "train"))
        if (frames / DONE).exists() or (n_train >= opts.vae_start_frames and shard_folders(frames / "held_out")):
            break
        if not _alive(status.data.get("pid")) and not (frames / DONE).exists():
            raise RuntimeError(f"the frame recorder stopped; see {run / 'data' / 'engine_frames.log'}")
        if time.time() - t0 > 3600:
            raise TimeoutError("the frame recorder produced too little in an hour")
        time.sleep(2.0)
    if (frames / DONE).exists():
        status.update(state="done", metrics=json.loads((frames / DONE).read_text()))
    return dict(status.data)


def _frames_in(shard: Path) -> int:
    import numpy as np

    return int(np.load(shard / "starts.npy")[-1])


def _alive(pid: int | None) -> bool:
    import os

    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    try:  # a finished child that nobody reaped is a zombie, not alive
        return os.waitpid(int(pid), os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True  # not our child (another process started it): it exists


def _wait_for_frames(run: Path, while_waiting: Callable[[], None] | None = None) -> None:
    """Block until the raw-frame recorder has finished (engine_frames runs), calling ``while_waiting`` (if given)
    every poll meanwhile."""
    from world_model.train.engine_frames import DONE

    frames = run / "data" / "frames"
    status = StatusFile.existing(run / "data", "data")  # the recorder's pid, as the data stage wrote it
    while not (frames / DONE).exists():
        if not _alive(status.data.get("pid")) and not (frames / DONE).exists():
            raise RuntimeError(f"the frame recorder stopped early; see {run / 'data' / 'engine_frames.log'}")
        if while_waiting is not None:
            while_waiting()
        time.sleep(2.0)
    status.update(state="done", metrics=json.loads((frames / DONE).read_text()))


def _frames(run: Path, split: str):
    """The ``split`` ("train" or "held_out") FrameStore of the run (raw shards concatenated, once recorded)."""
    from world_model.train.frames import FrameStore

    frames = run / "data" / "frames"
    if frames.exists():
        from world_model.train.engine_frames import load_shards

        _wait_for_frames(run)
        return FrameStore.concat(load_shards(frames / split))
    return FrameStore.load(run / "data" / split)


def _clip_frames(run: Path, split: str, clip_frames: int, dev, seed: int = 0):
    """Device-resident clips of a split; raw shards go to the device one by one (no host-side copy of all)."""
    from world_model.train.autoencoder import ClipFrames

    frames = run / "data" / "frames"
    if not frames.exists():
        return ClipFrames(_frames(run, split), clip_frames, dev, seed)
    from world_model.train.engine_frames import load_shards

    _wait_for_frames(run)
    shards = load_shards(frames / split)
    clips = ClipFrames(shards[0], clip_frames, dev, seed)
    for shard in shards[1:]:
        clips.extend(shard)
    return clips


def _vae_opts(opts: PipelineOptions, gan_start: int = -1, stage: str = ""):
    from world_model.train.autoencoder import VAEOptions

    return VAEOptions(
        compile=opts.compiles(stage),
        batch_size=opts.vae_batch,
        lr=opts.vae_lr,
        ssim_weight=opts.vae_ssim,
        gan_start=gan_start,
        gan_weight=opts.gan_weight,
        gan_lambda_every=opts.gan_lambda_every,
        gan_ramp=opts.gan_ramp,
        disc_translate=opts.gan_translate,
        grid_weight=opts.vae_grid,
        seed=opts.seed,
        eval_clips=max(2, opts.eval_segments),
    )


def _loop_opts(opts: PipelineOptions, steps: int, deadline: float | None):
    from world_model.train.loop import LoopOptions

    return LoopOptions(
        steps=steps,
        checkpoint_every=opts.checkpoint_every,
        checkpoint_minutes=opts.checkpoint_minutes,
        eval_every=opts.eval_every,
        eval_at_start=opts.eval_at_start,
        deadline=deadline,
        progress=opts.progress,
        log_every=1 if steps < 100 else 10,
        reserve_s=0.0 if steps < 100 else 20.0,  # a checkpoint of these models takes about a second
    )


def vae_is_encoder_only(run: Path) -> bool:
    """Whether the run's ``vae`` stage holds an encoder only (a slim made from an export: no full
    decoder): marked so in its status, or its checkpoint has no decoder weights."""
    if (read_status(run / "vae") or {}).get("encoder_only"):
        return True
    from world_model.train.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(run / "vae")
    return ckpt is not None and '"stage/vae/decoder.' not in (ckpt / "index.json").read_text()


def _teacher_vae(run: Path, opts: PipelineOptions, cfg: WorldModelConfig, device) -> torch.nn.Module:
    """The trained full VAE (from the ``vae`` stage's last checkpoint), with ``cfg``'s statistics."""
    from world_model.train.autoencoder import load_weights
    from world_model.train.checkpoints import load_latest
    from world_model.vae import WanVAE

    vae = WanVAE(cfg.vae.replace(pruning_rate=0.0)).to(device)
    state = load_latest(run / "vae")
    if state is None:
        raise RuntimeError(f"no VAE checkpoint in {run / 'vae'}")
    load_weights(vae, state["stage"]["vae"])
    return vae.eval()


def _shipped_vae(
    run: Path, opts: PipelineOptions, cfg: WorldModelConfig, device, *, stages: tuple[str, ...] = ("sharpen", "decoder")
) -> torch.nn.Module:
    """The shipped VAE (encoder + decoder), with ``cfg``'s statistics: from the first of ``stages``
    with a checkpoint (the sharpen stage's decoder once it has trained, else the decoder stage's). A sharpen stage
    that trained the full decoder (``sharpen_decoder`` "full") gives the full VAE: ``vae.cfg.pruning_rate`` says
    which, read from the checkpoint's tensors (a poll's slim of a stage stopped mid-way has no final status)."""
    from world_model.train.checkpoints import load_latest

    found = next(((s, st) for s, st in ((s, load_latest(run / s)) for s in stages) if st is not None), None)
    if found is None:
        raise RuntimeError(f"no checkpoint in {' or '.join(str(run / s) for s in stages)}")
    return _vae_holding(found[1]["stage"]["student"], cfg, device, f"{run / found[0]}")


def _vae_holding(weights: dict, cfg: WorldModelConfig, device, where: str) -> torch.nn.Module:
    """A VAE of ``cfg``'s with ``weights`` loaded: its pruned decoder (``cfg.vae.pruning_rate``) where they fit that,
    else the full one (pruning 0); every parameter must come from ``weights``."""
    from world_model.train.autoencoder import load_weights
    from world_model.vae import WanVAE

    for vcfg in dict.fromkeys((cfg.vae, cfg.vae.replace(pruning_rate=0.0))):
        vae = WanVAE(vcfg)
        if not load_weights(vae, weights):
            return vae.to(device).eval()
    raise RuntimeError(f"{where}'s VAE fits neither the pruned ({cfg.vae.pruning_rate}) nor the full decoder")


def _stage_vae(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.train.autoencoder import ClipFrames, VAEStage, identity_stats, is_decoder_side
    from world_model.train.loop import run_loop
    from world_model.vae import WanVAE

    _need(run, "data", for_stage="vae")
    cfg, dev = run_config(run, opts), _device()
    vopts = _vae_opts(opts, opts.vae_gan_start, "vae")
    frames = run / "data" / "frames"
    feed = None
    if frames.exists():  # raw shards, maybe still being recorded: start on those there, take the rest later
        from world_model.train.engine_frames import ShardFeed
        from world_model.train.frames import FrameStore

        feed = ShardFeed(frames / "train")
        train = FrameStore.concat(feed.new())
        held = FrameStore.concat(ShardFeed(frames / "held_out").new()[:2])
        train_clips = ClipFrames(train, vopts.clip_frames, dev, opts.seed)
        held_clips = ClipFrames(held, vopts.clip_frames, dev)
    else:
        train_clips = _clip_frames(run, "train", vopts.clip_frames, dev, opts.seed)
        held_clips = _clip_frames(run, "held_out", vopts.clip_frames, dev)
    torch.manual_seed(opts.seed)
    vae = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0)).to(dev)
    if not opts.vae_train_encoder:
        for name, p in vae.named_parameters():
            p.requires_grad_(is_decoder_side(name))
    stage = VAEStage(vae, train_clips, held_clips, vopts, feed=feed)
    result = run_loop(stage, run / "vae", _loop_opts(opts, opts.vae_steps, deadline))
    if (read_status(run / "vae") or {}).get("encoder_only"):  # it has trained a full decoder (from scratch) now
        StatusFile.existing(run / "vae", "vae").update(encoder_only=False)
    return result


def _stage_decoder(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.train.autoencoder import DecoderStage, identity_stats
    from world_model.train.loop import run_loop
    from world_model.vae import WanVAE

    _need(run, "vae", for_stage="decoder")
    cfg, dev = run_config(run, opts), _device()
    cfg = cfg.replace(vae=identity_stats(cfg.vae))
    vopts = _vae_opts(opts, opts.decoder_gan_start, "decoder")
    if vae_is_encoder_only(run):
        # a slim made from an export (slim --from-export): no full decoder to distil from, so the pruned
        # decoder learns from the true frames through the carried encoder
        log.info("decoder: the vae stage holds an encoder only: training on the true frames, no distillation")
        vopts = replace(vopts, distil_weight=0.0)
    teacher = _teacher_vae(run, opts, cfg, dev)
    torch.manual_seed(opts.seed + 1)
    student = WanVAE(cfg.vae).to(dev)
    stage = DecoderStage(
        teacher,
        student,
        _clip_frames(run, "train", vopts.clip_frames, dev, opts.seed + 1),
        _clip_frames(run, "held_out", vopts.clip_frames, dev),
        vopts,
    )
    return run_loop(stage, run / "decoder", _loop_opts(opts, opts.decoder_steps, deadline))


def _stage_encode(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.text import make_text_encoder
    from world_model.train.autoencoder import identity_stats
    from world_model.train.encode import encode_store, latent_statistics

    _need(run, "vae", for_stage="encode")
    base_cfg, dev = preset_config(opts), _device()
    status = StatusFile(run / "latents", "encode")
    status.update(state="running")
    stats = run / "latents" / "stats.json"
    if stats.exists() and not opts.vae_train_encoder:
        # a frozen encoder and a carried (or earlier) normalisation: keep it, so that a continued DiT
        # sees latents scaled as it was trained on (re-estimated from 64 segments of new data, session
        # 7's std moved by ~10 % from session 5's with the very same encoder)
        status.update(stats="kept")
    else:
        r = base_cfg.vae.temporal_stride
        raw = _teacher_vae(run, opts, base_cfg.replace(vae=identity_stats(base_cfg.vae)), dev)
        mean, std = latent_statistics(raw, _frames(run, "train"), 1 + r * (opts.segment_latents - 1))
        stats.write_text(json.dumps({"mean": mean, "std": std}) + "\n")
        status.update(stats="measured")
    cfg = run_config(run, opts)
    vae = _teacher_vae(run, opts, cfg, dev)
    text = make_text_encoder(cfg.text, device=dev)
    for name in ("train", "held_out"):
        stride = opts.segment_stride if name == "train" and opts.segment_stride else None

        def encode(store, name=name, stride=stride):
            return encode_store(
                vae,
                store,
                opts.segment_latents,
                text,
                batch_size=32 if dev.type == "cuda" else 4,  # segments per encoder call
                stride_latents=stride,
                progress=opts.progress,
                mirror=opts.mirror and name == "train",
                title_share=opts.prompt_title if name == "train" else 1.0,
            )

        enc = _encode_split(run, name, encode, lambda n, name=name: status.update(**{f"{name}_segments": n}))
        enc.save(run / "latents" / name)
        status.update(**{f"{name}_segments": enc.num_segments})
    status.update(state="done")
    return dict(status.data)


def _encode_split(run: Path, split: str, encode, report) -> LatentStore:
    """``encode`` (FrameStore -> LatentStore) of the run's ``split``. Raw shards (engine_frames runs) are encoded as
    the recorder writes them, so that encoding overlaps recording instead of following it (600k frames: ~100 s of
    the GPU's encode after ~107 s of recording, session 37); ``report(segments)`` after each shard."""
    from world_model.train.clips import LatentStore
    from world_model.train.encode import NoSegmentError
    from world_model.train.engine_frames import ShardFeed

    frames = run / "data" / "frames"
    if not frames.exists():
        return encode(_frames(run, split))
    feed, parts = ShardFeed(frames / split), []

    def take() -> None:
        for shard in feed.new():
            try:
                parts.append(encode(shard))
            except NoSegmentError:  # a shard of short episodes (level exits, teleporters) may hold no segment
                continue
            report(sum(p.num_segments for p in parts))

    _wait_for_frames(run, while_waiting=take)  # marks the data stage done
    take()  # the shards written since the last poll: the recorder is done, so these are the last
    if not parts:
        raise NoSegmentError(f"no episode of the {split} split holds a whole segment")
    return LatentStore.concat(parts)


def _latents(run: Path, dev):
    from world_model.train.clips import LatentStore

    return LatentStore.load(run / "latents" / "train").to(dev), LatentStore.load(run / "latents" / "held_out").to(dev)


def _evaluator(run: Path, opts: PipelineOptions, cfg: WorldModelConfig, held_lat, dev, *, memory: bool):
    """Held-out chunks 0 and 1 of the model in training (``memory``: chunk 1 with retrieved memory), decoded by the
    shipped VAE (:func:`_shipped_vae`); None, said in the log, where no decoder has a checkpoint yet. A decoder stage
    stopped in any way (interrupted too: session 32's CPU run lost its held-out curve to a decoder stopped by SIGTERM)
    decodes as well as a finished one."""
    from world_model.train.checkpoints import latest_checkpoint
    from world_model.train.clips import ClipSampler
    from world_model.train.evaluate import FirstChunkEval

    if all(latest_checkpoint(run / s) is None for s in ("sharpen", "decoder")):
        log.warning("no held-out evaluation: no decoder checkpoint in %s (the decoder stage has not run)", run)
        return None
    held = _frames(run, "held_out")
    clips = ClipSampler(held_lat, cfg, 1, p_continue=0.0, use_memory=memory, camera_poses=opts.camera_poses)
    return FirstChunkEval(clips, held, _shipped_vae(run, opts, cfg, dev), cfg.sampler, num_segments=opts.eval_segments)


def _dit_from(run: Path, stage: str, cfg: WorldModelConfig, dev, key: str = "ema") -> torch.nn.Module:
    from world_model.dit import MatrixGameDiT
    from world_model.train.checkpoints import load_latest

    model = MatrixGameDiT(cfg.dit).to(dev)
    state = load_latest(run / stage)
    if state is None:
        raise RuntimeError(f"no checkpoint in {run / stage}")
    model.load_state_dict(state["stage"][key]["model"] if key == "ema" else state["stage"][key])
    return model


def _stage_flow(run: Path, opts: PipelineOptions, deadline: float | None, *, memory: bool) -> dict:
    from world_model.dit import MatrixGameDiT
    from world_model.train.clips import ClipSampler
    from world_model.train.flow import FlowOptions, FlowStage
    from world_model.train.loop import run_loop

    name = "memory" if memory else "base"
    _need(run, "encode", for_stage=name)
    cfg, dev = run_config(run, opts), _device()
    train_lat, held_lat = _latents(run, dev)
    if memory:
        _need(run, "base", for_stage=name)
        model = _dit_from(run, "base", cfg, dev)
    else:
        torch.manual_seed(opts.seed)
        model = MatrixGameDiT(cfg.dit).to(dev)
    batch = opts.memory_batch if memory else opts.base_batch
    loop_opts = _loop_opts(opts, opts.memory_steps if memory else opts.base_steps, deadline)
    cooldown = opts.memory_cooldown if memory else opts.base_cooldown
    end = None if deadline is None else deadline - loop_opts.reserve_s  # where the loop stops
    if not 0.0 <= cooldown < 1.0:
        raise ValueError(f"--{name}-cooldown must be in [0, 1), got {cooldown}")
    if cooldown > 0 and end is None:
        raise ValueError(f"--{name}-cooldown is a share of the stage's time budget: run it in 'all --budget-minutes'")
    fopts = FlowOptions(
        batch_size=batch,
        lr=opts.memory_lr if memory else opts.base_lr,
        use_memory=memory,
        compile=opts.compiles(name),
        p_own_history=opts.own_history,
        p_drop_actions=opts.action_dropout,
        p_continue=opts.p_continue,
        deadline=end if cooldown > 0 else None,
        cooldown_s=cooldown * max(0.0, end - time.time()) if cooldown > 0 else 0.0,
        depth_weight=opts.depth_weight,
        seed=opts.seed,
    )
    clips = ClipSampler(
        train_lat,
        cfg,
        batch,
        p_continue=fopts.p_continue,
        use_memory=memory,
        seed=opts.seed,
        camera_poses=opts.camera_poses,
    )
    stage = FlowStage(
        model, clips, fopts, name=name, evaluator=_evaluator(run, opts, cfg, held_lat, dev, memory=memory)
    )
    return run_loop(stage, run / name, loop_opts)


def _dmd_opts(opts: PipelineOptions):
    from world_model.train.dmd import DMDOptions

    return DMDOptions(
        batch_size=opts.dmd_batch,
        cold_start_steps=opts.dmd_cold_start,
        lr_student=opts.dmd_lr,
        lr_critic=opts.dmd_critic_lr,
        rollout_reuse=opts.dmd_rollout_reuse,
        regression_weight=opts.dmd_regression,
        teacher_steps=opts.dmd_teacher_steps,
        teacher_memory_guidance=opts.dmd_teacher_memory_guidance,
        dmd_weight=opts.dmd_weight,
        target_reuse=opts.dmd_target_reuse,
        betas=(opts.dmd_beta1, 0.99),
        regression_target=opts.dmd_regression_target,
        seed=opts.seed,
    )


def _dmd_teacher(run: Path) -> str:
    """The stage DMD distils: the memory model, or, where the memory stage has not run (skipped: a
    continued session whose carried ``base`` is the last memory model, so that DMD gets the DiT's time),
    the base stage."""
    if _stage_state(run, "memory") in ("done", "stopped"):
        return "memory"
    if _stage_state(run, "base") in ("done", "stopped"):
        return "base"
    raise RuntimeError(f"stage 'dmd' needs stage 'memory' (or 'base') first (see {run / 'memory'}/status.json)")


def _stage_dmd(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.train.checkpoints import latest_checkpoint
    from world_model.train.clips import ClipSampler
    from world_model.train.dmd import DMDStage
    from world_model.train.loop import run_loop

    teacher = _dmd_teacher(run)
    if teacher == "base":
        log.info("dmd: no memory model in this run: distilling the base stage (%s)", run / "base")
    cfg, dev = run_config(run, opts), _device()
    train_lat, held_lat = _latents(run, dev)
    model = _dit_from(run, teacher, cfg, dev)
    dopts = _dmd_opts(opts)
    clips = ClipSampler(train_lat, cfg, opts.dmd_batch, use_memory=True, seed=opts.seed, camera_poses=opts.camera_poses)
    evaluator = _evaluator(run, opts, cfg, held_lat, dev, memory=True)
    stage = DMDStage(model, clips, cfg.sampler, dopts, evaluator=evaluator)
    if latest_checkpoint(run / "dmd") is None and latest_checkpoint(run / "student") is not None:
        # an earlier session's student (slim: 'dmd|student' as student): distillation goes on from it
        stage.start_student_from(_dit_from(run, "student", cfg, dev).state_dict())
        log.info("dmd: the student starts from the carried %s", run / "student")
    return run_loop(stage, run / "dmd", _loop_opts(opts, opts.dmd_steps, deadline))


def _final_dit(run: Path) -> str:
    """The stage whose DiT ships: the DMD student when DMD has trained, else the model DMD would distil."""
    teacher = _dmd_teacher(run)
    return "dmd" if _stage_done(run, "dmd") or (run / "dmd" / "checkpoints").exists() else teacher


def _stage_sharpen(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.sampler import FlowUniPCSampler
    from world_model.train.clips import ClipSampler
    from world_model.train.loop import run_loop
    from world_model.train.sharpen import GeneratedChunks, SharpenOptions, SharpenStage

    full = opts.sharpen_decoder == "full"
    _need(run, "vae" if full else "decoder", for_stage="sharpen")
    _need(run, "encode", for_stage="sharpen")
    source = _final_dit(run)
    cfg, dev = run_config(run, opts), _device()
    train_lat, held_lat = _latents(run, dev)
    dit = _dit_from(run, source, cfg, dev).eval().requires_grad_(False)
    sampler = FlowUniPCSampler.from_config(cfg.sampler)
    sopts = SharpenOptions(
        pool_size=opts.sharpen_pool,
        refresh_every=opts.sharpen_refresh,
        gen_batch=opts.sharpen_gen_batch,
        anchor_weight=opts.sharpen_anchor,
        grid_weight=opts.sharpen_grid,
        ema_decay=opts.sharpen_ema,
        seed=opts.seed,
    )
    amp = dev.type == "cuda"
    # with memory, as the env generates (and as DMD distils: a carried base is the last memory model)
    pool = GeneratedChunks(
        dit,
        ClipSampler(train_lat, cfg, 1, use_memory=True, seed=opts.seed, camera_poses=opts.camera_poses),
        sampler,
        sopts,
        amp=amp,
    )
    held_pool = GeneratedChunks(
        dit, ClipSampler(held_lat, cfg, 1, use_memory=True, camera_poses=opts.camera_poses), sampler, sopts, amp=amp
    )
    vopts = replace(_vae_opts(opts, 0), gan_ramp=opts.sharpen_gan_ramp)
    log.info("sharpen: the %s decoder learns the latents of the %s stage's DiT", opts.sharpen_decoder, source)
    stage = SharpenStage(
        _teacher_vae(run, opts, cfg, dev) if full else _shipped_vae(run, opts, cfg, dev, stages=("decoder",)),
        pool,
        _clip_frames(run, "train", vopts.clip_frames, dev, opts.seed + 3),
        _clip_frames(run, "held_out", vopts.clip_frames, dev),
        vopts,
        sopts,
        held_pool=held_pool,
    )
    loop = replace(_loop_opts(opts, opts.sharpen_steps, deadline), snapshot_every=opts.sharpen_snapshot_every)
    result = run_loop(stage, run / "sharpen", loop)
    StatusFile.existing(run / "sharpen", "sharpen").update(dit_source=source, decoder=opts.sharpen_decoder)
    return result


def _stage_export(run: Path, opts: PipelineOptions, deadline: float | None) -> dict:
    from world_model.train.export import export_model, exported_size_bytes

    cfg, dev = run_config(run, opts), torch.device("cpu")
    source = _final_dit(run)
    dit = _dit_from(run, source, cfg, dev)
    vae = _shipped_vae(run, opts, cfg, dev)
    cfg = cfg.replace(vae=vae.cfg)  # the full decoder's pruning where the sharpen stage trained that one
    stages = ("vae", "decoder", "base", "memory", "dmd", "sharpen")
    metrics = {s: (read_status(run / s) or {}).get("eval", {}) for s in stages}
    metrics["dit_source"] = source
    folder = export_model(run / "export", cfg, dit, vae, metrics=metrics)
    done = {"bytes": exported_size_bytes(folder), "dit_source": source}
    if source == "dmd":  # the teacher too, beside its student: which one ships is the test levels' call
        teacher = _dmd_teacher(run)
        teacher_folder = export_model(
            run / "export_memory",
            cfg,
            _dit_from(run, teacher, cfg, dev),
            vae,
            metrics={**metrics, "dit_source": teacher},
        )
        done["memory_export"] = str(teacher_folder)
    status = StatusFile(run / "export", "export")
    status.update(state="done", metrics=done)
    return dict(status.data)


def _shares(spec: str) -> dict[str, float]:
    """BUDGET_SHARE with the overrides of ``spec`` ("vae=0.3,base=0.4")."""
    shares = dict(BUDGET_SHARE)
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in shares:
            raise ValueError(f"unknown stage {name!r} in shares {spec!r}; stages are {STAGES}")
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"share of {name!r} must be a number, got {value!r}") from None
        if shares[name] < 0:
            raise ValueError(f"share of {name!r} must be >= 0, got {value}")
    return shares


_RUNNERS = {
    "data": _stage_data,
    "vae": _stage_vae,
    "decoder": _stage_decoder,
    "encode": _stage_encode,
    "base": lambda r, o, d: _stage_flow(r, o, d, memory=False),
    "memory": lambda r, o, d: _stage_flow(r, o, d, memory=True),
    "dmd": _stage_dmd,
    "sharpen": _stage_sharpen,
    "export": _stage_export,
}


def _options(run: Path, opts: PipelineOptions | None) -> PipelineOptions:
    run.mkdir(parents=True, exist_ok=True)
    if opts is not None:
        opts.save(run)
        return opts
    if (run / "pipeline.json").exists():
        return PipelineOptions.load(run)
    opts = PipelineOptions()
    opts.save(run)
    return opts


def run_stage(
    run: str | Path, stage: str, opts: PipelineOptions | None = None, *, deadline: float | None = None
) -> dict:
    """Run one stage in ``run`` (options from ``pipeline.json`` unless given). Returns its status."""
    if stage not in _RUNNERS:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    run = Path(run)
    return _RUNNERS[stage](run, _options(run, opts), deadline)


def run_pipeline(
    run: str | Path,
    opts: PipelineOptions | None = None,
    *,
    budget_minutes: float | None = None,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
) -> dict:
    """Run all stages in order within ``budget_minutes`` (shares in BUDGET_SHARE; a stage's unused
    time passes on to the next). Done stages are skipped; returns the pipeline status."""
    for name in (*skip, *(only or ())):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} in skip / only; stages are {STAGES}")
    run = Path(run)
    opts = _options(run, opts)
    status = StatusFile(run, "pipeline")
    t0 = time.time()
    end = None if budget_minutes is None else t0 + 60.0 * budget_minutes
    todo = [s for s in STAGES if s not in skip and (only is None or s in only)]
    shares = _shares(opts.shares)
    states: dict[str, str] = {}
    status.update(state="running", stages=states, budget_minutes=budget_minutes)
    for i, stage in enumerate(todo):
        if stage != "export" and _stage_done(run, stage):
            states[stage] = "done (skipped)"
            continue
        deadline = None
        if end is not None:
            left = end - time.time()
            share = shares[stage] / max(1e-9, sum(shares[s] for s in todo[i:]))
            deadline = time.time() + max(0.0, left * share)
        status.update(stage=stage, stages=states, stage_deadline=deadline)
        try:
            result = run_stage(run, stage, opts, deadline=deadline)
        except BaseException as e:
            states[stage] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            status.update(state=states[stage], stages=states, error=f"{stage}: {type(e).__name__}: {e}")
            raise
        states[stage] = str(result.get("state"))  # "stopped" (its share of the budget ran out) goes on
        status.update(stages=states)
    status.update(state="done", stages=states, elapsed_s=time.time() - t0)
    return dict(status.data)
