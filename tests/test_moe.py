"""The two-expert DiT (mg3-28b-moe preset, spec §1.3): sizes on meta, timestep switch, folder layout, env."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mg3_env.env import MatrixGameEnv
from world_model.checkpoint import CheckpointError
from world_model.config import ConfigError, MoEConfig, WorldModelConfig, mg3_5b, mg3_28b_moe, tiny
from world_model.dit import MatrixGameDiT
from world_model.model import load_world_model, random_world_model
from world_model.moe import MoEDiT
from world_model.sampler import FlowUniPCSampler
from world_model.weights import MOE_SUBFOLDERS, load_moe_dit, write_dit_folder


def _tiny_moe(height: int = 16, width: int = 16, boundary: float = 0.9) -> WorldModelConfig:
    """The tiny architecture with a second, action-free expert for the low-noise steps."""
    base = tiny(height, width)
    low = base.dit.replace(action_config=None, num_layers=1)
    return base.replace(name="tiny-moe", moe=MoEConfig(low_noise=low, boundary=boundary))


def _dit_parameters(d: int, layers: int, heads: int, ffn: int, channels: int, action_blocks: int) -> int:
    """Parameter count from the checkpoint's tensor shapes (spec §2.2) for another size; action sizes
    as the 5B's (hidden 128, mouse/keyboard 1024, 16 heads x 64, windows of 12 frames)."""
    assert d % heads == 0
    lin = lambda i, o: i * o + o  # noqa: E731
    top = (
        d * channels * 4 + d  # patch_embedding (Conv3d 1x2x2)
        + lin(6 * 256 * 4, d) + 2 * lin(d, d)  # camera tokens: patch_embedding_wancamctrl, c2ws layers
        + lin(4096, d) + lin(d, d)  # text_embedding
        + lin(256, d) + lin(d, d) + lin(d, 6 * d)  # time_embedding, time_projection
        + lin(d, channels * 4) + 2 * d  # head, head.modulation
    )  # fmt: skip
    block = (
        2 * (4 * lin(d, d) + 2 * d)  # self_attn and cross_attn: q/k/v/o + norm_q/norm_k
        + 2 * d  # norm3
        + lin(d, ffn) + lin(ffn, d)  # ffn
        + 6 * d  # modulation
        + 4 * lin(d, d)  # cam_injector_layer1/2, cam_scale_layer, cam_shift_layer
    )  # fmt: skip
    action = (
        lin(6, 128) + lin(128, 128)  # keyboard_embed
        + lin(2 * 12 + d, 1024) + lin(1024, 1024) + 2 * 1024  # mouse_mlp (+ LayerNorm)
        + 3072 * 1024 + 4 * 64  # t_qkv, q/k norms of both branches
        + d * 1024 + 1024 * d  # proj_mouse, mouse_attn_q
        + 2048 * 12 * 128 + d * 1024  # keyboard_attn_kv, proj_keyboard
    )  # fmt: skip
    return top + layers * block + action_blocks * action


def test_parameter_formula_reproduces_the_5b_count():
    with torch.device("meta"):
        model = MatrixGameDiT(mg3_5b().dit)
    n = sum(p.numel() for p in model.parameters())
    assert n == _dit_parameters(3072, 30, 24, 14336, 48, 15)
    assert round(n / 1e9, 2) == 6.47  # spec §1.1


def test_28b_moe_preset_builds_on_meta_with_its_parameter_count():
    cfg = mg3_28b_moe()
    assert cfg.dit.dim == 5120 and cfg.dit.num_layers == 40 and cfg.dit.num_heads == 40 and cfg.dit.ffn_dim == 13824
    assert cfg.dit.in_dim == cfg.dit.out_dim == 48 and cfg.moe.boundary == 0.9
    assert cfg.dit.action_config.blocks == tuple(range(20)) and cfg.moe.low_noise.action_config is None
    with torch.device("meta"):
        model = MoEDiT.from_config(cfg)
    high = sum(p.numel() for p in model.high_noise.parameters())
    low = sum(p.numel() for p in model.low_noise.parameters())
    print(
        f"mg3-28b-moe: high-noise expert {high / 1e9:.3f} B, low-noise expert {low / 1e9:.3f} B, "
        f"total {(high + low) / 1e9:.3f} B parameters ({2 * (high + low) / 1e9:.1f} GB in bf16)"
    )
    assert high == _dit_parameters(5120, 40, 40, 13824, 48, 20)
    assert low == _dit_parameters(5120, 40, 40, 13824, 48, 0)
    assert 14e9 < low < high < 20e9  # "14B-class" experts, plus this family's camera layers
    assert model.boundary_timestep == 900.0
    assert mg3_28b_moe(distilled=False).sampler.num_steps == 50


def test_moe_config_round_trips_and_validates(tmp_path):
    for cfg in (mg3_28b_moe(), mg3_28b_moe(distilled=False, boundary=0.875), _tiny_moe()):
        cfg.save(tmp_path / "config.json")
        assert WorldModelConfig.load(tmp_path / "config.json") == cfg
    base = tiny()
    with pytest.raises(ConfigError, match=r"moe.low_noise.in_dim \(4\) must equal dit.in_dim \(8\)"):
        base.replace(moe=MoEConfig(low_noise=base.dit.replace(in_dim=4, out_dim=4)))
    with pytest.raises(ConfigError, match="boundary"):
        MoEConfig(boundary=1.0)


