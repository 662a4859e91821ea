"""Checkpoint folders: resolution (local, hub cache), DiT loading, sharding, every broken variant."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from release_fixture import write_dit, write_release_folder
from safetensors.torch import load_file, save_file

from world_model.checkpoint import CheckpointError
from world_model.config import mg3_5b, tiny
from world_model.dit import MatrixGameDiT
from world_model.text import load_umt5
from world_model.weights import (
    DIT_INDEX,
    DIT_WEIGHTS,
    INT8_SCALE_SUFFIX,
    load_dit,
    quantize_rows_int8,
    read_dit_config,
    resolve_checkpoint,
    write_dit_folder,
)

CFG = tiny().dit


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release_folder(tmp_path_factory.mktemp("release"))


@pytest.fixture
def broken(release, tmp_path):
    """A copy of the distilled DiT folder inside a fresh root, for breaking."""
    root = tmp_path / "root"
    shutil.copytree(release / "base_distilled_model", root / "base_distilled_model")
    return root


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), rtol=0, atol=0, msg=k)


def test_release_folder_layout(release):
    names = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    for f in (
        "model_index.json",
        "base_model/config.json",
        f"base_model/{DIT_WEIGHTS}",
        "base_distilled_model/config.json",
        f"base_distilled_model/{DIT_WEIGHTS}",
        "models_t5_umt5-xxl-enc-bf16.pth",
        "google/umt5-xxl/spiece.model",
        "google/umt5-xxl/tokenizer_config.json",
    ):
        assert f in names, f
    config = json.loads((release / "base_model/config.json").read_text())
    assert config["_class_name"] == "WanModel" and config["dim"] == CFG.dim
    assert config["action_config"]["blocks"] == list(CFG.action_config.blocks)


def test_load_dit_both_variants(release):
    torch.manual_seed(0)
    distilled = write_dit(release.parent / "scratch", CFG, seed=0)  # same seed as the fixture's distilled
    model = load_dit(release)
    assert isinstance(model, MatrixGameDiT) and not model.training
    assert model.cfg == CFG
    _same_weights(model, distilled)
    base = load_dit(release, variant="base", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in base.parameters())
    assert not torch.equal(base.state_dict()["head.head.weight"].float(), model.state_dict()["head.head.weight"])
    with pytest.raises(ValueError, match="variant must be one of"):
        load_dit(release, variant="fast")


def test_loaded_dit_runs(release):
    model = load_dit(release)
    B, F, h, w, M = 1, 2, 4, 4, 1
    x = torch.randn(B, CFG.in_dim, F, h, w)
    out = model(
        x,
        torch.tensor([[0.0, 908.0]]),
        torch.randn(B, 5, CFG.text_dim),
        torch.randn(B, CFG.plucker_channels, M + F, h, w),
        torch.ones(B, 4 * (F - 1) + 1, 2),  # window actions: 4k + 1 pixel frames
        -torch.ones(B, 4 * (F - 1) + 1, 6),
        torch.tensor([[0, 1, 2]]),
        memory=torch.randn(B, CFG.in_dim, M, h, w),
    )
    assert out.shape == (B, CFG.out_dim, F, h, w) and torch.isfinite(out).all()


def test_write_and_load_sharded(release, tmp_path):
    model = load_dit(release)
    root = tmp_path / "sharded"
    write_dit_folder(model, root / "base_distilled_model", max_shard_bytes=64 * 1024)
    folder = root / "base_distilled_model"
    index = json.loads((folder / DIT_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (folder / DIT_WEIGHTS).exists()
    _same_weights(load_dit(root), model)
    (folder / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"missing shard .*{shards[1]}"):
        load_dit(root)


def test_quantize_rows_int8_is_within_half_a_step_of_each_row():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 5, 7, generator=g) * torch.tensor([1e-3, 0.1, 1, 10, 0, 3])[:, None, None]
    q, scale = quantize_rows_int8(t)
    assert q.dtype == torch.int8 and q.shape == t.shape and scale.dtype == torch.float16 and scale.shape == (6,)
    back = q.float() * scale.float()[:, None, None]
    step = scale.float()[:, None, None]
    assert ((back - t).abs() <= step / 2 + 1e-6 * t.abs()).all()
    assert not back[4].any()  # an all-zero row stays zero
    assert q[2].abs().max() == 127  # each row's largest magnitude uses the full range


@pytest.mark.parametrize("shard", [None, 64 * 1024])
def test_int8_storage_halves_the_bytes_and_loads_as_floats(release, tmp_path, shard):
    model = load_dit(release)
    plain = write_dit_folder(model, tmp_path / "bf16" / "base_distilled_model", max_shard_bytes=shard)
    folder = write_dit_folder(model, tmp_path / "int8" / "base_distilled_model", max_shard_bytes=shard, int8=True)
    assert sum(f.stat().st_size for f in folder.glob("*.safetensors")) < 0.6 * sum(
        f.stat().st_size for f in plain.glob("*.safetensors")
    )  # fp32 fixture: int8 is ~1/4, plus the small tensors kept in float
    loaded = load_dit(tmp_path / "int8")
    assert set(loaded.state_dict()) == set(model.state_dict())  # no scale keys in the model
    quantized = 0
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == torch.float32
        if v.ndim >= 2 and v.numel() >= 4096:
            quantized += 1
            step = v.abs().reshape(v.shape[0], -1).amax(1).clamp(min=2**-14 * 127) / 127
            err = (w - v).abs().reshape(v.shape[0], -1).amax(1)
            assert (err <= step * 0.51 + 1e-3 * step).all(), k
        else:
            assert torch.equal(w, v), k  # small tensors stay exact
    assert quantized > 5
    if shard:  # each scale lives in its weight's shard
        wm = json.loads((folder / DIT_INDEX).read_text())["weight_map"]
        scales = [k for k in wm if k.endswith(INT8_SCALE_SUFFIX)]
        assert scales and all(wm[k] == wm[k.removesuffix(INT8_SCALE_SUFFIX)] for k in scales)


def test_int8_weight_without_its_scale_is_refused(release, tmp_path):
    folder = write_dit_folder(load_dit(release), tmp_path / "root" / "base_distilled_model", int8=True)
    state = load_file(str(folder / DIT_WEIGHTS))
    key = next(k for k in state if k.endswith(INT8_SCALE_SUFFIX))
    del state[key]
    save_file(state, str(folder / DIT_WEIGHTS))
    with pytest.raises(CheckpointError, match="int8 weights without their .int8_scale"):
        load_dit(tmp_path / "root")


def test_model_prefix_stripped_only_when_everywhere(broken):
    path = broken / "base_distilled_model" / DIT_WEIGHTS
    state = load_file(str(path))
    save_file({"model." + k: v for k, v in state.items()}, str(path))
    model = load_dit(broken)
    torch.testing.assert_close(model.state_dict()["head.modulation"], state["head.modulation"])
    some = {("model." + k if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    save_file(some, str(path))
    with pytest.raises(CheckpointError, match="unexpected keys: model."):
        load_dit(broken)


def _rewrite(path, change):
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_missing_key(broken):
    path = broken / "base_distilled_model" / DIT_WEIGHTS
    _rewrite(path, lambda s: s.pop("blocks.0.action_model.t_qkv.weight"))
    with pytest.raises(CheckpointError, match=f"(?s){DIT_WEIGHTS}.*1 missing keys: blocks.0.action_model.t_qkv"):
        load_dit(broken)


def test_extra_key(broken):
    path = broken / "base_distilled_model" / DIT_WEIGHTS
    _rewrite(path, lambda s: s.__setitem__("blocks.9.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=f"(?s){DIT_WEIGHTS}.*1 unexpected keys: blocks.9.extra.weight"):
        load_dit(broken)


def test_wrong_shape(broken):
    path = broken / "base_distilled_model" / DIT_WEIGHTS
    _rewrite(path, lambda s: s.__setitem__("head.modulation", torch.zeros(1, 3, CFG.dim)))
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches.*head.modulation: checkpoint \(1, 3, 64\)"):
        load_dit(broken)


def test_truncated_file(broken):
    path = broken / "base_distilled_model" / DIT_WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read .*{DIT_WEIGHTS}.*truncated or corrupt"):
        load_dit(broken)


def test_missing_weights_file(broken):
    (broken / "base_distilled_model" / DIT_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"missing .*{DIT_WEIGHTS}.*holds config.json"):
        load_dit(broken)


def test_wrong_folder(broken, tmp_path):
    with pytest.raises(CheckpointError, match="looks like a DiT subfolder itself; pass its parent"):
        load_dit(broken / "base_distilled_model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="(?s)missing base_distilled_model/.*it is empty.*release layout"):
        load_dit(empty)
    with pytest.raises(CheckpointError, match="missing base_model/"):
        load_dit(broken, variant="base")
    with pytest.raises(CheckpointError, match="expected an existing local folder or a hub id"):
        load_dit(tmp_path / "no" / "such" / "folder")
    with pytest.raises(CheckpointError, match="expected a checkpoint folder, got the file"):
        resolve_checkpoint(broken / "base_distilled_model" / "config.json")


def test_missing_config(broken):
    (broken / "base_distilled_model" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=f"missing .*config.json.*{DIT_WEIGHTS}"):
        load_dit(broken)


def test_invalid_config(broken):
    path = broken / "base_distilled_model" / "config.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_dit(broken)
    path.write_text(json.dumps({**CFG.to_dict(), "num_heads": 5}))
    with pytest.raises(CheckpointError, match=r"config.json holds an invalid DiT config: num_heads \(5\)"):
        read_dit_config(path.parent)


def test_hub_id_from_offline_cache(release, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout, offline."""
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    repo = cache / "models--Org--Tiny-MG3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(release, repo / "snapshots" / commit)
    got = resolve_checkpoint("Org/Tiny-MG3", cache_dir=cache)
    assert got == repo / "snapshots" / commit
    with pytest.raises(CheckpointError, match="fetching it from the Hugging Face hub failed"):
        resolve_checkpoint("Org/Not-There", cache_dir=cache)


