"""Seconds per reset and per chunk of the 5B architecture through the env API (random bf16 weights),
split into DiT / decode / host, with peak memory, an ablation of the runtime options, each one's
accuracy against the eager path, and the FLOP floor every part is measured against (issue 14).

The released geometry (704x1280, 3-step sampler, 5 memory + 4 past + 10 new latents) with random
weights and a random text encoder of umt5-xxl's shape, so no checkpoint is needed; the VAE decoder
is pruned as MG-LightVAE v2 (p = 0.75) by default. Reset = text + image encoding + the first chunk
(57 frames); each step = one 40-frame chunk incl. memory retrieval and decoding; frames are
copied to the host (as an env user gets them).

The GPU session's one command (issue 14's whole measurement, about 5 minutes on one H200):

    python bench/env_5b.py --ablation --chunks 3 --json bench/results/env_5b_ablation_h200.json

on the lent machine through ``bash bench/gpu/env_5b.sh`` (the same, with the gymnasium wheels carried
in ``.carry/gym`` installed first, and the JSON and log written to $OUT). Other uses:

    python bench/env_5b.py --chunks 3 --json bench_env_5b.json              # one configuration
    python bench/env_5b.py --chunks 3 --quantize fp8 --compile --attention cudnn
    python bench/env_5b.py --config tiny --device cpu --ablation --chunks 1  # CPU smoke run (tests)

What each chunk's row holds:

- **parts**: DiT = every sampler-step forward of ``model.dit`` (forward hooks), decode = every
  ``model.vae.decode`` call (the method wrapped on the model instance for the run), host = the
  chunk's wall time minus both. On CUDA the parts are CUDA-event times (no synchronisation inside a
  chunk; one after it); on a CPU, ``perf_counter``.
- **ablation** (``--ablation``): each configuration on a freshly built model with the same random
  weights (``random_world_model(..., seed=--seed)``; a checksum of the weights no option rewrites is
  compared with the first configuration's), the same env seed and the same actions. The first
  configuration (eager, camera cache off) is the reference: every other one reports the relative L2
  error of each chunk's latents (what the DiT wrote, as the decoder gets them) and the PSNR of its
  decoded uint8 frames against the reference's same chunk (the table: the worst of the warm reset's
  chunk and every later one; the JSON: each). One warm-up chunk (compiles a compiled model's chunk shape) is excluded from the timings;
  "cold s" = first reset + warm-up chunk (a compiled model's cold compile is in it). An option the
  device cannot run (FP8 off Hopper/Ada, cuDNN attention off CUDA, compile off CUDA) is reported as
  skipped with the reason, never measured as something else; one that fails is reported with its
  error and the next configuration still runs. The JSON is rewritten after every configuration.
- **floor**: the FLOPs of one steady chunk, counted by ``torch.utils.flop_counter.FlopCounterMode``
  on the run's device during one extra, untimed chunk of the reference configuration (split into
  DiT matmul, DiT attention and decode convolution FLOPs, by aten op), divided by measured ceilings
  (``--matmul-tflops``, ``--fp8-tflops``, ``--attention-tflops``; defaults: the H200 measurements of
  ../shared/reference/ecosystem.md, 5B shapes). FP8 configurations are held to the floor with every
  DiT matmul at the FP8 ceiling. Only FLOPs are counted (no byte floor): the DiT's weights are read
  in ~7 ms per chunk at 4.25 TB/s, and activation traffic is what the ratio above 1 shows.

``--attention``, ``--quantize``, ``--compile`` and ``--camera-cache`` are RuntimeOptions, applied to
the model by the loader (``world_model.runtime.apply_runtime``); the JSON records what each model
carries after loading (the backends of its attention modules, its FP8 layers, its compiled blocks).

The env API needs gymnasium (pure Python: carry its wheel plus farama-notifications and cloudpickle
if the machine lacks them); without it the script measures the same loop one level down (the
streaming generator) and says so in the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from world_model.attention import attention_backends, flash_attn_available
from world_model.checks import changed_flags
from world_model.config import VAEConfig, WorldModelConfig, mg3_5b, tiny
from world_model.model import WorldModel, random_world_model
from world_model.quant import Float8Linear, default_fp8_layers
from world_model.runtime import ATTENTION_BACKENDS, RuntimeOptions, begins_graph_steps, check_runtime

# Ceilings measured on one H200 with torch 2.11 (../shared/reference/ecosystem.md): bf16 GEMMs at the
# 5B DiT's shapes 763-783 TFLOP/s, FP8 row-wise torch._scaled_mm 1,357-1,429, SDPA cuDNN attention 632.
MATMUL_TFLOPS = 773.0
FP8_TFLOPS = 1393.0
ATTENTION_TFLOPS = 632.0
PARTS = ("dit", "decode")
FORWARD = {"keyboard": [1, 0, 0, 0, 0, 0], "mouse": [0.0, 0.1]}  # every chunk: walk forward, turn a little


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration: a label and the RuntimeOptions fields it sets."""

    label: str
    attention: str = "auto"
    quantize: str | None = None
    compile: bool = False
    camera_cache: bool = True
    decode_segment: int = 4
    text_offload: bool = False
    compile_decoder: bool = False
    fp8_ffn_kernel: bool = False
    fp8_attention_kernel: bool = False
    cuda_graphs: bool = False
    residual: str = "fp32"
    context_cache: bool = False

    def runtime(self, device: str, dtype: torch.dtype) -> RuntimeOptions:
        """The options on ``device`` in ``dtype`` (FP8 computes in bf16 whatever the run's dtype)."""
        return RuntimeOptions(
            device=device,
            dtype=torch.bfloat16 if self.quantize == "fp8" else dtype,
            attention=self.attention,
            quantize=self.quantize,
            compile=self.compile,
            camera_cache=self.camera_cache,
            decode_segment=self.decode_segment,
            text_offload=self.text_offload,
            compile_decoder=self.compile_decoder,
            fp8_ffn_kernel=self.fp8_ffn_kernel,
            fp8_attention_kernel=self.fp8_attention_kernel,
            cuda_graphs=self.cuda_graphs,
            residual=self.residual,
            context_cache=self.context_cache,
        )


