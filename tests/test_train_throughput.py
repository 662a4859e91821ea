"""The device-resident training data, the VAE's structural and adversarial terms, the loop's
deferred metrics and the raw-frame recorder (world_model.train: autoencoder, loop, engine_frames)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from world_model.config import tiny
from world_model.train.autoencoder import ClipFrames, PatchDiscriminator, VAEOptions, VAEStage, sharpness, ssim
from world_model.train.frames import FrameStore, synthetic_store
from world_model.train.loop import LoopOptions, run_loop


def _labelled_store(lengths: list[int], offset: int = 0) -> FrameStore:
    """Frames whose pixel value is the episode id (+ offset) and whose green is the frame's index in it."""
    frames = []
    for e, n in enumerate(lengths):
        f = np.zeros((n, 4, 4, 3), np.uint8)
        f[..., 0] = e + offset
        f[..., 1] = np.arange(n)[:, None, None]
        frames.append(f)
    n = sum(lengths)
    z = lambda k: np.zeros((n, k), np.float32)  # noqa: E731
    return FrameStore(
        np.concatenate(frames), z(2), z(6), z(5), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    )


def _decode(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(episode id, in-episode index) per frame of clips [B, 3, T, H, W] in [-1, 1]."""
    u8 = ((clips[:, :, :, 0, 0] + 1) * 127.5).round().long()  # [B, 3, T]
    return u8[:, 0], u8[:, 1]


def test_clips_stay_inside_one_episode_and_cover_every_start():
    store = _labelled_store([5, 9, 3, 12])  # the 3-frame episode holds no 5-frame clip
    clips = ClipFrames(store, 5, "cpu", seed=1)
    assert clips.num_clips == 1 + 5 + 8
    seen = set()
    for _ in range(40):
        ep, idx = _decode(clips.sample(16))
        assert bool((ep == ep[:, :1]).all()), "a clip crossed an episode boundary"
        assert bool((idx[:, 1:] - idx[:, :-1] == 1).all()), "a clip is not consecutive frames"
        seen |= {(int(e), int(i)) for e, i in zip(ep[:, 0], idx[:, 0])}
    assert 2 not in {e for e, _ in seen}
    assert seen == {(0, 0)} | {(1, i) for i in range(5)} | {(3, i) for i in range(8)}  # uniform over starts


def test_clips_extend_with_new_shards_and_resume_their_draws():
    clips = ClipFrames(_labelled_store([6]), 4, "cpu", seed=0)
    clips.extend(_labelled_store([7, 2], offset=10))
    assert clips.num_clips == 3 + 4
    ep, _ = _decode(torch.cat([clips.sample(64) for _ in range(4)]))
    assert set(ep[:, 0].tolist()) == {0, 10}
    state = clips.state_dict()
    a = clips.sample(8)
    clips.load_state_dict(state)
    assert torch.equal(clips.sample(8), a)
    with pytest.raises(ValueError, match="no episode holds 9 frames"):
        ClipFrames(_labelled_store([5, 8]), 9, "cpu")


def test_ssim_and_sharpness_see_blur():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, blurred)) < 0.8
    assert float(ssim(x, blurred)) > float(ssim(x, torch.zeros_like(x)))
    video = lambda img: img[:, :, None].expand(-1, -1, 3, -1, -1)  # noqa: E731 - [B, 3, T, H, W]
    assert float(sharpness(video(blurred))) < 0.6 * float(sharpness(video(x)))


def test_training_sharpness_is_the_evaluation_measure():
    from mg3_eval.metrics import sharpness_ratio

    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (2, 5, 16, 16, 3), generator=g, dtype=torch.uint8)  # [B, T, H, W, 3]
    b = torch.from_numpy(F.avg_pool2d(a.permute(0, 1, 4, 2, 3).flatten(0, 1).float(), 3, 1, 1).round().byte().numpy())
    b = b.view(2, 5, 3, 16, 16).permute(0, 1, 3, 4, 2)  # a blurred copy, uint8 [B, T, H, W, 3]
    to_video = lambda u8: u8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # noqa: E731 - [B, 3, T, H, W] in [-1, 1]
    ours = float(sharpness(to_video(b)) / sharpness(to_video(a)))
    assert ours == pytest.approx(sharpness_ratio(b.numpy(), a.numpy()), rel=1e-5) and ours < 0.8


def test_patch_discriminator_shapes_and_vae_stage_runs_its_adversary():
    d = PatchDiscriminator(16, layers=3)
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 4, 4)
    cfg = tiny(32, 32)
    from world_model.train.autoencoder import identity_stats
    from world_model.vae import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))
    store = synthetic_store(2, 20, (32, 32))
    opts = VAEOptions(batch_size=2, clip_frames=5, gan_start=1, disc_width=16)
    stage = VAEStage(vae, ClipFrames(store, 5, "cpu"), ClipFrames(store, 5, "cpu"), opts)
    before = [p.detach().clone() for p in stage.adversary.disc.parameters()]
    m0 = stage.train_step(0)
    assert "gan_g" not in m0 and "gan_d" not in m0  # before gan_start: reconstruction only
    assert all(torch.equal(a, b) for a, b in zip(before, stage.adversary.disc.parameters()))
    m1 = stage.train_step(1)
    assert {"gan_g", "gan_d", "ssim", "gan_lambda"} <= set(m1) and all(torch.isfinite(v) for v in m1.values())
    assert m1["gan_lambda"] > 0  # reconstruction's gradient norm over the adversary's at the last layer
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.adversary.disc.parameters()))
    assert set(stage.state_dict()) >= {"vae", "optim", "data", "adversary"}
    ev = stage.evaluate()
    assert np.isfinite(ev["psnr"]) and ev["sharpness_ratio"] > 0 and 0 <= ev["grid_share"] <= 1


class _TensorMetrics:
    name = "tensors"

    def __init__(self, nan_at: int | None = None):
        self.nan_at, self.w = nan_at, torch.zeros(1)

    def train_step(self, step):
        self.w += 1
        v = torch.tensor(float("nan") if step == self.nan_at else float(step))
        return {"loss": v, "every_other": torch.tensor(1.0)} if step % 2 else {"loss": v}

    def state_dict(self):
        return {"w": self.w.clone()}

    def load_state_dict(self, state):
        self.w = state["w"].clone()


def test_loop_averages_tensor_metrics_between_log_steps_and_stops_on_nan(tmp_path):
    run_loop(_TensorMetrics(), tmp_path / "a", LoopOptions(steps=8, log_every=4, progress=False))
    lines = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if ln["kind"] == "train"]
    assert [ln["step"] for ln in train] == [4, 8]
    assert [ln["loss"] for ln in train] == [pytest.approx(1.5), pytest.approx(5.5)]  # means of steps 0-3, 4-7
    assert [ln["every_other"] for ln in train] == [1.0, 1.0]  # averaged over the steps that reported it
    with pytest.raises(FloatingPointError, match="loss is nan"):
        run_loop(_TensorMetrics(nan_at=5), tmp_path / "b", LoopOptions(steps=8, log_every=4, progress=False))


def test_frame_store_concat_keeps_episodes():
    a, b = _labelled_store([3, 4]), _labelled_store([5], offset=7)
    c = FrameStore.concat([a, b])
    assert c.starts.tolist() == [0, 3, 7, 12] and c.num_episodes == 3
    assert np.array_equal(c.frames[7:], b.frames)
    with pytest.raises(ValueError):
        FrameStore.concat([])


def test_budget_shares_parse_and_refuse_bad_input():
    from world_model.train.pipeline import BUDGET_SHARE, _shares

    s = _shares("vae=0.5, base=0")
    assert s["vae"] == 0.5 and s["base"] == 0.0 and s["dmd"] == BUDGET_SHARE["dmd"]
    for bad in ("vea=0.1", "vae=x", "vae=-1"):
        with pytest.raises(ValueError):
            _shares(bad)


def test_engine_frames_records_shards_of_both_splits(tmp_path, caplog):
    pytest.importorskip("vizdoom")
    from world_model.data.levels import get_level
    from world_model.train.engine_frames import EngineFramesConfig, ShardFeed, record_frames, shard_folders

    cfg = EngineFramesConfig(
        frames=250, width=64, height=48, workers=2, episode_frames=60, held_out_every=2, shard_frames=120
    )
    with caplog.at_level(logging.INFO, logger="world_model.train.engine_frames"):
        out = record_frames(tmp_path / "f", cfg, progress=False)
    assert out["train"] >= 250 and out["held_out"] > 0
    # each shard is logged (with its time, in the recorder's log): how long trainers wait for data is measured
    written = [r.getMessage() for r in caplog.records if "written" in r.getMessage()]
    assert sorted(written) == sorted(
        f"{s}: shard {i} written, {n} frames in this split"
        for s in ("train", "held_out")
        for i, n in enumerate(_cumulative_frames(tmp_path / "f" / s))
    )
    train = ShardFeed(tmp_path / "f" / "train")
    assert train.finished
    stores = train.new()
    assert len(stores) == len(shard_folders(tmp_path / "f" / "train")) >= 2 and train.new() == []
    st = FrameStore.concat(stores)
    assert st.frames.shape[1:] == (48, 64, 3) and st.frames.dtype == np.uint8 and st.fps == 17.5
    assert len(st.frames) == out["train"] and all(get_level(lv).split == "train" for lv in st.levels)
    held = FrameStore.concat(ShardFeed(tmp_path / "f" / "held_out").new())
    assert all(get_level(lv).split == "validation" for lv in held.levels)
    assert record_frames(tmp_path / "f", cfg, progress=False) == out  # finished: nothing redone
    (tmp_path / "g" / "train" / "part-0000").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="unfinished"):
        record_frames(tmp_path / "g", cfg, progress=False)


def _cumulative_frames(split: Path) -> list[int]:
    from world_model.train.engine_frames import shard_folders

    return np.cumsum([len(FrameStore.load(p).frames) for p in shard_folders(split)]).tolist()


def test_a_slimmed_vae_continues_training_with_a_fresh_optimiser(tmp_path):
    from world_model.train.autoencoder import identity_stats
    from world_model.train.slim import slim_run
    from world_model.train.status import reopen
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    store = synthetic_store(2, 20, (32, 32))

    def stage():
        torch.manual_seed(0)
        vae = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))
        return VAEStage(vae, ClipFrames(store, 5, "cpu"), None, VAEOptions(batch_size=2, clip_frames=5))

    first = stage()
    run_loop(first, tmp_path / "run" / "vae", LoopOptions(steps=3, progress=False))
    slim_run(tmp_path / "run", tmp_path / "slim", ["vae"])
    assert json.loads((tmp_path / "slim" / "vae" / "status.json").read_text())["state"] == "done"
    reopen(tmp_path / "slim" / "vae")  # what `all --reopen vae` does
    again = stage()
    out = run_loop(again, tmp_path / "slim" / "vae", LoopOptions(steps=5, progress=False))
    assert out["state"] == "done" and out["step"] == 5
    steps_taken = {int(v["step"]) for v in again.optim.state.values()}
    assert steps_taken == {2}  # resumed at step 3 from the weights alone, with a fresh optimiser


def test_a_resumed_decoder_stage_keeps_the_teachers_current_encoder(tmp_path):
    """The decoder stage continued over a VAE that trained on since its checkpoint (the next GPU
    session) takes only the decoder side from the checkpoint: the shipped encoder is the teacher's,
    the one that encoded the DiT's latents."""
    from world_model.train.autoencoder import DecoderStage, identity_stats
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    store = synthetic_store(2, 20, (32, 32))
    opts = VAEOptions(batch_size=2, clip_frames=5)

    def teacher(seed):
        torch.manual_seed(seed)
        return WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))

    def stage(t):
        torch.manual_seed(9)
        return DecoderStage(t, WanVAE(identity_stats(cfg.vae)), ClipFrames(store, 5, "cpu"), None, opts)

    first = stage(teacher(0))
    run_loop(first, tmp_path / "decoder", LoopOptions(steps=2, progress=False))
    trained_decoder = {k: v.clone() for k, v in first.student.state_dict().items() if k.startswith("decoder.")}
    newer = teacher(1)  # the VAE stage went on: another encoder
    again = stage(newer)
    run_loop(again, tmp_path / "decoder", LoopOptions(steps=2, progress=False))  # resumes at step 2: no step
    state = again.student.state_dict()
    for k, v in newer.state_dict().items():
        if k.startswith("encoder."):
            torch.testing.assert_close(state[k], v)
    for k, v in trained_decoder.items():
        torch.testing.assert_close(state[k], v)


