"""Training code: checkpoints, error buffer, clip geometry, loop resume, the whole pipeline on tiny data."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bench_loader import load_bench
from world_model.config import embedded, tiny
from world_model.train.checkpoints import (
    checkpoint_step,
    latest_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
)
from world_model.train.clips import ClipSampler, LatentStore
from world_model.train.error_buffer import ErrorBuffer, ErrorBufferOptions
from world_model.train.frames import FrameStore, segment_starts, synthetic_store
from world_model.train.loop import LoopOptions, run_loop


def test_sharded_round_trip_splits_big_tensors_and_keeps_nesting(tmp_path):
    big = torch.arange(3000, dtype=torch.float32).reshape(30, 100)  # 12000 bytes > 4096 limit
    state = {"model": {"w": big, "b": torch.ones(3, dtype=torch.bfloat16)}, "opt": [{"step": 7, "lr": 1e-3}], 3: None}
    paths = save_sharded(state, tmp_path / "c", max_shard_bytes=4096)
    assert len(paths) >= 3 and all(p.stat().st_size <= 4096 + 1024 for p in paths)  # + safetensors header
    back = load_sharded(tmp_path / "c")
    assert torch.equal(back["model"]["w"], big) and back["model"]["b"].dtype == torch.bfloat16
    assert back["opt"] == [{"step": 7, "lr": 1e-3}] and back[3] is None


def test_checkpoints_keep_newest_and_ignore_partial(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint({"x": torch.tensor([step])}, tmp_path, step, keep=2)
    done = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert done == ["step-000000002", "step-000000003"]
    (tmp_path / "checkpoints" / ".tmp-step-000000004-1").mkdir()  # a crashed save
    assert latest_checkpoint(tmp_path).name == "step-000000003"
    assert int(load_sharded(latest_checkpoint(tmp_path))["x"]) == 3


def test_error_buffer_stores_low_sigma_residuals_and_perturbs_context():
    buf = ErrorBuffer(ErrorBufferOptions(size=8, sigma_max=0.5, prob=1.0, min_fill=1, gamma_history=2.0))
    res = torch.ones(2, 3, 4, 2, 2)  # [B, C, F, h, w]
    assert buf.push(res, torch.tensor([0.9, 0.1])) == 4  # only the second sample (4 frames) qualifies
    assert buf.push(3 * res, torch.tensor([0.2, 0.3])) == 8 and len(buf) == 8  # ring buffer wraps
    x = torch.zeros(1, 3, 2, 2, 2)
    y = buf.perturb(x, 2.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y, torch.full_like(y, 6.0))  # gamma * delta, all residuals now 3
    state = buf.state_dict()
    other = ErrorBuffer(buf.opts)
    other.load_state_dict(state)
    assert len(other) == 8 and torch.equal(other.data, buf.data)


def _store(cfg, episodes=2, frames=100, fs=25):
    fr = synthetic_store(episodes, frames, (cfg.stream.height, cfg.stream.width))
    starts = torch.as_tensor(segment_starts(fr, 1 + 4 * (fs - 1)))
    c, (h, w) = cfg.vae.z_dim, cfg.latent_hw
    lat = torch.randn(len(starts), fs, c, h, w)
    text = torch.randn(1, cfg.text.text_len, cfg.text.dim)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    return fr, LatentStore(
        lat, starts, t(fr.mouse), t(fr.keyboard), t(fr.poses), text, torch.zeros(len(starts), dtype=torch.long)
    )


def test_clip_geometry_matches_the_streaming_loop():
    cfg = tiny(32, 32)
    fr, st = _store(cfg)
    clips = ClipSampler(st, cfg, 2, use_memory=True)
    assert clips.k_max == 1  # 25 latents: chunk 0 (0..14) and chunk 1 (11..24)
    b0 = clips.sample(chunk=0)
    assert b0.num_context == 1 and b0.memory is None and b0.latents.shape[2] == 15 and b0.mouse.shape[1] == 57
    assert b0.positions[0].tolist() == list(range(15))
    b1 = clips.sample(chunk=1, segments=torch.tensor([1, 0]))
    assert b1.num_context == 4 and b1.latents.shape[2] == 14 and b1.mouse.shape[1] == 56
    assert b1.memory.shape[2] == 5 and b1.plucker.shape[2] == 19
    assert b1.positions[0, 5:].tolist() == list(range(11, 25)) and int(b1.positions[0, 4]) == 1  # sink slot
    assert bool((b1.positions[:, :5] <= 10).all())  # memory only from latents before the window
    # window latents are exactly the stored ones, actions are the frames [41, 97) of the segment
    assert torch.equal(b1.latents[0], st.latents[1, 11:25].transpose(0, 1))
    assert torch.equal(b1.mouse[0], st.mouse[int(st.seg_start[1]) + 41 : int(st.seg_start[1]) + 97])


def test_frame_store_reads_the_dataset_format(tmp_path):
    from world_model.data.format import DatasetWriter

    fr = synthetic_store(2, 9, (16, 16), levels=["MAP01", "MAP02"])
    with DatasetWriter(tmp_path / "ds", fps=16, height=16, width=16) as w:
        for e in range(2):
            sl = fr.episode(e)
            w.add_episode(fr.frames[sl], fr.keyboard[sl], fr.mouse[sl], fr.poses[sl], fr.prompts[e], level=fr.levels[e])
    back = FrameStore.from_dataset(tmp_path / "ds")
    assert back.starts.tolist() == [0, 9, 18] and back.levels == ["MAP01", "MAP02"]
    assert np.allclose(back.poses, fr.poses, atol=1e-4) and np.array_equal(back.keyboard, fr.keyboard)
    assert np.abs(back.frames.astype(int) - fr.frames.astype(int)).mean() < 40  # lossy H.264
    back.save(tmp_path / "fs")
    again = FrameStore.load(tmp_path / "fs")
    assert np.array_equal(again.frames, back.frames) and again.prompts == back.prompts


class _Counter:
    name = "counter"

    def __init__(self, fail_at: int | None = None):
        self.w = torch.zeros(1)
        self.fail_at = fail_at

    def train_step(self, step):
        if step == self.fail_at:
            raise RuntimeError("boom")
        self.w += 1
        return {"loss": float(self.w)}

    def state_dict(self):
        return {"w": self.w.clone()}

    def load_state_dict(self, state):
        self.w = state["w"].clone()


def test_loop_resumes_after_a_crash_and_records_status(tmp_path):
    with pytest.raises(RuntimeError):
        run_loop(_Counter(fail_at=5), tmp_path, LoopOptions(steps=10, checkpoint_every=2, progress=False))
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    stage = _Counter()
    out = run_loop(stage, tmp_path, LoopOptions(steps=10, checkpoint_every=2, progress=False))
    assert out["state"] == "done" and out["step"] == 10
    assert float(stage.w) == 10  # resumed from step 4 (w = 4), then 6 more steps
    stopped = run_loop(_Counter(), tmp_path / "b", LoopOptions(steps=10, deadline=0.0, progress=False))
    assert stopped["state"] == "stopped" and stopped["step"] == 0
    with pytest.raises(ValueError, match="no snapshot"):  # an option that would do nothing
        run_loop(_Counter(), tmp_path / "c", LoopOptions(steps=2, snapshot_every=1, progress=False))


class _Evaluated(_Counter):
    def evaluate(self):
        return {"w": float(self.w)}


def test_loop_evaluates_before_the_first_step_when_asked(tmp_path):
    def evals(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["w"]) for r in rows if r["kind"] == "eval"]

    run_loop(_Evaluated(), tmp_path / "a", LoopOptions(steps=4, eval_every=2, eval_at_start=True, progress=False))
    assert evals(tmp_path / "a") == [(0, 0.0), (2, 2.0), (4, 4.0)]  # the carried model's point first
    run_loop(_Evaluated(), tmp_path / "b", LoopOptions(steps=4, eval_every=2, progress=False))
    assert evals(tmp_path / "b") == [(2, 2.0), (4, 4.0)]
    # resumed: the point is where it goes on from
    run_loop(_Evaluated(), tmp_path / "b", LoopOptions(steps=6, eval_every=2, eval_at_start=True, progress=False))
    assert evals(tmp_path / "b")[2:] == [(4, 4.0), (6, 6.0)]
    with pytest.raises(ValueError, match="no evaluate"):  # an option that would do nothing
        run_loop(_Counter(), tmp_path / "c", LoopOptions(steps=2, eval_at_start=True, progress=False))
    from world_model.train.pipeline import PipelineOptions, _loop_opts

    assert _loop_opts(PipelineOptions(eval_at_start=True), 10, None).eval_at_start  # --eval-at-start true
    assert not _loop_opts(PipelineOptions(), 10, None).eval_at_start


class _SlowCounter(_Counter):
    """Each step takes 40 s of a fake clock (the loop module's ``time``)."""

    def __init__(self, clock: list[float]):
        super().__init__()
        self.clock = clock

    def train_step(self, step):
        self.clock[0] += 40.0
        return super().train_step(step)


def test_checkpoint_minutes_saves_a_slow_stage_by_wall_time(tmp_path, monkeypatch):
    import types

    import world_model.train.loop as loop_module

    clock = [1000.0]
    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    opts = LoopOptions(steps=6, checkpoint_every=1000, checkpoint_minutes=1.0, keep=10, progress=False)
    run_loop(_SlowCounter(clock), tmp_path, opts)
    # 40 s a step: due at 80 s (step 2), 80 s after that (step 4), and the final one (step 6)
    saved = sorted(checkpoint_step(p) for p in (tmp_path / "checkpoints").glob("step-*"))
    assert saved == [2, 4, 6]
    by_steps = LoopOptions(steps=6, checkpoint_every=1000, keep=10, progress=False)  # 0: by steps only
    run_loop(_SlowCounter(clock), tmp_path / "b", by_steps)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")] == ["step-000000006"]
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        LoopOptions(steps=1, checkpoint_minutes=-1.0)


class _Signaller(_Counter):
    """Sends itself ``sig`` during step ``at`` (as Ctrl-C or a job scheduler would)."""

    def __init__(self, sig, at: int):
        super().__init__()
        self.sig, self.at = sig, at

    def train_step(self, step):
        if step == self.at:
            signal.raise_signal(self.sig)
        return super().train_step(step)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_finishes_the_step_checkpoints_it_and_the_run_resumes_there(tmp_path, sig):
    before = signal.getsignal(sig)
    stage = _Signaller(sig, at=3)
    with pytest.raises(KeyboardInterrupt, match=f"{signal.Signals(sig).name} at step 4"):
        run_loop(stage, tmp_path, LoopOptions(steps=10, checkpoint_every=100, progress=False))
    assert signal.getsignal(sig) is before  # the loop's handler is gone again
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 4
    assert float(stage.w) == 4 and int(load_sharded(latest_checkpoint(tmp_path))["step"]) == 4
    again = _Counter()
    out = run_loop(again, tmp_path, LoopOptions(steps=10, checkpoint_every=100, progress=False))
    assert out["state"] == "done" and float(again.w) == 10  # 4 resumed + 6, nothing trained twice or lost


def test_a_stop_signal_in_the_last_step_leaves_the_stage_done_but_still_stops_the_caller(tmp_path):
    stage = _Signaller(signal.SIGINT, at=9)
    with pytest.raises(KeyboardInterrupt, match="SIGINT at step 10"):  # a pipeline must not start its next stage
        run_loop(stage, tmp_path, LoopOptions(steps=10, checkpoint_every=100, progress=False))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 10
    assert int(load_sharded(latest_checkpoint(tmp_path))["step"]) == 10


def test_embedded_preset_fits_the_size_bar():
    from world_model.dit import MatrixGameDiT
    from world_model.vae import WanVAE

    cfg = embedded()
    assert cfg.name == "mg3-embedded" and cfg.vae.spatial_stride == 8 and cfg.latent_hw == (16, 16)
    with torch.device("meta"):
        dit, vae = MatrixGameDiT(cfg.dit), WanVAE(cfg.vae)
    n = sum(p.numel() for p in dit.parameters()) + sum(p.numel() for p in vae.parameters())
    assert n > 10e6 and 2 * n <= 40e6, f"{n / 1e6:.1f}M parameters: {2 * n / 1e6:.1f} MB in bf16"


def test_flow_stage_learns_and_fills_the_error_buffer(tmp_path):
    from world_model.dit import MatrixGameDiT
    from world_model.train.flow import FlowOptions, FlowStage

    torch.manual_seed(0)
    cfg = tiny(32, 32)
    _, st = _store(cfg)
    opts = FlowOptions(batch_size=2, lr=3e-3, warmup_steps=1, use_memory=True, error=ErrorBufferOptions(sigma_max=1.0))
    stage = FlowStage(MatrixGameDiT(cfg.dit), ClipSampler(st, cfg, 2, use_memory=True), opts, name="memory")
    losses = [stage.train_step(i)["loss"] for i in range(8)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # zero-init head: v = 0 at start, loss falls
    assert len(stage.buffer) > 0
    ema_before = [p.clone() for p in stage.ema.model.parameters()]
    stage.load_state_dict(load_sharded(save_sharded(stage.state_dict(), tmp_path / "s")[0].parent))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, stage.ema.model.parameters()))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from world_model.train.pipeline import PipelineOptions, run_pipeline

    run = tmp_path_factory.mktemp("run")
    return run, run_pipeline(run, PipelineOptions.smoke())


