"""The Wan2.2 VAE family (world_model/vae.py): structure, streaming decode, encode, loaders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.bench_loader import load_bench
from tests.vae_fixture import randomize_, small_vae_config, to_diffusers_names, write_vae_checkpoints
from world_model.checkpoint import CheckpointError
from world_model.config import VAEConfig
from world_model.vae import (
    VAE_FILES,
    WAN_VAE_FILE,
    DecodeCache,
    WanVAE,
    convert_vae_state_dict,
    decoder_widths,
    encoder_widths,
    infer_pruning_rate,
    load_vae,
    patchify,
    unpatchify,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return randomize_(WanVAE(small_vae_config()), gen).eval()


def _latents(b: int, f: int, cfg: VAEConfig, seed: int = 1, hw: tuple[int, int] = (4, 4)) -> torch.Tensor:
    return torch.randn(b, cfg.z_dim, f, *hw, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Release structure (meta device)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate, widths",
    [
        (0.0, [1024, 1024, 1024, 512, 256]),
        (0.5, [512, 512, 512, 256, 128]),
        (0.75, [256, 256, 256, 128, 64]),
    ],
)
def test_release_structure_on_meta(rate, widths):
    cfg = VAEConfig(pruning_rate=rate)
    with torch.device("meta"):
        m = WanVAE(cfg)
    sd = m.state_dict()
    assert len(sd) == 196  # Wan2.2_VAE.pth holds 196 tensors (spec §2.1)
    assert decoder_widths(cfg) == widths
    assert encoder_widths(cfg) == [160, 160, 320, 640, 640]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["decoder.conv1.weight"] == (widths[0], 48, 3, 3, 3)
    assert shapes["decoder.head.2.weight"] == (12, widths[-1], 3, 3, 3)
    assert shapes["decoder.upsamples.0.upsamples.3.time_conv.weight"] == (2 * widths[1], widths[1], 3, 1, 1)
    assert shapes["decoder.upsamples.2.upsamples.0.shortcut.weight"] == (widths[3], widths[2], 1, 1, 1)
    assert shapes["decoder.upsamples.2.upsamples.3.resample.1.weight"] == (widths[3], widths[3], 3, 3)
    assert "decoder.upsamples.2.upsamples.3.time_conv.weight" not in shapes  # stage 2: space only
    assert not any(k.startswith("decoder.upsamples.3.upsamples.3") for k in shapes)  # stage 3: no resample
    assert shapes["decoder.middle.1.norm.gamma"] == (widths[0], 1, 1)
    assert shapes["decoder.middle.1.to_qkv.weight"] == (3 * widths[0], widths[0], 1, 1)
    # the encoder is always the full one
    assert shapes["encoder.conv1.weight"] == (160, 12, 3, 3, 3)
    assert shapes["encoder.downsamples.1.downsamples.2.time_conv.weight"] == (320, 320, 3, 1, 1)
    assert shapes["encoder.downsamples.0.downsamples.2.resample.1.weight"] == (160, 160, 3, 3)
    assert shapes["encoder.downsamples.1.downsamples.0.shortcut.weight"] == (320, 160, 1, 1, 1)
    assert shapes["encoder.head.2.weight"] == (96, 640, 3, 3, 3)
    assert shapes["encoder.head.0.gamma"] == (640, 1, 1, 1)
    assert shapes["conv1.weight"] == (96, 96, 1, 1, 1) and shapes["conv2.weight"] == (48, 48, 1, 1, 1)
    assert m.decoder.num_slots == 32  # MG3's vae_cache uses 32 slots (spec §7.2)
    assert cfg.spatial_stride == 16 and cfg.temporal_stride == 4


# A sample of the real key inventories of the release files (spec §0 S4).
REAL_WAN_KEYS = [
    "conv1.weight", "conv2.bias", "decoder.conv1.bias", "decoder.head.0.gamma", "decoder.middle.0.residual.0.gamma",
    "decoder.middle.1.to_qkv.weight", "decoder.upsamples.1.upsamples.1.residual.0.gamma",
    "encoder.downsamples.1.downsamples.0.shortcut.weight", "encoder.middle.1.proj.bias", "encoder.head.0.gamma",
]  # fmt: skip
REAL_LIGHT_KEYS = [
    "decoder.conv_in.weight", "decoder.conv_out.bias", "decoder.mid_block.attentions.0.norm.gamma",
    "decoder.mid_block.resnets.1.conv2.weight", "decoder.norm_out.gamma", "decoder.up_blocks.0.resnets.1.norm2.gamma",
    "decoder.up_blocks.0.upsampler.resample.1.weight", "decoder.up_blocks.1.upsampler.time_conv.bias",
    "encoder.conv_in.bias", "encoder.conv_out.weight", "encoder.down_blocks.0.downsampler.resample.1.bias",
    "encoder.down_blocks.1.downsampler.time_conv.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "encoder.mid_block.attentions.0.to_qkv.bias", "encoder.norm_out.gamma", "post_quant_conv.weight",
    "quant_conv.bias",
]  # fmt: skip


def test_real_key_names_map_onto_the_model():
    with torch.device("meta"):
        keys = set(WanVAE(VAEConfig()).state_dict())
    dummy = torch.zeros(1)
    assert set(convert_vae_state_dict(dict.fromkeys(REAL_WAN_KEYS, dummy))) == set(REAL_WAN_KEYS)  # unchanged
    light = dict.fromkeys([*REAL_LIGHT_KEYS, "dynamic_feature_projection_heads.up_block_1.weight"], dummy)
    converted = convert_vae_state_dict(light)
    assert len(converted) == len(REAL_LIGHT_KEYS)  # the training-only key is dropped
    assert set(converted) <= keys, sorted(set(converted) - keys)
    assert converted.keys() >= {"decoder.upsamples.0.upsamples.3.resample.1.weight", "conv1.bias", "conv2.weight"}


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="temporal_downsample without spatial_downsample"):
        WanVAE(small_vae_config().replace(spatial_downsample=(True, False)))
    with pytest.raises(ValueError, match="must be divisible"):
        WanVAE(small_vae_config().replace(dim_mult=(1, 3, 2)))


# --------------------------------------------------------------------------------------------
# Pixel shuffle
# --------------------------------------------------------------------------------------------


def test_patchify_channel_order_and_roundtrip():
    x = torch.randn(2, 3, 2, 6, 8)
    y = patchify(x, 2)
    assert y.shape == (2, 12, 2, 3, 4)
    # channel 4c + 2r + q holds pixel (2h + q, 2w + r) (Wan2.2's "(c r q)")
    for c, r, q in [(0, 0, 1), (1, 1, 0), (2, 1, 1)]:
        torch.testing.assert_close(y[:, 4 * c + 2 * r + q], x[:, c, :, q::2, r::2])
    torch.testing.assert_close(unpatchify(y, 2), x)


# --------------------------------------------------------------------------------------------
# Streaming decode
# --------------------------------------------------------------------------------------------


def test_streaming_decode_equals_whole_decode(vae):
    cfg = vae.cfg
    z = _latents(1, 35, cfg)
    with torch.no_grad():
        whole, _ = vae.decode(z, clamp=False)  # one first chunk, segments of 4
        one_call, _ = vae.decode(z, segment=35, clamp=False)
        parts, cache = [], None
        for s, e in [(0, 15), (15, 25), (25, 35)]:
            video, cache = vae.decode(z[:, :, s:e], cache, clamp=False)
            parts.append(video)
    assert [p.shape[2] for p in parts] == [57, 40, 40]
    assert [cfg.num_frames(15, True), cfg.num_frames(10, False)] == [57, 40]
    assert whole.shape == (1, 3, 137, 32, 32)
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5
    assert (one_call - whole).abs().max() <= 1e-5
    assert whole.abs().max() > 0.5  # not a degenerate all-zero decoder


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_generic_conv_path_matches_cpu_fast_path(vae):
    # the oneDNN channels-last path (CPU fp32) and F.conv3d (used on GPU) compute the same decoder
    z = _latents(1, 6, vae.cfg, seed=7)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        fast, fast_cache = vae.decode(z, clamp=False)
        fast_z = vae.encode(video)
        with torch.backends.mkldnn.flags(enabled=False):
            ref, ref_cache = vae.decode(z, clamp=False)
            ref_z = vae.encode(video)
    assert (fast - ref).abs().max() <= 1e-5 and (fast_z - ref_z).abs().max() <= 1e-5
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(fast_cache.states, ref_cache.states))


def test_first_chunk_frame_counts_and_causality(vae):
    z = _latents(1, 15, vae.cfg, seed=2)
    with torch.no_grad():
        image, cache = vae.decode(z[:, :, :1])
        assert image.shape[2] == 1 and not cache.fresh.any()
        clip, _ = vae.decode(z)
        z2 = z.clone()
        z2[:, :, 5:] += 1.0
        clip2, _ = vae.decode(z2)
    assert clip.shape[2] == 57
    assert (image - clip[:, :, :1]).abs().max() <= 1e-5  # the image latent gives frame 0
    # latent i covers frames 4i-3 .. 4i: changing latents >= 5 leaves frames < 17 untouched
    assert (clip[:, :, :17] - clip2[:, :, :17]).abs().max() <= 1e-5
    assert (clip[:, :, 17:] - clip2[:, :, 17:]).abs().max() > 1e-3


def test_per_env_reset_with_index_and_update(vae):
    cfg = vae.cfg
    za, zb = _latents(2, 15, cfg, seed=3), _latents(2, 10, cfg, seed=4)
    with torch.no_grad():
        _, cache = vae.decode(za)
        assert cache.batch_size == 2 and len(cache.states) == vae.decoder.num_slots
        # env 1 restarts; env 0 continues
        cache.reset_(torch.tensor([False, True]))
        assert cache.fresh.tolist() == [False, True]
        with pytest.raises(ValueError, match="separate calls"):
            vae.decode(zb, cache)
        cont, sub0 = vae.decode(zb[:1], cache.index([0]))
        new, sub1 = vae.decode(zb[1:], cache.index(torch.tensor([False, True])))
        assert cont.shape[2] == 40 and new.shape[2] == 37
        cache.update_([0], sub0).update_([1], sub1)
        assert not cache.fresh.any()
        # references: env 0 decoded alone without a break, env 1 decoded alone from scratch
        _, ref_cache = vae.decode(za[:1])
        ref_cont, _ = vae.decode(zb[:1], ref_cache)
        ref_new, ref_new_cache = vae.decode(zb[1:])
        zc = _latents(2, 10, cfg, seed=5)
        nxt, _ = vae.decode(zc, cache)
        ref_nxt1, _ = vae.decode(zc[1:], ref_new_cache)
    assert (cont - ref_cont).abs().max() <= 1e-5
    assert (new - ref_new).abs().max() <= 1e-5
    assert (nxt[1:] - ref_nxt1).abs().max() <= 1e-5


def test_decode_cache_errors_and_copies(vae):
    z = _latents(2, 3, vae.cfg)
    with torch.no_grad():
        _, cache = vae.decode(z)
        with pytest.raises(ValueError, match="first_chunk=True but streams \\[0, 1\\] are mid-stream"):
            vae.decode(z, cache, first_chunk=True)
        with pytest.raises(ValueError, match="first_chunk=False but streams \\[0, 1\\] are fresh"):
            vae.decode(z, None, first_chunk=False)
        with pytest.raises(ValueError, match="batch 1 but the cache holds 2"):
            vae.decode(z[:1], cache)
        with pytest.raises(ValueError, match=r"expected latents \[B, 8, F >= 1, h, w\]"):
            vae.decode(torch.zeros(1, 4, 2, 4, 4))
        snapshot = cache.clone()
        vae.decode(z, cache)  # the input cache is not modified
        assert all(torch.equal(a, b) for a, b in zip(snapshot.states, cache.states))
        moved = cache.to("cpu", torch.float64)
        assert moved.states[0].dtype == torch.float64 and moved.fresh.device.type == "cpu"
        cache.reset_([True, True])
        assert all(s.abs().max() == 0 for s in cache.states) and cache.fresh.all()
        assert snapshot.states[3].abs().max() > 0
    with pytest.raises(IndexError, match="out of range"):
        cache.index([2])
    with pytest.raises(ValueError, match="got 1 indices but a cache of batch size 2"):
        cache.update_([0], snapshot)


def test_decode_cache_copy_is_a_snapshot_through_every_update(vae):
    """No method writes into a state tensor, so a shallow copy (what the env keeps to undo a failed
    step) survives decodes, partial and whole updates and resets; whole-batch index/update copy nothing."""
    z = _latents(2, 3, vae.cfg)
    with torch.no_grad():
        _, cache = vae.decode(z)
        snap, deep = cache.copy(), cache.clone()
        assert all(a is b for a, b in zip(snap.states, cache.states))  # nothing copied
        whole = cache.index([0, 1])
        assert all(a is b for a, b in zip(whole.states, cache.states))
        assert all(a is not b for a, b in zip(cache.index([1]).states, cache.states))
        _, new = vae.decode(z, whole)
        cache.update_([0, 1], new)
        assert all(a is b for a, b in zip(cache.states, new.states))  # taken, not copied
        cache.update_([1], vae.decode(z[1:], cache.index([1]))[1])
        cache.reset_([True, False])
        cache.update_([0], DecodeCache.new(1))
        assert not cache.fresh[1] and cache.fresh[0]
        assert all(torch.equal(a, b) for a, b in zip(snap.states, deep.states))
        assert not snap.fresh.any()


# --------------------------------------------------------------------------------------------
# Encode
# --------------------------------------------------------------------------------------------


def test_encode_shapes_causality_and_segments(vae):
    cfg = vae.cfg
    video = torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (2, cfg.z_dim, 3, 4, 4)
        image = vae.encode(video[:, :, :1])
        assert image.shape == (2, cfg.z_dim, 1, 4, 4)
        assert (image - z[:, :, :1]).abs().max() <= 1e-5  # the first frame is encoded alone
        changed = video.clone()
        changed[:, :, 5:] = -changed[:, :, 5:]
        z2 = vae.encode(changed)
        z_all = vae.encode(video, segment_frames=8)
        mu, log_var = vae.encode_moments(video)
    assert (z[:, :, :2] - z2[:, :, :2]).abs().max() <= 1e-5  # latents 0-1 see frames 0-4 only
    assert (z[:, :, 2] - z2[:, :, 2]).abs().max() > 1e-3
    assert (z - z_all).abs().max() <= 1e-5
    assert mu.shape == log_var.shape == z.shape
    stats = torch.tensor(cfg.latent_mean).view(1, -1, 1, 1, 1), torch.tensor(cfg.latent_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (mu - stats[0]) / stats[1])
    with pytest.raises(ValueError, match="expected T = 1 \\+ 4k frames"):
        vae.encode(video[:, :, :4])
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(video[:, :, :, :28])
    with pytest.raises(ValueError, match=r"expected video \[B, 3, T, H, W\]"):
        vae.encode(video[:, 0])


def test_encode_decode_roundtrip_shapes_and_range(vae):
    video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(8)) * 2 - 1
    shifted = copy.deepcopy(vae)
    with torch.no_grad():
        shifted.decoder.head["2"].bias += 1.5  # push the output past 1 so that the clamp matters
        out = vae(video)
        z = vae.encode(video)
        clamped, _ = shifted.decode(z)
        raw, _ = shifted.decode(z, clamp=False)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert raw.max() > 1.0
    torch.testing.assert_close(clamped, raw.clamp(-1, 1))


def test_latent_normalisation_constants():
    cfg = VAEConfig()
    with torch.device("meta"):
        m = WanVAE(cfg)
    m.init_latent_stats_("cpu")
    assert m.latent_mean.shape == (1, 48, 1, 1, 1)
    assert m.latent_mean[0, 19].item() == pytest.approx(0.5109)
    assert 1.0 / m.latent_inv_std[0, 39].item() == pytest.approx(1.6887)
    assert "latent_mean" not in m.state_dict()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> tuple[Path, VAEConfig]:
    folder = tmp_path_factory.mktemp("vae_release")
    return folder, write_vae_checkpoints(folder)


def test_load_all_variants(release_dir):
    folder, cfg = release_dir
    wan = torch.load(folder / WAN_VAE_FILE, weights_only=True)
    for vae_type, (fname, rate) in VAE_FILES.items():
        m = load_vae(folder, vae_type, cfg=cfg)
        assert m.cfg.pruning_rate == rate and not m.training
        assert decoder_widths(m.cfg)[0] == m.decoder.conv1.out_channels
        sd = m.state_dict()
        for k in ("encoder.conv1.weight", "encoder.middle.1.proj.weight", "conv1.bias"):
            assert torch.equal(sd[k], wan[k])  # the encoder always comes from Wan2.2_VAE.pth
        if vae_type == "wan":
            assert torch.equal(sd["decoder.head.2.weight"], wan["decoder.head.2.weight"])
        else:
            light = torch.load(folder / fname, weights_only=True)["state_dict"]["gen_model"]
            assert infer_pruning_rate(light, cfg) == rate
            assert torch.equal(sd["decoder.head.2.weight"], light["decoder.conv_out.weight"])
            assert torch.equal(sd["decoder.middle.0.residual.6.bias"], light["decoder.mid_block.resnets.0.conv2.bias"])
            assert torch.equal(sd["conv2.weight"], light["post_quant_conv.weight"])
        with torch.no_grad():
            video, cache = m.decode(torch.randn(1, cfg.z_dim, 2, 2, 2))
        assert video.shape == (1, 3, 5, 16, 16) and cache.states is not None
    m16 = load_vae(folder, "wan", dtype=torch.bfloat16, cfg=cfg)
    assert m16.decoder.conv1.weight.dtype == torch.bfloat16 and m16.latent_mean.dtype == torch.bfloat16


def test_native_names_load_as_lightvae(tmp_path, release_dir):
    folder, cfg = release_dir
    light = torch.load(folder / "MG-LightVAE.pth", weights_only=True)["state_dict"]["gen_model"]
    native = convert_vae_state_dict(light, cfg)
    (tmp_path / WAN_VAE_FILE).write_bytes((folder / WAN_VAE_FILE).read_bytes())
    torch.save({"state_dict": {"gen_model": native}}, tmp_path / "MG-LightVAE.pth")
    m = load_vae(tmp_path, "mg_lightvae", cfg=cfg)
    assert torch.equal(m.state_dict()["decoder.conv1.weight"], light["decoder.conv_in.weight"])
    assert to_diffusers_names(native, cfg).keys() == light.keys() - {
        "dynamic_feature_projection_heads.up_block_1.weight",
        "dynamic_feature_projection_heads.up_block_1.bias",
    }


def _copy_release(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


def test_broken_checkpoints_give_clear_errors(tmp_path, release_dir):
    folder, cfg = release_dir
    with pytest.raises(ValueError, match="vae_type must be one of"):
        load_vae(folder, "lightvae3", cfg=cfg)
    with pytest.raises(CheckpointError, match="missing checkpoint file.*Wan2.2_VAE.pth"):
        load_vae(tmp_path, "wan", cfg=cfg)
    _copy_release(folder, tmp_path)
    # swapped LightVAE files: the pruning rate gives it away
    (tmp_path / "MG-LightVAE_v2.pth").write_bytes((folder / "MG-LightVAE.pth").read_bytes())
    with pytest.raises(CheckpointError, match="pruned by 0.5, but vae_type 'mg_lightvae_v2' expects 0.75"):
        load_vae(tmp_path, "mg_lightvae_v2", cfg=cfg)
    # a missing and a reshaped decoder key, an unknown key
    wrapped = torch.load(folder / "MG-LightVAE.pth", weights_only=True)
    sd = wrapped["state_dict"]["gen_model"]
    sd.pop("decoder.mid_block.resnets.0.norm1.gamma")
    sd["decoder.up_blocks.0.upsampler.time_conv.weight"] = torch.zeros(3, 3, 3, 1, 1)
    sd["decoder.extra_head.weight"] = torch.zeros(1)
    torch.save(wrapped, tmp_path / "MG-LightVAE.pth")
    with pytest.raises(CheckpointError) as e:
        load_vae(tmp_path, "mg_lightvae", cfg=cfg)
    msg = str(e.value)
    assert "MG-LightVAE.pth" in msg and "missing keys: decoder.middle.0.residual.0.gamma" in msg
    assert "unexpected keys: decoder.extra_head.weight" in msg
    assert "decoder.upsamples.0.upsamples.2.time_conv.weight: checkpoint (3, 3, 3, 1, 1), model (16, 8, 3, 1, 1)" in msg
    # a flat file where the wrapping is expected
    torch.save(sd, tmp_path / "MG-LightVAE.pth")
    with pytest.raises(CheckpointError, match="expected a 'state_dict' entry"):
        load_vae(tmp_path, "mg_lightvae", cfg=cfg)
    # a truncated Wan2.2_VAE.pth, and one missing a tensor
    wan = torch.load(folder / WAN_VAE_FILE, weights_only=True)
    wan.pop("encoder.head.0.gamma")
    torch.save(wan, tmp_path / WAN_VAE_FILE)
    with pytest.raises(CheckpointError, match="missing keys: encoder.head.0.gamma"):
        load_vae(tmp_path, "wan", cfg=cfg)
    (tmp_path / WAN_VAE_FILE).write_bytes((folder / WAN_VAE_FILE).read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_vae(tmp_path, "wan", cfg=cfg)
    with pytest.raises(CheckpointError, match="cannot infer the pruning rate"):
        infer_pruning_rate({"encoder.conv1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------
# Benchmark smoke test
# --------------------------------------------------------------------------------------------


def test_bench_tiny_smoke(tmp_path):
    bench = load_bench("vae.py")
    out = tmp_path / "vae.json"
    args = ["--tiny", "--height", "32", "--width", "32", "--frames", "8", "--first-latents", "1"]
    bench.main([*args, "--iters", "1", "--warmup", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"full", "lightvae (p=0.5)", "lightvae_v2 (p=0.75)"}
    assert all(r["frames"] == 8 and r["seconds"] > 0 and r["decoder_gflop"] > 0 for r in rows.values())
    assert rows["full"]["decoder_gflop"] > rows["lightvae (p=0.5)"]["decoder_gflop"]
    assert rows["lightvae (p=0.5)"]["decoder_gflop"] > rows["lightvae_v2 (p=0.75)"]["decoder_gflop"]


def test_uint8_frames_are_contiguous_channels_last_and_rounded():
    """The transpose happens before the copy to the host, so the env's numpy frames need no gather."""
    from world_model.vae import to_uint8_frames

    video = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 3, 1, 1, 2)  # [B, 3, T, H, W]
    frames = to_uint8_frames(video)
    assert frames.shape == (1, 1, 1, 2, 3) and frames.dtype == torch.uint8 and frames.is_contiguous()
    assert frames.flatten().tolist() == [0, 128, 255, 0, 255, 255]  # (R, G, B) of pixel 0, then pixel 1


@pytest.mark.gpu
def test_uint8_frames_from_cuda_land_in_pinned_memory_complete():
    """A CUDA video comes back in page-locked memory, synchronised: every value as from the CPU path."""
    from world_model.vae import to_uint8_frames

    video = torch.rand(2, 3, 5, 64, 96) * 2.2 - 1.1
    frames = to_uint8_frames(video.cuda())
    assert frames.device.type == "cpu" and frames.is_pinned() and frames.is_contiguous()
    assert torch.equal(frames, to_uint8_frames(video))
