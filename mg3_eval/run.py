"""The whole evaluation: :class:`EvalOptions` (which parts, how many episodes) and
:func:`run_evaluation`, which runs the parts, writes ``metrics.json`` and the plots, and puts the
values next to :data:`~mg3_eval.report.TARGETS` without asserting them."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mg3_eval.protocols.control import IDM_EPOCHS, IDM_TRAIN_FRAMES, evaluate_control
from mg3_eval.protocols.controllability import controllability
from mg3_eval.protocols.distillation import distillation, teacher_for
from mg3_eval.protocols.fidelity import fidelity, save_fidelity_strip
from mg3_eval.protocols.memory import memory
from mg3_eval.protocols.motion import motion
from mg3_eval.protocols.reset import reset_frames
from mg3_eval.protocols.sharpness import generated_sharpness
from mg3_eval.protocols.speed import env_speed
from mg3_eval.protocols.stability import stability
from mg3_eval.report import json_default, line_plot, save_strip, targets_table
from mg3_eval.simulator import record_test_episodes, rest_starts
from world_model.checks import MAX_SEED, whole
from world_model.data.doom import SPAWNS
from world_model.data.levels import EVAL_SPLITS
from world_model.generator import StreamingGenerator
from world_model.model import WorldModel

__all__ = ["PARTS", "EvalOptions", "option_part", "run_evaluation"]

log = logging.getLogger(__name__)


PARTS = (
    "reset",
    "sharpness",
    "fidelity",
    "controllability",
    "motion",
    "distillation",
    "control",
    "memory",
    "stability",
    "speed",
)
# the part that reads an option, by the option's name (the others, parts, split, spawn, seed, batch_size: every part's)
_OPTION_PREFIXES = (
    ("reset_", "reset"),
    ("sharpness_", "sharpness"),
    ("fidelity_", "fidelity"),
    ("teacher", "distillation"),
    ("controllability_", "controllability"),
    ("motion_", "motion"),
    ("control_", "control"),
    ("idm", "control"),
    ("memory_", "memory"),
    ("stability_", "stability"),
    ("speed_", "speed"),
)


def option_part(name: str) -> str | None:
    """The part of the evaluation that reads :class:`EvalOptions` field ``name`` (None: every part)."""
    return next((part for prefix, part in _OPTION_PREFIXES if name.startswith(prefix)), None)


# the parts on record_test_episodes' episodes: the EvalOptions fields of their (episodes, chunks); distillation
# scores chunk 0 alone
RECORDED_PARTS = {
    "sharpness": ("sharpness_episodes", "sharpness_chunks"),
    "fidelity": ("fidelity_episodes", "fidelity_chunks"),
    "controllability": ("controllability_episodes", "controllability_chunks"),
    "distillation": ("teacher_episodes", None),
}


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`run_evaluation` does. The defaults are the full evaluation of the embedded model:
    every protocol covers the six test levels (memory: from the spawn and from a second point of each
    level; control: from three points of each level, each twice). Episode counts trade time for
    confidence; at 128x128 on a 2-core CPU a chunk of the embedded model takes ~1.4 s per episode."""

    parts: tuple[str, ...] = PARTS
    split: str = "test"
    # where the recorded episodes (the parts sharpness, fidelity, controllability, distillation) begin: "start", the
    # level's start spot (the model card's measures), or "anywhere" on the level (DoomConfig.spawn): on the train
    # levels, views away from the start rooms that the training episodes began in before --spawn-anywhere
    spawn: str = "start"
    reset_episodes: int = 6
    sharpness_episodes: int = 6
    sharpness_chunks: int = 3
    fidelity_episodes: int = 6
    fidelity_chunks: int = 10
    teacher_episodes: int = 6
    teacher: str | None = None  # the many-step teacher (registry name or folder); None: the model's own
    controllability_episodes: int = 6  # >= 2: the actions are shuffled across them
    controllability_chunks: int = 2
    motion_episodes: int = 6  # rest starts; 12 first chunks each (still, 2 x 2 yaw, 2 x 2 pitch, forward, 2 strafe)
    motion_yaw_rates: tuple[float, float] = (0.1, 0.25)  # release units per frame (1 unit = 15 degrees)
    motion_pitch_rates: tuple[float, float] = (0.05, 0.1)
    motion_lead_chunks: int = 0  # chunks of standing still before the measured one (0: the first chunk)
    control_episodes: int = 36  # ~3 minutes on a 2-core CPU; 12 (348 windows) moved the mouse score by 0.08
    control_chunks: int = 4
    # the inverse-dynamics model that reads the video: "shipped" (mg3_eval.idm.SHIPPED_IDM, trained on 288,000
    # simulator frames: held-out yaw 0.90), "train" (one trained here with the idm_train_* options below: 24,000
    # frames, held-out yaw ~0.85), or the path of a saved one (idm.safetensors of a "train" run)
    idm: str = "shipped"
    idm_train_frames: int = IDM_TRAIN_FRAMES
    idm_held_out_frames: int = 4_000
    idm_epochs: int = IDM_EPOCHS  # held-out simulator accuracy ~0.93 keyboard, ~0.85 yaw (4 epochs: 0.83, 0.75)
    idm_vae: bool = False  # the IDM reads simulator video passed through the model's VAE (needs idm "train" or a file)
    idm_size: int = 64  # longest side of the IDM's luma frames (128: the embedded model's own; ~4x the training time)
    memory_episodes: int = 12
    memory_away_chunks: int = 3
    stability_episodes: int = 3  # rest starts on three levels, rolled out together
    stability_chunks: int = 121  # chunk 0 + 120 chunks: ~4.6 minutes of video at 17.5 frames/s
    stability_edge_chunks: int = 8  # chunks averaged at the start (1..n) and at the end: one explorer plan
    speed_chunks: int = 5
    seed: int = 0
    batch_size: int = 6

    def __post_init__(self) -> None:
        whole(self.seed, "seed", 0, MAX_SEED)
        bad = sorted(set(self.parts) - set(PARTS))
        if not self.parts or bad:
            raise ValueError(f"unknown evaluation parts {bad or '(none)'}; expected some of {list(PARTS)}")
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {self.split!r}")
        if self.spawn not in SPAWNS:
            raise ValueError(f"spawn must be one of {SPAWNS}, got {self.spawn!r}")
        if self.spawn != "start" and set(self.parts) - set(RECORDED_PARTS):
            raise ValueError(
                f"spawn={self.spawn!r} applies to the parts on recorded episodes ({', '.join(RECORDED_PARTS)}); "
                f"the others begin at their own start states: {sorted(set(self.parts) - set(RECORDED_PARTS))}"
            )
        positive = (
            "reset_episodes", "sharpness_episodes", "sharpness_chunks", "controllability_chunks", "motion_episodes",
            "fidelity_episodes", "fidelity_chunks", "teacher_episodes", "control_episodes", "control_chunks",
            "idm_train_frames", "idm_held_out_frames", "idm_epochs", "memory_episodes", "memory_away_chunks",
            "stability_episodes", "stability_edge_chunks", "speed_chunks", "batch_size",
        )  # fmt: skip
        small = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if small:
            raise ValueError(f"expected counts >= 1, got {', '.join(small)}")
        if self.motion_lead_chunks < 0:
            raise ValueError(f"motion_lead_chunks must be >= 0, got {self.motion_lead_chunks}")
        if self.controllability_episodes < 2:
            raise ValueError(
                f"controllability_episodes must be >= 2 (actions are shuffled across clips), "
                f"got {self.controllability_episodes}"
            )
        for name in ("motion_yaw_rates", "motion_pitch_rates"):
            rates = getattr(self, name)
            if len(rates) != 2 or not all(0 < r <= 1 for r in rates) or rates[0] == rates[1]:
                raise ValueError(f"{name} must be two different rates in (0, 1] (release units), got {rates}")
        if self.stability_chunks < 2 * self.stability_edge_chunks + 1:
            raise ValueError(
                f"stability_chunks ({self.stability_chunks}) must be at least 2 * stability_edge_chunks + 1 "
                f"({2 * self.stability_edge_chunks + 1})"
            )
        if self.idm_size < 16:
            raise ValueError(f"idm_size must be >= 16 pixels, got {self.idm_size}")
        if self.idm != "train":
            trained_here = [f for f in ("idm_train_frames", "idm_epochs") if getattr(self, f) != _DEFAULTS[f]]
            if trained_here:
                raise ValueError(f"{', '.join(trained_here)} apply to idm='train', not to idm={self.idm!r}")
        if self.idm == "shipped" and (self.idm_vae or self.idm_size != _DEFAULTS["idm_size"]):
            raise ValueError(
                f"the shipped IDM reads the simulator's own frames at {_DEFAULTS['idm_size']} pixels; idm_vae and "
                f"idm_size need idm='train' or a file trained so"
            )
        if self.idm not in ("train", "shipped"):
            from mg3_eval.idm import check_idm_file

            if not Path(self.idm).is_file():
                raise ValueError(f"idm must be shipped, train or an IDM file; no file at {self.idm}")
            check_idm_file(self.idm, size=self.idm_size, vae=self.idm_vae)
        if self.teacher is not None:
            from world_model.model import MODEL_NAMES

            if self.teacher not in MODEL_NAMES and not (Path(self.teacher).expanduser() / "base_model").is_dir():
                raise ValueError(f"teacher must be a registry name or a folder with base_model/, got {self.teacher!r}")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalOptions)}