def test_pipeline_end_to_end_exports_a_loadable_model(smoke_run):
    from world_model.train.export import read_exported

    run, status = smoke_run
    assert status["state"] == "done"
    assert all(v == "done" for v in status["stages"].values()), status["stages"]
    for stage in ("vae", "decoder", "base", "memory", "dmd", "sharpen"):
        assert list((run / stage / "checkpoints").glob("step-*/shard-*.safetensors")), stage
    stats = json.loads((run / "latents" / "stats.json").read_text())
    cfg, dit, vae = read_exported(run / "export")
    assert cfg.vae.latent_std == tuple(stats["std"]) and cfg.vae.pruning_rate == 0.5
    assert (run / "export" / "README.md").read_text().startswith("# tiny-random")
    # the DMD student is the export; its teacher, the memory model, is exported beside it
    from world_model.train.pipeline import _dit_from

    _, teacher, _ = read_exported(run / "export_memory")
    assert json.loads((run / "export" / "status.json").read_text())["metrics"]["dit_source"] == "dmd"
    memory = _dit_from(run, "memory", cfg, torch.device("cpu")).state_dict()
    for k, v in teacher.state_dict().items():  # the memory model's EMA, as exported (bf16)
        torch.testing.assert_close(v.float(), memory[k].bfloat16().float(), atol=0, rtol=0)
    ev = json.loads((run / "dmd" / "status.json").read_text())["eval"]
    assert {"psnr_model", "psnr_repeat", "psnr_vae", "gain_db"} <= set(ev) and np.isfinite(ev["psnr_model"])
    # blur beside PSNR: the generated chunk's and the reconstruction's gradients over the simulator's
    for stage in ("base", "memory", "dmd"):
        ev = json.loads((run / stage / "status.json").read_text())["eval"]
        assert 0 < ev["sharpness_model"] < 20 and 0 < ev["sharpness_vae"] < 20, (stage, ev)  # smoke: noise, ~4
    # chunk 1 after the true chunk 0 and after the model's own (segments of 25 latents hold it)
    for stage in ("base", "memory", "dmd"):
        ev = json.loads((run / stage / "status.json").read_text())["eval"]
        assert all(np.isfinite(ev[k]) for k in ("psnr_next", "psnr_next_rollout", "psnr_next_repeat")), stage
        assert ev["gain_next_db"] == pytest.approx(ev["psnr_next"] - ev["psnr_next_repeat"])
        assert ev["gain_next_rollout_db"] == pytest.approx(ev["psnr_next_rollout"] - ev["psnr_next_repeat"])
        # each continuation against its own history's last frame held still, and its blur
        for key in ("next", "next_rollout"):
            assert np.isfinite(ev[f"gain_{key}_held_db"]), (stage, key)
            assert 0 < ev[f"sharpness_{key}"] < 20, (stage, key, ev)


def test_pipeline_rerun_skips_finished_stages(smoke_run):
    from world_model.train.pipeline import run_pipeline

    run, _ = smoke_run
    again = run_pipeline(run)
    assert again["stages"]["base"] == "done (skipped)" and again["stages"]["export"] == "done"


def test_slim_takes_the_first_stage_with_a_checkpoint_and_checks_before_writing(smoke_run, tmp_path):
    """``memory|base``: a run whose memory stage has no checkpoint hands on its base model; an entry
    none of whose stages has one is refused before anything is written."""
    import shutil

    from world_model.train.checkpoints import load_latest
    from world_model.train.slim import slim_run

    run, _ = smoke_run
    partial = tmp_path / "run"
    shutil.copytree(run, partial)
    shutil.rmtree(partial / "memory")
    shutil.rmtree(partial / "dmd")
    slim_run(partial, tmp_path / "slim", ["vae", "memory|base"], rename={"memory": "base"})
    base = load_latest(tmp_path / "slim" / "base")["stage"]["ema"]["model"]
    ema = load_latest(run / "base")["stage"]["ema"]["model"]
    assert all(torch.equal(base[k], v) for k, v in ema.items())  # the base stage's own EMA
    with pytest.raises(FileNotFoundError, match="memory or"):
        slim_run(partial, tmp_path / "none", ["vae", "memory|dmd"])
    assert not (tmp_path / "none").exists()


def test_a_slim_of_a_running_stage_is_labelled_with_its_checkpoints_step(smoke_run, tmp_path):
    """A stage still training has a status ahead of its newest checkpoint: the slim holds that checkpoint's
    weights and says its step, not the status's (session 34's poll named a pack by one step and held another)."""
    import shutil

    from world_model.train.slim import slim_run

    run, _ = smoke_run
    live = tmp_path / "run"
    shutil.copytree(run / "base", live / "base")
    ck = latest_checkpoint(live / "base")
    status = json.loads((live / "base" / "status.json").read_text())
    status.update(state="running", step=checkpoint_step(ck) + 7)
    (live / "base" / "status.json").write_text(json.dumps(status))
    slim_run(live, tmp_path / "slim", ["base"])
    assert latest_checkpoint(tmp_path / "slim" / "base").name == ck.name
    slimmed = json.loads((tmp_path / "slim" / "base" / "status.json").read_text())
    assert slimmed["step"] == status["step"] - 7
    assert slimmed["state"] == "done" and slimmed["stage_state"] == "running"  # export_from_poll.sh warns on it


