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
