import json

import pytest

from world_model.config import ActionConfig, ConfigError, DiTConfig, VAEConfig, WorldModelConfig, mg3_5b, tiny


def test_presets_validate_and_round_trip(tmp_path):
    for cfg in (mg3_5b(), mg3_5b(distilled=False), tiny()):
        p = tmp_path / "config.json"
        cfg.save(p)
        assert WorldModelConfig.load(p) == cfg


def test_release_config_json_reads_with_extra_keys():
    raw = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.35.0",
        "is_action_model": True,
        "dim": 3072,
        "num_heads": 24,
        "num_layers": 30,
        "ffn_dim": 14336,
        "in_dim": 48,
        "out_dim": 48,
        "patch_size": [1, 2, 2],
        "sigma_theta": 0.8,
        "action_config": {"blocks": list(range(15)), "keyboard_dim_in": 6, "rope_dim_list": [8, 28, 28]},
    }
    cfg = DiTConfig.from_release(json.loads(json.dumps(raw)))
    assert cfg == DiTConfig()
    with pytest.raises(ConfigError, match="unknown keys"):
        DiTConfig.from_dict(raw, strict=True)


def test_validation_messages():
    with pytest.raises(ConfigError, match=r"num_heads \(24\) must divide dim \(3070\)"):
        DiTConfig(dim=3070, action_config=None)
    with pytest.raises(ConfigError, match="img_hidden_size"):
        DiTConfig(dim=1536, num_heads=12)
    with pytest.raises(ConfigError, match="rope_dim_list"):
        ActionConfig(rope_dim_list=(8, 28, 29))
    with pytest.raises(ConfigError, match="pruning_rate"):
        VAEConfig(pruning_rate=1.0)
    with pytest.raises(ConfigError, match="divisible"):
        tiny(height=60)


def test_stream_geometry():
    cfg = mg3_5b()
    assert cfg.latent_hw == (44, 80)
    assert cfg.vae.spatial_stride == 16 and cfg.vae.temporal_stride == 4
    assert cfg.vae.num_frames(15, first_chunk=True) == 57
    assert cfg.vae.num_frames(10, first_chunk=False) == 40
    assert cfg.dit.plucker_channels == 1536
    t = tiny()
    assert t.vae.spatial_stride == 8 and t.latent_hw == (8, 8)


def test_negative_prompt_is_the_release_string():
    """Word for word the release's (spec §15.3), the default of the base model's guidance."""
    release = (
        "Vibrant colors, overexposure, static, blurred details, subtitles, style, artwork, painting, still image, "
        "overall grayness, worst quality, low quality, JPEG compression residue, ugly, mutilated, extra fingers, "
        "poorly drawn hands, poorly drawn faces, deformed, disfigured, malformed limbs, fused fingers, still image, "
        "cluttered background, three legs, crowded background, walking backwards"
    )
    assert mg3_5b(distilled=False).sampler.negative_prompt == release
    assert mg3_5b(distilled=False).sampler.guidance_scale == 5.0


_RELEASE_5B_KEYS = {
    "dim": 3072, "num_heads": 24, "num_layers": 30, "ffn_dim": 14336, "in_dim": 48, "out_dim": 48,
    "action_config": {"blocks": list(range(15))},
}  # fmt: skip


def test_release_config_sigma_theta_defaults_to_plain_rope():
    """Absent: the release's constructor default 0.0 (spec §15.4); present: the file's value."""
    assert DiTConfig.from_release(dict(_RELEASE_5B_KEYS)).sigma_theta == 0.0
    for value in (0.0, 0.8, 0.5):
        assert DiTConfig.from_release({**_RELEASE_5B_KEYS, "sigma_theta": value}).sigma_theta == value


def test_release_config_defaults_of_the_other_keys():
    cfg = DiTConfig.from_release(dict(_RELEASE_5B_KEYS))
    # absent from the release's file: the umt5-xxl width; memory on, so the 2048-entry RoPE table
    assert cfg.text_dim == 4096 and cfg.text_len == 512 and cfg.use_memory is True and cfg.rope_max_len == 2048
    assert (cfg.freq_dim, cfg.eps, cfg.qk_norm, cfg.cross_attn_norm) == (256, 1e-6, True, True)
    assert cfg.patch_size == (1, 2, 2) and cfg.window_size == (-1, -1) and cfg.vae_spatial_stride == 16
    assert cfg.action_config == ActionConfig()  # missing action keys take the 5B's values
    no_memory = DiTConfig.from_release({**_RELEASE_5B_KEYS, "use_memory": False})
    assert no_memory.use_memory is False and no_memory.rope_max_len == 1024  # plain Wan's table
    assert DiTConfig.from_release({**_RELEASE_5B_KEYS, "rope_max_len": 4096}).rope_max_len == 4096
    # no action_config: no action module; no sizes: Wan's constructor sizes, which the 5B weights do not fit
    bare = DiTConfig.from_release({"_class_name": "WanModel"})
    assert bare.action_config is None
    assert (bare.dim, bare.num_layers, bare.num_heads, bare.ffn_dim, bare.in_dim, bare.out_dim) == (
        2048,
        32,
        16,
        8192,
        16,
        16,
    )


def test_action_guidance_validates_and_round_trips(tmp_path):
    from world_model.config import SamplerConfig

    cfg = tiny()
    guided = cfg.replace(sampler=cfg.sampler.replace(action_guidance=2.5))
    guided.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["sampler"]["action_guidance"] == 2.5
    assert WorldModelConfig.load(tmp_path / "config.json") == guided
    old = cfg.to_dict()
    del old["sampler"]["action_guidance"]  # a config.json written before the key existed
    assert WorldModelConfig.from_dict(old).sampler.action_guidance == 1.0
    for bad in (0.5, 0.0, float("nan")):
        with pytest.raises(ConfigError, match=r"action_guidance \(.*\) must be >= 1"):
            SamplerConfig(action_guidance=bad)
    with pytest.raises(ConfigError, match="choose one"):
        SamplerConfig(guidance_scale=5.0, action_guidance=2.0)
    assert SamplerConfig(guidance_scale=5.0, action_guidance=1.0).guidance_scale == 5.0  # one of them: fine
    with pytest.raises(ConfigError, match=r"memory_guidance \(0.5\) must be >= 1"):
        SamplerConfig(memory_guidance=0.5)
    with pytest.raises(ConfigError, match="choose one"):
        SamplerConfig(action_guidance=2.0, memory_guidance=2.0)
    assert SamplerConfig(memory_guidance=2.0).memory_guidance == 2.0