def test_a_slimmed_dit_continues_as_the_next_sessions_base(smoke_run, tmp_path):
    """The memory model's EMA slimmed as ``base`` (bf16, weights only) seeds the next run's base stage:
    it resumes at the slimmed step from those weights, with a fresh optimiser."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.flow import FlowOptions
    from world_model.train.pipeline import PipelineOptions, run_stage
    from world_model.train.slim import slim_run
    from world_model.train.status import reopen

    run, _ = smoke_run
    slim_run(
        run,
        tmp_path / "slim",
        ["vae", "decoder", "memory"],
        rename={"memory": "base"},
        dit_dtype=torch.bfloat16,
        vae_dtype=torch.bfloat16,
    )
    carried = load_latest(tmp_path / "slim" / "base")["stage"]["ema"]["model"]
    for stage, key in (("vae", "vae"), ("decoder", "student")):  # the autoencoder's weights halved too
        slimmed = load_latest(tmp_path / "slim" / stage)["stage"][key]
        trained = load_latest(run / stage)["stage"][key]
        assert {v.dtype for v in slimmed.values() if v.is_floating_point()} == {torch.bfloat16}
        assert all(torch.equal(v, trained[k].to(v.dtype)) for k, v in slimmed.items())
    step = json.loads((tmp_path / "slim" / "base" / "status.json").read_text())["step"]
    opts = PipelineOptions.smoke()
    for stage in ("data", "vae", "decoder", "encode"):  # what the next session redoes before the DiT
        run_stage(tmp_path / "slim", stage, opts)
    reopen(tmp_path / "slim" / "base")
    out = run_stage(tmp_path / "slim", "base", dataclasses.replace(opts, base_steps=step + 2))
    assert out["state"] == "done" and out["step"] == step + 2
    state = load_latest(tmp_path / "slim" / "base")["stage"]
    assert set(state) >= {"model", "ema", "optim"}  # a full checkpoint again
    delta = sum((state["model"][k].float() - v.float()).pow(2).sum() for k, v in carried.items()).sqrt()
    norm = sum(v.float().pow(2).sum() for v in carried.values()).sqrt()
    assert 0 < delta < 0.05 * norm  # two steps on from the carried weights, not from a fresh init
    rows = [json.loads(line) for line in (tmp_path / "slim" / "base" / "metrics.jsonl").read_text().splitlines()]
    (first, *_) = [r for r in rows if "lr" in r]
    warmup = FlowOptions().warmup_steps  # the fresh optimiser warms up again, counted from the resume
    assert first["lr"] == pytest.approx(opts.base_lr * (first["step"] - step) / warmup)


def test_a_carried_dmd_student_goes_on_in_the_next_sessions_dmd_stage(smoke_run, tmp_path):
    """The DMD student slimmed as ``student`` seeds the next run's DMD stage: its student starts from
    those weights (not from the memory model, its teacher), the teacher and critic from the memory model."""
    import shutil

    from world_model.train.checkpoints import load_latest
    from world_model.train.pipeline import PipelineOptions, run_stage
    from world_model.train.slim import slim_run

    run, _ = smoke_run
    slim_run(run, tmp_path / "carry", ["dmd|student"], rename={"dmd": "student"}, dit_dtype=torch.bfloat16)
    carried = load_latest(tmp_path / "carry" / "student")["stage"]["ema"]["model"]
    nxt = tmp_path / "run"
    shutil.copytree(run, nxt)
    shutil.rmtree(nxt / "dmd")
    shutil.copytree(tmp_path / "carry" / "student", nxt / "student")
    opts = dataclasses.replace(PipelineOptions.smoke(), dmd_steps=1)
    assert run_stage(nxt, "dmd", opts)["state"] == "done"
    state = load_latest(nxt / "dmd")["stage"]
    teacher = load_latest(run / "memory")["stage"]["ema"]["model"]

    def dist(a, b):
        return sum((a[k].float() - b[k].float()).pow(2).sum() for k in b).sqrt()

    assert dist(state["teacher"], teacher) == 0 and dist(state["critic"], teacher) < dist(state["student"], teacher)
    assert dist(state["student"], carried) < 0.01 * dist(carried, teacher)  # one step on from the carried
    # slimming again with no DMD run hands the carried student on
    shutil.rmtree(nxt / "dmd")
    slim_run(nxt, tmp_path / "again", ["dmd|student"], rename={"dmd": "student"})
    again = load_latest(tmp_path / "again" / "student")["stage"]["ema"]["model"]
    assert all(torch.equal(again[k], v) for k, v in carried.items())


def test_a_slim_from_an_export_carries_its_weights_and_trains_the_decoder_on_frames(smoke_run, tmp_path):
    """slim --from-export (a run's own slim lost): the exported DiT as ``base``, the exported VAE as the
    ``decoder`` stage, its encoder as an encoder-only ``vae`` stage and the export's latent statistics. The
    encode stage goes on from the carried encoder; the decoder stage, with no full decoder to distil
    from, trains the carried pruned decoder on the true frames (no distillation term)."""
    import shutil

    from world_model.train.autoencoder import is_decoder_side
    from world_model.train.checkpoints import load_latest
    from world_model.train.export import read_exported
    from world_model.train.pipeline import PipelineOptions, run_stage
    from world_model.train.slim import main as slim_main
    from world_model.train.status import reopen

    run, _ = smoke_run
    slim = tmp_path / "slim"
    slim_main(["--from-export", str(run / "export"), "--out", str(slim), "--steps", "vae=7,base=5"])
    cfg, dit, vae = read_exported(run / "export")
    base = load_latest(slim / "base")["stage"]["ema"]["model"]
    assert all(torch.equal(base[k], v.bfloat16()) for k, v in dit.state_dict().items())
    decoder = load_latest(slim / "decoder")["stage"]["student"]
    assert all(torch.equal(decoder[k], v.bfloat16()) for k, v in vae.state_dict().items())
    encoder = load_latest(slim / "vae")["stage"]["vae"]
    assert encoder and not any(is_decoder_side(k) for k in encoder)
    status = json.loads((slim / "vae" / "status.json").read_text())
    assert status["encoder_only"] and status["step"] == 7 and status["state"] == "done"
    stats = json.loads((slim / "latents" / "stats.json").read_text())
    assert tuple(stats["std"]) == cfg.vae.latent_std and tuple(stats["mean"]) == cfg.vae.latent_mean
    shutil.copytree(run / "data", slim / "data")
    opts = dataclasses.replace(PipelineOptions.smoke(), vae_train_encoder=False, decoder_steps=2)
    reopen(slim / "decoder")
    assert run_stage(slim, "decoder", opts)["step"] == 2
    rows = [json.loads(r) for r in (slim / "decoder" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "pixel" in r]
    assert trained and all("distil" not in r and "mse" in r for r in trained)
    after = load_latest(slim / "decoder")["stage"]["student"]
    assert not all(torch.equal(after[k], v) for k, v in decoder.items() if is_decoder_side(k))
    assert all(torch.equal(after[k], v) for k, v in decoder.items() if not is_decoder_side(k))  # the encoder
    assert run_stage(slim, "encode", opts)["stats"] == "kept"  # the export's normalisation, the DiT's latents
    # the mark survives the next session's slim, and the checkpoint alone tells it
    from world_model.train.pipeline import vae_is_encoder_only
    from world_model.train.slim import slim_run

    again = slim_run(slim, tmp_path / "again", ["vae", "decoder"])
    assert json.loads((again / "vae" / "status.json").read_text())["encoder_only"]
    (again / "vae" / "status.json").write_text(json.dumps({"stage": "vae", "state": "done", "step": 7}))
    assert vae_is_encoder_only(again) and not vae_is_encoder_only(run)
    # a shipped DMD student, carried as the next DMD stage's student
    student = tmp_path / "student"
    slim_main(["--from-export", str(run / "export"), "--out", str(student), "--dit-as", "student"])
    assert sorted(p.name for p in student.iterdir()) == ["latents", "student"]
    carried = load_latest(student / "student")["stage"]["ema"]["model"]
    assert all(torch.equal(carried[k], v.bfloat16()) for k, v in dit.state_dict().items())
    with pytest.raises(SystemExit):
        slim_main(["--out", str(tmp_path / "x")])  # neither --run nor --from-export
    for argv in (  # a flag of the other source would do nothing
        ["--from-export", str(run / "export"), "--out", str(tmp_path / "y"), "--dit-dtype", "bfloat16"],
        ["--run", str(run), "--out", str(tmp_path / "y"), "--steps", "vae=3"],
    ):
        with pytest.raises(SystemExit):
            slim_main(argv)
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("reuse, expected", [(1, 7), (3, 3)])
def test_dmd_reuses_a_self_rollout_until_the_next_student_update(smoke_run, reuse, expected):
    """DMDOptions.rollout_reuse: one self-rollout serves the critic steps after a student update up to and
    including the next update (made by the student as it is then); 1 rolls out at every step."""
    from world_model.train.clips import ClipSampler
    from world_model.train.dmd import DMDOptions, DMDStage
    from world_model.train.pipeline import PipelineOptions, _dit_from, _latents, run_config

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, dev = run_config(run, opts), torch.device("cpu")
    train_lat, _ = _latents(run, dev)
    clips = ClipSampler(train_lat, cfg, 1, use_memory=True, seed=0)
    assert clips.k_max >= 1
    cfg = cfg.replace(sampler=dataclasses.replace(cfg.sampler, num_steps=1))
    dopts = DMDOptions(batch_size=1, cold_start_steps=0, p_mask=0.0, critic_steps=3, rollout_reuse=reuse, amp=False)
    stage = DMDStage(_dit_from(run, "memory", cfg, dev), clips, cfg.sampler, dopts)
    made = []
    for step in range(7):  # student updates at steps 0, 3, 6
        stage.train_step(step)
        made.append(stage._rollout[0])
        assert stage._rollout[0] <= step
        if step % dopts.critic_steps == 0 and step > 0:  # the update's history: made after the last update
            assert stage._rollout[0] > step - dopts.critic_steps
    assert stage.rollouts == expected
    if reuse == 3:
        assert made == [0, 1, 1, 1, 4, 4, 4]
    with pytest.raises(ValueError, match="rollout_reuse"):
        DMDStage(_dit_from(run, "memory", cfg, dev), clips, cfg.sampler, dataclasses.replace(dopts, rollout_reuse=0))


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_dmd_regression_term_pulls_the_student_to_the_teachers_sample(smoke_run, weight):
    """DMDOptions.regression_weight: at the first step the critic is the teacher, so the distribution-
    matching gradient is exactly 0 and only the regression term (student's sample vs the teacher's from the
    same noise and history) can move the student."""
    from world_model.train.clips import ClipSampler
    from world_model.train.dmd import DMDOptions, DMDStage
    from world_model.train.pipeline import PipelineOptions, _dit_from, _latents, run_config

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, dev = run_config(run, opts), torch.device("cpu")
    train_lat, _ = _latents(run, dev)
    clips = ClipSampler(train_lat, cfg, 1, use_memory=True, seed=0)
    model = _dit_from(run, "memory", cfg, dev)
    torch.manual_seed(0)
    with torch.no_grad():  # a student unlike its teacher, so that the two samples differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dopts = DMDOptions(batch_size=1, cold_start_steps=10, p_mask=0.0, regression_weight=weight, amp=False)
    stage = DMDStage(model, clips, cfg.sampler, dopts)
    stage.teacher.load_state_dict(_dit_from(run, "memory", cfg, dev).state_dict())
    stage.critic.load_state_dict(stage.teacher.state_dict())
    before = {k: v.clone() for k, v in stage.student.state_dict().items()}
    metrics = stage.train_step(0)
    moved = sum(float((v - before[k]).abs().sum()) for k, v in stage.student.state_dict().items())
    n = sum(v.numel() for v in before.values())
    if weight:  # Adam's first step moves every weight with a gradient by ~lr
        assert float(metrics["regression"]) > 0 and moved > 0.1 * dopts.lr_student * n
    else:  # AdamW's weight decay alone: lr * decay * |w| per weight
        assert "regression" not in metrics and moved < 1e-3 * dopts.lr_student * n


def test_memory_guided_sampling_adds_a_call_without_the_memory_and_the_teacher_uses_it(smoke_run):
    from world_model.sampler import FlowUniPCSampler
    from world_model.train.clips import ClipSampler
    from world_model.train.dmd import DMDOptions
    from world_model.train.pipeline import PipelineOptions, _dit_from, _dmd_opts, _latents, run_config
    from world_model.train.rollout import sample_chunk

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, dev = run_config(run, opts), torch.device("cpu")
    train_lat, _ = _latents(run, dev)
    batch = ClipSampler(train_lat, cfg, 2, use_memory=True, seed=0).build(torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert batch.memory is not None
    model = _dit_from(run, "memory", cfg, dev)
    sampler = FlowUniPCSampler.from_config(cfg.sampler)
    noise = torch.randn(batch.latents[:, :, batch.num_context :].shape, generator=torch.Generator().manual_seed(0))
    calls = []  # (positions' length, memory given) of every DiT call
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: calls.append((args[6].shape[1], kw.get("memory") is not None)), with_kwargs=True
    )
    try:
        guided = sample_chunk(model, batch, noise, sampler, memory_guidance=2.0)
    finally:
        hook.remove()
    window = batch.latents.shape[2]
    assert calls == [(batch.positions.shape[1], True), (window, False)] * sampler.num_steps
    plain = sample_chunk(model, batch, noise, sampler)
    assert torch.equal(sample_chunk(model, batch, noise, sampler, memory_guidance=1.0), plain)
    assert not torch.allclose(guided, plain)
    with pytest.raises(ValueError, match="memory_guidance must be >= 1"):
        sample_chunk(model, batch, noise, sampler, memory_guidance=0.5)
    with pytest.raises(ValueError, match="teacher_memory_guidance must be >= 1"):
        DMDOptions(teacher_memory_guidance=0.5)
    assert _dmd_opts(PipelineOptions(dmd_teacher_memory_guidance=2.0)).teacher_memory_guidance == 2.0


def test_dmd_distils_the_base_stage_where_the_memory_stage_did_not_run(smoke_run, tmp_path):
    """A continued session that skips the memory stage (its carried base is the last memory model): DMD's
    teacher, critic and student start from the base stage, and the export writes it beside the student."""
    import shutil

    from world_model.train.checkpoints import load_latest
    from world_model.train.export import read_exported
    from world_model.train.pipeline import PipelineOptions, run_stage

    run, _ = smoke_run
    nxt = tmp_path / "run"
    shutil.copytree(run, nxt)
    for stage in ("memory", "dmd", "export", "export_memory"):
        shutil.rmtree(nxt / stage, ignore_errors=True)
    opts = dataclasses.replace(PipelineOptions.smoke(), dmd_steps=1)
    assert run_stage(nxt, "dmd", opts)["state"] == "done"
    base = load_latest(nxt / "base")["stage"]["ema"]["model"]
    assert all(torch.equal(load_latest(nxt / "dmd")["stage"]["teacher"][k], v) for k, v in base.items())
    assert run_stage(nxt, "export", opts)["state"] == "done"
    _, teacher, _ = read_exported(nxt / "export_memory")
    assert all(torch.equal(teacher.state_dict()[k], v.bfloat16().float()) for k, v in base.items())
    assert json.loads((nxt / "export" / "status.json").read_text())["metrics"]["dit_source"] == "dmd"


def test_held_out_evaluation_needs_a_decoder_checkpoint_not_a_finished_decoder_stage(smoke_run, tmp_path, caplog):
    """A decoder stage stopped by SIGTERM ('interrupted') still decodes the held-out chunks (session 32's CPU run
    had no evaluation for it); without any decoder checkpoint there is none, and the log says so."""
    import shutil

    from world_model.train.pipeline import PipelineOptions, _evaluator, _latents, run_config

    run, _ = smoke_run
    nxt = tmp_path / "run"
    shutil.copytree(run, nxt)
    shutil.rmtree(nxt / "sharpen")
    status = json.loads((nxt / "decoder" / "status.json").read_text())
    (nxt / "decoder" / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    opts = PipelineOptions.smoke()
    cfg, dev = run_config(nxt, opts), torch.device("cpu")
    _, held = _latents(nxt, dev)
    assert _evaluator(nxt, opts, cfg, held, dev, memory=True) is not None
    shutil.rmtree(nxt / "decoder" / "checkpoints")
    with caplog.at_level("WARNING"):
        assert _evaluator(nxt, opts, cfg, held, dev, memory=True) is None
    assert "no held-out evaluation: no decoder checkpoint" in caplog.text


def test_own_history_replaces_the_past_with_the_models_previous_chunk():
    """with_own_history: chunk k's window conditions on chunk k-1 as the model generated it (from its
    true context), every other latent and the targets stay the store's."""
    from world_model.dit import MatrixGameDiT
    from world_model.sampler import FlowUniPCSampler
    from world_model.train.rollout import sample_chunk, with_own_history

    torch.manual_seed(0)
    cfg = tiny(32, 32)
    _, st = _store(cfg)
    clips = ClipSampler(st, cfg, 2, use_memory=True)
    model = MatrixGameDiT(cfg.dit).eval()
    for p in model.head.parameters():  # the zero-init head predicts v = 0: make the model say something
        torch.nn.init.normal_(p, std=0.02)
    sampler = FlowUniPCSampler.from_config(cfg.sampler)
    segs = torch.tensor([1, 0])
    true = clips.build(segs, torch.ones(2, dtype=torch.int64))
    own = with_own_history(model, clips, true, sampler, torch.Generator().manual_seed(5))
    # by hand: chunk 0 from the true image latent with the same noise, written into the history
    first = clips.build(segs, torch.zeros(2, dtype=torch.int64))
    noise = torch.randn(first.latents[:, :, 1:].shape, generator=torch.Generator().manual_seed(5))
    x = sample_chunk(model, first, noise, sampler)  # chunk 0's latents 1..14
    c = own.num_context  # chunk 1's past: latents 11..14, i.e. the last 4 generated
    torch.testing.assert_close(own.latents[:, :, :c], x[:, :, -c:])
    assert not torch.allclose(own.latents[:, :, :c], true.latents[:, :, :c])
    torch.testing.assert_close(own.latents[:, :, c:], true.latents[:, :, c:])  # the targets
    assert torch.equal(own.positions, true.positions) and torch.equal(own.segments, segs)
    with pytest.raises(ValueError, match="continuation"):
        with_own_history(model, clips, first, sampler, torch.Generator())

    # a batch of chunks 1 and 2 (chunk 0's window and a later one's differ): each row as if alone
    _, st = _store(cfg, frames=160, fs=35)
    clips = ClipSampler(st, cfg, 2, use_memory=True)
    assert clips.k_max >= 2
    mixed = clips.build(segs, torch.tensor([1, 2]))
    both = with_own_history(model, clips, mixed, sampler, torch.Generator().manual_seed(5))
    alone = [
        with_own_history(model, clips, clips.build(segs[i : i + 1], mixed.chunk[i : i + 1]), sampler, g)
        for i, g in ((0, torch.Generator().manual_seed(5)), (1, torch.Generator().manual_seed(5)))
    ]
    torch.testing.assert_close(both.latents[:1], alone[0].latents)
    assert both.latents[1:].shape == alone[1].latents.shape
    assert not torch.allclose(both.latents[1:, :, :c], mixed.latents[1:, :, :c])  # its past is the model's own


