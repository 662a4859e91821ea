"""A synthetic checkpoint folder in the release layout (spec §2.1), with tiny random weights.

``write_release_folder(root)`` writes ``model_index.json``, ``base_model/`` and
``base_distilled_model/`` (config.json + safetensors of a random tiny MatrixGameDiT with the real
key names), ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan-native names, tiny dims, bf16) and
``google/umt5-xxl/`` (a tiny sentencepiece unigram tokenizer trained here, offline).

VAE files are written by other helpers: pass them as ``extra_writers`` (each called with the
root folder), e.g. ``write_release_folder(root, extra_writers=[write_vae_files])``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from world_model.config import DiTConfig, tiny
from world_model.text import T5_CHECKPOINT, T5_TOKENIZER_DIR, hf_to_wan_t5, umt5_config

__all__ = ["TOKENIZER_SENTENCES", "tiny_t5_config", "write_tokenizer", "write_t5", "write_dit", "write_release_folder"]

TOKENIZER_SENTENCES = (
    "a man walks through a forest at dawn",
    "the camera moves forward along a stone corridor",
    "bright sunlight over a city street with parked cars",
    "a dark dungeon with burning torches on the walls",
    "snow falls on a quiet village at night",
    "first person view of a castle courtyard, stone towers and a wooden gate",
)


def tiny_t5_config(**overrides):
    """umt5 encoder with tiny dims: vocab 96, d_model 32, 4 heads x 8, d_ff 48, 2 layers."""
    dims = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
    dims.update(overrides)
    return umt5_config(**dims)


def write_tokenizer(folder: str | Path) -> Path:
    """Train a tiny sentencepiece unigram model (pad 0, eos 1, unk 2) and save T5 tokenizer files."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(TOKENIZER_SENTENCES) * 20),
        model_writer=buf,
        vocab_size=64,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(buf.getvalue())
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder


def write_t5(root: str | Path, config=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan-native names, bf16); returns the state dict."""
    from transformers import UMT5EncoderModel

    torch.manual_seed(seed)
    model = UMT5EncoderModel(config if config is not None else tiny_t5_config())
    state = {k: v.detach().to(torch.bfloat16).clone() for k, v in hf_to_wan_t5(model.state_dict()).items()}
    torch.save(state, Path(root) / T5_CHECKPOINT)
    return state


def write_dit(folder: str | Path, cfg: DiTConfig, seed: int = 0, *, max_shard_bytes: int | None = None):
    """A randomly initialised MatrixGameDiT saved with the release keys; returns the model."""
    from world_model.dit import MatrixGameDiT
    from world_model.weights import write_dit_folder

    torch.manual_seed(seed)
    model = MatrixGameDiT(cfg)
    with torch.no_grad():  # zero-initialised layers would hide mistakes: randomise every tensor
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    write_dit_folder(model, folder, max_shard_bytes=max_shard_bytes)
    return model


def write_release_folder(
    root: str | Path,
    *,
    dit_cfg: DiTConfig | None = None,
    t5_config=None,
    variants: Sequence[str] = ("distilled", "base"),
    extra_writers: Sequence[Callable[[Path], object]] = (),
    seed: int = 0,
) -> Path:
    """Write a tiny checkpoint folder in the release layout under ``root``; returns ``root``."""
    from world_model.weights import DIT_SUBFOLDERS

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MatrixGame3I2VPipeline"}) + "\n")
    cfg = dit_cfg if dit_cfg is not None else tiny().dit
    for i, variant in enumerate(variants):
        write_dit(root / DIT_SUBFOLDERS[variant], cfg, seed=seed + i)
    write_t5(root, t5_config, seed=seed)
    write_tokenizer(root / T5_TOKENIZER_DIR)
    for writer in extra_writers:
        writer(root)
    return root
