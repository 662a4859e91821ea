"""Runtime options: how to run a model, never saved with its weights; and :func:`apply_runtime`, the
one place where they are applied to a built DiT (called by the model loader).

The order follows gpt-fast's ``_load_model``: precision of the self-attention projections and the
attention backend of every attention module, then 8-bit linears, then sequence parallelism (a swap
of the self-attention kernel plus hooks), then compilation of each block. The model files
(``dit.py``, ``action.py``, ``moe.py``) hold none of this. Every option either takes effect or
raises before the model is touched, saying what to do instead.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from world_model.attention import BACKENDS
from world_model.checks import whole

__all__ = [
    "RuntimeOptions",
    "GRAPHS_PER_BLOCK_KIND",
    "recompile_limit",
    "ATTENTION_BACKENDS",
    "SELF_ATTN_PROJECTIONS",
    "RESIDUAL",
    "QUANTIZE",
    "apply_runtime",
    "check_runtime",
    "checked_device",
    "bound_qk_inputs",
    "begins_graph_steps",
    "compile_blocks",
    "compile_decoder",
    "apply_vae_runtime",
    "apply_process_runtime",
    "keep_freed_memory",
    "cpu_bf16_native",
    "cpu_name",
    "default_cpu_dtype",
]

ATTENTION_BACKENDS = BACKENDS
SELF_ATTN_PROJECTIONS = ("dtype", "fp32")
RESIDUAL = ("fp32", "dtype")
QUANTIZE = (None, "fp8", "int8", "auto")


@dataclass(frozen=True)
class RuntimeOptions:
    """Device, dtype and kernel choices for inference.

    ``attention``: the backend recorded on every attention module of the DiT (self-, cross- and
    action attention). ``auto`` uses flash-attn when installed and on CUDA; on a CPU in bf16 ``gemm`` (while
    its scores fit 256 MB); else torch SDPA with its own dispatch (cuDNN on Hopper); ``sdpa`` lets torch
    choose; ``math``/``flash``/``efficient``/``cudnn`` pin one SDPA backend (a CPU has ``math`` and ``flash``);
    ``gemm``: the scores and the weighted sum as two batched GEMMs in the model's dtype, softmax between (session
    33, the embedded model in bf16 on the 2-core VM: a chunk 1.38-1.56 -> 1.20 s, its frames 52-56 dB from fp32's as
    with SDPA's flash kernel; in fp32 slower than that kernel); ``flash_attn`` requires the
    flash-attn package; ``fa3`` / ``fa3_fp8`` the FlashAttention-3 forward kernel (the ``fa3-fwd`` wheel,
    Hopper, bf16): ``fa3_fp8`` quantizes q, k and v to FP8 e4m3 with one scale per batch element and head
    (``world_model.attention.fp8_heads``) and takes the scales into the kernel (measured on an H200 at the
    5B shapes: 721 TFLOP/s bf16 and 931 FP8, cuDNN 632).
    ``quantize``: ``None``, ``"fp8"``, ``"int8"`` or ``"auto"``: the DiT blocks' attention, FFN and camera linears
    as 8-bit GEMMs with row-wise scales (``world_model.quant``). ``"fp8"``: FP8 e4m3, needs
    ``dtype=torch.bfloat16`` and a CUDA GPU of compute capability >= 8.9 (Ada, Hopper). ``"int8"``: int8
    ``torch._int_mm`` GEMMs on the CPU, with fp32 or bf16 (on Hopper ``torch._int_mm`` measured no faster than
    bf16, so it is refused on a GPU), and the VAE decoder's convolutions as oneDNN int8 convolutions
    (``world_model.quant.Int8Conv``: weights per output channel, activations per tensor; x86 builds of torch;
    not with ``compile_decoder``). Session 33 on the 2-core VM (AMD EPYC family 26): the embedded decoder 0.41-0.47
    s a 40-frame chunk in fp32, 0.23-0.25 with int8 convolutions, frames 56 dB from fp32's (``bench/int8_conv.py``);
    the whole fp32 chunk 2.17 s, 1.31-1.46 with int8 linears and convolutions, frames 52-53 dB from fp32's. ``"auto"`` (what :meth:`for_device` picks on a CPU): ``"int8"`` in fp32 for
    a model whose DiT weights are stored in int8 with a scale per row (the embedded default: its GEMMs then multiply the very integers it ships,
    and only the activations' rounding is new) on a CPU with int8 dot-product instructions
    (:func:`cpu_int8_native`), else ``None``; the loaders resolve it (:meth:`resolve_quantize`), so a loaded
    model's ``runtime.quantize`` says what runs. The embedded model on the 2-core test VM (session 32,
    ``bench/embedded_speed.py --dtype both --quantize both``, two runs): a chunk 2.7 / 3.0 s in fp32 with int8
    against 3.4 / 3.7 without, its frames 54-56 dB from fp32's (bf16's: 54-56); in bf16 int8 did not pay (2.4 / 2.7 s
    against 2.2 / 2.7), so "auto" leaves bf16 alone.
    ``fp8_ffn_kernel`` (with ``quantize="fp8"``): each FFN's first bias and GELU move into its second layer's
    input quantisation, one Triton pass over the hidden rows (``world_model.fp8_rows``,
    ``world_model.quant.fuse_ffn_activations``) instead of inductor's; needs Triton (CUDA builds of torch).
    Measured on the H200 (session 17): 0.39 ms a call against inductor's 0.89, the 5B chunk 1.192 -> 1.173 s with
    the same accuracy; off by default because it needs Triton on a CUDA GPU (the fastest configuration sets it).
    ``fp8_attention_kernel`` (with ``attention="fa3_fp8"``): each DiT self-attention's q and k normalised, rotated
    and quantised to e4m3 in one Triton pass per token (both read the token's cos/sin once) and v's per-head scales
    from an inner reduction (``world_model.fp8_attention``), instead of inductor's four kernels for q/k and its
    strided reduction for v (session 17's profile: ~46 and 17 ms of a 5B chunk); the same roundings as the
    'fa3_fp8' path. Needs Triton on a CUDA GPU; not combined with ``sequence_parallel``. Measured on the H200
    (session 19): no faster yet (the chunk 1.166 s against 1.163; the kernel's first form 0.70 ms a call against
    inductor's 0.36, which does not round as the eager path does; its second form, session 20: 0.79 against 0.42, the chunk
    1.172 s against 1.179): off by default, also in the fastest configuration.
    ``compile``: ``torch.compile`` each DiT block (regional compilation: the first forward of each
    new input shape compiles, about a minute at 5B scale; later ones are fast). The blocks share one compiled code
    object, so :func:`compile_blocks` raises dynamo's recompile limit (process-wide, never lowered) to
    :data:`GRAPHS_PER_BLOCK_KIND` graphs per kind of block: past the limit, dynamo runs new variants eagerly.
    ``cuda_graphs`` (with ``compile``, on CUDA): the compiled blocks replay CUDA graphs (``torch.compile``'s
    "reduce-overhead" mode: one graph per block and input shape, recorded at its second call), so a block's
    ~100 kernels launch as one; each DiT forward begins a new graph step
    (``torch.compiler.cudagraph_mark_step_begin``), which frees the previous forward's block outputs for reuse.
    What it can save: session 17's profile of the fastest 5B chunk had the device idle 40 of its 1,191 ms between
    ~9,600 kernels. Inputs that are not the previous block's output (the patch embedding, the cached camera
    modulation) are copied into the graphs' buffers at each replay. Measured on the H200 (session 21, the fastest
    configuration, ``bench/results/env_5b_cuda_graphs_session21_h200.json``): 1.174 s a chunk against 1.172-1.179
    without, no gain (the host queues ahead of the device; the idle time is not launch gaps), a slower cold
    start; off by default.
    ``sequence_parallel``: split each DiT forward over this many ranks (Ulysses, ``world_model.parallel``);
    ``1`` is off. Needs ``torch.distributed`` initialised with exactly that many processes, every
    rank calling the model with the same inputs; not combined with ``compile`` (yet).
    ``self_attn_projections``: the precision of each DiT block's self-attention q/k/v/o linears.
    ``"dtype"`` (default) runs them in ``dtype`` like every other linear: bf16 GEMMs on a GPU, the
    fast path. ``"fp32"`` runs them as full-fp32 GEMMs on the weights cast up, exactly as the
    release's bf16 inference does (spec §15.6), for users who need the release's numbers; it costs
    the release's speed (on one H200 at 5B shapes the release's fp32 GEMMs took 0.84 s of each
    4.74 s chunk). fp32 GEMMs follow torch's float32 matmul precision, "highest" (no TF32) unless
    the program changed it, as in the release. With ``dtype=float32`` both choices are the same.
    ``residual``: the dtype the DiT's residual stream is stored in between the steps of a block (the gated adds, the
    camera injection, the cross-attention and action residuals). ``"fp32"`` (default) as the release; ``"dtype"``
    in ``dtype`` (bf16 or fp16; refused with float32, where it would change nothing): each step still computes in
    fp32 and rounds its result once, and the memory-bound passes around the GEMMs (LayerNorms, modulation, gated adds,
    FP8 row quantisation) read and write half the bytes of the [L, D] stream (session 17's profile of the fastest 5B
    chunk: ~0.21 s of its 1.17 in such inductor-fused passes). Measured on an H100 (session 43, the fastest
    configuration, ``bench/results/env_5b_residual_session43_h100.json``): the DiT 1.022 s a chunk against 1.037, its
    frames 49.7 dB from the fp32 stream's; off by default (the release's numbers first).
    ``text_device``: where the text encoder runs (None: ``device``).
    ``text_offload``: keep the text encoder's weights in (pinned) host memory and copy them to the
    text device only while a new prompt is encoded (prompt embeddings are cached, so a reset with a
    known prompt moves nothing). For the 5B model on a GPU this takes umt5-xxl's 11 GB off the GPU
    for about 0.5 s per new prompt; with a CPU text device there is nothing to offload (refused).
    ``camera_cache``: compute a window's conditioning (text embedding, camera tokens, RoPE and each
    block's camera modulation, which depend on the camera and prompt alone) at its first sampler
    step and reuse it for the others (exact, ``world_model.dit.reuse_conditioning``). It costs 2 x L
    x D values per block while a chunk is sampled (about 6.2 GB at 5B shapes in bf16) and saves two
    of the three camera branches per chunk. ``None`` (default): on, except under sequence parallelism
    (there the cached modulation is computed on all tokens by every rank, slower than each rank's
    share per step); ``True``/``False`` force it.
    ``context_cache`` (an approximation, off by default; ``"auto"``, :meth:`for_device`'s on a CPU: on where the
    model's ``SamplerConfig.context_cache_refresh`` says it was measured with it, see :meth:`resolve_context_cache`):
    within a chunk's sampling, the window's clean tokens (memory
    and context frames, timestep 0) go through the DiT blocks at the first sampler step only; each block keeps their
    keys and values (and its action module's mouse branch's), and the later steps run the blocks on the noisy frames'
    tokens alone, attending to the kept ones (``world_model.dit.CleanTokens``, ``reuse_conditioning(context_frames=...)``).
    What it holds on the 5B: 30 blocks x 7,920 clean tokens' keys and values in bf16 (2.7 GiB) and the 15 action
    blocks' mouse keys and values (0.45 GiB).
    The release recomputes the clean tokens at every step, where they attend to the partly denoised frames; here
    they keep their first step's states. What it saves: a 5B window of 5 memory + 4 context + 10 noisy latents
    (16,720 tokens) runs 8,800 tokens at steps 2 and 3, so the blocks' GEMMs and attention of a 3-step chunk fall to
    (1 + 2 x 0.53) / 3 = 69 %. Needs ``camera_cache`` (its scope holds the kept tokens); not with
    ``fp8_attention_kernel`` or ``sequence_parallel``. ``context_cache_refresh`` (r >= 1, with ``context_cache``):
    the clean tokens recomputed, and kept anew, at every r-th sampler step of a window (steps 0, r, 2r, ...): of 8 steps,
    r = 4 runs them twice; 0 (default): at the first step only.
    ``decode_segment``: latents per VAE decoder call when a chunk is decoded (the result is the same
    up to rounding for any value). 4 is the release's (``WAN_VAE_SEGMENT_SIZE``); 1 holds the
    decoder activations of one latent (4 frames) instead of four (16 frames) at a time: on the CPU
    at 176x320 with the 5B pruned decoder 876 MiB of fp32 working set above the weights with 4, 422
    with 1; on an H200 at 704x1280 the eager env's peak was 24.1 GiB with either (a random-weight model
    without text-encoder weights: the decode did not set it) and the decode takes the same time; since
    the decode cache is no longer copied per step the peak is 21.15 GiB, the decode's own 18.3.
    ``compile_decoder``: ``torch.compile`` the VAE decoder (one region: every call of a stream,
    first chunk and continuing; a reset stream reuses the first chunk's graph). Its eager decode is
    memory-bound work around the convolutions (on an H200 at 704x1280: 70 of 233 ms in convolutions,
    the rest RMSNorm, bias adds, copies, upsampling), which the compiler fuses: 130 ms measured, frames
    50.9 dB from eager's; but its working set at 4 latents per call is ~19 GiB against eager's ~6 (with
    FP8 DiT linears the env's peak 26.3 GiB, its decode's; eager 21.15). The first decodes compile.
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attention: str = "auto"
    quantize: str | None = None
    compile: bool = False
    text_device: str | None = None  # where the text encoder runs (None: same as device)
    self_attn_projections: str = "dtype"  # "dtype" (fast) or "fp32" (the release's numbers)
    residual: str = "fp32"  # the DiT's residual stream: "fp32" (the release's) or "dtype" (bf16: half the bytes)
    sequence_parallel: int = 1  # ranks one DiT forward is split over (1: off)
    camera_cache: bool | None = None  # reuse a window's conditioning across sampler steps (None: auto)
    context_cache: bool | str = False  # the clean tokens through the blocks once per chunk (an approximation); "auto"
    context_cache_refresh: int = 0  # with context_cache: recompute the clean tokens every r-th sampler step (0: never)
    text_offload: bool = False  # text encoder weights in host memory between encodings
    decode_segment: int = 4  # latents per VAE decoder call (the release's 4)
    compile_decoder: bool = False  # torch.compile the VAE decoder
    fp8_ffn_kernel: bool = False  # the FFNs' bias + GELU + FP8 quantisation in one Triton pass
    fp8_attention_kernel: bool = False  # the self-attentions' q/k norm + RoPE + FP8 in one Triton pass
    cuda_graphs: bool = False  # the compiled blocks as CUDA graphs (needs compile, CUDA)

    def __post_init__(self) -> None:
        _parse_device(self.device, "device")
        if self.text_device is not None:
            _parse_device(self.text_device, "text_device")
        if isinstance(self.dtype, str) and isinstance(getattr(torch, self.dtype, None), torch.dtype):
            object.__setattr__(self, "dtype", getattr(torch, self.dtype))  # "bfloat16" -> torch.bfloat16
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be None, 'fp8' (CUDA), 'int8' (CPU) or 'auto', got {self.quantize!r}")
        if self.self_attn_projections not in SELF_ATTN_PROJECTIONS:
            raise ValueError(
                f"self_attn_projections must be one of {SELF_ATTN_PROJECTIONS} ('dtype': in the runtime dtype, "
                f"fast; 'fp32': fp32 GEMMs as the release), got {self.self_attn_projections!r}"
            )
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if self.residual not in RESIDUAL:
            raise ValueError(
                f"residual must be one of {RESIDUAL} ('fp32': the release's residual stream; 'dtype': stored in the "
                f"runtime dtype), got {self.residual!r}"
            )
        if self.residual == "dtype" and self.dtype == torch.float32:
            raise ValueError(
                "residual='dtype' stores the residual stream in the runtime dtype, which is float32 here (the same as "
                "residual='fp32'): set dtype=torch.bfloat16 or leave residual='fp32'"
            )
        if self.quantize == "fp8" and self.dtype != torch.bfloat16:
            raise ValueError(f"quantize='fp8' computes in bfloat16: set dtype=torch.bfloat16 (got {self.dtype})")
        if self.quantize in ("fp8", "int8") and self.self_attn_projections == "fp32":
            raise ValueError(
                f"quantize={self.quantize!r} and self_attn_projections='fp32' contradict each other (8-bit vs fp32 GEMMs "
                "for the same layers): choose one"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.cuda_graphs and not self.compile:
            raise ValueError("cuda_graphs=True replays the compiled blocks as CUDA graphs: set compile=True too")
        if not isinstance(self.compile_decoder, bool):
            raise ValueError(f"compile_decoder must be True or False, got {self.compile_decoder!r}")
        if not isinstance(self.fp8_ffn_kernel, bool):
            raise ValueError(f"fp8_ffn_kernel must be True or False, got {self.fp8_ffn_kernel!r}")
        if self.fp8_ffn_kernel and self.quantize != "fp8":
            raise ValueError("fp8_ffn_kernel=True fuses the FFNs' FP8 input quantisation: set quantize='fp8' too")
        if not isinstance(self.fp8_attention_kernel, bool):
            raise ValueError(f"fp8_attention_kernel must be True or False, got {self.fp8_attention_kernel!r}")
        if self.fp8_attention_kernel and self.attention != "fa3_fp8":
            raise ValueError(
                "fp8_attention_kernel=True makes the FP8 inputs of the FlashAttention-3 FP8 kernel: set "
                f"attention='fa3_fp8' too (got {self.attention!r})"
            )
        whole(self.sequence_parallel, "sequence_parallel", 1, note="1: off")
        whole(self.decode_segment, "decode_segment", 1, note="latents per decoder call")
        if self.camera_cache is not None and not isinstance(self.camera_cache, bool):
            raise ValueError(f"camera_cache must be None (auto), True or False, got {self.camera_cache!r}")
        if not isinstance(self.context_cache, bool) and self.context_cache != "auto":
            raise ValueError(f"context_cache must be True, False or 'auto', got {self.context_cache!r}")
        whole(
            self.context_cache_refresh,
            "context_cache_refresh",
            note="0: the clean tokens at a window's first sampler step only",
        )
        if self.context_cache_refresh and self.context_cache is not True:
            raise ValueError(
                f"context_cache_refresh={self.context_cache_refresh} refreshes the context cache's kept tokens: set "
                "context_cache=True too"
            )
        if self.context_cache is True and (conflict := self.context_cache_conflict()):
            raise ValueError(f"context_cache=True {conflict}")
        if not isinstance(self.text_offload, bool):
            raise ValueError(f"text_offload must be True or False, got {self.text_offload!r}")
        if self.text_offload and torch.device(self.text_device or self.device).type == "cpu":
            raise ValueError(
                "text_offload=True keeps the text encoder in host memory between encodings, but it runs on "
                "the CPU here already: set text_offload=False (or text_device to a GPU)"
            )
        if self.sequence_parallel > 1 and self.fp8_attention_kernel:
            raise ValueError(
                "fp8_attention_kernel=True with sequence_parallel > 1 is not supported (the fused self-attention "
                "attends over one rank's tokens): choose one"
            )
        if self.sequence_parallel > 1 and self.compile:
            raise ValueError(
                "compile=True with sequence_parallel > 1 is not supported yet (the collectives would break "
                "the compiled graphs): choose one"
            )

    def context_cache_conflict(self) -> str | None:
        """Why the context cache cannot run with these options (the reason, completing "context_cache=True ..."),
        or None where it can: the one rule both ``__post_init__``'s refusal and :meth:`resolve_context_cache`
        follow."""
        if not self.uses_camera_cache:
            return (
                "keeps the clean tokens in the camera cache's scope: leave camera_cache on "
                f"(got camera_cache={self.camera_cache!r}, sequence_parallel={self.sequence_parallel})"
            )
        if self.sequence_parallel > 1:
            return (
                "with sequence_parallel > 1 is not supported (each rank holds a share of the tokens, not the clean "
                "ones): choose one"
            )
        if self.fp8_attention_kernel:
            return (
                "with fp8_attention_kernel=True is not supported (the fused self-attention does not attend to kept "
                "tokens): choose one"
            )
        return None

    @classmethod
    def for_device(cls, device: str | torch.device | None = None, **kw) -> RuntimeOptions:
        """Sensible defaults: bf16 on CUDA; on a CPU :func:`default_cpu_dtype` (bf16 where the CPU multiplies
        bf16 natively, else fp32), :func:`default_cpu_quantize` (``"auto"``: int8 GEMMs for int8-stored weights
        where the CPU has int8 dot products) and ``context_cache="auto"`` (on for a model whose sampler config
        names the refresh it was measured with: the embedded model; see :meth:`resolve_context_cache`)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(device)
        cpu = _parse_device(device, "device").type == "cpu"
        dtype = default_cpu_dtype() if cpu else torch.bfloat16
        quantize = default_cpu_quantize() if cpu else None
        if cpu and "context_cache" not in kw and not kw.get("context_cache_refresh"):
            kw["context_cache"] = "auto"  # on for a model measured with it (its sampler config says how)
        return cls(device=device, dtype=kw.pop("dtype", dtype), quantize=kw.pop("quantize", quantize), **kw)

    def resolve_context_cache(self, refresh: int | None) -> RuntimeOptions:
        """These options with ``context_cache="auto"`` resolved for a model whose sampler was measured with the
        context cache at ``refresh`` (``SamplerConfig.context_cache_refresh``; None: not measured): on, with that
        refresh, on a CPU where the cache can run (camera cache on, no sequence parallelism or fused FP8
        self-attention); else off. Other values are returned as they are."""
        if self.context_cache != "auto":
            return self
        cpu = torch.device(self.device).type == "cpu"
        on = refresh is not None and cpu and self.context_cache_conflict() is None
        return replace(self, context_cache=on, context_cache_refresh=refresh if on else 0)

    def resolve_quantize(self, int8_weights: bool) -> RuntimeOptions:
        """These options with ``quantize="auto"`` resolved for a model whose DiT weights are (``int8_weights``) or are
        not stored in int8: ``"int8"`` in fp32 on a CPU with :func:`cpu_int8_native` for int8-stored weights, else
        None. Other values are returned as they are."""
        if self.quantize != "auto":
            return self
        cpu = torch.device(self.device).type == "cpu"
        on = int8_weights and cpu and self.dtype == torch.float32 and cpu_int8_native()
        return replace(self, quantize="int8" if on else None)

    @property
    def uses_camera_cache(self) -> bool:
        """``camera_cache`` resolved: None means on unless sequence parallelism is."""
        return self.sequence_parallel == 1 if self.camera_cache is None else self.camera_cache

    @property
    def residual_dtype(self) -> torch.dtype | None:
        """The dtype for ``MatrixGameDiT.set_residual_dtype`` (None: fp32)."""
        return self.dtype if self.residual == "dtype" else None

    @property
    def self_attn_projection_dtype(self) -> torch.dtype | None:
        """The dtype for ``MatrixGameDiT.set_self_attn_projection_dtype`` (None: the weights')."""
        return torch.float32 if self.self_attn_projections == "fp32" else None


# the command lines' --context-cache choices -> RuntimeOptions.context_cache
CONTEXT_CACHE_CHOICES = {"auto": "auto", "on": True, "off": False}
CONTEXT_CACHE_HELP = (
    "the window's clean tokens through the DiT once per chunk (RuntimeOptions.context_cache, an approximation): "
    "auto (default) on for a model measured with it on a CPU (the embedded model, refreshed every 2nd step), on, off"
)

_CPU_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_CPU_QUANTIZE = {"none": None, "int8": "int8", "auto": "auto"}


def cpu_bf16_native(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 dot-product instructions (x86 ``avx512_bf16`` or ``amx_bf16``), read from the
    kernel's CPU flags; False where they cannot be read (not Linux). Without them oneDNN emulates bf16 GEMMs
    (not measured here: fp32 stays the default there)."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags(cpuinfo))


def _cpu_fields(cpuinfo: str | Path) -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``cpuinfo`` (Linux's /proc/cpuinfo); empty where it cannot be
    read."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block only
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_flags(cpuinfo: str | Path) -> set[str]:
    """The first processor's ``flags`` of ``cpuinfo``; empty where it cannot be read."""
    return set(_cpu_fields(cpuinfo).get("flags", "").split())


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """This CPU as benches record it: its model name with its family and model numbers from ``cpuinfo`` (a VM's
    name alone, e.g. "AMD EPYC", does not tell its generations apart: family 25 is Zen 3/4, 26 Zen 5); where that
    cannot be read, ``platform.processor()`` or "cpu"."""
    fields = _cpu_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or "cpu"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_int8_native(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has int8 dot-product instructions (x86 ``avx512_vnni``, ``avx_vnni`` or ``amx_int8``), read
    from the flags of ``cpuinfo`` (False where there is none, e.g. not Linux: ``torch._int_mm`` is then not
    known to be fast)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags(cpuinfo))


_CPU_MALLOC = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_kept_freed_memory = False


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Make glibc's malloc serve blocks of up to ``limit`` bytes from its heap and keep up to ``limit`` bytes of freed
    heap instead of returning it to the system; process-wide, once; returns whether it is in effect (False where
    the C library is not glibc).

    Why: by default a block over 32 MB (a 40-frame activation of the decoder is 55 MB) is mapped fresh for every
    tensor and unmapped when freed, so every such temporary pays a page fault per 4 KB page the first time it is
    touched, and on a CPU those faults cost more than the arithmetic (two elementwise ops on 13.8M floats: 32 ms
    with the faults, 3.5 without). Measured on the 2-core VM (session 33, 8 chunks of the embedded model through
    the env): minor faults 590-630k -> 200-210k, a chunk 1.31-1.40 -> 1.24-1.37 s in fp32 with int8 and 1.43 ->
    1.25 s in bf16; peak resident memory 892-900 -> 910-940 MB, which the process then keeps. Best effort: where the
    heap cannot grow in place (a long-lived process's address space, e.g. a whole test session's, and at times a
    fresh one's, by where its libraries happen to be mapped), glibc still maps some large blocks afresh."""
    global _kept_freed_memory
    if _kept_freed_memory:
        return True
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)) == 1
    except (OSError, AttributeError):
        return False
    _kept_freed_memory = ok
    return ok


def default_cpu_malloc() -> str:
    """How a model on the CPU leaves the C library's allocator: ``$MG3_CPU_MALLOC`` when set, else ``"keep"``
    (:func:`keep_freed_memory`); ``"system"`` leaves malloc as the process has it."""
    name = os.environ.get("MG3_CPU_MALLOC", "keep")
    if name not in _CPU_MALLOC:
        raise ValueError(f"MG3_CPU_MALLOC must be one of {list(_CPU_MALLOC)}, got {name!r}")
    return name


def apply_process_runtime(runtime: RuntimeOptions) -> None:
    """What a model's runtime sets for the whole process: on the CPU, malloc keeping freed memory
    (:func:`keep_freed_memory`) unless ``$MG3_CPU_MALLOC=system``."""
    if torch.device(runtime.device).type == "cpu" and default_cpu_malloc() == "keep":
        keep_freed_memory()


def default_cpu_quantize() -> str | None:
    """The ``quantize`` a model runs with on the CPU by default: ``$MG3_CPU_QUANTIZE`` (``none``, ``int8`` or
    ``auto``) when set, else ``"auto"`` (see :class:`RuntimeOptions`)."""
    name = os.environ.get("MG3_CPU_QUANTIZE", "auto")
    if name not in _CPU_QUANTIZE:
        raise ValueError(f"MG3_CPU_QUANTIZE must be one of {sorted(_CPU_QUANTIZE)}, got {name!r}")
    return _CPU_QUANTIZE[name]


def default_cpu_dtype() -> torch.dtype:
    """The dtype a model runs in on the CPU by default: ``$MG3_CPU_DTYPE`` (``float32`` or ``bfloat16``) when
    set, else bf16 where :func:`cpu_bf16_native`, else fp32. bf16 follows the release's mixed precision as on a
    GPU (modulation, norms, gated adds and the head in fp32; the linears, attention and the VAE in bf16).
    Measured on the 2-core test VM (AMD EPYC, avx512_bf16; session 20, idle, 2 threads): the embedded model's
    chunk 1.63-1.68 s in bf16 against 2.51-2.72 in fp32 (the DiT 1.45-1.49 against 2.23-2.41, the decoder 0.15-0.17
    against 0.25-0.28; ``bench/embedded_speed.py --dtype both``), its frames 50-56 dB PSNR from fp32's over four
    chunks, the same sharpness."""
    name = os.environ.get("MG3_CPU_DTYPE")
    if name is not None:
        if name not in _CPU_DTYPES:
            raise ValueError(f"MG3_CPU_DTYPE must be one of {sorted(_CPU_DTYPES)}, got {name!r}")
        return _CPU_DTYPES[name]
    return torch.bfloat16 if cpu_bf16_native() else torch.float32


def _experts(dit: nn.Module) -> list[nn.Module]:
    """The MatrixGameDiTs of a DiT: itself, or the two experts of a MoEDiT."""
    from world_model.dit import MatrixGameDiT
    from world_model.moe import MoEDiT

    if isinstance(dit, MatrixGameDiT):
        return [dit]
    if isinstance(dit, MoEDiT):
        return [dit.high_noise, dit.low_noise]
    raise TypeError(f"expected a MatrixGameDiT or MoEDiT, got {type(dit).__name__}")


def _parse_device(value: object, name: str) -> torch.device:
    """``value`` as a torch device; a string torch cannot read (``"gpu"``) or another type raises ValueError."""
    if not isinstance(value, (str, torch.device)):
        raise ValueError(f"{name} must be a device name like 'cpu', 'cuda' or 'cuda:1', got {value!r}")
    try:
        return torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must be a device name like 'cpu', 'cuda' or 'cuda:1', got {value!r}") from None


def checked_device(name: str | torch.device, what: str = "device") -> torch.device:
    """One checked device: ``cpu`` or ``cuda:N`` with N an existing GPU (``cuda`` -> the current one); ``what``
    names it in the error."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown {what} {name!r}: expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"{what} {name!r}: expected 'cpu', 'cuda' or 'cuda:N', got device type {dev.type!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"{what} {name!r}: CUDA is not available on this machine (0 CUDA devices); use 'cpu'")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= count:
        raise ValueError(f"{what} {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def check_runtime(runtime: RuntimeOptions) -> None:
    """Raise ValueError, saying what to do, when an option cannot work on the runtime's device or setup
    (loaders call it before loading weights)."""
    from world_model.attention import check_attention_backend
    from world_model.quant import fp8_supported, int8_supported

    if not isinstance(runtime, RuntimeOptions):
        raise TypeError(
            f"runtime must be a RuntimeOptions (e.g. RuntimeOptions.for_device('cpu')), got {type(runtime).__name__}"
        )
    device = torch.device(runtime.device)
    if device.type == "cpu":
        default_cpu_malloc()  # a bad $MG3_CPU_MALLOC raises before any weights are read
    check_attention_backend(runtime.attention, device, runtime.dtype)
    if runtime.quantize == "fp8" and (reason := fp8_supported(device)):
        raise ValueError(f"quantize='fp8': {reason}; use quantize=None on this device")
    if runtime.quantize == "int8" and (reason := int8_supported(device)):
        raise ValueError(f"quantize='int8': {reason}; use quantize='fp8' or None on this device")
    if runtime.quantize == "int8" and runtime.compile_decoder:
        raise ValueError(
            "quantize='int8' runs the VAE decoder's convolutions in int8, eagerly, and compile_decoder=True would "
            "compile its float ones: set one of them"
        )
    from world_model.fp8_rows import triton_available

    for option in ("fp8_ffn_kernel", "fp8_attention_kernel"):
        if getattr(runtime, option) and not triton_available():
            raise ValueError(
                f"{option}=True needs Triton and a CUDA GPU (CUDA builds of torch ship it); or set it False"
            )
    if runtime.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device (got {runtime.device!r}); or set cuda_graphs=False")
    for option in ("compile", "compile_decoder"):
        if not getattr(runtime, option):
            continue
        if device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                raise ValueError(f"{option}=True on a GPU needs triton (pip install triton); or set {option}=False")
        elif not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise ValueError(
                f"{option}=True on a CPU needs a C++ compiler for torch.compile (install g++); or set {option}=False"
            )
    if runtime.sequence_parallel > 1:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                f"sequence_parallel={runtime.sequence_parallel} needs torch.distributed: launch "
                f"{runtime.sequence_parallel} processes (torchrun --nproc_per_node {runtime.sequence_parallel}) and "
                "call torch.distributed.init_process_group first; or set sequence_parallel=1"
            )
        if dist.get_world_size() != runtime.sequence_parallel:
            raise ValueError(
                f"sequence_parallel={runtime.sequence_parallel} splits over the world group, which has "
                f"{dist.get_world_size()} processes: launch that many, or set sequence_parallel to the world size"
            )
    # last, so that the options' own advice comes first; other device types are left as they were
    for what, name in (("device", runtime.device), ("text_device", runtime.text_device)):
        if name is not None and torch.device(name).type == "cuda":
            checked_device(name, what)


@functools.cache
def compiled_camera_modulation():
    """``DiTBlock.camera_modulation`` compiled, one function for every block (the blocks' parameters
    are its inputs: one graph for all of them)."""
    from world_model.dit import DiTBlock

    return torch.compile(DiTBlock.camera_modulation)


def compile_blocks(dit: nn.Module, cuda_graphs: bool = False) -> None:
    """``torch.compile`` every block of the DiT in place (parameter names unchanged); compiling a
    copy again rebinds it to the copy's own weights. The camera modulation that a cached window
    computes outside the blocks' forwards (``MatrixGameDiT.camera_modulation_fn``) is compiled too:
    eager, its FP8 activation quantisation and bias adds took ~95 ms of a 5B chunk's 1.35 s on the
    H200 (session 15's profile: 120 eager quantisations of [17600, 3072] activations per chunk).

    ``cuda_graphs``: the blocks in "reduce-overhead" mode (CUDA graphs, see :class:`RuntimeOptions`), and a
    forward pre-hook on each DiT that begins a new graph step at every forward.

    Every block shares one code object (``DiTBlock.forward``), and dynamo's recompile limit (8 by default) counts
    the graphs of all of them together: a kind of block (with or without an action module, 8-bit or not) times the
    window's variants (chunk 0, the windows whose memory still grows, steady; with the context cache each one's
    recording and cached steps). Past the limit a new variant runs eagerly for good, without a word in the output
    but a log line: the 5B env with the context cache ran its later steps so (session 44, H100: DiT 1.57 s a chunk
    against 1.04 without the cache). The limit is raised, process-wide and never lowered, to
    :data:`GRAPHS_PER_BLOCK_KIND` graphs for each kind of block."""
    _raise_recompile_limit(GRAPHS_PER_BLOCK_KIND * len({_block_kind(b) for e in _experts(dit) for b in e.blocks}))
    for expert in _experts(dit):
        for block in expert.blocks:
            block.compile(mode="reduce-overhead" if cuda_graphs else None)
        expert.camera_modulation_fn = compiled_camera_modulation()
        if cuda_graphs and not begins_graph_steps(expert):
            expert.register_forward_pre_hook(_begin_graph_step)


GRAPHS_PER_BLOCK_KIND = 16
"""How many compiled graphs of ``DiTBlock.forward`` :func:`compile_blocks` makes room for per kind of block (a tiny
env with the context cache compiles 4 per kind; dynamo's default limit is 8 in all)."""


def _block_kind(block: nn.Module) -> tuple:
    """What makes dynamo compile a block's forward apart from another's: its modules' names and types."""
    return tuple((name, type(m).__name__) for name, m in block.named_modules())


def _recompile_limit_name():
    """Dynamo's config module and the name of its recompile limit per code object (``cache_size_limit`` before
    torch renamed it)."""
    import torch._dynamo.config as dynamo_config

    return dynamo_config, "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"


def recompile_limit() -> int:
    """Dynamo's recompile limit per code object, as :func:`compile_blocks` leaves it."""
    config, name = _recompile_limit_name()
    return getattr(config, name)


def _raise_recompile_limit(limit: int) -> None:
    """Dynamo's recompile limit per code object raised to ``limit`` (never lowered)."""
    config, name = _recompile_limit_name()
    setattr(config, name, max(getattr(config, name), limit))


def begins_graph_steps(dit: nn.Module) -> bool:
    """Whether every forward of ``dit`` (a MatrixGameDiT or a MoEDiT's experts) begins a CUDA-graph step
    (:func:`compile_blocks` with ``cuda_graphs``)."""
    return all(any(h is _begin_graph_step for h in e._forward_pre_hooks.values()) for e in _experts(dit))


def _begin_graph_step(module: nn.Module, args) -> None:
    """A DiT forward is one step of the CUDA graphs of its compiled blocks: the previous forward's block
    outputs (consumed by then) may be overwritten."""
    torch.compiler.cudagraph_mark_step_begin()


def bound_qk_inputs(dit: nn.Module) -> int:
    """Tell every attention layer of ``dit`` whose q and k are RMS-normalised (the DiT's self- and
    cross-attention with qk_norm) which norms those are: its FP8 attention then takes their scales from
    the norms' weights (``AttentionKernel.qk_rms_weights``) instead of a reduction over q and k at every
    call (session 15's profile: 50 ms of a 5B chunk's 1.35 s on the H200). Returns how many."""
    from world_model.attention import bound_qk_by_rms_norms
    from world_model.dit import QKVAttention, RMSNorm

    layers = [
        m
        for m in dit.modules()
        if isinstance(m, QKVAttention) and isinstance(m.norm_q, RMSNorm) and isinstance(m.norm_k, RMSNorm)
    ]
    for m in layers:
        bound_qk_by_rms_norms(m.attn, m.norm_q, m.norm_k)
    return len(layers)


def compile_decoder(vae: nn.Module) -> None:
    """``torch.compile`` the VAE's decoder in place, once (parameter names unchanged)."""
    if getattr(vae.decoder, "_compiled_call_impl", None) is None:
        vae.decoder.compile()


def apply_vae_runtime(vae: nn.Module, runtime: RuntimeOptions) -> nn.Module:
    """Apply ``runtime`` to a built VAE in place (idempotent, so every copy of a model may call it); returns it.
    ``quantize="int8"``: the decoder's convolutions in int8 (:func:`world_model.quant.quantize_convs`);
    ``compile_decoder``: the decoder compiled (:func:`compile_decoder`)."""
    from world_model.quant import quantize_convs

    if runtime.quantize == "int8":
        quantize_convs(vae.decoder)
    if runtime.compile_decoder:
        compile_decoder(vae)
    return vae


def apply_runtime(dit: nn.Module, runtime: RuntimeOptions) -> nn.Module:
    """Apply ``runtime`` to a built DiT (a MatrixGameDiT or a MoEDiT) in place, once; returns it.

    Expects the DiT on ``runtime.device`` in ``runtime.dtype``. Checks every option first (see
    :class:`RuntimeOptions`), so a refused option leaves the model untouched. ``quantize="auto"`` quantises
    nothing here (the DiT's storage is not known): the loaders resolve it first (:meth:`RuntimeOptions.resolve_quantize`).
    """
    from world_model.attention import set_attention_backend
    from world_model.fp8_attention import fuse_fp8_self_attention
    from world_model.parallel import apply_sequence_parallel
    from world_model.quant import fuse_ffn_activations, quantize_linears

    experts = _experts(dit)
    check_runtime(runtime)
    for expert in experts:
        expert.set_self_attn_projection_dtype(runtime.self_attn_projection_dtype)
        expert.set_residual_dtype(runtime.residual_dtype)
        expert.camera_cache = runtime.uses_camera_cache
        expert.context_cache = runtime.context_cache is True  # "auto" unresolved (the model's sampler not known): off
        set_attention_backend(expert, runtime.attention)
        if runtime.attention == "fa3_fp8":
            bound_qk_inputs(expert)
        if runtime.quantize in ("fp8", "int8"):  # "auto" unresolved (weights not known to be int8): off
            quantize_linears(expert, runtime.quantize)
            if runtime.fp8_ffn_kernel:
                fuse_ffn_activations(expert)
        if runtime.fp8_attention_kernel:
            fuse_fp8_self_attention(expert)
        if runtime.sequence_parallel > 1:
            apply_sequence_parallel(expert)
    if runtime.compile:
        compile_blocks(dit, cuda_graphs=runtime.cuda_graphs)
    return dit