def test_flow_stage_trains_on_its_own_history():
    from world_model.dit import MatrixGameDiT
    from world_model.train.flow import FlowOptions, FlowStage

    torch.manual_seed(0)
    cfg = tiny(32, 32)
    _, st = _store(cfg)
    opts = FlowOptions(batch_size=2, warmup_steps=1, p_continue=1.0, p_own_history=1.0)
    stage = FlowStage(MatrixGameDiT(cfg.dit), ClipSampler(st, cfg, 2, p_continue=1.0), opts, name="base")
    calls = []
    real = stage._own_history
    stage._own_history = lambda batch: calls.append(batch.chunk.tolist()) or real(batch)
    out = [stage.train_step(i) for i in range(2)]
    assert calls == [[1, 1], [1, 1]] and all(torch.isfinite(o["loss"]) for o in out)


def test_ship_installs_an_export_and_keeps_the_card(smoke_run, tmp_path):
    import shutil

    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions
    from world_model.train.ship import ship

    run, _ = smoke_run
    target = tmp_path / "embedded"
    shutil.copytree(run / "export", target)
    (target / "README.md").write_text("# the model card\n")
    (target / "default_prompt.txt").write_text("a prompt\n")
    before = (target / "vae.safetensors").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(run / "export", bad)
    (bad / "vae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="vae.safetensors"):
        ship(bad, target)
    cfg = json.loads((run / "export" / "config.json").read_text())
    cfg["stream"]["fps"] = cfg["stream"]["fps"] + 1.5
    other = tmp_path / "other"
    shutil.copytree(run / "export", other)
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="geometry"):
        ship(other, target)
    assert (target / "vae.safetensors").read_bytes() == before  # refused: nothing changed
    assert ship(other, target, new_geometry=True) == target
    assert json.loads((target / "config.json").read_text())["stream"]["fps"] == cfg["stream"]["fps"]
    assert (target / "README.md").read_text() == "# the model card\n" and (target / "default_prompt.txt").exists()
    assert not (target / "status.json").exists() and not list(tmp_path.glob("embedded.*"))
    with pytest.raises(ValueError, match="sampler_steps"):
        ship(other, target, new_geometry=True, sampler_steps=0)
    assert ship(other, target, new_geometry=True, sampler_steps=5) == target
    assert json.loads((target / "config.json").read_text())["sampler"]["num_steps"] == 5
    assert json.loads((other / "config.json").read_text())["sampler"]["num_steps"] != 5  # the export unchanged
    with pytest.raises(ValueError, match="context_cache_refresh"):
        ship(other, target, new_geometry=True, context_cache_refresh=-1)
    assert json.loads((target / "config.json").read_text())["sampler"]["num_steps"] == 5  # refused: unchanged
    ship(other, target, new_geometry=True, context_cache_refresh=2)
    assert json.loads((target / "config.json").read_text())["sampler"]["context_cache_refresh"] == 2
    assert load_world_model(str(target), RuntimeOptions.for_device("cpu")).runtime.context_cache_refresh == 2


def _action_batch(b: int, nf: int = 7):
    """A ClipBatch with distinct, non-null actions (only keyboard and mouse matter to drop_actions)."""
    from world_model.train.clips import ClipBatch

    g = torch.Generator().manual_seed(1)
    z = torch.zeros(b, 1)
    return ClipBatch(
        latents=z, num_context=1, memory=None, plucker=z, mouse=torch.rand(b, nf, 2, generator=g) * 0.5 - 0.25,
        keyboard=(torch.rand(b, nf, 6, generator=g) < 0.5).float(), positions=z, context=z,
        chunk=torch.zeros(b, dtype=torch.int64), frames=z,
    )  # fmt: skip


def test_action_dropout_nulls_whole_samples_at_rate_p_deterministically():
    from world_model.action import NULL_KEYBOARD, NULL_MOUSE
    from world_model.train.flow import FlowOptions, drop_actions

    batch = _action_batch(4)
    kb, ms = batch.keyboard, batch.mouse
    assert not drop_actions(batch, 0.0, torch.Generator().manual_seed(0)).any()
    assert torch.equal(batch.keyboard, kb) and torch.equal(batch.mouse, ms)

    n, p = 4000, 0.3
    batch = _action_batch(n)
    kb, ms = batch.keyboard.clone(), batch.mouse.clone()
    drop = drop_actions(batch, p, torch.Generator().manual_seed(0))
    assert drop.shape == (n,) and drop.dtype == torch.bool
    assert abs(drop.float().mean().item() - p) < 0.03  # binomial sd 0.007
    assert bool((batch.keyboard[drop] == NULL_KEYBOARD).all()) and bool((batch.mouse[drop] == NULL_MOUSE).all())
    assert torch.equal(batch.keyboard[~drop], kb[~drop]) and torch.equal(batch.mouse[~drop], ms[~drop])
    assert not (kb == NULL_KEYBOARD).all(dim=(1, 2)).any() and not (ms == NULL_MOUSE).all(dim=(1, 2)).any()
    again = _action_batch(n)
    assert torch.equal(drop_actions(again, p, torch.Generator().manual_seed(0)), drop)  # the generator decides
    assert torch.equal(again.keyboard, batch.keyboard) and torch.equal(again.mouse, batch.mouse)
    assert not torch.equal(drop_actions(_action_batch(n), p, torch.Generator().manual_seed(1)), drop)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="p_drop_actions"):
            FlowOptions(p_drop_actions=bad)


def test_flow_stage_feeds_the_dit_null_actions_for_the_dropped_samples():
    """What the DiT sees in a training step: the dropped samples' keyboard and mouse are the null
    values, the others the store's; the share is logged; p = 0 draws nothing and logs nothing."""
    from world_model.action import NULL_KEYBOARD, NULL_MOUSE
    from world_model.dit import MatrixGameDiT
    from world_model.train.flow import FlowOptions, FlowStage

    cfg, B = tiny(32, 32), 4
    _, st = _store(cfg)

    def step(p: float, seed: int = 0):
        torch.manual_seed(0)
        opts = FlowOptions(batch_size=B, warmup_steps=1, p_continue=0.0, p_drop_actions=p, seed=seed)
        stage = FlowStage(MatrixGameDiT(cfg.dit), ClipSampler(st, cfg, B, p_continue=0.0, seed=seed), opts)
        seen = []
        stage.model.register_forward_pre_hook(lambda _, args: seen.append((args[4].clone(), args[5].clone())))
        rng = stage.action_generator.get_state()
        metrics = stage.train_step(0)
        return metrics, seen[0], stage, rng

    metrics, (ms, kb), stage, rng = step(0.0)
    assert "actions_dropped" not in metrics and torch.equal(stage.action_generator.get_state(), rng)
    true = ClipSampler(st, cfg, B, p_continue=0.0, seed=0).sample()  # the same draw: the stored actions
    assert torch.equal(kb, true.keyboard) and torch.equal(ms, true.mouse)

    metrics, (ms, kb), _, _ = step(0.5, seed=1)
    true = ClipSampler(st, cfg, B, p_continue=0.0, seed=1).sample()
    dropped = (kb == NULL_KEYBOARD).all(dim=(1, 2))
    assert bool(((ms == NULL_MOUSE).all(dim=(1, 2)) == dropped).all())  # keyboard and mouse together
    assert 0 < int(dropped.sum()) < B, f"seed 1 should drop some samples and keep some, dropped {dropped}"
    assert torch.equal(kb[~dropped], true.keyboard[~dropped]) and torch.equal(ms[~dropped], true.mouse[~dropped])
    assert float(metrics["actions_dropped"]) == dropped.float().mean().item()


def _flow_stages_without_data(monkeypatch, run_loop) -> None:
    """``pipeline.run_stage`` of the flow stages on a tiny config with synthetic latents, no run folder
    state and ``run_loop(stage, folder, loop_opts)`` in place of the training loop."""
    from world_model.dit import MatrixGameDiT
    from world_model.train import loop, pipeline

    cfg = tiny(32, 32)
    _, st = _store(cfg)
    monkeypatch.setattr(pipeline, "_need", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "run_config", lambda run, opts: cfg)
    monkeypatch.setattr(pipeline, "_latents", lambda run, dev: (st, st))
    monkeypatch.setattr(pipeline, "_evaluator", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "_dit_from", lambda *a, **k: MatrixGameDiT(cfg.dit))
    monkeypatch.setattr(loop, "run_loop", run_loop)


