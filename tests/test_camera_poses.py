"""Clips conditioned on the poses the env integrates from the actions (ClipSampler camera_poses="integrated"), as at
inference, instead of the engine's recorded ones: the same integrator, the same start, the same frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from world_model.camera import integrate_poses
from world_model.config import tiny
from world_model.train.clips import ClipSampler, LatentStore
from world_model.train.frames import segment_starts, synthetic_store

FS = 25  # latents a segment: chunks 0 and 1


def _latents(cfg, frames, poses=None):
    starts = torch.as_tensor(segment_starts(frames, 1 + 4 * (FS - 1), 20))  # overlapping segments
    c, (h, w) = cfg.vae.z_dim, cfg.latent_hw
    t = torch.as_tensor
    return LatentStore(
        torch.randn(len(starts), FS, c, h, w), starts, t(frames.mouse), t(frames.keyboard),
        t(frames.poses if poses is None else poses), torch.randn(1, cfg.text.text_len, cfg.text.dim),
        torch.zeros(len(starts), dtype=torch.long),
    )  # fmt: skip


def _integrated_episodes(frames, cfg) -> np.ndarray:
    """Each episode's poses as the env integrates them from its first pose."""
    out = []
    for e in range(frames.num_episodes):
        sl = frames.episode(e)
        kb, ms = torch.as_tensor(frames.keyboard[sl][None, :-1]), torch.as_tensor(frames.mouse[sl][None, :-1])
        out.append(integrate_poses(kb, ms, torch.as_tensor(frames.poses[sl][:1]), cfg.stream)[0].numpy())
    return np.concatenate(out).astype(np.float32)


def test_integrated_clips_equal_recorded_ones_where_the_engine_moved_as_the_integrator_does():
    cfg = tiny(32, 32)
    frames = synthetic_store(2, 150, (32, 32))
    lat = _latents(cfg, frames, _integrated_episodes(frames, cfg))  # an engine that moves as the env integrates
    recorded = ClipSampler(lat, cfg, 2, use_memory=True)
    integrated = ClipSampler(lat, cfg, 2, use_memory=True, camera_poses="integrated")
    assert lat.num_segments > 2  # segments that begin inside episodes: each integrated from its own first pose
    for chunk in (0, 1):
        segs = torch.arange(lat.num_segments)
        a, b = recorded.sample(chunk=chunk, segments=segs), integrated.sample(chunk=chunk, segments=segs)
        torch.testing.assert_close(b.plucker, a.plucker, atol=1e-4, rtol=1e-4)
        if chunk:
            assert torch.equal(a.positions, b.positions)  # the same memory latents retrieved


def test_integrated_clips_follow_the_actions_not_the_recorded_motion():
    cfg = tiny(32, 32)
    frames = synthetic_store(2, 150, (32, 32))  # its own integrator moves 4 units a frame, the env's move_speed
    lat = _latents(cfg, frames)
    sampler = ClipSampler(lat, cfg, 2, camera_poses="integrated")
    poses = sampler.segment_poses  # [S, 97, 5]
    for s in (0, lat.num_segments - 1):
        first = int(lat.seg_start[s])
        kb = lat.keyboard[None, first : first + 96]
        ms = lat.mouse[None, first : first + 96]
        want = integrate_poses(kb, ms, lat.poses[first][None], cfg.stream)[0]
        torch.testing.assert_close(poses[s], want.float())
        recorded = lat.poses[first : first + 97]
        assert torch.equal(poses[s, 0], recorded[0])  # the segment's first recorded pose
        torch.testing.assert_close(poses[s, :, 4], recorded[:, 4], atol=1e-3, rtol=0)  # the same turns
        assert (poses[s, -1, :2] - recorded[-1, :2]).norm() > 10  # moved by the integrator's speed, not the record's
    segs = torch.tensor([0, 1])
    a = ClipSampler(lat, cfg, 2).sample(chunk=0, segments=segs)
    assert not torch.allclose(sampler.sample(chunk=0, segments=segs).plucker, a.plucker)


def test_a_bad_pose_source_is_refused_and_the_pipeline_trains_on_integrated_poses(tmp_path):
    from world_model.train.pipeline import PipelineOptions, run_pipeline

    cfg = tiny(32, 32)
    with pytest.raises(ValueError, match="camera_poses must be one of"):
        ClipSampler(_latents(cfg, synthetic_store(1, 120, (32, 32))), cfg, 1, p_continue=0, camera_poses="engine")
    with pytest.raises(ValueError, match="camera_poses must be one of"):
        PipelineOptions(camera_poses="engine")
    opts = dataclasses.replace(PipelineOptions.smoke(), camera_poses="integrated")
    status = run_pipeline(tmp_path / "run", opts, only=("data", "vae", "encode", "base"))
    assert status["stages"]["base"] == "done", status["stages"]
