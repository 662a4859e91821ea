"""The flow stages' depth auxiliary: the engine's depth buffer recorded per frame at the latent grid, kept per latent
by the encode stage (mirrored with the frames), handed to the clips, and predicted by a training-only head on the
DiT's last hidden states (world_model.train.flow.DepthHead) whose loss reaches the DiT and never the export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from world_model.config import tiny
from world_model.train.clips import ClipSampler, LatentStore
from world_model.train.frames import (
    INVERSE_DEPTH_NEAR,
    INVERSE_DEPTH_SCALE,
    FrameStore,
    inverse_depth_map,
    synthetic_store,
)


def test_inverse_depth_is_the_mean_over_each_cell_of_the_clamped_inverse():
    depth = np.full((2, 4, 6), 128.0, np.float32)
    depth[0, :2, :3] = 64.0  # the top-left cell of frame 0: nearer
    depth[1, 0, 0] = 1.0  # nearer than the clamp: counts as INVERSE_DEPTH_NEAR
    inv = inverse_depth_map(depth, (2, 2))
    assert inv.shape == (2, 2, 2) and inv.dtype == np.float16
    far = INVERSE_DEPTH_SCALE / 128.0
    assert inv[0, 0, 0] == pytest.approx(INVERSE_DEPTH_SCALE / 64.0, rel=1e-3)
    assert inv[0, 1, 1] == pytest.approx(far, rel=1e-3)
    assert inv[1, 0, 0] == pytest.approx((INVERSE_DEPTH_SCALE / INVERSE_DEPTH_NEAR + 5 * far) / 6, rel=1e-3)
    with pytest.raises(ValueError, match="does not divide"):
        inverse_depth_map(depth, (3, 2))


def test_a_frame_store_keeps_its_depth_through_save_select_and_concat(tmp_path):
    store = synthetic_store(2, 20, (32, 32), depth_grid=(4, 4))
    assert store.depth.shape == (40, 4, 4) and store.depth.dtype == np.float16
    plain = synthetic_store(2, 20, (32, 32))  # the same world without depth maps
    assert np.array_equal(plain.frames, store.frames) and np.array_equal(plain.keyboard, store.keyboard)
    store.save(tmp_path / "s")
    back = FrameStore.load(tmp_path / "s")
    np.testing.assert_array_equal(back.depth, store.depth)
    np.testing.assert_array_equal(store.select([1]).depth, store.depth[20:])
    np.testing.assert_array_equal(FrameStore.concat([store, store]).depth[40:], store.depth)
    with pytest.raises(ValueError, match="some of the stores"):
        FrameStore.concat([store, synthetic_store(1, 20, (32, 32))])
    with pytest.raises(ValueError, match="expected depth"):
        FrameStore(
            **{k: getattr(store, k) for k in ("frames", "mouse", "keyboard", "poses", "starts")}, depth=store.depth[:5]
        )
    assert FrameStore.load(_saved(synthetic_store(1, 20, (32, 32)), tmp_path / "n")).depth is None


def _saved(store: FrameStore, folder):
    store.save(folder)
    return folder


def test_latent_depth_groups_frames_as_the_vae_does():
    from world_model.train.encode import latent_depth

    frames = np.arange(9, dtype=np.float32)[None, :, None, None] * np.ones((1, 9, 2, 2), np.float32)  # frame i: i
    lat = latent_depth(frames, 4)
    assert lat.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(lat[0, :, 0, 0], [0.0, 2.5, 6.5])  # frame 0; frames 1-4; frames 5-8
    with pytest.raises(ValueError, match="not 1 \\+ 4"):
        latent_depth(frames[:, :8], 4)


@pytest.fixture(scope="module")
def depth_latents():
    """A tiny VAE's latents of a synthetic world with depth, recorded and mirrored."""
    from world_model.text import make_text_encoder
    from world_model.train.autoencoder import identity_stats
    from world_model.train.encode import encode_store
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae, text = WanVAE(identity_stats(cfg.vae)).eval(), make_text_encoder(cfg.text)
    frames = synthetic_store(2, 100, (32, 32), depth_grid=cfg.latent_hw)
    return cfg, frames, encode_store(vae, frames, 25, text, progress=False, mirror=True)