def test_pipeline_passes_action_dropout_and_continue_share_to_both_flow_stages(monkeypatch, tmp_path):
    """--action-dropout P reaches FlowOptions.p_drop_actions of the base and the memory stage, --p-continue Q their
    FlowOptions.p_continue and their clip samplers (the share of continuation batches)."""
    from world_model.train import pipeline
    from world_model.train.__main__ import _parser

    assert _parser().parse_args(["base", "--run", "r", "--action-dropout", "0.25"]).opt_action_dropout == 0.25
    assert _parser().parse_args(["base", "--run", "r", "--p-continue", "0.5"]).opt_p_continue == 0.5
    with pytest.raises(ValueError, match="action_dropout"):
        pipeline.PipelineOptions(action_dropout=1.0)
    with pytest.raises(ValueError, match="p_continue"):
        pipeline.PipelineOptions(p_continue=1.5)
    _flow_stages_without_data(
        monkeypatch,
        lambda stage, folder, lopts: {
            "name": stage.name,
            "p": stage.opts.p_drop_actions,
            "continue": (stage.opts.p_continue, stage.sampler.p_continue),
        },
    )
    opts = dataclasses.replace(pipeline.PipelineOptions.smoke(), action_dropout=0.25, p_continue=0.5)
    for name in ("base", "memory"):
        assert pipeline.run_stage(tmp_path, name, opts) == {"name": name, "p": 0.25, "continue": (0.5, 0.5)}


def test_compiled_flow_stage_compiles_only_its_training_graphs(monkeypatch):
    """Own-history sampling and evaluation run the compiled blocks eager: their varying batch sizes
    and no-grad passes add no graph (each cost ~50 s on the H200, and past dynamo's recompile limit
    the training graphs themselves ran eager)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from world_model.dit import MatrixGameDiT
    from world_model.train.flow import FlowOptions, FlowStage, dit_forward

    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real_compile(self, backend="eager", **kw))
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = tiny(32, 32)
    _, st = _store(cfg)
    opts = FlowOptions(batch_size=2, warmup_steps=1, p_continue=1.0, compile=True)
    clips = ClipSampler(st, cfg, 2, p_continue=1.0)

    def evaluator(ema):  # a no-grad pass at another batch size, as the held-out evaluation makes
        b = clips.build(torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.int64))
        with torch.no_grad():
            v = dit_forward(ema, b, b.latents, torch.full((3,), 500.0))
        return {"ok": float(v.isfinite().all())}

    stage = FlowStage(MatrixGameDiT(cfg.dit), clips, opts, name="base", evaluator=evaluator)
    stage.train_step(0)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the training step compiled its blocks
    stage.opts = dataclasses.replace(stage.opts, p_own_history=1.0)
    stage.train_step(1)  # samples chunk 0 of the batch with the model: no grad, eager
    assert stage.evaluate() == {"ok": 1.0}
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


def test_flow_stage_cools_the_learning_rate_down_before_its_deadline(monkeypatch):
    """Warmup-stable-decay: full lr until cooldown_s before the deadline, then linear to the floor."""
    from world_model.dit import MatrixGameDiT
    from world_model.train import flow
    from world_model.train.flow import FlowOptions, FlowStage

    with pytest.raises(ValueError, match="deadline"):
        FlowOptions(cooldown_s=10.0)
    with pytest.raises(ValueError, match="cooldown"):
        FlowOptions(deadline=1.0, cooldown_s=-1.0)
    cfg = tiny(32, 32)
    _, st = _store(cfg)
    opts = FlowOptions(batch_size=2, lr=1e-3, warmup_steps=1, deadline=1000.0, cooldown_s=100.0)
    stage = FlowStage(MatrixGameDiT(cfg.dit), ClipSampler(st, cfg, 2), opts, name="base")
    clock = {"now": 0.0}
    monkeypatch.setattr(flow.time, "time", lambda: clock["now"])
    lrs = {}
    for now in (500.0, 900.0, 950.0, 999.0, 1500.0):
        clock["now"] = now
        lrs[now] = stage._lr(10)
    assert lrs[500.0] == lrs[900.0] == pytest.approx(1e-3)
    assert lrs[950.0] == pytest.approx(0.5e-3)
    assert lrs[999.0] == lrs[1500.0] == pytest.approx(0.05e-3)  # the floor
    clock["now"] = 950.0
    assert stage.train_step(10)["lr"] == pytest.approx(0.5e-3)
    assert all(g["lr"] == pytest.approx(0.5e-3) for g in stage.optim.param_groups)


def test_pipeline_gives_each_flow_stage_its_cooldown(monkeypatch, tmp_path):
    """--memory-cooldown S: the memory stage's lr decays over the last S of its time budget; the base
    stage (0) keeps a constant lr; a cooldown without a time budget is refused."""
    import time

    from world_model.train import pipeline
    from world_model.train.__main__ import _parser

    assert _parser().parse_args(["all", "--run", "r", "--memory-cooldown", "0.3"]).opt_memory_cooldown == 0.3
    _flow_stages_without_data(monkeypatch, lambda stage, folder, lopts: (stage.opts, lopts))
    opts = dataclasses.replace(pipeline.PipelineOptions.smoke(), memory_cooldown=0.5)
    deadline = time.time() + 100.0
    fopts, lopts = pipeline.run_stage(tmp_path, "memory", opts, deadline=deadline)
    assert fopts.deadline == deadline - lopts.reserve_s and 49.0 < fopts.cooldown_s <= 50.0
    fopts, _ = pipeline.run_stage(tmp_path, "base", opts, deadline=deadline)
    assert fopts.cooldown_s == 0.0 and fopts.deadline is None
    with pytest.raises(ValueError, match="budget"):
        pipeline.run_stage(tmp_path, "memory", opts)
    with pytest.raises(ValueError, match="cooldown"):
        pipeline.run_stage(tmp_path, "memory", dataclasses.replace(opts, memory_cooldown=1.0), deadline=deadline)


def test_decode_after_is_the_streaming_decode_of_the_next_latents():
    """sharpen.decode_after: a crop decoded after a cache primed on its prefix gives the frames the whole
    sequence's decode gives for it (the streaming decoder's chunk after chunk)."""
    from world_model.train.sharpen import decode_after
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae = WanVAE(cfg.vae.replace(pruning_rate=0.5)).eval()
    h, w = cfg.latent_hw
    z = torch.randn(2, cfg.vae.z_dim, 5, h, w)
    with torch.no_grad():
        whole, _ = vae.decode(z, first_chunk=True, clamp=False)
        for p in (1, 2):
            part = decode_after(vae, z[:, :, :p], z[:, :, p:])
            assert part.shape[2] == 4 * (5 - p)
            torch.testing.assert_close(part, whole[:, :, 1 + 4 * (p - 1) :], atol=1e-5, rtol=1e-4)


def _sharpen_parts(run, opts, **sharpen):
    from world_model.sampler import FlowUniPCSampler
    from world_model.train.pipeline import _dit_from, _latents, run_config
    from world_model.train.sharpen import GeneratedChunks, SharpenOptions

    cfg, dev = run_config(run, opts), torch.device("cpu")
    train_lat, _ = _latents(run, dev)
    dit = _dit_from(run, "dmd", cfg, dev)
    sopts = SharpenOptions(**{"pool_size": 3, "gen_batch": 2, "crop_latents": 2, **sharpen})
    clips = ClipSampler(train_lat, cfg, 1, use_memory=True, seed=0)
    return cfg, clips, GeneratedChunks(dit, clips, FlowUniPCSampler.from_config(cfg.sampler), sopts, amp=False)


@pytest.mark.parametrize("chunk", [0, 1])
def test_generated_chunks_hold_the_dits_chunk_in_its_true_history(smoke_run, chunk):
    from world_model.train.pipeline import PipelineOptions

    run, _ = smoke_run
    _, clips, pool = _sharpen_parts(run, PipelineOptions.smoke())
    assert clips.k_max >= 1
    pool.refresh(chunk=chunk)
    stored = clips.store.latents[pool.segments].float()
    first, end = pool.first, pool.end
    assert end > first and (first == 1 if chunk == 0 else first > 2)  # chunk 0 follows the image latent
    assert torch.equal(pool.latents[:, :first], stored[:, :first])  # the history: the store's
    assert not torch.allclose(pool.latents[:, first:end], stored[:, first:end])  # the chunk: generated
    for _ in range(8):
        prefix, crop = pool.crops(4)
        assert crop.shape[:3] == (4, clips.store.latents.shape[2], 2)
        assert prefix.shape[2] == 2 or (first == 1 and prefix.shape[2] == 1)  # two latents, or the image
    with pytest.raises(ValueError, match="p_first"):
        _sharpen_parts(run, PipelineOptions.smoke(), p_first=2.0)


def test_clip_sampler_resumes_a_checkpoint_made_on_another_device():
    """A GPU session's sharpen checkpoint continued on a CPU (session 16): the CUDA generator's saved state
    does not fit the CPU sampler, which keeps its own seed and says so, instead of failing the stage."""
    from world_model.train.autoencoder import ClipFrames

    clips = ClipFrames(synthetic_store(2, 20, (16, 16)), 5, "cpu", seed=3)
    same = clips.state_dict()
    first = clips.sample(4)
    clips.load_state_dict(same)
    torch.testing.assert_close(clips.sample(4), first)  # the same device: resumes exactly
    cuda_like = {"rng": torch.zeros(16, dtype=torch.uint8)}  # a CUDA generator's state is 16 bytes
    with pytest.warns(UserWarning, match="another device"):
        clips.load_state_dict(cuda_like)
    assert clips.sample(2).shape == (2, 3, 5, 16, 16)


def test_grid_penalty_gradient_removes_a_fixed_grid():
    """The sharpen stage's penalty: descending grid_share's gradient takes a screen door off frames that move,
    and leaves the moving content (the world's own detail is not a fixed grid)."""
    import torch.nn.functional as F

    from world_model.train.autoencoder import grid_share

    g = torch.Generator().manual_seed(0)
    world = F.avg_pool2d(torch.rand(1, 3, 96, 96, generator=g), 5, stride=1, padding=2)
    content = torch.stack([world.roll((3 * t, 2 * t), (2, 3))[..., :64, :64] for t in range(8)], dim=2)  # [1,3,8,64,64]
    dots = torch.zeros(4, 4)
    dots[0, 0], dots[2, 2] = 0.1, -0.1
    screen = (content + dots.repeat(16, 16)).requires_grad_(True)
    start = grid_share(screen).item()
    assert start > 0.05 and grid_share(content).item() < 0.02
    opt = torch.optim.SGD([screen], lr=2.0)
    for _ in range(50):
        opt.zero_grad()
        grid_share(screen, penalty=True).backward()
        opt.step()
    assert grid_share(screen).item() < 0.2 * start
    assert (screen.detach() - content).abs().mean() < 0.75 * dots.abs().mean()  # the grid lessened, content kept
    fresh = (content + dots.repeat(16, 16)).requires_grad_(True)
    noisy = (content + 0.05 * torch.randn(content.shape, generator=g)).requires_grad_(True)
    for t in (fresh, noisy):
        grid_share(t, penalty=True).backward()
    assert noisy.grad.abs().mean() < 0.15 * fresh.grad.abs().mean()  # little push on a world without a grid


def test_sharpen_stage_trains_the_decoder_alone_on_generated_latents(smoke_run):
    from world_model.train.autoencoder import VAEOptions, is_decoder_side
    from world_model.train.pipeline import PipelineOptions, _clip_frames, _shipped_vae
    from world_model.train.sharpen import SharpenStage

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, clips, pool = _sharpen_parts(run, opts, grid_weight=0.01)  # the grid penalty's path too
    dev = torch.device("cpu")
    frames = _clip_frames(run, "train", 17, dev)
    vopts = VAEOptions(batch_size=1, gan_start=0, warmup_steps=1, lr=1e-3, eval_clips=2, amp=False)
    vae = _shipped_vae(run, opts, cfg, dev, stages=("decoder",))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match="adversarial"):
        SharpenStage(vae, pool, frames, None, dataclasses.replace(vopts, gan_start=-1), pool.opts)
    stage = SharpenStage(vae, pool, frames, _clip_frames(run, "held_out", 17, dev), vopts, pool.opts, held_pool=pool)
    for step in range(2):
        metrics = stage.train_step(step)
    assert {"anchor", "grid", "gan_g", "gan_d", "gan_lambda", "gen_sharpness_ratio"} <= set(metrics)
    assert metrics["grid"] > 0  # the share of the added detail on a fixed grid (weighted 0.01 here)
    assert pool.refreshes == 1  # refresh_every 25
    after = vae.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(is_decoder_side(k) for k in moved)  # the encoder (what made the latents) stays
    assert all(torch.equal(before[k], v) for k, v in stage.reference.state_dict().items())
    ev = stage.evaluate()
    assert {"psnr_decoder", "sharpness_ratio", "grid_share", "gen_sharpness_ratio", "gen_sharpness_ratio_start"} <= set(
        ev
    )
    assert ev["gen_anchor_l1"] > 0 and all(np.isfinite(v) for v in ev.values())
    assert 0 <= ev["gen_grid_share"] <= 4 and 0 <= ev["gen_grid_share_start"] <= 4
    # a resumed stage keeps its reference (the decoder it started from), not the weights it loads
    again = SharpenStage(_shipped_vae(run, opts, cfg, dev, stages=("decoder",)), pool, frames, None, vopts, pool.opts)
    again.load_state_dict(stage.state_dict())
    assert all(torch.equal(after[k], v) for k, v in again.vae.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in again.reference.state_dict().items())