def test_compile_option_names_stages():
    from world_model.train.__main__ import _parser
    from world_model.train.pipeline import PipelineOptions

    assert PipelineOptions(compile=True).compile == "base,memory"  # a pipeline.json of before
    assert PipelineOptions(compile="false").compile == PipelineOptions(compile="none").compile == ""
    opts = PipelineOptions(compile="base")
    assert opts.compiles("base") and not opts.compiles("memory")
    assert PipelineOptions(compile="vae,memory").compiles("vae") and not opts.compiles("vae")
    assert not PipelineOptions(compile="").compiles("")  # a stage without a name (sharpen's options) never compiles
    with pytest.raises(ValueError, match="stages among vae, decoder, base, memory"):
        PipelineOptions(compile="vae,sharpen")
    args = _parser().parse_args(["base", "--run", "r", "--compile", "memory"])
    assert args.opt_compile == "memory"


def test_adaptive_gan_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    from world_model.train.autoencoder import _Base, _last_weight, identity_stats
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))
    last = _last_weight(vae)
    base = _Base(
        list(vae.parameters()), VAEOptions(gan_start=0, gan_weight=0.3, disc_width=16), torch.device("cpu"), last
    )
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    out = vae.decode(vae.encode(x), first_chunk=True, clamp=False)[0]
    rec = F.l1_loss(out, x)
    terms = {"ssim": ssim(out[:, :, 0], x[:, :, 0]), "gan_g": out.pow(2).mean()}
    loss = base._weighted(terms, rec, 0)
    g_rec = torch.autograd.grad(rec + 0.5 * (1 - terms["ssim"]), last, retain_graph=True)[0].norm()
    g_gan = torch.autograd.grad(terms["gan_g"], last, retain_graph=True)[0].norm()
    torch.testing.assert_close(terms["gan_lambda"], (g_rec / (g_gan + 1e-4)).detach())
    expected = rec + 0.5 * (1 - terms["ssim"]) + 0.3 * terms["gan_lambda"] * terms["gan_g"]
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the graph is still whole
    assert last.grad is not None and torch.isfinite(last.grad).all()


