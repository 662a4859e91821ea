"""Grow a DiT by blocks appended after its last, each the identity at first (the model's output unchanged).

The embedded model's DiT-side measures have been flat since ~7,000 of its ~20,000 steps (the model card's curve:
chunk-0 gain, ΔPSNR of the actions), and its frames are blurred by the DiT (session 8: the first generated latent is
~5 dB below the VAE's). The issue allows the DiT to grow within the CPU-speed bound (16 frames/s on 2 cores; the
shipped model runs ~25). A grown model goes on training from the trained one instead of starting over.

Each new block is a copy of the last one (so its norms, modulation and attention start from trained values) with
every path into the residual stream closed: the self- and cross-attention's output projections, the FFN's second
layer and the camera scale/shift layers zeroed (the camera modulation x * (1 + 0) + 0), and its LN3 set to weight
1, bias 0. With memory (``use_memory``: the release's quirk, spec §13.1) a block replaces the residual stream by
LN3(x), which is then LN(x): the head normalises its input again (a LayerNorm without affine), and LN(LN(x)) is
LN(x) to within the norm's epsilon, so the output is unchanged to fp32 rounding; without memory the new blocks
add zeros and the output is unchanged exactly. Blocks are appended, never inserted: before a trained block, LN(x)
in place of x would change what its residual path adds to.

    python -m world_model.train.grow --model world_model/assets/embedded --add-blocks 2 --out GROWN
    python -m world_model.train.grow --checkpoint runs/embedded/base --add-blocks 2    # a slimmed run's DiT, in place

Bounds, measured on the 2-core CPU (``python bench/embedded_speed.py --model M --device cpu --batches 1 --chunks 8``,
session 17, in one run against the shipped model's 2.01 s a chunk): +2 blocks 2.28 s (+13 %), +4 blocks 2.55 s
(+27 %): ~6.7 % a block, so +2 keeps 16 frames/s with room (the shipped model: 20-25 frames/s on this machine), +4
is at the bound. Size: each block is ~1.9 M parameters, 3.8 MB in bf16; the shipped model is 39.5 of the package's
40 MB, so a grown model ships with its DiT as int8 (``python -m world_model.train.export int8 --model G --out
G8``: +4 blocks 55.1 -> 29.5 MB, one window's output within 1.6 % of bf16's on random inputs; to be measured on the
test levels before it ships).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from world_model.config import DiTConfig
from world_model.dit import MatrixGameDiT

__all__ = ["grow_dit", "grow_export", "grow_checkpoint"]


def grow_dit(dit: MatrixGameDiT, add: int) -> MatrixGameDiT:
    """A new DiT with ``add`` blocks after ``dit``'s last (see the module docstring); ``dit`` is not changed."""
    if not isinstance(dit, MatrixGameDiT):
        raise TypeError(f"expected a MatrixGameDiT, got {type(dit).__name__}")
    if add < 1:
        raise ValueError(f"add must be >= 1 block, got {add}")
    n = dit.cfg.num_layers
    param = next(dit.parameters())
    grown = MatrixGameDiT(dit.cfg.replace(num_layers=n + add)).to(param.device, param.dtype)
    missing, unexpected = grown.load_state_dict(dit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("blocks.") or int(k.split(".")[1]) < n for k in missing):
        raise RuntimeError(f"the grown DiT's keys do not extend the DiT's: {unexpected[:3]} {missing[:3]}")
    last = dit.blocks[n - 1].state_dict()
    with torch.no_grad():
        for block in grown.blocks[n:]:
            own = block.state_dict()
            block.load_state_dict({k: v for k, v in last.items() if k in own}, strict=False)  # no action module
            for layer in (
                block.self_attn.o,
                block.cross_attn.o,
                block.ffn[2],
                block.cam_scale_layer,
                block.cam_shift_layer,
            ):
                layer.weight.zero_()
                layer.bias.zero_()
            if block.norm3 is not None:
                block.norm3.weight.fill_(1.0)
                block.norm3.bias.zero_()
    return grown.train(dit.training)


