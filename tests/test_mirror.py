"""Mirror augmentation of the DiT's training data: frames flipped left-right with mirrored actions and poses."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from einops import rearrange

from world_model.camera import c2w_from_poses, integrate_poses, window_plucker
from world_model.config import tiny
from world_model.train.clips import ClipSampler
from world_model.train.frames import FrameStore, mirrored_actions, synthetic_store


def _mirror_poses(p):
    q = p.clone() if isinstance(p, torch.Tensor) else p.copy()
    q[..., 1], q[..., 4] = -q[..., 1], -q[..., 4]
    return q


def _unfold(code: torch.Tensor, s: int) -> torch.Tensor:
    """A folded camera code [B, 6 s s, F, h, w] at pixel resolution [B, 6, F, H, W]."""
    return rearrange(code, "b (c dy dx) f h w -> b c f (h dy) (w dx)", dy=s, dx=s)


def _mirror_code(code: torch.Tensor) -> torch.Tensor:
    """What the mirror does to a pixel-resolution camera code: columns reversed, the camera-x components of the
    ray origins and directions (channels 0 and 3) negated."""
    out = code.flip(-1).clone()
    out[:, [0, 3]] = -out[:, [0, 3]]
    return out


def test_mirrored_actions_integrate_to_the_mirrored_path():
    """The mirrored keys and mouse, integrated from the mirrored start, walk the mirrored path (y and yaw negated)."""
    g = torch.Generator().manual_seed(0)
    b, t = 3, 40
    keyboard = (torch.rand(b, t, 6, generator=g) < 0.4).float()
    mouse = (torch.rand(b, t, 2, generator=g) - 0.5) * 0.6
    start = torch.tensor([[10.0, -4.0, 41.0, 3.0, 20.0], [0.0, 0.0, 41.0, -5.0, -60.0], [5.0, 7.0, 41.0, 0.0, 100.0]])
    cfg = tiny(32, 32).stream
    path = integrate_poses(keyboard, mouse, start.double(), cfg)
    m, k, _ = mirrored_actions(mouse.numpy(), keyboard.numpy(), np.zeros((b, t, 5), np.float32))
    assert np.array_equal(k[..., 2], keyboard[..., 3].numpy()) and np.array_equal(m[..., 0], mouse[..., 0].numpy())
    mirrored = integrate_poses(torch.from_numpy(k), torch.from_numpy(m), _mirror_poses(start).double(), cfg)
    torch.testing.assert_close(mirrored, _mirror_poses(path), atol=1e-3, rtol=0)
    assert (path[..., 1] - path[:, :1, 1]).abs().max() > 1  # the paths do move sideways


def test_the_mirrored_poses_give_the_mirrored_camera_code():
    """The DiT's camera code (relative poses -> Plücker rays) of mirrored poses is the original's seen in the mirror:
    its pixel columns reversed and its camera-x components negated, so mirrored frames and mirrored poses agree."""
    g = torch.Generator().manual_seed(1)
    poses = torch.cumsum(torch.randn(2, 6, 5, generator=g, dtype=torch.float64) * torch.tensor([3, 3, 0, 4, 9]), 1)
    s = 4
    code = window_plucker(c2w_from_poses(poses), 32, 32, s)
    mirrored = window_plucker(c2w_from_poses(_mirror_poses(poses)), 32, 32, s)
    torch.testing.assert_close(_unfold(mirrored, s), _mirror_code(_unfold(code, s)))


def _tiny_vae(cfg):
    from world_model.train.autoencoder import identity_stats
    from world_model.vae import WanVAE

    torch.manual_seed(0)
    return WanVAE(identity_stats(cfg.vae)).eval()


def test_encode_store_mirror_appends_the_mirrored_segments_that_the_clip_sampler_then_serves():
    """encode_store(mirror=True): segments S..2S-1 are exactly what a store of the flipped frames with the mirrored
    actions encodes to; a training window of a mirrored segment carries the mirrored mouse, keys and camera code."""
    from world_model.text import make_text_encoder
    from world_model.train.encode import encode_store

    cfg = tiny(32, 32)
    vae, text = _tiny_vae(cfg), make_text_encoder(cfg.text)
    store = synthetic_store(2, 100, (32, 32))
    plain = encode_store(vae, store, 25, text, progress=False)
    both = encode_store(vae, store, 25, text, progress=False, mirror=True)
    m, k, p = mirrored_actions(store.mouse, store.keyboard, store.poses)
    flipped = FrameStore(
        np.ascontiguousarray(store.frames[:, :, ::-1]), m, k, p, store.starts, store.prompts, store.levels, store.fps
    )
    alone = encode_store(vae, flipped, 25, text, progress=False)
    s, n = plain.num_segments, len(store.frames)
    assert both.num_segments == 2 * s and s == 2
    assert torch.equal(both.latents[:s], plain.latents) and torch.equal(both.latents[s:], alone.latents)
    assert torch.equal(both.seg_start, torch.cat([plain.seg_start, plain.seg_start + n]))
    assert torch.equal(both.mouse[n:], alone.mouse) and torch.equal(both.poses[n:], alone.poses)
    assert torch.equal(both.seg_prompt, plain.seg_prompt.repeat(2))
    assert not torch.equal(both.latents[s:], plain.latents)  # the synthetic frames are not symmetric

    clips = ClipSampler(both, cfg, 2, use_memory=True)
    for chunk in range(clips.k_max + 1):
        b = clips.build(torch.tensor([0, s]), torch.full((2,), chunk))
        assert torch.equal(b.mouse[1], b.mouse[0] * torch.tensor([1.0, -1.0]))
        assert torch.equal(b.keyboard[1], b.keyboard[0][:, [0, 1, 3, 2, 4, 5]])
        st = cfg.vae.spatial_stride
        torch.testing.assert_close(_unfold(b.plucker[1:], st), _mirror_code(_unfold(b.plucker[:1], st)))
        assert torch.equal(b.positions[1], b.positions[0])


def test_mirrored_actions_refuse_arrays_of_the_wrong_width():
    with pytest.raises(ValueError, match="expected mouse"):
        mirrored_actions(np.zeros((4, 3)), np.zeros((4, 6)), np.zeros((4, 5)))


def test_the_mirror_flag_reaches_the_encode_stage_for_the_train_split_only(monkeypatch, tmp_path):
    """``train encode --mirror true``: PipelineOptions.mirror; the encode stage mirrors the train split's segments, not
    the held-out ones; a value that is neither true nor false is refused (a typo must not read as false)."""
    from world_model.train import encode, pipeline
    from world_model.train.__main__ import _parser

    assert _parser().parse_args(["encode", "--run", "r", "--mirror", "true"]).opt_mirror is True
    assert _parser().parse_args(["encode", "--run", "r", "--mirror", "off"]).opt_mirror is False
    with pytest.raises(SystemExit):
        _parser().parse_args(["encode", "--run", "r", "--mirror", "ture"])
    seen = {}

    class Encoded:  # what the stage does with an encoded store: save it, count its segments
        num_segments = 1

        def save(self, folder):
            pass

    def fake_encode(vae, store, segment_latents, text, **kw):
        seen[len(seen)] = kw["mirror"]
        return Encoded()

    monkeypatch.setattr(encode, "encode_store", fake_encode)
    monkeypatch.setattr(pipeline, "_need", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "_frames", lambda run, split: synthetic_store(1, 40, (32, 32)))
    monkeypatch.setattr(pipeline, "_teacher_vae", lambda *a, **k: _tiny_vae(tiny(32, 32)))
    opts = pipeline.PipelineOptions.smoke()
    for mirror in (True, False):
        seen.clear()
        (tmp_path / "latents").mkdir(exist_ok=True)
        z = tiny(32, 32).vae.z_dim
        (tmp_path / "latents" / "stats.json").write_text(json.dumps({"mean": [0.0] * z, "std": [1.0] * z}))
        pipeline._stage_encode(tmp_path, dataclasses.replace(opts, mirror=mirror, vae_train_encoder=False), None)
        assert seen == {0: mirror, 1: False}  # the train split, then the held-out one as recorded