def test_sharpen_stage_takes_the_vae_grid_penalty_on_the_true_clips(smoke_run):
    """--vae-grid (VAEOptions.grid_weight) in the sharpen stage: the penalty on the true clips' error the decoder
    stages take (session 28's recipe against the screen door), added to the loss after the adaptive weight; without
    it no such term (it was silently ignored by this stage before session 35)."""
    from world_model.train.autoencoder import VAEOptions
    from world_model.train.pipeline import PipelineOptions, _clip_frames, _shipped_vae
    from world_model.train.sharpen import SharpenStage

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, _, pool = _sharpen_parts(run, opts)
    dev = torch.device("cpu")
    frames = _clip_frames(run, "train", 17, dev)
    losses = {}
    for weight in (0.0, 1e3):
        vopts = VAEOptions(
            batch_size=1, gan_start=0, warmup_steps=1, lr=0.0, eval_clips=2, amp=False, grid_weight=weight
        )
        torch.manual_seed(0)
        pool.latents = None  # the same first refresh for both
        stage = SharpenStage(
            _shipped_vae(run, opts, cfg, dev, stages=("decoder",)), pool, frames, None, vopts, pool.opts
        )
        torch.manual_seed(1)
        losses[weight] = stage.train_step(0)
    assert "grid_true" not in losses[0.0] and losses[1e3]["grid_true"] > 0
    torch.testing.assert_close(
        losses[1e3]["loss"], losses[0.0]["loss"] + 1e3 * losses[1e3]["grid_true"], rtol=1e-4, atol=1e-5
    )


def test_sharpen_stage_hands_on_a_moving_average_of_its_decoder(smoke_run):
    """SharpenOptions.ema_decay: the snapshot, the checkpoint's student and the evaluation take the average
    (shadow += (1 - d) (live - shadow) from the starting decoder, no ramp), the live decoder trains on; a resumed stage gets both back,
    a slim (no live weights) starts both at the student; a decay outside [0, 1) is refused."""
    from world_model.train.autoencoder import VAEOptions, is_decoder_side
    from world_model.train.pipeline import PipelineOptions, _clip_frames, _shipped_vae
    from world_model.train.sharpen import SharpenOptions, SharpenStage

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, _, pool = _sharpen_parts(run, opts, ema_decay=0.9)
    dev = torch.device("cpu")
    frames = _clip_frames(run, "train", 17, dev)
    vopts = VAEOptions(batch_size=1, gan_start=0, warmup_steps=1, lr=1e-3, eval_clips=2, amp=False)
    vae = _shipped_vae(run, opts, cfg, dev, stages=("decoder",))
    stage = SharpenStage(vae, pool, frames, None, vopts, pool.opts)
    shadow = {k: v.float().clone() for k, v in vae.state_dict().items() if is_decoder_side(k)}
    for step in range(2):
        stage.train_step(step)
        d = 0.9  # no warm-up ramp: the starting decoder keeps its share 0.9^n
        live = vae.state_dict()
        shadow = {k: v + (1 - d) * (live[k].float() - v) for k, v in shadow.items()}
    assert any(not torch.allclose(shadow[k], live[k].float()) for k in shadow)  # the average is not the live one
    snap, state = stage.snapshot(), stage.state_dict()
    for k, v in shadow.items():
        torch.testing.assert_close(snap[k].float(), v.bfloat16().float(), atol=0, rtol=0)
        torch.testing.assert_close(state["student"][k].float(), v, atol=1e-6, rtol=0)
        assert torch.equal(state["live"][k], live[k])
    again = SharpenStage(_shipped_vae(run, opts, cfg, dev, stages=("decoder",)), pool, frames, None, vopts, pool.opts)
    again.load_state_dict(state)
    assert all(torch.equal(again.vae.state_dict()[k], live[k]) for k in shadow)
    assert all(torch.equal(again.shipped.state_dict()[k], state["student"][k]) for k in shadow)
    assert again.ema.num_updates == 2
    slim = {"student": state["student"]}
    carried = SharpenStage(_shipped_vae(run, opts, cfg, dev, stages=("decoder",)), pool, frames, None, vopts, pool.opts)
    carried.load_state_dict(slim)
    for k in shadow:
        torch.testing.assert_close(carried.vae.state_dict()[k].float(), state["student"][k].float(), atol=0, rtol=0)
        assert torch.equal(carried.shipped.state_dict()[k], state["student"][k])
    assert carried.ema.num_updates == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema_decay"):
            SharpenOptions(ema_decay=bad)


def test_the_export_and_the_slim_take_the_sharpened_decoder(smoke_run, tmp_path):
    from world_model.train.checkpoints import load_latest
    from world_model.train.export import read_exported
    from world_model.train.slim import slim_run

    run, _ = smoke_run
    sharp = load_latest(run / "sharpen")["stage"]["student"]
    plain = load_latest(run / "decoder")["stage"]["student"]
    assert any(not torch.equal(sharp[k], plain[k]) for k in sharp if k.startswith("decoder."))
    _, _, vae = read_exported(run / "export")
    for k, v in vae.state_dict().items():
        if k in sharp:
            torch.testing.assert_close(v, sharp[k].bfloat16().float(), atol=0, rtol=0)
    assert json.loads((run / "sharpen" / "status.json").read_text())["dit_source"] == "dmd"
    out = slim_run(run, tmp_path / "slim", ["vae", "sharpen|decoder"], rename={"sharpen": "decoder"})
    carried = load_latest(out / "decoder")["stage"]["student"]
    assert all(torch.equal(carried[k], v) for k, v in sharp.items())


def test_the_sharpen_stage_sharpens_the_full_decoder_which_the_export_then_ships(smoke_run, tmp_path):
    """sharpen_decoder="full": the stage starts from the vae stage's full decoder (the one shipped since session 30),
    trains it, and the export ships it (pruning 0 in its config); a run that holds one kind does not go on as the
    other, and another value raises."""
    import dataclasses
    import shutil

    from world_model.train.checkpoints import load_latest
    from world_model.train.export import read_exported
    from world_model.train.pipeline import PipelineOptions, run_stage

    run, _ = smoke_run
    nxt = tmp_path / "run"
    shutil.copytree(run, nxt)
    for stage in ("sharpen", "export", "export_memory"):
        shutil.rmtree(nxt / stage, ignore_errors=True)
    opts = dataclasses.replace(PipelineOptions.smoke(), sharpen_decoder="full")
    assert run_stage(nxt, "sharpen", opts)["state"] == "done"
    assert json.loads((nxt / "sharpen" / "status.json").read_text())["decoder"] == "full"
    sharp = load_latest(nxt / "sharpen")["stage"]["student"]
    full = load_latest(nxt / "vae")["stage"]["vae"]
    pruned = load_latest(nxt / "decoder")["stage"]["student"]
    dec = [k for k in sharp if k.startswith("decoder.")]
    assert dec and all(sharp[k].shape == full[k].shape for k in dec)
    assert any(sharp[k].shape != pruned[k].shape for k in dec)  # the full width, not the pruned one
    assert any(not torch.equal(sharp[k], full[k]) for k in dec)  # and it trained
    assert run_stage(nxt, "export", opts)["state"] == "done"
    cfg, _, vae = read_exported(nxt / "export")
    assert cfg.vae.pruning_rate == 0.0
    exported = vae.state_dict()
    for k in dec:
        torch.testing.assert_close(exported[k], sharp[k].bfloat16().float(), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="holds the full decoder; this stage trains the pruned one"):
        run_stage(nxt, "sharpen", PipelineOptions.smoke())
    with pytest.raises(ValueError, match="sharpen_decoder"):
        PipelineOptions(sharpen_decoder="wide")


