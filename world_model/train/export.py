"""Export the shipped model folder and read it back.

Layout::

    <folder>/config.json                                  WorldModelConfig (incl. measured latent statistics)
    <folder>/base_distilled_model/config.json             release-style DiT config (world_model.weights)
    <folder>/base_distilled_model/diffusion_pytorch_model*.safetensors   DiT weights (bf16, shards <= 16 MiB)
    <folder>/vae.safetensors                              encoder + pruned decoder (bf16)
    <folder>/README.md                                    model card stub (filled from the run's metrics)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from world_model.checkpoint import read_safetensors
from world_model.config import WorldModelConfig

__all__ = ["export_model", "read_exported", "exported_size_bytes"]

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
) -> Path:
    """Write the model folder (see the module docstring); returns it."""
    import copy

    from safetensors.torch import save_file

    from world_model.weights import write_dit_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder / "config.json")
    dit_c = copy.deepcopy(dit).to("cpu", dtype)
    write_dit_folder(dit_c, folder / "base_distilled_model", max_shard_bytes=SHARD_BYTES)
    vae_state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in vae.state_dict().items()}
    save_file(vae_state, str(folder / "vae.safetensors"), metadata={"format": "pt"})
    n_dit = sum(p.numel() for p in dit.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    (folder / "README.md").write_text(_card(cfg, metrics or {}, n_dit, n_vae))
    return folder


def read_exported(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[WorldModelConfig, nn.Module, nn.Module]:
    """Load (config, DiT, VAE) from an exported folder."""
    from world_model.vae import WanVAE
    from world_model.weights import load_dit

    folder = Path(folder)
    cfg = WorldModelConfig.load(folder / "config.json")
    dit = load_dit(folder, "distilled", device=str(device), dtype=dtype)
    vae = WanVAE(cfg.vae)
    vae.load_state_dict(read_safetensors(folder / "vae.safetensors"))
    return cfg, dit.eval(), vae.to(device, dtype).eval()


def exported_size_bytes(folder: str | Path) -> int:
    """Total bytes of the weight files of an exported folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))