def test_the_encode_stage_keeps_each_latents_depth_mirrored_with_its_frames(depth_latents, tmp_path):
    from world_model.train.encode import latent_depth

    cfg, frames, lat = depth_latents
    s = lat.num_segments // 2  # segments s.. are the mirrors of 0..s-1
    assert lat.depth.shape == (2 * s, 25, *cfg.latent_hw)
    first = int(lat.seg_start[0])
    want = latent_depth(frames.depth[first + np.arange(97)][None], 4)[0]
    np.testing.assert_allclose(lat.depth[0].float().numpy(), want, rtol=1e-2)
    torch.testing.assert_close(lat.depth[s], lat.depth[0].flip(-1))
    lat.save(tmp_path / "l")
    torch.testing.assert_close(LatentStore.load(tmp_path / "l").depth, lat.depth)
    joined = LatentStore.concat([lat, lat])
    torch.testing.assert_close(joined.depth[2 * s :], lat.depth)
    no_depth = LatentStore(*(getattr(lat, k) for k in ("latents", "seg_start", "mouse", "keyboard", "poses")),
                           lat.text, lat.seg_prompt)  # fmt: skip
    with pytest.raises(ValueError, match="some of the latent stores"):
        LatentStore.concat([lat, no_depth])


def test_the_clips_carry_their_window_latents_depth(depth_latents):
    cfg, _, lat = depth_latents
    sampler = ClipSampler(lat, cfg, 2, use_memory=True)
    for chunk in (0, 1):
        batch = sampler.sample(chunk=chunk, segments=torch.tensor([0, 1]))
        assert batch.depth.shape == (2, batch.latents.shape[2], *cfg.latent_hw)
        # chunk 0's window is the segment's first latents; chunk 1's starts past them
        first = 0 if chunk == 0 else int(batch.window_positions[0, 0])
        torch.testing.assert_close(batch.depth[0, 0], lat.depth[0, first].float())


def _stage(lat, cfg, weight, **kw):
    from world_model.dit import MatrixGameDiT
    from world_model.train.flow import FlowOptions, FlowStage

    torch.manual_seed(0)
    opts = FlowOptions(batch_size=2, lr=3e-3, warmup_steps=1, depth_weight=weight, **kw)
    return FlowStage(MatrixGameDiT(cfg.dit), ClipSampler(lat, cfg, 2, p_continue=0.5), opts)