def test_the_adaptive_gan_weight_is_measured_every_gan_lambda_every_steps():
    """gan_lambda_every=N: the ratio is measured at gan_start, gan_start + N, ... and reused in between."""
    from world_model.train.autoencoder import _Base, _last_weight, identity_stats
    from world_model.vae import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(identity_stats(tiny(32, 32).vae).replace(pruning_rate=0.0))
    last = _last_weight(vae)
    opts = VAEOptions(gan_start=10, gan_weight=0.3, gan_lambda_every=3, disc_width=16)
    base = _Base(list(vae.parameters()), opts, torch.device("cpu"), last)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    lams = []
    for step in range(10, 17):
        out = vae.decode(vae.encode(x), first_chunk=True, clamp=False)[0]
        scale = 1.0 + step  # a different adversarial term each step: a measured ratio changes with it
        terms = {"ssim": ssim(out[:, :, 0], x[:, :, 0]), "gan_g": scale * out.pow(2).mean()}
        base._weighted(terms, F.l1_loss(out, x), step)
        lams.append(float(terms["gan_lambda"]))
    assert lams[0] == lams[1] == lams[2] != lams[3] == lams[4] == lams[5] != lams[6]
    with pytest.raises(ValueError, match="gan_lambda_every"):
        VAEOptions(gan_lambda_every=0)
    from world_model.train.pipeline import PipelineOptions, _vae_opts

    assert (
        _vae_opts(PipelineOptions(gan_lambda_every=4)).gan_lambda_every == 4
    )  # the pipeline's flag reaches the stages