def ablation_configs(auto_kernel: str) -> list[BenchConfig]:
    """The ablation, reference first; eager ones before the compiled ones (their cold compiles are the
    longest part of the run). cuDNN attention only when ``auto`` runs another kernel here."""
    configs = [
        BenchConfig("eager, camera cache off", camera_cache=False),
        BenchConfig("+ camera cache"),
    ]
    if auto_kernel != "cudnn":
        configs.append(BenchConfig(f"+ cache, cudnn attn (auto: {auto_kernel})", attention="cudnn"))
    configs += [
        BenchConfig("+ compile", compile=True),
        BenchConfig("+ fp8 (compiled)", compile=True, quantize="fp8"),
    ]
    return configs


def auto_attention_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel ``attention="auto"`` runs for unmasked self-attention here: ``flash_attn`` (package),
    or the SDPA backend torch's dispatch picks (read from the aten op it calls)."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
        return "flash_attn"
    q = torch.randn(1, 4, 256, head_dim, device=device, dtype=dtype)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, q, q)
    ops = " ".join(e.key for e in prof.key_averages())
    return next((k for k in ("cudnn", "flash", "efficient") if f"_scaled_dot_product_{k}_attention" in ops), "math")


def skip_reason(runtime: RuntimeOptions) -> str | None:
    """Why the device cannot run ``runtime`` (None: it can)."""
    try:
        check_runtime(runtime)
    except ValueError as e:
        return str(e)
    if runtime.compile and torch.device(runtime.device).type != "cuda":
        return "compile is measured on CUDA only (a CPU's cold inductor compile would take minutes)"
    return None


# ---- per-part timing, latents and FLOPs of the DiT forwards and the decodes ------------------------


class PartProbe:
    """Device time of each part (``begin``/``end`` around its calls), the latents every decode got,
    while ``flops`` holds an active FlopCounterMode each part's FLOPs per aten op, and on CUDA the
    peak of allocated memory within each part and outside them (``peak_bytes``: which part sets the
    run's peak; the probe resets the allocator's peak statistic when made and at every part boundary)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.flops: FlopCounterMode | None = None
        self.flops_by_part: dict[str, Counter] = {p: Counter() for p in PARTS}
        self.peak_bytes: dict[str, int] = {p: 0 for p in (*PARTS, "outside")}
        self.peak_reserved_bytes = 0  # what the caching allocator held at most (nvidia-smi's view less the context)
        if self.cuda:  # from here on: a peak the process reached before (another run, a test) is not this run's
            torch.cuda.reset_peak_memory_stats(device)
        self.clear()

    def _fold_peak(self, where: str) -> None:
        """The allocator's peak since the last boundary belongs to ``where``; start a new interval."""
        if self.cuda:
            self.peak_bytes[where] = max(self.peak_bytes[where], torch.cuda.max_memory_allocated(self.device))
            self.peak_reserved_bytes = max(self.peak_reserved_bytes, torch.cuda.max_memory_reserved(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> dict[str, float]:
        """Peak allocated GiB per part and outside the parts so far (close the open interval first)."""
        self._fold_peak("outside")
        return {k: v / 2**30 for k, v in self.peak_bytes.items()}

    def clear(self) -> None:
        self._spans: dict[str, list[tuple]] = {p: [] for p in PARTS}
        self._open: dict[str, tuple] = {}
        self.latents: list[Tensor] = []  # on the device until read, so that capturing never synchronises

    def _mark(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _op_flops(self) -> Counter:
        return Counter({str(op): n for op, n in self.flops.get_flop_counts().get("Global", {}).items()})

    def begin(self, part: str) -> None:
        self._fold_peak("outside")
        scope = torch.profiler.record_function(part)  # the part's range in a --profile trace
        scope.__enter__()
        self._open[part] = (self._mark(), self._op_flops() if self.flops is not None else None, scope)

    def end(self, part: str) -> None:
        start, flops0, scope = self._open.pop(part)
        self._spans[part].append((start, self._mark()))
        scope.__exit__(None, None, None)
        self._fold_peak(part)
        if flops0 is not None:
            self.flops_by_part[part] += self._op_flops() - flops0

    def seconds(self) -> dict[str, float]:
        """Seconds per part since :meth:`clear` (call after synchronising)."""
        if self.cuda:
            return {p: sum(a.elapsed_time(b) for a, b in s) / 1e3 for p, s in self._spans.items()}
        return {p: sum(b - a for a, b in s) for p, s in self._spans.items()}


@contextmanager
def probed(model: WorldModel, probe: PartProbe) -> Iterator[None]:
    """Time ``model.dit``'s forwards (hooks) and ``model.vae.decode`` (wrapped on the instance) into
    ``probe`` while inside; the model is as before afterwards."""
    decode = model.vae.decode

    def probed_decode(z: Tensor, *args, **kwargs):
        probe.begin("decode")
        out = decode(z, *args, **kwargs)
        probe.end("decode")
        probe.latents.append(z.detach().clone())
        return out

    hooks = [
        model.dit.register_forward_pre_hook(lambda module, args: probe.begin("dit")),
        model.dit.register_forward_hook(lambda module, args, out: probe.end("dit")),
    ]
    model.vae.decode = probed_decode
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        del model.vae.decode


# ops torch's FLOP table lacks, counted as their CUDA counterparts: the CPU flash attention kernel, and
# the oneDNN convolution world_model.vae calls directly for fp32 on a CPU
_CPU_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
        sdpa_flop_count(q, k, v)
    ),
    torch.ops.aten.mkldnn_convolution: lambda x, w, *a, out_shape=None, **kw: conv_flop_count(x, w, out_shape),
}


KERNEL_KINDS = ("matmul", "attention", "convolution", "fused (triton)", "elementwise (aten)", "copy", "other")


def kernel_kind(name: str) -> str:
    """The kind of a GPU kernel from its name: where a chunk's device time goes beside its FLOP floor.
    Inductor's matmul templates (``triton_tem_``) count as matmul; its other kernels as fused (the
    compiled non-matmul work); aten's own elementwise and reduction kernels as other."""
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "sdpa", "attention", "attn")):
        return "attention"
    if any(s in n for s in ("conv", "implicit", "winograd", "fprop")):  # cuDNN's implicit-GEMM convolutions
        return "convolution"
    if n.startswith("triton"):  # inductor names its kernels by the ops fused in (a quantisation fused after
        # a _scaled_mm is named after it): only its templates are matmuls
        return "matmul" if n.startswith("triton_tem") else "fused (triton)"
    if any(s in n for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "scaled_mm")):
        return "matmul"
    if "memcpy" in n or "memset" in n:
        return "copy"
    if "at::native::" in n:  # eager (uncompiled) elementwise and reduction kernels
        return "elementwise (aten)"
    return "other"