def test_the_three_step_schedule_runs_two_high_noise_steps_then_one_low_noise_step():
    moe = MoEDiT.from_config(_tiny_moe())
    for steps, shift in ((3, 5.0), (50, 5.0)):
        sampler = FlowUniPCSampler(steps, shift)
        seen = torch.stack([torch.tensor([[0.0, float(t)]]) for t in sampler.model_timesteps()]).squeeze(1)
        wan_rule = sampler.timesteps >= 900  # Wan2.2 compares the scheduler's integer timestep
        assert torch.equal(moe.uses_high_noise(seen), wan_rule)
    assert FlowUniPCSampler(3, 5.0).model_timesteps().tolist() == [1000.0, 908.0, 712.0]
    assert moe.uses_high_noise(torch.tensor([[0.0, 1000.0], [0.0, 908.0], [0.0, 712.0]])).tolist() == [
        True,
        True,
        False,
    ]


def test_a_batch_is_split_between_the_experts():
    moe = MoEDiT.from_config(_tiny_moe()).eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = moe.cfg
    g = torch.Generator().manual_seed(0)
    B, M, F, h, w = 4, 2, 3, 4, 4
    t = torch.zeros(B, F)
    t[:, 1:] = torch.tensor([1000.0, 712.0, 908.0, 500.0])[:, None]
    inputs = {
        "x": torch.randn(B, cfg.in_dim, F, h, w, generator=g),
        "t": t,
        "context": torch.randn(B, 5, cfg.text_dim, generator=g),
        "plucker": torch.randn(B, cfg.plucker_channels, M + F, h, w, generator=g),
        "mouse": 0.3 * torch.randn(B, 4 * F, 2, generator=g),
        "keyboard": (torch.rand(B, 4 * F, 6, generator=g) > 0.5).float(),
        "positions": torch.arange(M + F)[None].expand(B, -1) + 5,
        "memory": torch.randn(B, cfg.in_dim, M, h, w, generator=g),
    }
    with torch.no_grad():
        out = moe(**inputs)
        for b, expert in enumerate((moe.high_noise, moe.low_noise, moe.high_noise, moe.low_noise)):
            alone = expert(**{k: v[b : b + 1] for k, v in inputs.items()})
            torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-5)
        other = moe.low_noise(**{k: v[:1] for k, v in inputs.items()})
    assert (other - out[:1]).abs().max() > 1e-3  # the experts really differ


def test_tiny_moe_runs_through_the_env_and_switches_experts_at_the_boundary():
    model = random_world_model(_tiny_moe(16, 16))
    assert isinstance(model.dit, MoEDiT)
    calls: list[tuple[str, float]] = []
    hooks = [
        getattr(model.dit, name).register_forward_pre_hook(
            lambda module, args, name=name: calls.append((name, float(args[1].amax())))
        )
        for name in ("high_noise", "low_noise")
    ]
    env = MatrixGameEnv(model=model, max_chunks=2)
    try:
        obs, info = env.reset(seed=0)
        obs, *_ = env.step({"keyboard": np.array([1, 0, 0, 0, 0, 0], np.int8), "mouse": np.array([0.0, 0.1])})
    finally:
        env.close()
        for hook in hooks:
            hook.remove()
    assert obs["frames"].shape == (40, 16, 16, 3) and np.isfinite(obs["pose"]).all()
    per_chunk = [("high_noise", 1000.0), ("high_noise", 908.0), ("low_noise", 712.0)]
    assert calls == per_chunk * 2  # reset (chunk 0) and one step (chunk 1)


def test_expert_folders_load_and_a_missing_one_is_named(tmp_path):
    cfg = _tiny_moe()
    torch.manual_seed(0)
    high, low = MatrixGameDiT(cfg.dit), MatrixGameDiT(cfg.moe.low_noise)
    write_dit_folder(high, tmp_path / MOE_SUBFOLDERS["high_noise"])
    write_dit_folder(low, tmp_path / MOE_SUBFOLDERS["low_noise"])
    moe = load_moe_dit(tmp_path, 900.0, dtype=torch.bfloat16)
    assert moe.high_noise.cfg == cfg.dit and moe.low_noise.cfg == cfg.moe.low_noise
    for loaded, saved in ((moe.high_noise, high), (moe.low_noise, low)):
        for k, v in saved.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v.to(torch.bfloat16), rtol=0, atol=0, msg=k)
    (tmp_path / "low_noise_model" / "config.json").rename(tmp_path / "elsewhere.json")
    (tmp_path / "low_noise_model").rename(tmp_path / "low")
    with pytest.raises(CheckpointError, match="missing low_noise_model/"):
        load_moe_dit(tmp_path, 900.0)


def test_unreleased_preset_name_says_what_to_do():
    with pytest.raises(ValueError, match="not released yet.*high_noise_model/ and low_noise_model/"):
        load_world_model("mg3-28b-moe")