def test_the_depth_head_learns_and_its_loss_reaches_the_dit_but_not_the_export(depth_latents, tmp_path):
    from world_model.train.checkpoints import load_sharded, save_sharded
    from world_model.train.flow import dit_forward

    cfg, _, lat = depth_latents
    stage = _stage(lat, cfg, 1.0)
    # the depth loss alone moves the DiT's blocks: the head reads their output
    batch = stage.sampler.sample(chunk=1, segments=torch.tensor([0, 1]))
    x = batch.latents.clone()
    dit_forward(stage.model, batch, x, torch.full((2,), 500.0))
    loss, explained = stage.depth_head.loss(stage._tokens.pop(), batch)
    loss.backward()
    grad = stage.model.blocks[-1].ffn[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0 and explained <= 1.0
    stage.model.zero_grad(set_to_none=True)
    metrics = [stage.train_step(i) for i in range(12)]
    depth = [float(m["depth_loss"]) for m in metrics]
    assert np.mean(depth[-3:]) < 0.5 * np.mean(depth[:3]), depth  # the head (and the DiT) learn the depth
    assert all("depth_explained" in m for m in metrics)
    # a checkpoint holds the head; the model (what the export writes) does not
    state = stage.state_dict()
    assert "depth_head" in state and not any("depth" in k for k in stage.model.state_dict())
    resumed = _stage(lat, cfg, 1.0)
    resumed.load_state_dict(load_sharded(save_sharded(state, tmp_path / "c")[0].parent))
    for a, b in zip(resumed.depth_head.parameters(), stage.depth_head.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="resumes only with it"):
        _stage(lat, cfg, 0.0).load_state_dict(state)


def test_without_a_weight_there_is_no_head_and_without_depth_maps_the_weight_is_refused(depth_latents):
    from world_model.train.flow import FlowOptions

    cfg, _, lat = depth_latents
    stage = _stage(lat, cfg, 0.0)
    assert stage.depth_head is None and "depth_loss" not in stage.train_step(0)
    no_depth = LatentStore(*(getattr(lat, k) for k in ("latents", "seg_start", "mouse", "keyboard", "poses")),
                           lat.text, lat.seg_prompt)  # fmt: skip
    with pytest.raises(ValueError, match="needs latents with depth maps"):
        _stage(no_depth, cfg, 1.0)
    with pytest.raises(ValueError, match="depth_weight must be >= 0"):
        FlowOptions(depth_weight=-1.0)


def test_the_pipeline_trains_the_base_model_with_the_depth_auxiliary(tmp_path):
    import dataclasses
    import json

    from world_model.train.pipeline import PipelineOptions, run_pipeline

    opts = dataclasses.replace(PipelineOptions.smoke(), depth_weight=0.5)
    status = run_pipeline(tmp_path / "run", opts, only=("data", "vae", "encode", "base"))
    assert status["stages"]["base"] == "done", status["stages"]
    assert LatentStore.load(tmp_path / "run" / "latents" / "train").depth is not None
    metrics = [json.loads(line) for line in (tmp_path / "run" / "base" / "metrics.jsonl").read_text().splitlines()]
    assert any("depth_loss" in m for m in metrics)
    with pytest.raises(ValueError, match="H.264 dataset path"):
        PipelineOptions(depth_weight=1.0, engine_frames=False)


def test_the_recorder_records_the_engines_inverse_depth_at_the_latent_grid(tmp_path):
    pytest.importorskip("vizdoom")
    from world_model.train.engine_frames import EngineFramesConfig, main

    out = tmp_path / "frames"
    main(["--out", str(out), "--frames", "40", "--episode-frames", "40", "--size", "64", "64", "--workers", "1",
          "--depth-stride", "8", "--no-progress"])  # fmt: skip
    train = FrameStore.concat([FrameStore.load(p) for p in sorted((out / "train").glob("part-*"))])
    assert train.depth.shape == (len(train.frames), 8, 8)
    d = train.depth.astype(np.float32)
    assert np.all(d > 0) and np.all(d <= INVERSE_DEPTH_SCALE / INVERSE_DEPTH_NEAR + 1e-2)
    assert d.std() > 0.01  # near and far walls differ
    with pytest.raises(ValueError, match="depth_stride"):
        EngineFramesConfig(frames=8, width=64, height=64, depth_stride=7)


@pytest.mark.slow  # compiles the blocks on the CPU (~1 minute cold)
def test_the_depth_auxiliary_trains_with_compiled_blocks_as_eager(depth_latents):
    """The GPU sessions compile each block (FlowOptions.compile); the head's hook sits on the DiT's output head,
    outside the compiled graphs, and must see the same tokens: a compiled step's losses equal the eager one's."""
    cfg, _, lat = depth_latents
    runs = []
    for compiled in (False, True):
        stage = _stage(lat, cfg, 1.0, compile=compiled)
        runs.append([stage.train_step(i) for i in range(2)])
    for eager, comp in zip(*runs, strict=True):
        for k in ("loss", "depth_loss"):
            torch.testing.assert_close(comp[k].float(), eager[k].float(), rtol=2e-3, atol=2e-4)


def test_a_stage_with_the_depth_auxiliary_continues_from_a_slim_made_without_it(depth_latents):
    """Session 54's run: the carried teacher (a slim: EMA weights only, trained without depth) goes on with a fresh
    head; a full checkpoint of either kind is still refused by the other (the test above)."""
    cfg, _, lat = depth_latents
    plain = _stage(lat, cfg, 0.0)
    plain.train_step(0)
    slim = {"ema": {"model": {k: v.to(torch.bfloat16) for k, v in plain.ema.state_dict()["model"].items()}}}
    stage = _stage(lat, cfg, 0.25)
    stage.load_state_dict(slim)
    for k, v in stage.model.state_dict().items():
        torch.testing.assert_close(v, slim["ema"]["model"][k].to(v.dtype), msg=k)
    m = stage.train_step(1)
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["depth_loss"]))