def trace_kernels(events: list[dict], top: int = 25) -> dict[str, object]:
    """Device time of one profiled step from its Chrome trace's events (each kernel, memcpy and memset
    once, as the device ran it): busy time (the union of their intervals), span (first start to last
    end), time and count by :func:`kernel_kind`, and the kernels with the most time (by name)."""
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not kernels:
        return {"device_busy_ms": 0.0, "device_span_ms": 0.0, "device_ms_by_kind": {}, "kernels_by_kind": {},
                "top_kernels": []}  # fmt: skip
    kernels.sort(key=lambda e: e["ts"])
    busy, start, end = 0.0, kernels[0]["ts"], kernels[0]["ts"]
    for e in kernels:  # union of [ts, ts + dur): kernels of several streams may overlap
        if e["ts"] > end:
            busy += end - start
            start = e["ts"]
        end = max(end, e["ts"] + e["dur"])
    busy += end - start
    kinds: Counter = Counter()
    counts: Counter = Counter()
    by_name: Counter = Counter()
    calls: Counter = Counter()
    for e in kernels:
        kind = "copy" if e["cat"] != "kernel" else kernel_kind(e["name"])
        kinds[kind] += e["dur"]
        counts[kind] += 1
        by_name[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    ms = 1e-3  # the trace counts microseconds
    return {
        "device_busy_ms": busy * ms,
        "device_span_ms": (end - kernels[0]["ts"]) * ms,  # end: the last kernel's end (the union's loop)
        "device_ms_by_kind": {k: kinds[k] * ms for k in KERNEL_KINDS if counts[k]},
        "kernels_by_kind": {k: counts[k] for k in KERNEL_KINDS if counts[k]},
        "top_kernels": [
            {"kernel": name, "kind": kernel_kind(name), "device_ms": t * ms, "calls": calls[name]}
            for name, t in by_name.most_common(top)
        ],
    }


def profile_step(step: Callable[[], Tensor], device: torch.device, path: str, top: int = 25) -> dict[str, object]:
    """One more ``step()`` under torch.profiler (CPU, and CUDA where there is one): where the host
    time of a chunk goes. Writes the Chrome trace to ``path``.trace.json.gz and returns the step's wall
    time, the host (CPU) time inside the DiT and decode ranges and outside them, the device's busy
    time, the ops outside those ranges with the most self CPU time, and the ops with the most device
    time."""
    import gzip
    import shutil

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        _, wall = _timed(step, device)
    trace = f"{path}.trace.json"
    prof.export_chrome_trace(trace)
    with open(trace) as f:
        on_device = trace_kernels(json.load(f).get("traceEvents", []), top)
    with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(trace)
    events = prof.key_averages()
    ms = 1e-3  # the profiler counts microseconds
    python_rows = _python_profile(step, device, top)

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)

    parts = {p: next((e.cpu_time_total * ms for e in events if e.key == p), 0.0) for p in PARTS}
    ops = [e for e in events if e.key not in PARTS]

    def in_part(e) -> bool:
        while e is not None:
            if e.name in PARTS:
                return True
            e = e.cpu_parent
        return False

    outside: Counter = Counter()  # self CPU time of the ops outside the DiT and decode ranges
    calls: Counter = Counter()
    for e in prof.events():
        if e.name not in PARTS and not in_part(e):
            outside[e.name] += e.self_cpu_time_total
            calls[e.name] += 1
    by_cpu = outside.most_common(top)
    by_device = sorted(ops, key=device_us, reverse=True)[:top]
    return {
        "step_s": wall,
        "trace": trace + ".gz",
        "host_ms_in_parts": parts,
        "host_ms_outside_parts": wall * 1e3 - sum(parts.values()),
        **on_device,  # from the trace's kernels: each counted once (op-level device times nest and repeat them)
        "top_self_cpu_outside_parts": [{"op": k, "self_cpu_ms": v * ms, "calls": calls[k]} for k, v in by_cpu],
        "top_python_self": python_rows,
        "top_device": [
            {"op": e.key, "device_ms": device_us(e) * ms, "calls": e.count} for e in by_device if device_us(e)
        ],
    }


def _python_profile(step: Callable[[], Tensor], device: torch.device, top: int) -> list[dict[str, object]]:
    """One more ``step()`` under cProfile: the Python functions with the most self time (what the
    aten-op view cannot attribute: Python overhead, numpy, host copies outside torch)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    _sync(device)
    prof.enable()
    step()
    _sync(device)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {"function": f"{Path(f).name}:{line} {name}", "self_ms": tt * 1e3, "cum_ms": ct * 1e3, "calls": nc}
        for (f, line, name), (_, nc, tt, ct, _) in rows
    ]


def count_flops(step: Callable[[], Tensor], probe: PartProbe) -> dict[str, dict[str, float]]:
    """FLOPs of one ``step()`` per part, split into matmul/convolution and attention ops."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_FLOPS) as counter:
        probe.flops = counter
        try:
            step()
        finally:
            probe.flops = None
    out = {}
    for part, ops in probe.flops_by_part.items():
        attention = sum(n for op, n in ops.items() if "attention" in op)
        out[part] = {"matmul": float(sum(ops.values()) - attention), "attention": float(attention)}
    return out