def test_sharpen_snapshots_become_exported_models(smoke_run, tmp_path):
    """The sharpen stage writes its decoder every --sharpen-snapshot-every steps (the smoke run: each step);
    `export decoder` puts one into a copy of an exported folder: its decoder, the folder's encoder."""
    from safetensors.torch import load_file, save_file

    from world_model.train.export import main as export_main
    from world_model.train.export import read_exported

    run, _ = smoke_run
    snaps = sorted((run / "sharpen" / "snapshots").glob("step-*.safetensors"))
    assert [p.name for p in snaps] == ["step-000000001.safetensors", "step-000000002.safetensors"]
    from world_model.train.autoencoder import is_decoder_side

    first = load_file(str(snaps[0]))
    assert first and all(is_decoder_side(k) for k in first)
    export_main(["decoder", "--model", str(run / "export"), "--decoder", str(snaps[0]), "--out", str(tmp_path / "m")])
    _, _, base = read_exported(run / "export")
    _, _, vae = read_exported(tmp_path / "m")
    got, was = vae.state_dict(), base.state_dict()
    for k, v in got.items():
        want = first[k].to(torch.bfloat16).float() if k in first else was[k]
        torch.testing.assert_close(v, want, atol=0, rtol=0)
    assert any(not torch.equal(got[k], was[k]) for k in first)  # step 1's decoder, not the exported step 2's
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v[..., :1].contiguous() for k, v in list(first.items())[:1]}, str(wrong))
    with pytest.raises(ValueError, match="other shapes"):
        export_main(["decoder", "--model", str(run / "export"), "--decoder", str(wrong), "--out", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_export_decoder_takes_the_mean_of_snapshots_blended_from_the_folders_own(smoke_run, tmp_path):
    """`export decoder --decoder A B --blend 0.5`: the folder's decoder moved half way to the mean of A and B
    (in fp32, stored in the folder's dtype), its encoder untouched; a blend outside (0, 1] is refused."""
    from safetensors.torch import load_file

    from world_model.train.export import main as export_main
    from world_model.train.export import read_exported, with_decoder

    run, _ = smoke_run
    snaps = sorted((run / "sharpen" / "snapshots").glob("step-*.safetensors"))
    a, b = (load_file(str(p)) for p in snaps)
    args = ["decoder", "--model", str(run / "export"), "--decoder", *map(str, snaps), "--blend", "0.5"]
    export_main([*args, "--out", str(tmp_path / "m")])
    was = read_exported(run / "export")[2].state_dict()
    got = read_exported(tmp_path / "m")[2].state_dict()
    for k, v in got.items():
        if k in a:
            want = was[k].float() + 0.5 * ((a[k].float() + b[k].float()) / 2 - was[k].float())
            torch.testing.assert_close(v, want.to(torch.bfloat16).float(), atol=0, rtol=0)
        else:
            assert torch.equal(v, was[k]), k
    assert any(not torch.equal(got[k], was[k]) for k in a)
    assert "mean of 2 decoders" in (tmp_path / "m" / "README.md").read_text()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="blend"):
            with_decoder(run / "export", snaps, tmp_path / "bad", blend=bad)
    assert not (tmp_path / "bad").exists()


def test_export_vae_puts_the_vae_stages_full_autoencoder_in_a_copy(smoke_run, tmp_path):
    """`export vae --vae RUN/vae`: a copy of the folder with the vae stage's encoder and full decoder (pruning 0 in
    its config), which loads and decodes, the DiT and the latent statistics as they were; an encoder-only slim or
    a folder without a checkpoint is refused and leaves nothing behind."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.export import main as export_main
    from world_model.train.export import read_exported, with_vae

    run, _ = smoke_run
    export_main(["vae", "--model", str(run / "export"), "--vae", str(run / "vae"), "--out", str(tmp_path / "m")])
    cfg0, dit0, vae0 = read_exported(run / "export")
    cfg, dit, vae = read_exported(tmp_path / "m")
    assert cfg0.vae.pruning_rate > 0 and cfg.vae.pruning_rate == 0.0
    assert cfg.vae.latent_mean == cfg0.vae.latent_mean and cfg.vae.latent_std == cfg0.vae.latent_std
    assert all(torch.equal(a, b) for a, b in zip(dit0.state_dict().values(), dit.state_dict().values(), strict=True))
    trained = load_latest(run / "vae")["stage"]["vae"]
    own = vae.state_dict()
    for name, _ in vae.named_parameters():
        torch.testing.assert_close(own[name], trained[name].to(torch.bfloat16).float(), atol=0, rtol=0)
    assert sum(v.numel() for v in own.values()) > sum(v.numel() for v in vae0.state_dict().values())
    frames = torch.rand(1, 3, 5, cfg.stream.height, cfg.stream.width) * 2 - 1
    with torch.no_grad():
        assert vae.decode(vae.encode(frames))[0].shape == frames.shape
    assert "full decoder" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        with_vae(run / "export", tmp_path / "nothing", tmp_path / "bad")
    with pytest.raises(ValueError, match="no full VAE"):
        with_vae(run / "export", run / "decoder", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_eval_snapshots_ranks_each_snapshot_on_the_test_levels(smoke_run, tmp_path):
    """bench/gpu/eval_snapshots.py: every snapshot into the exported model, reset and sharpness on the test
    levels, a row each beside the model's own."""

    run, _ = smoke_run
    mod = load_bench("gpu/eval_snapshots.py")
    out = tmp_path / "ev"
    assert mod.main([str(run / "sharpen"), "--model", str(run / "export"), "--out", str(out), "--every", "5"]) == 0
    rows = json.loads((out / "snapshots.json").read_text())
    assert [r["snapshot"] for r in rows] == ["reference", "step-000000001", "step-000000002"]  # the last always
    assert all(r["sharpness"] > 0 and 0 <= r["grid_share"] <= 1 and r["reset_psnr"] > 0 for r in rows)
    assert (out / "step-000000002" / "eval" / "reset_frames.png").exists()


def test_load_pruned_cuts_the_full_decoders_tensors_to_the_first_channels_of_each_group():
    """A pruned decoder initialised from the full VAE: every parameter comes from the full one, cut to its first
    channels in each dimension; the attention's q, k, v and the temporal upsampling's two frames cut per group; the
    encoder copied as it is. A tensor that is smaller than the model's is left and reported."""
    from world_model.config import tiny
    from world_model.train.autoencoder import load_pruned
    from world_model.vae import WanVAE

    vcfg = tiny(32, 32).vae
    torch.manual_seed(0)
    full, pruned = WanVAE(vcfg.replace(pruning_rate=0.0)), WanVAE(vcfg.replace(pruning_rate=0.5))
    state = full.state_dict()
    assert load_pruned(pruned, state) == []
    got = dict(pruned.named_parameters())
    narrower = [k for k, v in got.items() if v.shape != state[k].shape]
    assert narrower and all(k.startswith("decoder.") for k in narrower)
    for k, v in got.items():
        if v.shape == state[k].shape:
            assert torch.equal(v, state[k]), k
    qkv = next(k for k in narrower if k.endswith("to_qkv.weight"))
    c_full, c = state[qkv].shape[1], got[qkv].shape[1]
    for g in range(3):  # q, k and v each keep their first c channels (in and out)
        assert torch.equal(got[qkv][g * c : (g + 1) * c], state[qkv][g * c_full : g * c_full + c, :c])
    up = next(k for k in narrower if k.endswith("time_conv.weight"))
    c_full, c = state[up].shape[1], got[up].shape[1]
    for g in range(2):
        assert torch.equal(got[up][g * c : (g + 1) * c], state[up][g * c_full : g * c_full + c, :c])
    conv = next(k for k in narrower if k.endswith("residual.2.weight"))
    assert torch.equal(got[conv], state[conv][: got[conv].shape[0], : got[conv].shape[1]])
    small = {k: v[..., :1] if k == conv else v for k, v in state.items()}
    assert load_pruned(WanVAE(vcfg.replace(pruning_rate=0.5)), small) == [conv]
    # the decoder stage starts its student so: its narrower decoder is the teacher's first channels before any step
    from world_model.train.autoencoder import ClipFrames, DecoderStage, VAEOptions
    from world_model.train.frames import FrameStore

    n = 9
    store = FrameStore(
        frames=np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        mouse=np.zeros((n, 2), np.float32),
        keyboard=np.zeros((n, 6), np.float32),
        poses=np.zeros((n, 5), np.float32),
        starts=np.array([0, n]),
    )
    student = WanVAE(vcfg.replace(pruning_rate=0.5))
    DecoderStage(full, student, ClipFrames(store, 5, "cpu"), None, VAEOptions(batch_size=1, clip_frames=5))
    assert all(torch.equal(v, got[k]) for k, v in student.named_parameters())


def test_discriminator_translation_shifts_each_frame_and_keeps_the_gradient():
    """VAEOptions.disc_translate: each judged frame moved by its own whole-pixel shift (edges replicated),
    the same shape, a gradient back to the frames; 0 leaves them as they were; a bad value is refused."""
    from world_model.train.autoencoder import VAEOptions, _Adversary, translate

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 3, 16, 16, generator=g, requires_grad=True)
    out = translate(frames, 2, torch.Generator().manual_seed(1))
    assert out.shape == frames.shape
    shifts = set()
    for i in range(6):  # each output is its input shifted: find the shift that matches the interior
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                if torch.equal(out[i, :, 4:12, 4:12], frames[i, :, 4 + dy : 12 + dy, 4 + dx : 12 + dx]):
                    shifts.add((dy, dx))
    assert len(shifts) > 1  # not one shift for all
    out.sum().backward()
    assert frames.grad is not None and frames.grad.sum() == pytest.approx(frames.numel())  # each output from one input
    video = torch.rand(2, 3, 9, 16, 16, generator=g)
    adv_off = _Adversary(VAEOptions(gan_start=0), torch.device("cpu"))
    adv_on = _Adversary(VAEOptions(gan_start=0, disc_translate=3), torch.device("cpu"))
    plain, moved = adv_off._frames(video), adv_on._frames(video)
    assert plain.shape == moved.shape and not torch.equal(plain, moved)
    with pytest.raises(ValueError, match="disc_translate"):
        VAEOptions(disc_translate=-1)


def test_a_slim_from_an_int8_export_carries_its_dit_as_bf16(smoke_run, tmp_path):
    """What a new checkout does since the shipped DiT is int8 (session 20: make_carry.sh from the shipped model): the
    slim's ``base`` holds the int8 export's DiT read back, as bf16 floats under the same keys, ready to train."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.export import as_int8, read_exported
    from world_model.train.slim import slim_from_export

    run, _ = smoke_run
    int8 = as_int8(run / "export", tmp_path / "int8")
    _, dit, _ = read_exported(int8)
    _, dit_bf16, _ = read_exported(run / "export")
    base = load_latest(slim_from_export(int8, tmp_path / "slim") / "base")["stage"]["ema"]["model"]
    assert set(base) == set(dit_bf16.state_dict())
    assert all(v.dtype == torch.bfloat16 for v in base.values() if v.is_floating_point())
    assert all(torch.equal(base[k], v.bfloat16()) for k, v in dit.state_dict().items())
    # int8 with a scale per row: within a row's step of the bf16 export's weights
    for k, v in dit_bf16.state_dict().items():
        if v.dim() == 2:
            step = v.float().abs().amax(1, keepdim=True) / 127
            assert ((base[k].float() - v.float()).abs() <= step * 0.51 + 1e-2 * step + 1e-3).all(), k


def _lost_session(run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A session lost mid-way, from the smoke run: the carry it started from (tmp_path/prev.tar of the vae,
    decoder and base stages; returned: its folder), the memory stage's slim a poll packed (returned) and the poll's
    files (split into parts as poll.sh packs them; returned: their folder)."""
    import subprocess
    import tarfile

    from world_model.train.slim import slim_run

    prev = slim_run(run, tmp_path / "prev", ["vae", "decoder", "base"], dit_dtype=torch.bfloat16)
    with tarfile.open(tmp_path / "prev.tar", "w") as t:
        t.add(prev, arcname=".")
    polled = slim_run(run, tmp_path / "polled", ["memory"], dit_dtype=torch.bfloat16)
    data = subprocess.run(["tar", "-cf", "-", "-C", str(polled), "."], check=True, capture_output=True).stdout
    poll = tmp_path / "poll"
    poll.mkdir()
    half = len(data) // 2
    (poll / "slim_memory_step-000000007.tar.part-00").write_bytes(data[:half])
    (poll / "slim_memory_step-000000007.tar.part-01").write_bytes(data[half:])
    return prev, polled, poll