def test_gan_ramp_phases_the_adversarial_term_in_from_its_start():
    """gan_ramp=R: the decoder's adversarial term is 1/R of its weight at gan_start, all of it from
    gan_start + R - 1 on; the reconstruction terms are untouched (a resumed stage's discriminator
    starts untrained)."""
    from world_model.train.autoencoder import _Base, _last_weight, identity_stats
    from world_model.vae import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(identity_stats(tiny(32, 32).vae).replace(pruning_rate=0.0))
    last = _last_weight(vae)
    opts = VAEOptions(gan_start=100, gan_weight=0.3, gan_ramp=4, gan_adaptive=False, disc_width=16)
    base = _Base(list(vae.parameters()), opts, torch.device("cpu"), last)
    rec, gan = torch.tensor(1.0), torch.tensor(2.0)
    losses = [float(base._weighted({"ssim": torch.tensor(1.0), "gan_g": gan}, rec, s)) for s in (100, 101, 103, 500)]
    assert losses == pytest.approx([1.0 + 0.3 * 2.0 * k for k in (0.25, 0.5, 1.0, 1.0)])


def test_vae_stage_with_a_frozen_encoder_trains_the_decoder_only(tmp_path):
    """vae_train_encoder=False: later sessions sharpen the decoder while the latents stay put."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.pipeline import PipelineOptions, run_config, run_stage
    from world_model.train.status import reopen

    opts = dataclasses.replace(PipelineOptions.smoke(), vae_train_encoder=False)
    run = tmp_path / "run"
    run_stage(run, "data", opts)
    run_stage(run, "vae", dataclasses.replace(opts, vae_steps=1))
    first = load_latest(run / "vae")["stage"]["vae"]
    reopen(run / "vae")
    run_stage(run, "vae", dataclasses.replace(opts, vae_steps=3))
    after = load_latest(run / "vae")["stage"]["vae"]
    enc = [k for k in first if k.startswith("encoder.")]
    dec = [k for k in first if k.startswith("decoder.")]
    assert enc and all(torch.equal(first[k], after[k]) for k in enc)
    assert any(not torch.equal(first[k], after[k]) for k in dec)

    # the encode stage keeps a carried normalisation (the continued DiT was trained on it) ...
    stats = run / "latents" / "stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    z = run_config(run, opts).vae.z_dim
    carried = {"mean": [0.5] * z, "std": [2.0] * z}
    stats.write_text(json.dumps(carried))
    out = run_stage(run, "encode", opts)
    assert out["stats"] == "kept" and json.loads(stats.read_text()) == carried
    # ... and measures it again when the encoder trains
    reopen(run / "latents")
    out = run_stage(run, "encode", dataclasses.replace(opts, vae_train_encoder=True))
    assert out["stats"] == "measured" and json.loads(stats.read_text()) != carried
    # overlapping train segments (segment_stride): more chunk-0 starts, the held-out split stays disjoint
    short = dataclasses.replace(opts, segment_latents=20)  # 77 frames: one disjoint segment per 100-frame episode
    counts = []
    for stride in (0, 2):
        reopen(run / "latents")
        out = run_stage(run, "encode", dataclasses.replace(short, segment_stride=stride))
        counts.append((out["train_segments"], out["held_out_segments"]))
    (disjoint, held), (strided, held_strided) = counts
    assert strided == 3 * disjoint and held_strided == held >= 1  # starts 0, 8, 16 (77 frames in 0..99)
    with pytest.raises(ValueError, match="segment_stride"):
        dataclasses.replace(opts, segment_stride=opts.segment_latents + 1)


def test_lowpass_l1_sees_colour_not_detail():
    from world_model.train.autoencoder import lowpass_l1

    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    shift = torch.tensor([0.0, 0.1, -0.08]).view(1, 3, 1, 1, 1)  # session 5's green cast
    torch.testing.assert_close(lowpass_l1(x + shift, x), shift.abs().mean())
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1  # zero mean per 8x8
    assert lowpass_l1(x + checker, x) < 1e-6


def test_a_second_pipeline_call_adopts_the_running_frame_recorder(tmp_path):
    """`train data` starts the recorder and returns; the GPU session's next `train all` must wait on
    that recorder, not delete its shards and start a second one (the race that cost session 8 its
    VAE and decoder stages)."""
    import subprocess
    import sys

    from world_model.train.pipeline import PipelineOptions, run_stage
    from world_model.train.status import StatusFile

    run = tmp_path / "run"
    frames = run / "data" / "frames"
    for split, n in (("train", 64), ("held_out", 8)):
        shard = frames / split / "part-0000"
        shard.mkdir(parents=True)
        np.save(shard / "starts.npy", np.array([0, n]))
    recorder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        StatusFile(run / "data", "data").update(state="growing", pid=recorder.pid)
        opts = PipelineOptions(vae_start_frames=50, fake_data=False)
        out = run_stage(run, "data", opts)
        assert out["state"] == "growing" and out["pid"] == recorder.pid
        assert (frames / "train" / "part-0000" / "starts.npy").exists()  # its shards untouched
        assert not (run / "data" / "engine_frames.log").exists()  # no second recorder started
    finally:
        recorder.kill()
        recorder.wait()


def test_waiting_for_frames_notices_a_recorder_that_died(tmp_path):
    """The stages that need every recorded frame wait for the recorder named in data/status.json and
    raise when it is gone without finishing (before: they watched their own pid and waited forever)."""
    import subprocess
    import sys
    import threading

    from world_model.train.pipeline import _wait_for_frames
    from world_model.train.status import StatusFile

    run = tmp_path / "run"
    (run / "data" / "frames" / "train").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    StatusFile(run / "data", "data").update(state="growing", pid=dead.pid)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            _wait_for_frames(run)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "still waiting on a recorder that is gone"
    assert len(errors) == 1 and "stopped early" in str(errors[0])


def _encode_twice(device: str):
    """A tiny VAE's encode_store of a synthetic store with amp off and on: (latents, autocast seen by the
    encoder's convolutions, conv output dtypes) for each."""
    from world_model.text import make_text_encoder
    from world_model.train.autoencoder import identity_stats
    from world_model.train.encode import encode_store
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae = WanVAE(identity_stats(cfg.vae)).to(device).eval()
    store, text = synthetic_store(2, 40, (32, 32)), make_text_encoder(cfg.text)
    convs = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    seen: list[tuple[bool, torch.dtype]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled(device), o.dtype)))
        for m in convs
    ]
    out = []
    for amp in (False, True):
        seen.clear()
        enc = encode_store(vae, store, 5, text, progress=False, amp=amp)
        out.append((enc, {a for a, _ in seen}, {d for _, d in seen}))
    for h in hooks:
        h.remove()
    assert convs
    return out


