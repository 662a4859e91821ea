"""bench/env_5b.py: the whole ablation path on the CPU (tiny config) and the seed it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bench_loader import load_bench
from world_model.config import tiny
from world_model.model import random_world_model
from world_model.runtime import RuntimeOptions

ROOT = Path(__file__).resolve().parents[1]


def test_random_world_model_seed_gives_identical_weights():
    """The ablation rebuilds the model per configuration and compares outputs: one seed, one set of
    weights (DiT, VAE, text encoder); another seed, other weights."""
    a, b, c = (random_world_model(tiny(), RuntimeOptions(), seed=s) for s in (3, 3, 4))
    for part in ("dit", "vae"):
        sa, sb, sc = (getattr(m, part).state_dict() for m in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].any())
    assert torch.equal(a.encode_prompts(["a street"]), b.encode_prompts(["a street"]))


@pytest.mark.slow
def test_env_bench_ablation_runs_on_cpu(tmp_path):
    """--config tiny --ablation on the CPU: reference and camera-cache rows measured with their parts,
    the options the CPU cannot run reported as skipped with a reason, accuracy and the FLOP floor."""
    out = tmp_path / "env.json"
    cmd = [sys.executable, str(ROOT / "bench" / "env_5b.py"), "--config", "tiny", "--device", "cpu"]
    cmd += ["--ablation", "--chunks", "1", "--json", str(out), "--profile", str(tmp_path / "prof")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["model_config"] == "tiny-random" and r["api"] == "gymnasium MatrixGameEnv"
    ref, cache, *rest = r["configs"]
    assert r["reference"] == ref["label"] and "accuracy" not in ref
    assert not ref["applied"]["camera_cache"] and cache["applied"]["camera_cache"]
    assert ref["applied"]["text_offload"] is False and ref["resident_gib"] is None  # held memory: CUDA only
    for e in (ref, cache):
        assert len(e["chunk_s"]) == 1 and len(e["warmup_chunk_s"]) == 1 and e["frames_per_chunk"] == 40
        assert e["parts_s"]["dit"] > 0 and e["parts_s"]["decode"] > 0
        assert sum(e["parts_s"].values()) == pytest.approx(e["chunk_s_mean"])
        assert e["ratio_to_floor"]["dit"] > 1 and e["ratio_to_floor"]["decode"] > 1
    # same weights, same seed and actions: the exact camera cache changes no latent and no frame
    assert cache["same_weights_as_reference"] is True
    assert cache["accuracy"]["latent_rel_l2"] == [0.0, 0.0, 0.0]  # warm reset's chunk, warm-up, timed
    assert cache["accuracy"]["psnr_db"] == [None, None, None]  # identical frames (infinite PSNR)
    # cudnn attention, compile and fp8 cannot run here: reported as skipped, never measured
    assert [("skipped" in e, "chunk_s" in e) for e in rest] == [(True, False)] * 3
    assert {e["options"]["attention"] for e in rest} >= {"cudnn"} and any(e["options"]["quantize"] for e in rest)
    assert all("CUDA" in e["skipped"] for e in rest)
    fl = r["flops"]
    assert fl["dit"]["matmul"] > 0 and fl["dit"]["attention"] > 0 and fl["decode"]["matmul"] > 0
    assert r["floor_s"]["fp8"]["dit"] < r["floor_s"]["bf16"]["dit"]
    assert "skipped: " in proc.stdout and "measured / floor" in proc.stdout
    # --profile: one more chunk of the reference under torch.profiler and cProfile
    pr = ref["profile"]
    assert (tmp_path / "prof.trace.json.gz").exists() and pr["step_s"] > 0
    assert pr["host_ms_in_parts"]["dit"] > 0 and pr["host_ms_in_parts"]["decode"] > 0
    assert pr["top_self_cpu_outside_parts"] and pr["top_python_self"]
    assert "profile of one more chunk" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text-offload"], "needs a GPU --device"),
        (["--cudnn-benchmark"], "needs a GPU --device"),
        (["--memory-cap-gb", "24"], "needs a GPU --device"),
        (["--eager-attention", "cudnn"], "it needs --against-eager"),
        (["--cuda-graphs"], "it needs --compile"),
        (["--residual", "both"], "it needs a GPU"),
        (["--context-cache", "on", "--ablation"], "not with --ablation"),
        (["--ablation", "--compile"], "--compile choose the measured configuration"),  # was dropped in silence
        (["--vae-pruning", "0.5"], "the tiny config has its own"),
        (["--ablation", "--attention", "math", "--decode-segment", "1"], "--attention, --decode-segment choose"),
        (["--context-cache", "both", "--camera-cache", "off"], "it needs --camera-cache on"),
    ],
)
def test_env_bench_refuses_flags_that_would_do_nothing(tmp_path, extra, message):
    """--text-offload or --cudnn-benchmark on a CPU device, --eager-attention without an eager reference,
    --cuda-graphs without compiled blocks: refused up front."""
    cmd = [sys.executable, str(ROOT / "bench" / "env_5b.py"), "--config", "tiny", "--device", "cpu", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_env_bench_measures_the_context_cache_against_the_same_configuration_without(tmp_path):
    """--context-cache both: the chosen configuration, then the same with the context cache, its latents and frames
    measured against the first (an approximation: not bit-identical)."""
    out = tmp_path / "ctx.json"
    cmd = [sys.executable, str(ROOT / "bench" / "env_5b.py"), "--config", "tiny", "--device", "cpu", "--chunks", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd += ["--context-cache", "both", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref, cached = json.loads(out.read_text())["configs"]
    assert ref["options"]["context_cache"] is False and cached["options"]["context_cache"] is True
    assert cached["label"].endswith(", context cache") and "accuracy" in cached
    assert max(cached["accuracy"]["latent_rel_l2"]) > 0


def test_kernel_kinds_name_where_device_time_goes():
    kind = _env_bench_module().kernel_kind
    assert kind("void flash::FlashAttnFwdSm90<...>") == "attention"
    assert kind("cudnn_generated_fort_native_sdpa_sm90_knob_7") == "attention"
    assert kind("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x256x64") == "matmul"
    assert kind("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kind("triton_tem_fused_mm_0") == "matmul"  # an inductor matmul template
    assert kind("triton_per_fused__to_copy_add_mul_native_layer_norm_3") == "fused (triton)"
    assert kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32") == "convolution"  # not a matmul: an implicit GEMM
    assert kind("void cudnn::ops::nchwToNhwcKernel<...>") == "other"
    assert kind("Memcpy DtoH (Device -> Pinned)") == "copy"
    assert kind("void at::native::vectorized_elementwise_kernel<4, ...>") == "elementwise (aten)"
    # a row quantisation inductor fused after an FP8 GEMM carries the GEMM's name: not a matmul
    assert (
        kind("triton_red_fused__scaled_mm__to_copy_abs_add_amax_clamp_div_gelu_t_unsqueeze_view_54") == "fused (triton)"
    )


def test_trace_kernels_count_each_kernel_once_and_the_union_of_streams():
    events = [
        {"cat": "kernel", "name": "nvjet_sm90_gemm", "ts": 0.0, "dur": 100.0},
        {"cat": "kernel", "name": "triton_poi_fused_add_0", "ts": 50.0, "dur": 100.0},  # overlaps: another stream
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "ts": 300.0, "dur": 10.0},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 500.0},  # host ops: not device time
        {"cat": "kernel", "name": "nvjet_sm90_gemm", "ts": 400.0, "dur": 100.0},
    ]
    out = _env_bench_module().trace_kernels(events)
    assert out["device_busy_ms"] == pytest.approx(0.26)  # [0, 150) + [300, 310) + [400, 500) in microseconds
    assert out["device_span_ms"] == pytest.approx(0.5)
    assert out["device_ms_by_kind"] == pytest.approx({"matmul": 0.2, "fused (triton)": 0.1, "copy": 0.01})
    assert out["kernels_by_kind"] == {"matmul": 2, "fused (triton)": 1, "copy": 1}
    assert out["top_kernels"][0] == {"kernel": "nvjet_sm90_gemm", "kind": "matmul", "device_ms": 0.2, "calls": 2}


def _env_bench_module():
    return load_bench("env_5b.py")


@pytest.mark.gpu
def test_part_probe_attributes_the_peak_to_the_part_that_allocated_it():
    """A 256 MiB temporary inside "decode" is decode's peak, not the DiT's nor the time outside parts."""
    probe = _env_bench_module().PartProbe(torch.device("cuda"))
    base = torch.cuda.memory_allocated() / 2**30
    probe.begin("dit")
    x = torch.ones(2**20, device="cuda")  # 4 MiB
    probe.end("dit")
    probe.begin("decode")
    y = torch.empty(2**26, device="cuda")  # 256 MiB, freed inside the part
    del y
    probe.end("decode")
    peaks = probe.peak_gib()
    assert peaks["decode"] >= base + 0.25 > peaks["dit"] and peaks["outside"] < base + 0.1
    # what the caching allocator held is kept across the boundaries: at least the decode's temporary
    assert probe.peak_reserved_bytes / 2**30 >= peaks["decode"]
    del x


def test_bench_reports_the_blocks_graphs_against_dynamos_limit():
    """A compiled configuration records how many graphs the blocks' shared forward holds and whether that reached
    dynamo's recompile limit (where later variants run eagerly); the progress line says so when it did."""
    import torch._dynamo

    bench = load_bench("env_5b.py")
    torch._dynamo.reset()
    graphs = bench.block_graphs()
    assert graphs["graphs"] == 0 and not graphs["limit_reached"] and graphs["recompile_limit"] >= 8
    entry = {"chunk_s_mean": 1.0, "fps": 40.0, "cold_s": 9.0, "parts_s": {"dit": 0.7}}
    assert "recompile limit" not in bench.progress(entry)
    entry["block_graphs"] = {"graphs": 8, "recompile_limit": 8, "limit_reached": True}
    assert "ran eagerly" in bench.progress(entry)