def test_carry_from_poll_goes_on_from_the_polled_stage(smoke_run, tmp_path):
    """bench/gpu/carry_from_poll.sh (a machine lost mid-session): the carry the session started from, with the
    stage a poll packed (split into parts, as poll.sh packs it) as its base; the VAE and decoder unchanged."""
    import os
    import subprocess
    import sys
    import tarfile

    from world_model.train.checkpoints import load_latest

    run, _ = smoke_run
    prev, polled, poll = _lost_session(run, tmp_path)
    script = Path(__file__).parents[1] / "bench" / "gpu" / "carry_from_poll.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(script), str(tmp_path / "prev.tar"), str(poll), str(tmp_path / "out")], check=True, env=env
    )
    with tarfile.open(tmp_path / "out" / "prev.tar") as t:
        t.extractall(tmp_path / "new", filter="data")
    base = load_latest(tmp_path / "new" / "base")["stage"]["ema"]["model"]
    memory = load_latest(polled / "memory")["stage"]["ema"]["model"]
    assert set(base) == set(memory) and all(torch.equal(base[k], memory[k]) for k in memory)
    for stage in ("vae", "decoder"):  # the same weights, shard by shard
        shards = sorted((prev / stage / "checkpoints").glob("step-*/shard-*.safetensors"))
        again = sorted((tmp_path / "new" / stage / "checkpoints").glob("step-*/shard-*.safetensors"))
        assert shards and [f.read_bytes() for f in shards] == [f.read_bytes() for f in again], stage
    bad = subprocess.run(
        ["bash", str(script), str(tmp_path / "prev.tar"), str(tmp_path), str(tmp_path / "x")],
        env=env,
        capture_output=True,
    )
    assert bad.returncode == 1 and not (tmp_path / "x").exists()


def test_export_from_poll_exports_the_polled_stage(smoke_run, tmp_path):
    """bench/gpu/export_from_poll.sh (a machine lost after the last stage, before its export came home): the run
    rebuilt from the carry and the polled stage exports that stage's EMA with the carry's VAE."""
    import os
    import subprocess
    import sys

    from world_model.train.export import read_exported
    from world_model.train.pipeline import PipelineOptions, _dit_from, _shipped_vae, run_config

    run, _ = smoke_run
    prev, polled, poll = _lost_session(run, tmp_path)
    script = Path(__file__).parents[1] / "bench" / "gpu" / "export_from_poll.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "rebuilt"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "prev.tar"), str(poll), str(out)], check=True, env=env, capture_output=True
    )
    assert b"warning" not in done.stderr  # the polled stage had finished
    status = json.loads((out / "export" / "status.json").read_text())
    assert status["state"] == "done" and status["metrics"]["dit_source"] == "memory"
    cfg, dit, vae = read_exported(out / "export")
    memory = _dit_from(polled, "memory", cfg, torch.device("cpu")).state_dict()
    for k, v in dit.state_dict().items():  # the polled stage's EMA, as exported (bf16)
        torch.testing.assert_close(v.float(), memory[k].bfloat16().float(), atol=0, rtol=0)
    opts = PipelineOptions.load(prev)
    carried = _shipped_vae(prev, opts, run_config(prev, opts), torch.device("cpu")).state_dict()
    for k, v in vae.state_dict().items():  # the carry's VAE and decoder, as exported (bf16)
        torch.testing.assert_close(v, carried[k].bfloat16().float(), atol=0, rtol=0)
    again = subprocess.run(  # an existing folder is never written into
        ["bash", str(script), str(tmp_path / "prev.tar"), str(poll), str(out)], env=env, capture_output=True
    )
    assert again.returncode == 1 and b"exists" in again.stderr
    # a stage still training when the poll slimmed it exports too, with a warning
    status_file = polled / "memory" / "status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "stage_state": "running"}))
    data = subprocess.run(["tar", "-cf", "-", "-C", str(polled), "."], check=True, capture_output=True).stdout
    (tmp_path / "poll2").mkdir()
    (tmp_path / "poll2" / "slim_memory_step-000000007.tar.part-00").write_bytes(data)
    running = subprocess.run(
        ["bash", str(script), str(tmp_path / "prev.tar"), str(tmp_path / "poll2"), str(tmp_path / "rebuilt2")],
        check=True,
        env=env,
        capture_output=True,
    )
    assert b"memory's state is 'running', not done" in running.stderr


def test_ode_distillation_regresses_the_student_to_the_teachers_many_step_sample_without_a_critic(smoke_run):
    """dmd_weight 0: no critic; each step pulls the student's estimate to the teacher's sample in teacher_steps
    steps, sampled once per target_reuse steps from the same noise and history; the student approaches it."""
    from world_model.train.clips import ClipSampler
    from world_model.train.dmd import DMDOptions, DMDStage
    from world_model.train.pipeline import PipelineOptions, _dit_from, _dmd_opts, _latents, run_config
    from world_model.train.rollout import sample_chunk

    run, _ = smoke_run
    opts = PipelineOptions.smoke()
    cfg, dev = run_config(run, opts), torch.device("cpu")
    train_lat, _ = _latents(run, dev)
    clips = ClipSampler(train_lat, cfg, 1, use_memory=True, seed=0)
    dopts = DMDOptions(
        batch_size=1, cold_start_steps=100, p_mask=0.0, lr_student=1e-3, regression_weight=1.0, dmd_weight=0.0,
        teacher_steps=8, target_reuse=3, amp=False,
    )  # fmt: skip
    model = _dit_from(run, "memory", cfg, dev)
    torch.manual_seed(0)
    with torch.no_grad():  # weights whose ODE curves (the smoke model's few and many steps end alike)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    stage = DMDStage(model, clips, cfg.sampler, dopts)
    assert stage.critic is None and stage.teacher_sampler.num_steps == 8 and stage.sampler.num_steps != 8
    sampled = []
    teacher_sample = stage._teacher_sample
    stage._teacher_sample = lambda *a: sampled.append(1) or teacher_sample(*a)
    losses = [float(stage.train_step(step)["regression"]) for step in range(6)]
    assert len(sampled) == 2  # steps 0 and 3
    _, batch, noise, target = stage._target
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(sample_chunk(stage.student, batch, noise, stage.sampler), target))
    first = float(torch.nn.functional.mse_loss(sample_chunk(stage.teacher, batch, noise, stage.sampler), target))
    assert final < 0.8 * first and all(math.isfinite(x) for x in losses)  # its few steps nearer the 8-step sample
    state = stage.state_dict()
    assert "critic" not in state and "opt_critic" not in state
    with pytest.raises(ValueError, match="critic"):  # a DMD checkpoint (with a critic) does not load here
        stage.load_state_dict({**state, "critic": {}})
    fresh = copy.deepcopy(stage.teacher).requires_grad_(True)  # the model above trained on: start from its teacher
    chain = DMDStage(fresh, clips, cfg.sampler, dataclasses.replace(dopts, regression_target="chain", target_reuse=1))
    chain.train_step(0)
    _, batch, noise, target = chain._target
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(sample_chunk(chain.student, batch, noise, chain.sampler), target))
        before = float(torch.nn.functional.mse_loss(sample_chunk(chain.teacher, batch, noise, chain.sampler), target))
    assert after < before  # one step on the whole chain's output moves it towards the teacher's sample
    for bad, match in (
        (dict(regression_weight=1.0, regression_target="x0"), "regression_target"),
        (dict(dmd_weight=0.0), "both 0"),
        (dict(regression_weight=1.0, target_reuse=2), "target_reuse"),
        (dict(teacher_steps=-1), "teacher_steps"),
    ):
        with pytest.raises(ValueError, match=match):
            DMDOptions(**bad)
    with pytest.raises(ValueError, match="both 0"):
        PipelineOptions(dmd_weight=0.0)
    with pytest.raises(ValueError, match="betas"):
        PipelineOptions(dmd_beta1=1.0)

    assert _dmd_opts(PipelineOptions(dmd_beta1=0.9)).betas == (0.9, 0.99)


def test_sampler_steps_set_what_the_stages_sample_with_and_what_the_export_says(smoke_run, tmp_path):
    import shutil

    from world_model.train.pipeline import PipelineOptions, run_config, run_stage

    run, _ = smoke_run
    preset = run_config(run, PipelineOptions.smoke()).sampler.num_steps
    opts = dataclasses.replace(PipelineOptions.smoke(), sampler_steps=preset + 2)
    assert run_config(run, opts).sampler.num_steps == preset + 2
    nxt = tmp_path / "run"
    shutil.copytree(run, nxt)
    shutil.rmtree(nxt / "export", ignore_errors=True)
    assert run_stage(nxt, "export", opts)["state"] == "done"
    assert json.loads((nxt / "export" / "config.json").read_text())["sampler"]["num_steps"] == preset + 2
    with pytest.raises(ValueError, match="sampler_steps"):
        PipelineOptions(sampler_steps=-1)


def test_a_slim_from_an_export_with_the_full_decoder_carries_the_whole_autoencoder(smoke_run, tmp_path):
    """slim --from-export of a model with the full decoder (as shipped since session 30): the ``vae`` stage is the
    whole autoencoder (not encoder-only), which the sharpen stage's full decoder starts from, and the decoder the
    DiT stages evaluate with and the export ships is that full one."""
    from world_model.train.checkpoints import load_latest
    from world_model.train.export import main as export_main
    from world_model.train.export import read_exported
    from world_model.train.pipeline import PipelineOptions, _shipped_vae, _teacher_vae, run_config, vae_is_encoder_only
    from world_model.train.slim import slim_from_export

    run, _ = smoke_run
    export_main(["vae", "--model", str(run / "export"), "--vae", str(run / "vae"), "--out", str(tmp_path / "m")])
    slim = slim_from_export(tmp_path / "m", tmp_path / "slim")
    cfg, _, vae = read_exported(tmp_path / "m")
    assert not vae_is_encoder_only(slim)
    own = vae.state_dict()
    carried = load_latest(slim / "vae")["stage"]["vae"]
    assert carried.keys() == own.keys() and all(torch.equal(carried[k], v.bfloat16()) for k, v in own.items())
    opts = PipelineOptions.smoke()
    teacher = _teacher_vae(slim, opts, run_config(slim, opts), torch.device("cpu"))
    assert all(torch.equal(v, own[k]) for k, v in teacher.state_dict().items())
    assert _shipped_vae(slim, opts, run_config(slim, opts), torch.device("cpu")).cfg.pruning_rate == 0.0
    pruned = slim_from_export(run / "export", tmp_path / "pruned")  # a pruned decoder: the encoder alone, as before
    assert vae_is_encoder_only(pruned)


def test_the_training_command_refuses_flags_it_would_not_use(tmp_path, capsys):
    from world_model.train import pipeline
    from world_model.train.__main__ import main

    run = str(tmp_path / "r")
    for argv, said in (
        (["base", "--run", run, "--budget-minutes", "5"], "only 'all' takes them"),
        (["data", "--run", run, "--skip", "vae"], "only 'all' takes them"),
        (["status", "--run", run, "--smoke"], "takes --run alone"),
        (["status", "--run", run, "--seed", "3"], "takes --run alone"),
        (["all", "--run", run, "--skip", "dmdd"], "unknown stage 'dmdd'"),  # a typo skipped nothing before
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="unknown stage 'vea'"):
        pipeline.run_pipeline(tmp_path / "r", skip=("vea",))
    with pytest.raises(ValueError, match="unknown stage 'bass'"):
        pipeline.run_pipeline(tmp_path / "r", only=("bass",))


def test_pipeline_options_refuse_recorder_settings_without_the_recorder():
    from world_model.train.pipeline import PipelineOptions

    with pytest.raises(ValueError, match="vae_start_frames is when the VAE starts beside the engine_frames"):
        PipelineOptions(vae_start_frames=10, engine_frames=False)
    with pytest.raises(ValueError, match="workers are the ViZDoom engine's processes"):
        PipelineOptions(workers=4, fake_data=True)
    assert PipelineOptions(vae_start_frames=10).vae_start_frames == 10  # with the recorder: taken