def test_encode_store_amp_runs_the_encoder_under_autocast():
    """encode_store(amp=True) encodes under bf16 autocast (as the VAE stage trains the encoder; on a GPU by
    default); the latents are stored in bf16 either way and agree to bf16 rounding."""
    (ref, ref_autocast, _), (low, low_autocast, _) = _encode_twice("cpu")
    assert ref_autocast == {False} and low_autocast == {True}
    assert ref.latents.dtype == low.latents.dtype == torch.bfloat16 and torch.equal(ref.seg_start, low.seg_start)
    a, b = ref.latents.float(), low.latents.float()
    assert a.shape == b.shape and float((a - b).norm() / a.norm()) < 3e-2


@pytest.mark.gpu
def test_encode_store_amp_on_a_gpu_computes_in_bf16_close_to_fp32():
    (ref, _, ref_dtypes), (low, _, low_dtypes) = _encode_twice("cuda")
    assert ref_dtypes == {torch.float32} and low_dtypes == {torch.bfloat16}
    a, b = ref.latents.float(), low.latents.float()
    assert float((a - b).norm() / a.norm()) < 3e-2


def test_dmd_learning_rates_reach_the_stage_from_the_command_line():
    """--dmd-lr / --dmd-critic-lr / --dmd-rollout-reuse: parsed into PipelineOptions and passed to DMDOptions."""
    from world_model.train.__main__ import _parser
    from world_model.train.pipeline import PipelineOptions, _dmd_opts

    args = _parser().parse_args(
        ["dmd", "--run", "r", "--dmd-lr", "1e-5", "--dmd-critic-lr", "3e-5", "--dmd-batch", "4"]
        + ["--dmd-rollout-reuse", "5"]
    )
    changes = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    d = _dmd_opts(dataclasses.replace(PipelineOptions(), **changes))
    assert (d.lr_student, d.lr_critic, d.batch_size, d.rollout_reuse) == (1e-5, 3e-5, 4, 5)
    assert _dmd_opts(PipelineOptions()).lr_student == 2e-6  # the default unchanged