def grow_export(model: str | Path, add: int, out: str | Path) -> Path:
    """The exported folder ``model`` with its DiT grown by ``add`` blocks (:func:`grow_dit`), written to ``out``
    (beside it first, then moved into place: a failure leaves ``out`` as it was). Returns ``out``."""
    from world_model.train.export import _staged, export_model, read_exported

    model, out = Path(model), Path(out)
    cfg, dit, vae = read_exported(model)
    if not isinstance(dit, MatrixGameDiT):
        raise ValueError(f"{model} holds two experts: grow each expert's folder instead")
    grown = grow_dit(dit, add)
    new = cfg.replace(dit=grown.cfg)
    with _staged(out) as staging:
        export_model(staging, new, grown, vae)
        for name in ("default_image.png", "default_prompt.txt"):
            if (model / name).exists():
                (staging / name).write_bytes((model / name).read_bytes())
        with open(staging / "README.md", "a") as f:
            f.write(
                f"\nGrown from `{model}`: {add} blocks appended after its {cfg.dit.num_layers} (world_model.train.grow).\n"
            )
    return out


def grow_checkpoint(stage: str | Path, cfg: DiTConfig, add: int) -> int:
    """Grow the DiT of a slimmed DiT stage (``stage``: a run's ``base`` or ``memory`` folder as ``slim`` writes it,
    the DiT's weights at ``stage/ema/model``) in place, its newest checkpoint rewritten at the same step; ``cfg``:
    that DiT's config. The run then trains it with ``--dit-layers`` the new count (``session.sh`` with GROW=N
    does both on the GPU machine, so that the carried weights stay the small ones). Its block count is the
    checkpoint's own (a checkpoint grown before has more blocks than ``cfg`` says). Returns the new count."""
    from world_model.train.checkpoints import checkpoint_step, latest_checkpoint, load_latest, save_checkpoint

    stage = Path(stage)
    state, path = load_latest(stage), latest_checkpoint(stage)
    weights = (state or {}).get("stage", {}).get("ema", {}).get("model")
    if weights is None:
        raise ValueError(f"{stage} holds no slimmed DiT checkpoint (stage/ema/model)")
    layers = 1 + max((int(k.split(".")[1]) for k in weights if k.startswith("blocks.")), default=-1)
    cfg = cfg.replace(num_layers=layers)
    dit = MatrixGameDiT(cfg)
    dit.load_state_dict(weights)
    grown = grow_dit(dit, add).state_dict()
    dtype = next(v.dtype for v in weights.values() if v.is_floating_point())  # as slimmed (bf16): exact for the old
    state["stage"]["ema"]["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in grown.items()}
    save_checkpoint(state, stage, checkpoint_step(path), keep=1, max_shard_bytes=15 * 2**20)
    return cfg.num_layers + add


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="exported folder (e.g. world_model/assets/embedded); with --out")
    src.add_argument("--checkpoint", help="a run's slimmed DiT stage folder (e.g. runs/embedded/base), in place")
    p.add_argument(
        "--config",
        default="embedded",
        help="with --checkpoint: the preset of its DiT (its block count: the checkpoint's)",
    )
    p.add_argument("--add-blocks", type=int, required=True, help="blocks to append after the last")
    p.add_argument("--out", help="with --model: the grown folder")
    args = p.parse_args(argv)
    if args.checkpoint and args.out:
        p.error("--out: --checkpoint grows the stage folder in place")
    if args.model and args.config != p.get_default("config"):
        p.error("--config: --model reads its DiT's config from the folder")
    if args.checkpoint:
        from world_model.train.pipeline import PRESETS

        layers = grow_checkpoint(args.checkpoint, PRESETS[args.config]().dit, args.add_blocks)
        print(json.dumps({"checkpoint": args.checkpoint, "layers": layers}))
        return
    if not args.out:
        p.error("--model needs --out")
    out = grow_export(args.model, args.add_blocks, args.out)
    print(json.dumps({"out": str(out), "layers": json.loads((out / "config.json").read_text())["dit"]["num_layers"]}))


if __name__ == "__main__":
    main()