def test_public_calls_load_the_fixture(release):
    """What a user types: load_dit(root) and load_umt5(root)."""
    assert isinstance(load_dit(release), MatrixGameDiT)
    enc = load_umt5(release)
    out = enc.encode(["a man walks through a forest"])
    assert out.shape == (1, 512, 32) and out.dtype == torch.bfloat16


def test_release_config_json_gives_the_5b_model(tmp_path):
    """A config.json with the release's keys (no text_dim, extra keys) reads as mg3_5b's DiT, and the
    model built from it on the meta device has the release's 1356 tensors and 6.47 B parameters."""
    action = {
        "blocks": list(range(15)), "keyboard_dim_in": 6, "mouse_dim_in": 2, "hidden_size": 128,
        "img_hidden_size": 3072, "keyboard_hidden_dim": 1024, "mouse_hidden_dim": 1024, "heads_num": 16,
        "windows_size": 3, "vae_time_compression_ratio": 4, "patch_size": [1, 2, 2], "qk_norm": True,
        "qkv_bias": False, "rope_dim_list": [8, 28, 28], "mouse_qk_dim_list": [8, 28, 28], "rope_theta": 256,
        "enable_mouse": True, "enable_keyboard": True,
    }  # fmt: skip
    config = {
        "_class_name": "WanModel", "model_type": "ti2v", "dim": 3072, "num_layers": 30, "num_heads": 24,
        "ffn_dim": 14336, "in_dim": 48, "out_dim": 48, "patch_size": [1, 2, 2], "text_len": 512,
        "freq_dim": 256, "eps": 1e-6, "qk_norm": True, "cross_attn_norm": True, "window_size": [-1, -1],
        "sigma_theta": 0.8, "is_action_model": True, "use_text_crossattn": True, "action_config": action,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = read_dit_config(tmp_path)
    assert cfg == mg3_5b().dit
    with torch.device("meta"):
        model = MatrixGameDiT(cfg)
    state = model.state_dict()
    assert len(state) == 1356
    assert round(sum(v.numel() for v in state.values()) / 1e9, 2) == 6.47
    assert state["blocks.14.action_model.keyboard_embed.0.weight"].shape == (128, 6)
    assert "blocks.15.action_model.t_qkv.weight" not in state


@pytest.mark.gpu
def test_load_dit_on_gpu_bf16(release):
    model = load_dit(release, device="cuda", dtype=torch.bfloat16)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in model.parameters())
    cpu = load_dit(release)
    torch.testing.assert_close(
        model.state_dict()["blocks.0.self_attn.q.weight"].float().cpu(),
        cpu.state_dict()["blocks.0.self_attn.q.weight"].to(torch.bfloat16).float(),
    )
