"""Pack a run's trained weights, without optimizer state, so that another machine can go on from them.

A training machine is lent for a limited time and what comes back from it is small. This writes the
weights the later stages read (the ``vae`` stage's VAE, the ``decoder`` stage's student, a DiT
stage's EMA) as one-checkpoint stage folders marked ``done``, plus the latent statistics. Put the
folder's contents into a new run folder with the same ``pipeline.json``; ``all`` then regenerates
the data (deterministic for the seed), re-encodes it and trains the stages that are not there.

``--as memory=base`` stores the memory model's EMA as the ``base`` stage, so that the next run's
``memory`` stage starts from it (a fresh optimizer, the same weights): training continues.
``memory|base`` takes the first of the two stages that has a checkpoint (a session whose memory
stage did not run still hands on its base model). ``--stages 'dmd|student' --as dmd=student`` carries
the DMD student (or the one carried in, when DMD did not run) to the next session's DMD stage.

    python -m world_model.train.slim --run runs/embedded --out runs/slim --stages vae,decoder,"memory|base" \\
        --as memory=base --dit-dtype bfloat16 --vae-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from world_model.checks import changed_flags
from world_model.train.checkpoints import checkpoint_step, latest_checkpoint, load_sharded, save_checkpoint
from world_model.train.status import StatusFile, read_status

__all__ = ["slim_run", "slim_from_export", "KEEP"]

# what each stage's successors read from its checkpoint (a path into the checkpoint's state)
KEEP: dict[str, tuple[str, ...]] = {
    "vae": ("stage", "vae"),
    "decoder": ("stage", "student"),
    # the decoder sharpened on the DiT's latents (``sharpen|decoder --as sharpen=decoder``): the next
    # session's decoder stage and sharpen stage go on from it
    "sharpen": ("stage", "student"),
    "base": ("stage", "ema", "model"),
    "memory": ("stage", "ema", "model"),
    "dmd": ("stage", "ema", "model"),
    # a DMD student carried to the next session (``dmd|student --as dmd=student``): its DMD stage starts
    # the student from it (the teacher and critic from that session's memory model)
    "student": ("stage", "ema", "model"),
}
_DIT_STAGES = ("base", "memory", "dmd", "student")
# the autoencoder's stages: ``vae_dtype`` bfloat16 halves them (session 27's slim: a 14 MB fp32 VAE with its full
# decoder, a 6.5 MB pruned decoder and a 43 MB bf16 DiT left no room for the repository in a 64 MiB carry)
_VAE_STAGES = ("vae", "decoder", "sharpen")


def _nest(path: tuple[str, ...], value):
    for key in reversed(path):
        value = {key: value}
    return value


def slim_run(
    run: str | Path,
    out: str | Path,
    stages: list[str],
    *,
    rename: dict[str, str] | None = None,
    dit_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
) -> Path:
    """Write ``stages`` of ``run`` (weights only) into ``out``; returns ``out``. An entry ``a|b`` is the
    first of its stages with a checkpoint. Every entry is checked before anything is written. ``dit_dtype`` /
    ``vae_dtype``: the floating-point weights of the DiT / autoencoder stages in that dtype (None: as trained)."""
    run, out = Path(run), Path(out)
    rename = rename or {}
    chosen = []
    for entry in stages:
        options = entry.split("|")
        for stage in options:
            if stage not in KEEP:
                raise ValueError(f"cannot slim stage {stage!r}; stages with weights are {sorted(KEEP)}")
        found = next(((s, ck) for s in options if (ck := latest_checkpoint(run / s)) is not None), None)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {' or '.join(str(run / s) for s in options)}")
        chosen.append(found)
    for stage, ck in chosen:
        state = load_sharded(ck)
        sub = state
        for key in KEEP[stage]:
            sub = sub[key]
        dtype = dit_dtype if stage in _DIT_STAGES else vae_dtype if stage in _VAE_STAGES else None
        if dtype is not None:
            sub = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sub.items()}
        target = rename.get(stage, stage)
        dest = out / target
        shutil.rmtree(dest, ignore_errors=True)
        source = read_status(run / stage) or {}
        # the checkpoint's own step: a running stage's status is ahead of its newest checkpoint
        step = checkpoint_step(ck)
        save_checkpoint(_nest(KEEP[target], sub), dest, step, keep=1, max_shard_bytes=15 * 2**20)
        # an encoder-only vae stage (slim_from_export) stays marked so in every later slim
        extra = {"encoder_only": True} if source.get("encoder_only") else {}
        # the slim itself is done; the stage it came from may have been still training (a poll's slim)
        StatusFile(dest, target).update(
            state="done", step=step, slimmed_from=str(run / stage), stage_state=source.get("state", "?"), **extra
        )
    stats = run / "latents" / "stats.json"
    if stats.exists():
        (out / "latents").mkdir(parents=True, exist_ok=True)
        shutil.copy2(stats, out / "latents" / "stats.json")
    if (run / "pipeline.json").exists():
        shutil.copy2(run / "pipeline.json", out / "pipeline.json")
    return out


def slim_from_export(
    export: str | Path, out: str | Path, steps: dict[str, int] | None = None, *, dit_as: str = "base"
) -> Path:
    """A slim made from an exported (or shipped) model folder, for when a run's own slim is lost: the
    ``decoder`` stage (the exported VAE: encoder and decoder, which the DiT stages' held-out evaluation and the
    export decode with), ``base`` (the exported DiT) and the latent statistics of its config. An export with the
    full decoder (pruning 0: shipped since session 30) is the ``vae`` stage as well, a whole autoencoder (the
    sharpen stage's ``--sharpen-decoder full`` starts from it). An export with a pruned decoder has no full-width
    one, so its ``vae`` stage holds the encoder side only, marked ``encoder_only``: the encode stage and the DiT
    stages go on from it, the vae stage does not train, and the decoder stage trains the pruned decoder on the
    true frames instead of distilling it. ``dit_as="student"`` writes the exported DiT as a carried DMD ``student`` (and the
    statistics) only: a shipped DMD student that the next DMD stage goes on from, its teacher taken from an
    earlier export. From a folder of two experts (``combine_experts``) the high-noise expert is the ``base``
    and the low-noise one the ``student``. ``steps`` sets the stage steps recorded (the export's run)."""
    from world_model.train.autoencoder import is_decoder_side
    from world_model.train.export import read_exported, stored_vae_dtype

    if dit_as not in ("base", "student"):
        raise ValueError(f"dit_as must be 'base' or 'student', got {dit_as!r}")
    steps = steps or {}
    out = Path(out)
    cfg, dit, vae = read_exported(export)
    if cfg.moe is not None:  # two experts: the high-noise one (a memory model) is the base, the low-noise one
        dit = dit.high_noise if dit_as == "base" else dit.low_noise  # (a DMD student) the student
    # the autoencoder in the dtype the folder stores it in (bf16 from export_model): a full one is two stages here, and
    # in fp32 session 37's carry (both 14 MB, a 43 MB DiT) was over the 64 MiB a call sends
    dtype = stored_vae_dtype(export)
    vae_state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in vae.state_dict().items()}
    encoder = {k: v for k, v in vae_state.items() if not is_decoder_side(k)}
    dit_state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in dit.state_dict().items()}
    full = vae.cfg.pruning_rate == 0.0
    autoencoder = ("vae", vae_state, {}) if full else ("vae", encoder, {"encoder_only": True})
    stages = [autoencoder, ("decoder", vae_state, {})] if dit_as == "base" else []
    for stage, state, extra in (*stages, (dit_as, dit_state, {})):
        dest = out / stage
        shutil.rmtree(dest, ignore_errors=True)
        step = int(steps.get(stage, 0))
        save_checkpoint(_nest(KEEP[stage], state), dest, step, keep=1, max_shard_bytes=15 * 2**20)
        StatusFile(dest, stage).update(state="done", step=step, slimmed_from=str(export), **extra)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    stats = {"mean": list(cfg.vae.latent_mean), "std": list(cfg.vae.latent_std)}
    (out / "latents" / "stats.json").write_text(json.dumps(stats) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None)
    p.add_argument(
        "--from-export", default=None, help="an exported/shipped model folder instead of a run (see slim_from_export)"
    )
    p.add_argument("--steps", default="", help="with --from-export: stage steps to record, e.g. vae=7518,base=3161")
    p.add_argument(
        "--dit-as", default="base", choices=("base", "student"), help="with --from-export: the DiT as base or student"
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--stages", default="vae,decoder,memory|base", help="comma-separated; a|b: the first with a checkpoint"
    )
    p.add_argument("--as", dest="rename", default="", help="e.g. memory=base")
    p.add_argument("--dit-dtype", default=None, choices=(None, "bfloat16", "float16", "float32"))
    p.add_argument(
        "--vae-dtype", default=None, choices=(None, "bfloat16", "float16", "float32"), help="vae, decoder, sharpen"
    )
    args = p.parse_args(argv)
    if (args.run is None) == (args.from_export is None):
        p.error("give exactly one of --run and --from-export")
    # each source takes its own flags: another's would do nothing
    other = ("stages", "rename", "dit_dtype", "vae_dtype") if args.from_export else ("steps", "dit_as")
    idle = changed_flags(p, args, other)
    if idle:
        p.error(f"{', '.join(idle)}: not with {'--from-export' if args.from_export else '--run'}")
    if args.from_export:
        steps = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.steps.split(",") if kv)}
        out = slim_from_export(args.from_export, args.out, steps, dit_as=args.dit_as)
        print(json.dumps({"out": str(out), "mib": round(sum(f.stat().st_size for f in out.rglob("*")) / 2**20, 1)}))
        return
    rename = dict(kv.split("=", 1) for kv in args.rename.split(",") if kv)
    dit_dtype = getattr(torch, args.dit_dtype) if args.dit_dtype else None
    vae_dtype = getattr(torch, args.vae_dtype) if args.vae_dtype else None
    stages = [s for s in args.stages.split(",") if s]
    out = slim_run(args.run, args.out, stages, rename=rename, dit_dtype=dit_dtype, vae_dtype=vae_dtype)
    print(json.dumps({"out": str(out), "mib": round(sum(f.stat().st_size for f in out.rglob("*")) / 2**20, 1)}))


if __name__ == "__main__":
    main()