def floor_seconds(flops: dict[str, dict[str, float]], ceilings: dict[str, float], fp8: bool) -> dict[str, float]:
    """Seconds per part at the ceilings (TFLOP/s); ``fp8``: DiT matmuls at the FP8 ceiling."""
    dit_matmul = ceilings["fp8_tflops" if fp8 else "matmul_tflops"]
    floor = {
        "dit": flops["dit"]["matmul"] / dit_matmul + flops["dit"]["attention"] / ceilings["attention_tflops"],
        "decode": flops["decode"]["matmul"] / ceilings["matmul_tflops"]
        + flops["decode"]["attention"] / ceilings["attention_tflops"],
    }
    floor = {k: v / 1e12 for k, v in floor.items()}
    floor["chunk"] = floor["dit"] + floor["decode"]
    return floor


# ---- rollouts --------------------------------------------------------------------------------------


class EnvDriver:
    """Resets and steps one ``MatrixGameEnv`` with the same seed and actions every time."""

    api = "gymnasium MatrixGameEnv"

    def __init__(self, model: WorldModel, max_chunks: int) -> None:
        import numpy as np

        from mg3_env.env import MatrixGameEnv

        self.env = MatrixGameEnv(model=model, max_chunks=max_chunks)
        self.action = {k: np.asarray(v, dtype=np.float32) for k, v in FORWARD.items()}
        self.action["keyboard"] = self.action["keyboard"].astype(np.int8)

    def reset(self) -> Tensor:
        obs, _ = self.env.reset(seed=0)
        return torch.as_tensor(obs["frames"])

    def step(self) -> Tensor:
        obs, *_ = self.env.step(self.action)
        return torch.as_tensor(obs["frames"])

    def close(self) -> None:
        self.env.close()


class GeneratorDriver:
    """The same loop one level down (the streaming generator), when gymnasium is not installed."""

    api = "StreamingGenerator (gymnasium not installed)"

    def __init__(self, model: WorldModel, max_chunks: int) -> None:
        from world_model.generator import ChunkActions, StreamingGenerator

        self.model, self.gen = model, StreamingGenerator(model)
        self.state = self.gen.init_state(1)
        self.first = ChunkActions(
            torch.zeros(self.gen.first_chunk_frames, 6), torch.zeros(self.gen.first_chunk_frames, 2)
        )
        n = self.gen.chunk_frames
        kb, ms = torch.tensor(FORWARD["keyboard"], dtype=torch.float32), torch.tensor(FORWARD["mouse"])
        self.forward = ChunkActions(kb.repeat(n, 1), ms.repeat(n, 1))

    def reset(self) -> Tensor:
        s = self.model.config.stream
        image = torch.zeros(1, 3, s.height, s.width)
        self.gen.reset_(self.state, [True], image, self.model.encode_prompts(["a street"]), [0])
        return self._step(self.first)

    def step(self) -> Tensor:
        return self._step(self.forward)

    def _step(self, actions) -> Tensor:
        outs, self.state = self.gen.step(self.state, [actions])
        return outs[0].frames

    def close(self) -> None:
        pass


def driver_class() -> type:
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        return GeneratorDriver
    return EnvDriver


@dataclass
class Rollout:
    """What one configuration measured and produced (frames and latents on the CPU, chunk 0 = the
    warm reset's chunk, then the warm-up chunks, then the timed ones)."""

    reset_s: list[float] = field(default_factory=list)
    warmup_chunk_s: list[float] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)
    parts_s: list[dict[str, float]] = field(default_factory=list)
    frames: list[Tensor] = field(default_factory=list)
    latents: list[Tensor] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def roll_out(driver, probe: PartProbe, device: torch.device, warmup: int, chunks: int) -> Rollout:
    """Two resets (the first is the cold one), ``warmup`` untimed-in-the-mean chunks, ``chunks`` timed."""
    r = Rollout()
    for _ in range(2):
        probe.clear()
        frames, seconds = _timed(driver.reset, device)
        r.reset_s.append(seconds)
    r.frames.append(frames)
    r.latents += probe.latents
    for i in range(warmup + chunks):
        probe.clear()
        frames, seconds = _timed(driver.step, device)
        r.frames.append(frames)
        r.latents += probe.latents
        if i < warmup:
            r.warmup_chunk_s.append(seconds)
            continue
        parts = probe.seconds()
        r.chunk_s.append(seconds)
        r.parts_s.append({**parts, "host": seconds - sum(parts.values())})
    r.latents = [z.float().cpu() for z in r.latents]
    return r


# ---- accuracy and bookkeeping ------------------------------------------------------------------------