def run_evaluation(
    model: str | Path | WorldModel, out: str | Path, opts: EvalOptions | None = None, *, runtime=None
) -> dict[str, Any]:
    """Run the parts of ``opts`` on ``model`` (a loaded model, a registry name or a model folder) at
    its own resolution; writes ``out/metrics.json`` and PNG plots; returns the metrics (with
    ``targets``: each target, its value and whether it is met). The distillation part compares with
    the model's many-step teacher (``default-teacher`` for ``default``, ``base_model/`` of a folder)
    and is skipped where there is none."""
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    opts = opts if opts is not None else EvalOptions()
    runtime = runtime or (model.runtime if isinstance(model, WorldModel) else RuntimeOptions.for_device())
    wm = model if isinstance(model, WorldModel) else load_world_model(model, runtime)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = wm.config
    metrics: dict[str, Any] = {
        "model": {
            **wm.describe(),
            "sampler_steps": cfg.sampler.num_steps,
            "action_guidance": cfg.sampler.action_guidance,
            "memory_guidance": cfg.sampler.memory_guidance,
        },
        "options": dataclasses.asdict(opts),
        "runtime": {
            "device": wm.runtime.device,
            "dtype": str(wm.runtime.dtype).removeprefix("torch."),
            **({"context_cache": True} if wm.runtime.context_cache else {}),
            **({"context_cache_refresh": r} if (r := wm.runtime.context_cache_refresh) else {}),
        },
        "torch_threads": torch.get_num_threads(),
    }
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        log.info("evaluation: %s ...", part)
        t0 = time.perf_counter()
        r = fn()
        seconds[part] = time.perf_counter() - t0
        log.info("evaluation: %s done in %.1f s", part, seconds[part])
        return r

    counts = {  # the parts on recorded episodes: (episodes, chunks)
        part: (getattr(opts, episodes), getattr(opts, chunks) if chunks else 1)
        for part, (episodes, chunks) in RECORDED_PARTS.items()
    }

    def on_episodes(part: str, fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """A protocol on the first recorded episodes, as many episodes and chunks as ``counts`` says."""
        n, chunks = counts[part]
        return timed(part, lambda: fn(wm, episodes[:n], num_chunks=chunks, seed=opts.seed, batch_size=opts.batch_size))

    gen = StreamingGenerator(wm)
    parts = set(opts.parts)
    if parts & set(counts):
        n_ep = max(counts[p][0] for p in parts & set(counts))
        chunks = max(counts[p][1] for p in parts & set(counts))
        frames = gen.first_chunk_frames + (chunks - 1) * gen.chunk_frames
        episodes = timed(
            "record",
            lambda: record_test_episodes(cfg, n_ep, frames, split=opts.split, seed=opts.seed, spawn=opts.spawn),
        )
    if "reset" in parts:
        starts = rest_starts(cfg, opts.reset_episodes, split=opts.split, seed=opts.seed)
        r = timed("reset", lambda: reset_frames(wm, starts, seed=opts.seed, batch_size=opts.batch_size))
        thumbs, n = r.pop("thumbnails"), r["starts"]
        labels = [f"input {i}" for i in range(n)] + [f"reset frame {i}" for i in range(n)]
        save_strip(out / "reset_frames.png", list(thumbs), labels + [f"still, last {i}" for i in range(n)], rows=3)
        metrics["reset"] = r
    if "sharpness" in parts:
        metrics["sharpness"] = on_episodes("sharpness", generated_sharpness)
    if "fidelity" in parts:
        fid = on_episodes("fidelity", fidelity)
        metrics["fidelity"] = fid
        line_plot(
            out / "fidelity_psnr.png",
            {"model": fid["psnr_model"], "repeat first frame": fid["psnr_repeat"]},
            title=f"PSNR against the simulator ({fid['episodes']} episodes, {opts.split} levels)",
            xlabel="chunk",
            ylabel="PSNR (dB)",
        )
        save_fidelity_strip(wm, episodes[0], out / "fidelity_strip.png", opts.seed)
    if "controllability" in parts:
        metrics["controllability"] = on_episodes("controllability", controllability)
    if "motion" in parts:
        starts = rest_starts(cfg, opts.motion_episodes, split=opts.split, seed=opts.seed + 3)
        mo = timed(
            "motion",
            lambda: motion(
                wm,
                starts,
                yaw_rates=opts.motion_yaw_rates,
                pitch_rates=opts.motion_pitch_rates,
                seed=opts.seed,
                batch_size=opts.batch_size,
                lead_chunks=opts.motion_lead_chunks,
            ),
        )
        save_strip(out / "motion_frames.png", list(mo.pop("thumbnails")), mo.pop("thumbnail_labels"), rows=2)
        metrics["motion"] = mo
    if "distillation" in parts:
        teacher = teacher_for(wm, runtime, opts.teacher)
        if teacher is None:
            metrics["distillation"] = {"skipped": f"no many-step teacher (base_model/) for model {wm.name!r}"}
        else:
            eps = episodes[: opts.teacher_episodes]
            metrics["distillation"] = timed(
                "distillation",
                lambda: distillation(wm, teacher, eps, seed=opts.seed, batch_size=opts.batch_size),
            )
            del teacher
    if "control" in parts:
        metrics["control"] = timed(
            "control",
            lambda: evaluate_control(
                wm,
                out,
                split=opts.split,
                episodes=opts.control_episodes,
                chunks=opts.control_chunks,
                idm=opts.idm,
                idm_train_frames=opts.idm_train_frames if opts.idm == "train" else None,
                idm_held_out_frames=opts.idm_held_out_frames,
                idm_epochs=opts.idm_epochs if opts.idm == "train" else None,
                idm_vae=opts.idm_vae,
                idm_size=opts.idm_size,
                seed=opts.seed,
                batch_size=opts.batch_size,
            ),
        )
    if "memory" in parts:
        starts = rest_starts(cfg, opts.memory_episodes, split=opts.split, seed=opts.seed + 1)
        metrics["memory"] = timed(
            "memory",
            lambda: memory(wm, starts, away_chunks=opts.memory_away_chunks, seed=opts.seed, batch_size=opts.batch_size),
        )
    if "stability" in parts:
        starts = rest_starts(cfg, opts.stability_episodes, split=opts.split, seed=opts.seed)
        st = timed(
            "stability",
            lambda: stability(
                wm, starts, num_chunks=opts.stability_chunks, edge_chunks=opts.stability_edge_chunks, seed=opts.seed
            ),
        )
        frames, labels = list(st.pop("thumbnails")), [f"chunk {k}" for k in st["thumbnail_chunks"]]
        sim = st.pop("simulator_thumbnails", None)
        if sim is not None:  # a second row: where the simulator is after the same actions
            frames += list(sim)
            labels += [f"simulator, chunk {k}" for k in st["thumbnail_chunks"]]
        save_strip(out / "stability_frames.png", frames, labels, rows=1 if sim is None else 2)
        metrics["stability"] = st
        series = {}
        for k in ("brightness", "contrast", "sharpness"):  # the first episode, model and simulator
            for who, ep in (("", st["episodes"][0]), ("simulator ", st["episodes"][0].get("simulator"))):
                if ep is not None:
                    series[who + k] = [x / max(ep["start"][k], 1e-9) for x in ep["per_chunk"][k]]
        w = st["windows"]
        line_plot(
            out / "stability.png",
            series,
            title=f"Stability over {st['chunks']} chunks, {st['levels'][0]} (relative to chunks "
            f"{w['start'][0]}-{w['start'][1]}; end window {w['end'][0]}-{w['end'][1]})",
            xlabel="chunk",
            ylabel="value / start",
            hlines=[0.85, 1.15],
        )
    if "speed" in parts:
        metrics["speed"] = timed("speed", lambda: env_speed(wm, batch=1, chunks=opts.speed_chunks, seed=opts.seed))
    metrics["seconds"] = {**seconds, "total": time.perf_counter() - t_all}
    metrics["targets"] = targets_table(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=json_default) + "\n")
    return metrics
