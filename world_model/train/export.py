"""Export the shipped model folder and read it back.

Layout::

    <folder>/config.json                                  WorldModelConfig (incl. measured latent statistics)
    <folder>/base_distilled_model/config.json             release-style DiT config (world_model.weights)
    <folder>/base_distilled_model/diffusion_pytorch_model*.safetensors   DiT weights (bf16, shards <= 16 MiB)
    <folder>/vae.safetensors                              encoder + pruned decoder (bf16)
    <folder>/README.md                                    model card stub (filled from the run's metrics)

Two experts (:func:`combine_experts`: a many-step model for the high-noise sampler steps, a DMD student
for the low-noise ones) replace ``base_distilled_model/`` by ``high_noise_model/`` and ``low_noise_model/``,
with the ``moe`` section of ``config.json`` naming the boundary; either layout may store its DiT weights as
int8 with a scale per row (``int8=True``; ``world_model.weights.quantize_rows_int8``), half of bf16's bytes.

    python -m world_model.train.export combine --high EXPORT_A --low EXPORT_B --boundary 0.95 --int8 --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from world_model.checkpoint import read_safetensors
from world_model.config import WorldModelConfig

__all__ = ["export_model", "read_exported", "exported_size_bytes", "combine_experts", "stored_vae_dtype"]

SHARD_BYTES = 16 * 1024 * 1024


def _card(cfg: WorldModelConfig, metrics: dict[str, Any], dit_params: int, vae_params: int) -> str:
    s = cfg.stream
    lines = [
        f"# {cfg.name}",
        "",
        "A small Matrix-Game-3.0-family world model trained with `world_model.train` on ViZDoom/Freedoom data.",
        "",
        "## Architecture",
        f"- {s.height}x{s.width} pixels; VAE {cfg.vae.spatial_stride}x spatial / {cfg.vae.temporal_stride}x temporal, "
        f"z_dim {cfg.vae.z_dim}, decoder pruning {cfg.vae.pruning_rate}",
        f"- DiT dim {cfg.dit.dim}, {cfg.dit.num_layers} layers, {cfg.dit.num_heads} heads, "
        f"action blocks {list(cfg.dit.action_config.blocks) if cfg.dit.action_config else []}",
        f"- text: {cfg.text.kind} ({cfg.text.dim}-d, {cfg.text.text_len} tokens); sampler: {cfg.sampler.num_steps} steps",
        f"- parameters: DiT {dit_params / 1e6:.2f}M, VAE {vae_params / 1e6:.2f}M",
        "",
        "## Training",
        "See `world_model/train/README.md`; the pipeline command and its per-stage metrics are below.",
        "",
        "## Measured metrics (held-out levels)",
        "```json",
        json.dumps(metrics, indent=1, default=float),
        "```",
        "",
        "## Known limits",
        "- TODO: fill in after evaluation (fidelity, control, memory, stability, speed).",
        "",
    ]
    return "\n".join(lines)


def export_model(
    folder: str | Path,
    cfg: WorldModelConfig,
    dit: nn.Module,
    vae: nn.Module,
    *,
    metrics: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    int8: bool = False,
) -> Path:
    """Write the model folder (see the module docstring); returns it. ``int8``: the DiT's weights as int8
    with a scale per row (see the module docstring)."""
    import copy

    from safetensors.torch import save_file

    from world_model.weights import write_dit_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder / "config.json")
    dit_c = copy.deepcopy(dit).to("cpu", dtype)
    write_dit_folder(dit_c, folder / "base_distilled_model", max_shard_bytes=SHARD_BYTES, int8=int8)
    vae_state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in vae.state_dict().items()}
    save_file(vae_state, str(folder / "vae.safetensors"), metadata={"format": "pt"})
    n_dit = sum(p.numel() for p in dit.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    (folder / "README.md").write_text(_card(cfg, metrics or {}, n_dit, n_vae))
    return folder


def read_exported(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[WorldModelConfig, nn.Module, nn.Module]:
    """Load (config, DiT, VAE) from an exported folder (the DiT a :class:`~world_model.moe.MoEDiT` when the
    folder holds two experts)."""
    from world_model.model import load_exported_dit
    from world_model.vae import WanVAE

    folder = Path(folder)
    cfg = WorldModelConfig.load(folder / "config.json")
    dit = load_exported_dit(folder, cfg, device=str(device), dtype=dtype)
    vae = WanVAE(cfg.vae)
    vae.load_state_dict(read_safetensors(folder / "vae.safetensors"))
    return cfg, dit.eval(), vae.to(device, dtype).eval()


def exported_size_bytes(folder: str | Path) -> int:
    """Total bytes of the weight files of an exported folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """The folder to write ``out``'s contents to (beside it, absent on entry), moved into place as ``out`` once
    the block ends without error: a failure leaves ``out`` as it was."""
    staging = out.with_name(out.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    yield staging
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _copy_with_vae(
    model: Path, out: Path, vae: dict[str, torch.Tensor], note: str, cfg: WorldModelConfig | None = None
) -> Path:
    """``model`` copied to ``out`` with ``vae`` as its VAE's weights, ``cfg`` as its config where given and ``note``
    appended to its README; written beside ``out`` and moved into place (a failure leaves ``out`` as it was)."""
    from safetensors.torch import save_file

    with _staged(out) as staging:
        shutil.copytree(model, staging)
        if cfg is not None:
            cfg.save(staging / "config.json")
        save_file(vae, str(staging / "vae.safetensors"), metadata={"format": "pt"})
        with open(staging / "README.md", "a") as f:
            f.write(note)
    return out


def combine_experts(
    high: str | Path,
    low: str | Path,
    out: str | Path,
    *,
    boundary: float,
    int8: bool = False,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """One exported folder from two: the DiT of ``high`` for the sampler steps at timesteps >= ``boundary`` x
    1000 (the first ones, which lay out the scene and take what memory holds), the DiT of ``low`` for the
    later ones (the detail), and ``high``'s VAE, sampler and latent statistics. Both must share the geometry
    and the action inputs. ``int8``: both experts' weights as int8 with a scale per row. Returns ``out``;
    ``out`` is written beside itself and moved into place, so a failure leaves no half-written folder."""
    from world_model.config import MoEConfig
    from world_model.model import load_exported_dit
    from world_model.weights import write_dit_folder

    high_cfg, low_cfg = (WorldModelConfig.load(Path(f) / "config.json") for f in (high, low))
    for name, part in (("high", high_cfg), ("low", low_cfg)):
        if part.moe is not None:
            raise ValueError(f"{name} ({part.name}) holds two experts already: give single-DiT exports")
    if high_cfg.stream != low_cfg.stream or high_cfg.vae.z_dim != low_cfg.vae.z_dim:
        raise ValueError(f"{high} and {low} differ in their frames or latents: they cannot share a stream")
    if high_cfg.dit.action_config != low_cfg.dit.action_config or high_cfg.dit.in_dim != low_cfg.dit.in_dim:
        raise ValueError(f"{high} and {low} take different action or latent inputs: they cannot share a sampler")
    cfg = high_cfg.replace(moe=MoEConfig(low_noise=low_cfg.dit, boundary=boundary))  # validates the boundary
    high_dit, low_dit = (load_exported_dit(f, c) for f, c in ((high, high_cfg), (low, low_cfg)))  # no VAE read
    out = Path(out)
    with _staged(out) as staging:
        staging.mkdir(parents=True)
        cfg.save(staging / "config.json")
        for sub, dit in (("high_noise_model", high_dit), ("low_noise_model", low_dit)):
            write_dit_folder(dit.to("cpu", dtype), staging / sub, max_shard_bytes=SHARD_BYTES, int8=int8)
        shutil.copy2(Path(high) / "vae.safetensors", staging / "vae.safetensors")
        weights = "int8 with a scale per row" if int8 else str(dtype).removeprefix("torch.")
        note = (
            f"# {cfg.name} (two experts)\n\nHigh-noise expert (timesteps >= {boundary * 1000:.0f}): `{high}`; "
            f"low-noise expert: `{low}`; DiT weights {weights}.\n"
        )
        (staging / "README.md").write_text(note)
    return out


def stored_vae_dtype(model: str | Path) -> torch.dtype:
    """The dtype a model folder stores its VAE in (``vae.safetensors``, from one tensor: bf16 from :func:`export_model`)."""
    from safetensors import safe_open

    with safe_open(str(Path(model) / "vae.safetensors"), "pt") as f:
        return f.get_tensor(next(iter(f.keys()))).dtype


def with_decoder(
    model: str | Path, decoder: str | Path | Sequence[str | Path], out: str | Path, *, blend: float = 1.0
) -> Path:
    """A copy of the exported folder ``model`` whose VAE has the decoder weights of ``decoder`` (a
    safetensors file of the decoder side's tensors: a sharpen stage's snapshot, ``sharpen/snapshots/``;
    several: their mean). ``blend`` in (0, 1]: the folder's own decoder moved that far towards them
    (own + blend * (new - own), in fp32). Every tensor of ``decoder`` must be one of the VAE's, with its
    shape; the rest (the encoder) stays. ``out`` is written beside itself and moved into place. Returns ``out``.

    Why a mean and a blend (session 17, test levels): each snapshot of a sharpen stage that added detail drew its
    own screen door (grid share 0.03-0.07 at sharpness 0.86-1.19 of the simulator's); the mean of six snapshots
    (steps 1,500-4,000) kept the sharpness (0.96) with about half the grid of the best of them (0.018), and 0.3 of
    the way from the shipped decoder to step 1,500 met the grid target (0.43, 0.009)."""
    from safetensors.torch import load_file

    if not 0.0 < blend <= 1.0:
        raise ValueError(f"blend must be in (0, 1] (1: the new decoder itself), got {blend}")
    paths = [decoder] if isinstance(decoder, (str, Path)) else list(decoder)
    if not paths:
        raise ValueError("no decoder given")
    model, out = Path(model), Path(out)
    vae = load_file(str(model / "vae.safetensors"))
    snapshots = [load_file(str(p)) for p in paths]
    new = snapshots[0]
    for p, snap in zip(paths[1:], snapshots[1:]):
        if snap.keys() != new.keys():
            raise ValueError(f"{p} holds other tensors than {paths[0]}: not snapshots of one decoder")
    unknown = sorted(k for k in new if k not in vae)
    if unknown:
        raise ValueError(f"{paths[0]} holds tensors the VAE of {model} has not: {unknown[:5]}")
    wrong = sorted(k for snap in snapshots for k in snap if snap[k].shape != vae[k].shape)
    if wrong:
        raise ValueError(f"the decoders have other shapes than {model}'s VAE for {wrong[:5]}: another decoder width")
    for k in new:
        own = vae[k].float()
        mean = sum(snap[k].float() for snap in snapshots) / len(snapshots)
        vae[k] = (own + blend * (mean - own)).to(vae[k].dtype)
    names = ", ".join(f"`{p}`" for p in paths)
    what = f"the mean of {len(paths)} decoders ({names})" if len(paths) > 1 else f"the decoder {names}"
    how = "in place of this folder's own" if blend == 1.0 else f"blended {blend:g} of the way from this folder's own"
    return _copy_with_vae(model, out, vae, f"\nDecoder: {what} ({len(new)} tensors), {how}.\n")


def with_vae(model: str | Path, vae_stage: str | Path, out: str | Path) -> Path:
    """A copy of the exported folder ``model`` whose VAE is the ``vae`` stage's own (``vae_stage``: a run's
    ``vae`` folder): its encoder and its full decoder (``pruning_rate`` 0 in the copy's config), in the folder's
    dtype, the folder's latent statistics kept. What the VAE alone gives, measured where the shipped one is (the
    reset frame of `mg3 eval --parts reset`: the round trip of the input image), before any pruned decoder is
    distilled from it (session 26: the full decoder 29.76 dB, the pruned one distilled for 1,792 steps 0.9 dB
    below). Every parameter must come from the stage's checkpoint (another width raises); ``out`` is written
    beside itself and moved into place. Returns ``out``."""
    from world_model.train.autoencoder import load_weights
    from world_model.train.checkpoints import load_latest
    from world_model.vae import WanVAE

    model, out = Path(model), Path(out)
    state = load_latest(vae_stage)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {Path(vae_stage) / 'checkpoints'}")
    weights = state.get("stage", {}).get("vae")
    if weights is None:
        raise ValueError(f"{vae_stage}'s checkpoint holds no full VAE (an encoder-only slim, or another stage's)")
    cfg = WorldModelConfig.load(model / "config.json")
    cfg = cfg.replace(vae=cfg.vae.replace(pruning_rate=0.0))
    vae = WanVAE(cfg.vae)
    left = load_weights(vae, weights)
    if left:
        raise ValueError(f"{vae_stage}'s VAE does not fit {model}'s config for {left[:5]}: another width")
    dtype = stored_vae_dtype(model)
    vae_state = {k: v.detach().to(dtype).contiguous() for k, v in vae.state_dict().items()}
    note = f"\nVAE: `{vae_stage}` at step {state.get('step', '?')}, its full decoder (pruning 0), in place of this folder's.\n"
    return _copy_with_vae(model, out, vae_state, note, cfg)


def as_int8(model: str | Path, out: str | Path) -> Path:
    """A copy of the exported folder ``model`` (one DiT) with its DiT's weights stored as int8 with a scale per row
    (half of bf16's bytes: what a model past the package's 40 MB in bf16, a grown one, ships as); the VAE, config and
    the folder's other files as they were. ``out`` is written beside itself and moved into place. Returns ``out``."""
    from world_model.model import load_exported_dit
    from world_model.weights import write_dit_folder

    model, out = Path(model), Path(out)
    if not (model / "base_distilled_model").is_dir():
        raise ValueError(f"{model} holds two experts: combine them with --int8 instead")
    dit = load_exported_dit(model, WorldModelConfig.load(model / "config.json"))  # no VAE read: it is copied
    with _staged(out) as staging:
        shutil.copytree(model, staging, ignore=shutil.ignore_patterns("base_distilled_model"))
        write_dit_folder(
            dit.to(torch.bfloat16), staging / "base_distilled_model", max_shard_bytes=SHARD_BYTES, int8=True
        )
        with open(staging / "README.md", "a") as f:
            f.write("\nDiT weights stored as int8 with a scale per row (`python -m world_model.train.export int8`).\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Exported model folders (see world_model.train.export)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("combine", help="one folder of two experts from two exported folders (combine_experts)")
    c.add_argument("--high", required=True, help="export whose DiT takes the high-noise steps (e.g. the memory model)")
    c.add_argument("--low", required=True, help="export whose DiT takes the low-noise steps (e.g. a DMD student)")
    c.add_argument(
        "--boundary", type=float, required=True, help="fraction of 1000: high-noise steps at timesteps >= it"
    )
    c.add_argument("--int8", action="store_true", help="both experts' weights as int8 with a scale per row")
    c.add_argument("--out", required=True)
    d = sub.add_parser("decoder", help="an exported folder with another decoder (a sharpen snapshot; with_decoder)")
    d.add_argument("--model", required=True, help="exported folder (e.g. world_model/assets/embedded)")
    d.add_argument(
        "--decoder",
        required=True,
        nargs="+",
        help="safetensors of the decoder's weights (sharpen/snapshots/...); several: their mean",
    )
    d.add_argument("--blend", type=float, default=1.0, help="how far from the folder's own decoder towards it, (0, 1]")
    d.add_argument("--out", required=True)
    v = sub.add_parser("vae", help="an exported folder with a run's full VAE, encoder and full decoder (with_vae)")
    v.add_argument("--model", required=True, help="exported folder")
    v.add_argument("--vae", required=True, help="a run's vae stage folder (runs/<run>/vae)")
    v.add_argument("--out", required=True)
    i8 = sub.add_parser("int8", help="an exported folder with its DiT's weights as int8 (as_int8)")
    i8.add_argument("--model", required=True)
    i8.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.command == "int8":
        out = as_int8(args.model, args.out)
    elif args.command == "vae":
        out = with_vae(args.model, args.vae, args.out)
    elif args.command == "decoder":
        out = with_decoder(args.model, args.decoder, args.out, blend=args.blend)
    else:
        out = combine_experts(args.high, args.low, args.out, boundary=args.boundary, int8=args.int8)
    print(json.dumps({"out": str(out), "mb": round(exported_size_bytes(out) / 1e6, 2)}))


if __name__ == "__main__":
    main()