@pytest.mark.parametrize("which", ["vae", "decoder"])
def test_compiled_vae_stages_take_the_eager_step(monkeypatch, which):
    """VAEOptions.compile: the training step's encode and decode compiled give the eager step's losses and weights
    (evaluation stays eager). Compiled through AOTAutograd with eager kernels (inductor's code generation took 2 of
    the test's 2.3 minutes on 2 cores; the GPU bench runs inductor). The decoder stage's student starts off its
    teacher: at the teacher's own output the distillation L1's subgradient is 0 eager and +-1 wherever a compiled
    kernel rounds differently (a CPU check with inductor: grad norm 0.87 against 0.73 at equal losses)."""
    import functools

    from world_model.train.autoencoder import DecoderStage, identity_stats
    from world_model.vae import WanVAE

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    cfg = tiny(32, 32)
    store = synthetic_store(2, 20, (32, 32))

    def stage(compile):
        opts = VAEOptions(batch_size=2, clip_frames=5, compile=compile, gan_start=0)
        torch.manual_seed(0)
        full = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))
        clips = ClipFrames(store, 5, "cpu")
        if which == "vae":
            return VAEStage(full, clips, ClipFrames(store, 5, "cpu"), opts)
        s = DecoderStage(full, WanVAE(identity_stats(cfg.vae)), clips, ClipFrames(store, 5, "cpu"), opts)
        with torch.no_grad():
            for name, w in s.student.named_parameters():
                if name.startswith("decoder."):
                    w.add_(0.01 * torch.randn_like(w))
        return s

    eager, compiled = stage(False), stage(True)
    assert "_encode" in vars(compiled) and "_encode" not in vars(eager)
    # inductor's backward with donated buffers refuses the adaptive weight's retained graph (seen on the CPU and the
    # H200; aot_eager does not donate): a compiled stage turns donation off
    assert torch._functorch.config.donated_buffer is False
    # the adversary on from step 0: its adaptive weight differentiates the compiled decode twice before the backward
    a, b = eager.train_step(0), compiled.train_step(0)
    assert "gan_lambda" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    net = "vae" if which == "vae" else "student"
    for (k, w), w2 in zip(getattr(eager, net).state_dict().items(), getattr(compiled, net).state_dict().values()):
        torch.testing.assert_close(w2, w, rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert compiled.evaluate().keys() == eager.evaluate().keys()


def test_vae_encoder_dim_widens_the_trained_encoder_only(tmp_path):
    """PipelineOptions.vae_encoder_dim: the VAE stage trains an encoder of that width, the decoder as the preset's."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.pipeline import PipelineOptions, preset_config, run_stage

    opts = PipelineOptions.smoke()
    wide = dataclasses.replace(opts, vae_encoder_dim=2 * preset_config(opts).vae.encoder_dim)
    assert (
        preset_config(wide).vae.encoder_dim == 16
        and preset_config(wide).vae.decoder_dim == preset_config(opts).vae.decoder_dim
    )
    run = tmp_path / "run"
    run_stage(run, "data", wide)
    run_stage(run, "vae", dataclasses.replace(wide, vae_steps=1))
    weights = load_latest(run / "vae")["stage"]["vae"]
    assert weights["encoder.conv1.weight"].shape[0] == 16
    with pytest.raises(ValueError, match="vae_encoder_dim"):
        dataclasses.replace(opts, vae_encoder_dim=-1)


@pytest.mark.parametrize("kind", ["vae", "decoder"])
def test_the_grid_penalty_joins_the_autoencoder_stages_losses(kind):
    """VAEOptions.grid_weight (pipeline --vae-grid): the grid share of the decoded frames' error is a term of the
    vae and decoder stages' loss, weighted, and absent at 0."""
    from world_model.train.autoencoder import DecoderStage, identity_stats
    from world_model.train.pipeline import PipelineOptions, _vae_opts
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    store = synthetic_store(2, 20, (32, 32))

    def first_step(weight: float) -> tuple[dict, dict]:
        torch.manual_seed(0)
        full = WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0))
        opts = VAEOptions(batch_size=2, clip_frames=5, grid_weight=weight, eval_clips=2)
        clips, held = ClipFrames(store, 5, "cpu"), ClipFrames(store, 5, "cpu")
        if kind == "vae":
            stage = VAEStage(full, clips, held, opts)
        else:
            stage = DecoderStage(full, WanVAE(identity_stats(cfg.vae)), clips, held, opts)
        return stage.train_step(0), stage.evaluate()

    (off, _), (on, ev) = first_step(0.0), first_step(5.0)
    assert "grid" not in off and 0 < on["grid"] < 1
    assert 0 <= ev["grid_share"] <= 1  # the held-out decoded frames' screen door, logged with every evaluation
    torch.testing.assert_close(on["loss"], off["loss"] + 5.0 * on["grid"], rtol=1e-5, atol=1e-6)
    assert _vae_opts(PipelineOptions(vae_grid=2.5)).grid_weight == 2.5
    with pytest.raises(ValueError, match="grid_weight"):
        VAEOptions(grid_weight=-1.0)