def rel_l2(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def psnr_db(frames: Tensor, ref: Tensor) -> float:
    mse = float((frames.float() - ref.float()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def accuracy(r: Rollout, ref: Rollout) -> dict[str, list[float]]:
    """Per chunk (warm reset's chunk first): latent relative L2 error and frame PSNR against ``ref``."""
    return {
        "latent_rel_l2": [rel_l2(z, z0) for z, z0 in zip(r.latents, ref.latents)],
        "psnr_db": [psnr_db(f, f0) for f, f0 in zip(r.frames, ref.frames)],
    }


@torch.no_grad()
def weights_checksum(model: WorldModel) -> float:
    """Sum of squares of the weights no runtime option rewrites (all but the linears FP8 may replace,
    and the VAE's): equal across configurations built from one seed."""
    total = 0.0
    for name, module in model.dit.named_modules():
        if isinstance(module, Float8Linear) or (type(module) is nn.Linear and default_fp8_layers(name, module)):
            continue
        total += sum(float(p.float().square().sum(dtype=torch.float64)) for p in module.parameters(recurse=False))
    return total + sum(float(p.float().square().sum(dtype=torch.float64)) for p in model.vae.parameters())


def applied_options(model: WorldModel) -> dict[str, object]:
    """What the loader applied, read back from the model."""
    return {
        "attention_backends": sorted(set(attention_backends(model.dit).values())),
        "fp8_layers": sum(isinstance(m, Float8Linear) for m in model.dit.modules()),
        "camera_cache": bool(model.dit.camera_cache),
        "compiled_blocks": sum(getattr(b, "_compiled_call_impl", None) is not None for b in model.dit.blocks),
        "decode_segment": model.runtime.decode_segment,
        "text_offload": model.runtime.text_offload,
        "compiled_decoder": getattr(model.vae.decoder, "_compiled_call_impl", None) is not None,
        "fp8_ffn_fused": sum(isinstance(m, Float8Linear) and m.input_gelu for m in model.dit.modules()),
        "cuda_graph_steps": begins_graph_steps(model.dit),
    }


def block_graphs() -> dict[str, object]:
    """How many graphs dynamo holds for the blocks' forward (shared by every block) against its recompile limit: at
    the limit, a later variant ran eagerly (session 44's context cache on the H100, before compile_blocks raised it)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from world_model.dit import DiTBlock
    from world_model.runtime import recompile_limit

    graphs = len(_debug_get_cache_entry_list(DiTBlock.forward.__code__))
    limit = recompile_limit()
    return {"graphs": graphs, "recompile_limit": limit, "limit_reached": graphs >= limit}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarize(r: Rollout, frames_per_chunk: int) -> dict[str, object]:
    chunk = _mean(r.chunk_s)
    return {
        "reset_s": r.reset_s,
        "reset_s_warm": r.reset_s[-1],
        "warmup_chunk_s": r.warmup_chunk_s,
        "cold_s": r.reset_s[0] + sum(r.warmup_chunk_s),
        "chunk_s": r.chunk_s,
        "chunk_s_mean": chunk,
        "frames_per_chunk": frames_per_chunk,
        "fps": frames_per_chunk / chunk,
        "parts_s_per_chunk": r.parts_s,
        "parts_s": {p: _mean([x[p] for x in r.parts_s]) for p in (*PARTS, "host")},
    }


def free_model(compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch._dynamo.reset()  # compiled graphs of a freed model: dropped before the next one compiles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- one configuration -------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything shared by the configurations of one run."""

    cfg: WorldModelConfig
    device: torch.device
    dtype: torch.dtype
    seed: int
    warmup: int
    chunks: int
    profile: str | None = None  # path prefix: profile one more steady chunk of the first configuration


def measure(bench: BenchConfig, setup: Setup, ref: tuple[Rollout, float] | None) -> tuple[dict, Rollout | None]:
    """Build and roll out one configuration; ``ref``: the reference's rollout and weight checksum (None:
    this one is the reference, and its FLOPs are counted when it runs eagerly: FlopCounterMode counts
    eager aten ops). Returns its JSON entry and its rollout (None when skipped)."""
    entry: dict[str, object] = {"label": bench.label, "options": options(bench)}
    runtime = bench.runtime(str(setup.device), setup.dtype)
    if reason := skip_reason(runtime):
        return {**entry, "skipped": reason}, None
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    t0 = time.perf_counter()
    model = random_world_model(setup.cfg, runtime, seed=setup.seed)
    _sync(setup.device)
    entry["build_s"] = time.perf_counter() - t0
    # what the built model holds on the device (weights, buffers) before any step: the peak's floor
    entry["resident_gib"] = torch.cuda.memory_allocated(setup.device) / 2**30 if cuda else None
    if cuda:  # building's own peak (weights made, cast, moved) apart from the env's
        entry["build_peak_gib"] = torch.cuda.max_memory_allocated(setup.device) / 2**30
        torch.cuda.reset_peak_memory_stats(setup.device)
    entry["applied"] = applied_options(model)
    entry["weights_checksum"] = checksum = weights_checksum(model)
    probe = PartProbe(setup.device)
    extra = 2 + (2 if setup.profile else 0)  # the FLOP count's chunk (+1 spare), the two profiled ones
    driver = driver_class()(model, max_chunks=setup.warmup + setup.chunks + extra)
    entry["api"] = driver.api
    try:
        with probed(model, probe):
            r = roll_out(driver, probe, setup.device, setup.warmup, setup.chunks)
            entry.update(summarize(r, int(r.frames[-1].shape[0])))
            if bench.compile:
                entry["block_graphs"] = block_graphs()
            if cuda:  # the probe resets the peak statistic at part boundaries: the run's peak is the max
                entry["peak_gib_by_part"] = by_part = probe.peak_gib()
                entry["peak_gib"] = max(by_part.values())
                entry["peak_reserved_gib"] = probe.peak_reserved_bytes / 2**30  # blocks the build left cached in it
            else:
                entry["peak_gib"] = None
            if ref is None and not (bench.compile or bench.quantize):
                entry["flops"] = count_flops(driver.step, probe)
            if ref is None and setup.profile:
                entry["profile"] = profile_step(driver.step, setup.device, setup.profile)
    finally:
        driver.close()
    if ref is not None:
        entry["same_weights_as_reference"] = checksum == ref[1]
        entry["accuracy"] = accuracy(r, ref[0])
    return entry, r


def options(bench: BenchConfig) -> dict[str, object]:
    return {k: v for k, v in asdict(bench).items() if k != "label"}


def progress(e: dict) -> str:
    parts = ", ".join(f"{p} {t:.3f}" for p, t in e["parts_s"].items())
    line = f"{e['chunk_s_mean']:.3f} s/chunk ({parts}), {e['fps']:.2f} frames/s, cold {e['cold_s']:.1f} s"
    graphs = e.get("block_graphs")
    if graphs and graphs["limit_reached"]:
        line += f"; the blocks' {graphs['graphs']} graphs reached dynamo's recompile limit: later variants ran eagerly"
    return line


def run_configs(configs: list[BenchConfig], setup: Setup, result: dict, path: str) -> None:
    """Measure each configuration into ``result["configs"]`` (the first measured one is the reference),
    rewriting the JSON after each; a failure is recorded and the next configuration runs."""
    ref: tuple[Rollout, float] | None = None
    for bench in configs:
        print(f"--- {bench.label}", flush=True)
        try:
            entry, rollout = measure(bench, setup, ref)
        except Exception as e:  # noqa: BLE001 - one failed configuration must not lose the others
            traceback.print_exc()
            entry, rollout = (
                {"label": bench.label, "options": options(bench), "error": f"{type(e).__name__}: {e}"},
                None,
            )
        free_model(bench.compile)  # after the except block: its traceback no longer holds the model
        if "flops" in entry:
            result["flops"] = entry.pop("flops")
            result["flops_method"] = (
                f"torch.utils.flop_counter.FlopCounterMode on {setup.device.type}, one extra steady chunk of "
                f"'{bench.label}', not timed"
            )
        if ref is None and rollout is not None:
            ref = (rollout, entry["weights_checksum"])
            result["reference"] = bench.label
        result["configs"].append(entry)
        if "flops" in result:
            add_floor(result)
        result["api"] = entry.get("api", result.get("api"))
        print(entry.get("skipped") or entry.get("error") or progress(entry), flush=True)
        write_json(result, path)


# ---- output ------------------------------------------------------------------------------------------


def _fmt(x: object, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "inf" if x == math.inf else format(x, spec)


COLUMNS = (  # header, width, value of a measured entry
    ("config", 34, lambda e: e["label"]),
    ("s/chunk", 8, lambda e: _fmt(e["chunk_s_mean"], ".3f")),
    ("frames/s", 9, lambda e: _fmt(e["fps"], ".2f")),
    ("DiT s", 7, lambda e: _fmt(e["parts_s"]["dit"], ".3f")),
    ("decode s", 9, lambda e: _fmt(e["parts_s"]["decode"], ".3f")),
    ("host s", 7, lambda e: _fmt(e["parts_s"]["host"], ".3f")),
    ("held GiB", 9, lambda e: _fmt(e.get("resident_gib"), ".1f")),
    ("peak GiB", 9, lambda e: _fmt(e["peak_gib"], ".1f")),
    ("reserved GiB", 13, lambda e: _fmt(e.get("peak_reserved_gib"), ".1f")),
    ("in DiT/dec/out", 15, lambda e: "/".join(_fmt(v, ".1f") for v in e.get("peak_gib_by_part", {}).values()) or "-"),
    ("reset s", 8, lambda e: _fmt(e["reset_s_warm"], ".3f")),
    ("cold s", 7, lambda e: _fmt(e["cold_s"], ".1f")),
    ("lat err", 8, lambda e: _fmt(max(e["accuracy"]["latent_rel_l2"]), ".1e") if "accuracy" in e else "ref"),
    ("PSNR dB", 8, lambda e: _fmt(min(e["accuracy"]["psnr_db"]), ".1f") if "accuracy" in e else "ref"),
)


def _row(cells: list[str]) -> str:
    return "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, COLUMNS)))


def table(entries: list[dict]) -> str:
    lines = [_row([h for h, _, _ in COLUMNS])]
    for e in entries:
        if "chunk_s_mean" in e:
            lines.append(_row([value(e) for _, _, value in COLUMNS]))
        else:
            lines.append(
                f"{e['label']:<34}{'skipped' if 'skipped' in e else 'FAILED'}: {e.get('skipped', e.get('error'))}"
            )
    return "\n".join(lines)


def floor_table(result: dict) -> str:
    """The FLOP count, the floor per part and each measured configuration's ratio to it."""
    fl, ceil = result["flops"], result["ceilings_tflops"]
    lines = [
        f"FLOPs of one steady chunk ({result['flops_method']}):",
        f"  DiT    {fl['dit']['matmul']:.3e} matmul @ {ceil['matmul_tflops']:.0f} TFLOP/s (fp8 {ceil['fp8_tflops']:.0f})"
        f" + {fl['dit']['attention']:.3e} attention @ {ceil['attention_tflops']:.0f}",
        f"  decode {fl['decode']['matmul']:.3e} conv/matmul @ {ceil['matmul_tflops']:.0f}",
    ]
    for kind, f in result["floor_s"].items():
        lines.append(f"  floor {kind:<5} DiT {f['dit']:.3g} s + decode {f['decode']:.3g} s = {f['chunk']:.3g} s/chunk")
    lines.append(f"{'measured / floor':<34}{'DiT':>10}{'decode':>10}{'chunk':>10}")
    for e in result["configs"]:
        if "ratio_to_floor" in e:
            q = e["ratio_to_floor"]
            lines.append(f"{e['label']:<34}{q['dit']:>10.3g}{q['decode']:>10.3g}{q['chunk']:>10.3g}")
    return "\n".join(lines)


def add_floor(result: dict) -> None:
    """The floor of ``result["flops"]`` at ``result["ceilings_tflops"]`` (bf16 and FP8 DiT matmuls) and
    each measured configuration's ratio to its floor."""
    flops, ceilings = result["flops"], result["ceilings_tflops"]
    result["floor_s"] = {kind: floor_seconds(flops, ceilings, fp8=kind == "fp8") for kind in ("bf16", "fp8")}
    for e in result["configs"]:
        if "chunk_s_mean" in e:
            f = result["floor_s"]["fp8" if e["options"]["quantize"] == "fp8" else "bf16"]
            measured = {**e["parts_s"], "chunk": e["chunk_s_mean"]}
            e["ratio_to_floor"] = {k: measured[k] / f[k] if f[k] else None for k in ("dit", "decode", "chunk")}


def _finite(x: object) -> object:
    """JSON without Infinity/NaN (identical frames: PSNR null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_finite(result), f, indent=2)


# ---- main --------------------------------------------------------------------------------------------


def model_config(name: str, vae_pruning: float) -> WorldModelConfig:
    if name == "tiny":
        return tiny()
    base = mg3_5b()
    return base.replace(
        name="mg3-5b-random", text=base.text.replace(kind="random"), vae=VAEConfig(pruning_rate=vae_pruning)
    )


# the flags that choose the one configuration measured without --ablation
_CONFIG_FLAGS = (
    "attention",
    "quantize",
    "compile",
    "camera_cache",
    "decode_segment",
    "text_offload",
    "compile_decoder",
    "fp8_ffn_kernel",
    "fp8_attention_kernel",
    "cuda_graphs",
    "against_eager",
    "eager_attention",
    "residual",
    "context_cache",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("5b", "tiny"), default="5b", help="tiny: world_model.config.tiny() (CPU smoke)")
    p.add_argument("--chunks", type=int, default=3, help="timed chunks per configuration")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0, help="random weights' seed (the same for every configuration)")
    p.add_argument("--vae-pruning", type=float, default=0.75, help="5b: decoder pruning rate (0 = full Wan2.2 VAE)")
    p.add_argument("--ablation", action="store_true", help="measure the list of configurations (ablation_configs)")
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS)
    p.add_argument("--quantize", default=None, choices=("fp8",), help="8-bit linears in the DiT blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.add_argument(
        "--camera-cache",
        choices=("on", "off"),
        default="on",
        help="reuse a chunk's text/camera/RoPE conditioning across sampler steps (RuntimeOptions.camera_cache)",
    )
    p.add_argument(
        "--decode-segment",
        type=int,
        default=4,
        help="latents per VAE decoder call (RuntimeOptions.decode_segment)",
    )
    p.add_argument(
        "--against-eager",
        action="store_true",
        help="measure the eager configuration (same attention and cache) first, and the chosen one's latents and "
        "frames against it",
    )
    p.add_argument(
        "--eager-attention",
        default=None,
        choices=ATTENTION_BACKENDS,
        help="with --against-eager: the eager reference's attention backend (default: --attention's), e.g. cudnn "
        "to measure an FP8 attention's error too",
    )
    p.add_argument(
        "--compile-decoder",
        action="store_true",
        help="torch.compile the VAE decoder (RuntimeOptions.compile_decoder; its first decodes compile)",
    )
    p.add_argument(
        "--fp8-ffn-kernel",
        action="store_true",
        help="with --quantize fp8: the FFNs' bias + GELU + FP8 quantisation in one Triton pass "
        "(RuntimeOptions.fp8_ffn_kernel)",
    )
    p.add_argument(
        "--fp8-attention-kernel",
        action="store_true",
        help="with --attention fa3_fp8: the self-attentions' q/k RMSNorm + RoPE + FP8 in one Triton pass "
        "(RuntimeOptions.fp8_attention_kernel)",
    )
    p.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark = True for the whole run (process-wide: cuDNN times its algorithms for "
        "each new convolution shape, the VAE decoder's, at its first call, instead of choosing by heuristics)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="with --compile: the compiled blocks replay CUDA graphs (RuntimeOptions.cuda_graphs)",
    )
    p.add_argument(
        "--text-offload",
        action="store_true",
        help="keep the text encoder's weights in host memory between encodings (RuntimeOptions.text_offload)",
    )
    p.add_argument(
        "--residual",
        choices=("fp32", "dtype", "both"),
        default="fp32",
        help="the DiT's residual stream (RuntimeOptions.residual): fp32 (the release's) or dtype (bf16); both: the "
        "chosen configuration with fp32, then with bf16, measured against it (after the eager one with --against-eager)",
    )
    p.add_argument(
        "--context-cache",
        choices=("off", "on", "both"),
        default="off",
        help="the window's clean tokens through the DiT once per chunk (RuntimeOptions.context_cache, an "
        "approximation); both: the chosen configuration without, then with it, measured against it (with --residual "
        "both: every pair)",
    )
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        metavar="GB",
        help="let this process allocate at most GB gigabytes (10^9 bytes) of the GPU "
        "(torch.cuda.set_per_process_memory_fraction), as a card of that size would: 24 for issue 14's target. A "
        "configuration that needs more fails with out-of-memory, in the table and the JSON",
    )
    p.add_argument("--matmul-tflops", type=float, default=MATMUL_TFLOPS, help="bf16 GEMM ceiling (H200, 5B shapes)")
    p.add_argument("--fp8-tflops", type=float, default=FP8_TFLOPS, help="FP8 row-wise GEMM ceiling (H200)")
    p.add_argument("--attention-tflops", type=float, default=ATTENTION_TFLOPS, help="attention ceiling (H200 cuDNN)")
    p.add_argument("--json", default="bench_env_5b.json")
    p.add_argument(
        "--profile",
        default=None,
        metavar="PREFIX",
        help="profile one more steady chunk of the first configuration (torch.profiler): where its host "
        "time goes, in the JSON and PREFIX.trace.json.gz",
    )
    args = p.parse_args()
    if args.chunks < 1:
        p.error(f"--chunks must be >= 1, got {args.chunks}")
    if args.config == "tiny" and args.vae_pruning != p.get_default("vae_pruning"):
        p.error("--vae-pruning sets the 5B's decoder: the tiny config has its own")
    if args.text_offload and torch.device(args.device).type == "cpu":
        p.error("--text-offload moves the text encoder between host and GPU: it needs a GPU --device")
    if args.eager_attention and not args.against_eager:
        p.error("--eager-attention sets the eager reference's attention: it needs --against-eager")
    if args.fp8_ffn_kernel and args.quantize != "fp8":
        p.error("--fp8-ffn-kernel fuses the FFNs' FP8 input quantisation: it needs --quantize fp8")
    if args.fp8_attention_kernel and args.attention != "fa3_fp8":
        p.error("--fp8-attention-kernel makes the FP8 attention's inputs: it needs --attention fa3_fp8")
    if args.cudnn_benchmark and torch.device(args.device).type != "cuda":
        p.error("--cudnn-benchmark times cuDNN's convolution algorithms: it needs a GPU --device")
    if args.cuda_graphs and not args.compile:
        p.error("--cuda-graphs replays the compiled blocks as CUDA graphs: it needs --compile")
    if args.memory_cap_gb is not None and torch.device(args.device).type != "cuda":
        p.error("--memory-cap-gb caps the GPU's memory: it needs a GPU --device")
    if args.memory_cap_gb is not None and not args.memory_cap_gb > 0:
        p.error(f"--memory-cap-gb must be > 0, got {args.memory_cap_gb}")
    if args.residual != "fp32" and torch.device(args.device).type == "cpu" and args.quantize != "fp8":
        p.error("--residual dtype stores the residual stream in the run's dtype, float32 on a CPU: it needs a GPU")
    if args.ablation:  # the ablation measures its own fixed configurations: a flag that chooses one is refused
        chosen = changed_flags(p, args, _CONFIG_FLAGS)
        if chosen:
            p.error(f"{', '.join(chosen)} choose the measured configuration: not with --ablation (its own list)")
    if args.context_cache != "off" and args.camera_cache == "off":
        p.error("--context-cache keeps the clean tokens in the camera cache's scope: it needs --camera-cache on")
    if args.context_cache != "off" and args.fp8_attention_kernel:
        p.error("--context-cache: the fused FP8 self-attention does not attend to kept tokens (--fp8-attention-kernel)")
    return args


def report(result: dict, path: str) -> None:
    print(
        f"\n{result['model_config']} {result['resolution'][0]}x{result['resolution'][1]} {result['dtype']}, "
        f"{result['device']}, {result.get('api')}, {result['chunks']} timed chunks after "
        f"{result['warmup_chunks']} warm-up; reference: {result.get('reference')}"
    )
    print(table(result["configs"]))
    if "flops" in result:
        print(floor_table(result))
    else:
        print("floor: not counted (FlopCounterMode needs an eager reference configuration)")
    for e in result["configs"]:
        if "profile" in e:
            pr = e["profile"]
            inside = ", ".join(f"{k} {v:.0f}" for k, v in pr["host_ms_in_parts"].items())
            print(
                f"profile of one more chunk of '{e['label']}': {pr['step_s'] * 1e3:.0f} ms wall; host ms inside "
                f"{inside}, outside {pr['host_ms_outside_parts']:.0f}; device busy {pr['device_busy_ms']:.0f} of "
                f"{pr.get('device_span_ms', 0):.0f} ms; "
                f"trace {pr['trace']}"
            )
            if pr["device_ms_by_kind"]:
                print(
                    "  device ms by kernel kind: "
                    + ", ".join(f"{k} {v:.1f} ({pr['kernels_by_kind'][k]})" for k, v in pr["device_ms_by_kind"].items())
                )
            for row in pr.get("top_kernels", [])[:15]:
                print(
                    f"  {row['device_ms']:9.2f} ms device  {row['calls']:6d} calls  {row['kind']:18s} {row['kernel'][:90]}"
                )
            for row in pr["top_device"][:8]:
                print(f"  {row['device_ms']:9.2f} ms device  {row['calls']:6d} calls  op {row['op'][:100]}")
            for row in pr["top_self_cpu_outside_parts"][:12]:
                print(f"  {row['self_cpu_ms']:9.2f} ms self CPU  {row['calls']:6d} calls  {row['op']}")
            print("  Python functions with the most self time (cProfile, one more chunk):")
            for row in pr["top_python_self"][:12]:
                print(f"  {row['self_ms']:9.2f} ms self  {row['calls']:6d} calls  {row['function']}")
    bad = [e["label"] for e in result["configs"] if e.get("same_weights_as_reference") is False]
    if bad:
        print(f"WARNING: weights differ from the reference's in {bad}")
    print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cfg = model_config(args.config, args.vae_pruning)
    if args.memory_cap_gb is not None:  # as a card of that size: the caching allocator refuses more
        index = device.index if device.index is not None else torch.cuda.current_device()  # "cuda" has none
        total = torch.cuda.get_device_properties(index).total_memory
        if args.memory_cap_gb * 1e9 > total:
            raise SystemExit(f"--memory-cap-gb {args.memory_cap_gb}: this GPU has {total / 1e9:.1f} GB")
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gb * 1e9 / total, index)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # a CPU's bf16 kernels are slow
    auto_kernel = auto_attention_kernel(device, dtype, cfg.dit.dim // cfg.dit.num_heads)
    if args.ablation:
        configs = ablation_configs(auto_kernel)
    else:
        label = f"attention {args.attention}, cache {args.camera_cache}"
        label += (", compile" if args.compile else "") + (f", {args.quantize}" if args.quantize else "")
        label += f", decode segment {args.decode_segment}" if args.decode_segment != 4 else ""
        label += ", text offload" if args.text_offload else ""
        label += ", compiled decoder" if args.compile_decoder else ""
        label += ", fused FFN quantisation" if args.fp8_ffn_kernel else ""
        label += ", fused q/k quantisation" if args.fp8_attention_kernel else ""
        label += ", CUDA graphs" if args.cuda_graphs else ""
        residuals = ["fp32", "dtype"] if args.residual == "both" else [args.residual]
        contexts = {"off": [False], "on": [True], "both": [False, True]}[args.context_cache]
        configs = [
            BenchConfig(
                label + (", bf16 residual" if residual == "dtype" else "") + (", context cache" if context else ""),
                args.attention,
                args.quantize,
                args.compile,
                args.camera_cache == "on",
                args.decode_segment,
                args.text_offload,
                args.compile_decoder,
                args.fp8_ffn_kernel,
                args.fp8_attention_kernel,
                args.cuda_graphs,
                residual,
                context,
            )
            for residual in residuals
            for context in contexts
        ]
        if args.against_eager:  # the eager configuration first: the chosen one's accuracy is measured against it
            eager_attention = args.eager_attention or args.attention
            configs.insert(
                0,
                BenchConfig(
                    f"attention {eager_attention}, cache {args.camera_cache} (eager)",
                    eager_attention,
                    camera_cache=args.camera_cache == "on",
                ),
            )
    # one warm-up chunk everywhere in an ablation (chunks line up across configurations); alone, only
    # a compiled model needs it (a later chunk's window shape compiles on its first step)
    warmup = 1 if args.ablation or args.compile or args.compile_decoder or args.against_eager else 0
    result: dict[str, object] = {
        "benchmark": "env_5b",
        "model_config": cfg.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "memory_cap_gb": args.memory_cap_gb,
        "resolution": [cfg.stream.height, cfg.stream.width],
        "sampler_steps": cfg.sampler.num_steps,
        "vae_pruning_rate": cfg.vae.pruning_rate,
        "dtype": str(dtype).removeprefix("torch."),
        "auto_attention_kernel": auto_kernel,
        "chunks": args.chunks,
        "warmup_chunks": warmup,
        "weights_seed": args.seed,
        "env_seed": 0,
        "actions": FORWARD,
        "ceilings_tflops": {
            "matmul_tflops": args.matmul_tflops,
            "fp8_tflops": args.fp8_tflops,
            "attention_tflops": args.attention_tflops,
        },
        "configs": [],
    }
    run_configs(configs, Setup(cfg, device, dtype, args.seed, warmup, args.chunks, args.profile), result, args.json)
    report(result, args.json)


if __name__ == "__main__":
    main()
