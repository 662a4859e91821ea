"""Install an exported model as the package's embedded default (``world_model/assets/embedded``).

Only after it beat the shipped model on the test levels (``mg3 eval``; see
``world_model/assets/embedded/README.md``). The export is checked first: it loads with the strict
loader (every weight present, shaped and finite), keeps the shipped geometry (frame size, frame rate,
latent grid) unless ``--new-geometry``, and its weights fit the package budget (40 MB). Then its
weights and ``config.json`` replace the shipped ones in one step (written beside the folder, then
swapped in); the model card ``README.md``, ``default_image.png`` and ``default_prompt.txt`` stay,
for the card to be updated by hand with the evaluation. ``--sampler-steps N`` ships it sampled in N steps (its
``config.json``'s ``sampler.num_steps``; what ``mg3 eval --sampler-steps N`` measured); ``--context-cache-refresh R``
writes ``sampler.context_cache_refresh`` (the context cache it was measured with, ``mg3 eval --context-cache on
--context-cache-refresh R``: a CPU's default then runs it so; without it the model runs exact). Anything wrong raises
before a file changes.

    python -m world_model.train.ship runs/embedded/export [--sampler-steps 5] [--context-cache-refresh 2]
    mg3 demo --out mg3_demo && cp mg3_demo/strip.png docs/demo_strip.png   # the README's strip
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from world_model.checks import whole_or_none
from world_model.train.export import exported_size_bytes

__all__ = ["ship", "MAX_BYTES", "KEPT"]

MAX_BYTES = 40_000_000  # the package budget for the embedded weights
KEPT = ("README.md", "default_image.png", "default_prompt.txt")  # the shipped folder's own files
_WEIGHTS = ("config.json", "vae.safetensors", "base_distilled_model")
_EXPERT_WEIGHTS = ("config.json", "vae.safetensors", "high_noise_model", "low_noise_model")  # combine_experts


def _geometry(cfg) -> dict:
    s = cfg.stream
    return {
        "height": s.height,
        "width": s.width,
        "fps": s.fps,
        "vae strides": (cfg.vae.spatial_stride, cfg.vae.temporal_stride),
        "z_dim": cfg.vae.z_dim,
    }


def ship(
    export: str | Path,
    target: str | Path | None = None,
    *,
    new_geometry: bool = False,
    sampler_steps: int | None = None,
    context_cache_refresh: int | None = None,
) -> Path:
    """Check ``export`` and install it into ``target`` (default: the embedded model's folder), sampled in
    ``sampler_steps`` steps when given (else as its config says), with ``sampler.context_cache_refresh`` set to
    ``context_cache_refresh`` when given."""
    from world_model.model import EMBEDDED_DIR, load_world_model

    export = Path(export)
    target = Path(target) if target is not None else EMBEDDED_DIR
    layout = _WEIGHTS if (export / "base_distilled_model").exists() else _EXPERT_WEIGHTS
    missing = [name for name in layout if not (export / name).exists()]
    if missing:
        raise FileNotFoundError(f"{export} is not an exported model folder: it lacks {', '.join(missing)}")
    whole_or_none(sampler_steps, "sampler_steps", 1, note="None: the export's own")
    size = exported_size_bytes(export)
    if size > MAX_BYTES:
        raise ValueError(
            f"{export} holds {size / 1e6:.1f} MB of weights; the embedded model may hold {MAX_BYTES / 1e6:.0f}"
        )
    new = load_world_model(str(export))  # the strict loader: names, shapes, finiteness
    if sampler_steps is not None:
        new = new.with_sampler(num_steps=int(sampler_steps))  # the config's own checks, before a file changes
    if context_cache_refresh is not None:
        new = new.with_sampler(context_cache_refresh=context_cache_refresh)
    if not new_geometry and (target / "config.json").exists():
        old = load_world_model(str(target))
        if _geometry(old.config) != _geometry(new.config):
            raise ValueError(
                f"{export} changes the shipped geometry {_geometry(old.config)} -> {_geometry(new.config)}; "
                "pass new_geometry=True (--new-geometry) if that is meant"
            )
    staging = target.with_name(target.name + ".shipping")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export, staging, ignore=shutil.ignore_patterns("README.md", "status.json"))
    if sampler_steps is not None or context_cache_refresh is not None:
        new.config.save(staging / "config.json")  # as the export wrote it, with the new sampler settings
    for name in KEPT:
        if (target / name).exists():
            shutil.copy2(target / name, staging / name)
    old_copy = target.with_name(target.name + ".replaced")
    shutil.rmtree(old_copy, ignore_errors=True)
    if target.exists():
        target.rename(old_copy)
    staging.rename(target)
    shutil.rmtree(old_copy, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="an exported model folder (runs/<run>/export)")
    p.add_argument("--target", default=None, help="default: world_model/assets/embedded")
    p.add_argument("--new-geometry", action="store_true", help="allow another frame size, frame rate or latent grid")
    p.add_argument("--sampler-steps", type=int, default=None, help="sampler steps to ship it with (default: its own)")
    p.add_argument(
        "--context-cache-refresh",
        type=int,
        default=None,
        metavar="R",
        help="the context cache's refresh it was measured with, written into its config (a CPU's default then runs "
        "it so; default: as its config says)",
    )
    args = p.parse_args(argv)
    out = ship(
        args.export,
        args.target,
        new_geometry=args.new_geometry,
        sampler_steps=args.sampler_steps,
        context_cache_refresh=args.context_cache_refresh,
    )
    print(f"installed {args.export} into {out}; now: mg3 eval, the model card, mg3 demo for docs/demo_strip.png")


if __name__ == "__main__":
    main()