def test_an_autoencoder_stage_resumed_from_a_slim_warms_its_fresh_optimiser_up_again():
    """A slimmed checkpoint (weights, no optimiser) continues at its step with a fresh AdamW, whose first updates are
    ~lr x sign(grad) for every weight: the learning rate ramps up again from that step; a full checkpoint resumes
    the schedule where it was."""
    from world_model.train.autoencoder import identity_stats
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    store = synthetic_store(2, 20, (32, 32))
    opts = VAEOptions(batch_size=2, clip_frames=5, warmup_steps=10)

    def stage():
        torch.manual_seed(0)
        return VAEStage(
            WanVAE(identity_stats(cfg.vae).replace(pruning_rate=0.0)), ClipFrames(store, 5, "cpu"), None, opts
        )

    fresh = stage()
    fresh.train_step(0)
    assert fresh.optim.param_groups[0]["lr"] == pytest.approx(opts.lr / 10)
    slim = stage()
    slim.load_state_dict({"vae": fresh.vae.state_dict()})
    for step in (5000, 5001):
        slim.train_step(step)
        assert slim.optim.param_groups[0]["lr"] == pytest.approx(opts.lr * (step - 4999) / 10)
    full = stage()
    full.load_state_dict(fresh.state_dict())
    full.train_step(5000)
    assert full.optim.param_groups[0]["lr"] == pytest.approx(opts.lr)


def test_the_warmup_ramps_from_step_zero_and_again_from_the_first_step_after_a_restart():
    from world_model.train.loop import Warmup

    w = Warmup(4)
    assert [w(s) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    w.restart()
    assert [w(s) for s in (700, 701, 703, 9000)] == [0.25, 0.5, 1.0, 1.0]
    assert Warmup(0)(0) == 1.0  # no warm-up
