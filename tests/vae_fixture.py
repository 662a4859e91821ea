"""Synthetic VAE checkpoints with the release's file names, wrapping and key styles (spec §2.1, §2.3).

``write_vae_checkpoints(folder)`` writes, for a small config:
- ``Wan2.2_VAE.pth``: a flat state dict with Wan-native names (full encoder and decoder);
- ``MG-LightVAE.pth`` / ``MG-LightVAE_v2.pth``: ``{"state_dict": {"gen_model": ...}}`` with
  diffusers-style names, a student encoder and decoder pruned by 0.5 / 0.75, and the training-only
  ``dynamic_feature_projection_heads.*`` tensors.
Load them with ``load_vae(folder, vae_type, cfg=small_vae_config())`` (the config it returns). The
release-folder fixture calls it as ``write_vae_files(root)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from world_model.config import VAEConfig, tiny
from world_model.vae import VAE_FILES, WAN_VAE_FILE, WanVAE

__all__ = ["small_vae_config", "randomize_", "to_diffusers_names", "write_vae_checkpoints", "write_vae_files"]


def small_vae_config() -> VAEConfig:
    """The tiny preset's VAE: z 8, widths 8, 8x spatial / 4x temporal; prunes cleanly by 0.5 and 0.75."""
    return tiny().vae


def randomize_(model: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Make every parameter matter: norm scales around 1, zero-initialised projections non-zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            elif name.endswith(("proj.weight", "proj.bias")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def _inverse_renames(cfg: VAEConfig) -> list[tuple[str, str]]:
    down, up = cfg.num_res_blocks, cfg.num_res_blocks + 1
    res = r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)"
    return [
        (res + r"\.residual\.0\.", r"\1.norm1."),
        (res + r"\.residual\.2\.", r"\1.conv1."),
        (res + r"\.residual\.3\.", r"\1.norm2."),
        (res + r"\.residual\.6\.", r"\1.conv2."),
        (res + r"\.shortcut\.", r"\1.conv_shortcut."),
        (r"\.middle\.0\.", ".mid_block.resnets.0."),
        (r"\.middle\.1\.", ".mid_block.attentions.0."),
        (r"\.middle\.2\.", ".mid_block.resnets.1."),
        (rf"\.downsamples\.(\d+)\.downsamples\.{down}\.", r".down_blocks.\1.downsampler."),
        (r"\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r".down_blocks.\1.resnets.\2."),
        (rf"\.upsamples\.(\d+)\.upsamples\.{up}\.", r".up_blocks.\1.upsampler."),
        (r"\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r".up_blocks.\1.resnets.\2."),
        (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
        (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
        (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
        (r"^conv1\.", "quant_conv."),
        (r"^conv2\.", "post_quant_conv."),
    ]


def to_diffusers_names(state: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    """Wan-native names -> the diffusers-style names of the MG-LightVAE files."""
    table = [(re.compile(p), r) for p, r in _inverse_renames(cfg)]
    out = {}
    for key, value in state.items():
        for pattern, repl in table:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def write_vae_checkpoints(folder: str | Path, cfg: VAEConfig | None = None, *, seed: int = 0) -> VAEConfig:
    """Write the three release VAE files into ``folder``; returns the architecture config used."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = (cfg or small_vae_config()).replace(pruning_rate=0.0)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    full = randomize_(WanVAE(cfg), gen)
    torch.save({k: v.clone() for k, v in full.state_dict().items()}, folder / WAN_VAE_FILE)
    for vae_type in ("mg_lightvae", "mg_lightvae_v2"):
        fname, rate = VAE_FILES[vae_type]
        student_cfg = cfg.replace(pruning_rate=rate, encoder_dim=round(cfg.encoder_dim * (1 - rate)))
        student = randomize_(WanVAE(student_cfg), gen)
        state = to_diffusers_names({k: v.clone() for k, v in student.state_dict().items()}, cfg)
        width = student.decoder.upsamples[1].upsamples[0].residual["2"].out_channels
        state["dynamic_feature_projection_heads.up_block_1.weight"] = torch.randn(width, width, 1, 1, 1, generator=gen)
        state["dynamic_feature_projection_heads.up_block_1.bias"] = torch.zeros(width)
        torch.save({"state_dict": {"gen_model": state}, "epoch": 7}, folder / fname)
    return cfg


# The name the release-folder fixture uses for its VAE writer: write_release_folder(root, extra_writers=[write_vae_files]).
write_vae_files = write_vae_checkpoints
