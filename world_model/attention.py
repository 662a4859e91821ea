"""One attention function for the whole package, and the module that carries each layer's backend.

Layout everywhere: q [B, Lq, N, D], k/v [B, Lk, N, D] (B batch, L tokens, N heads, D head dim).
``k_lens`` ([B] ints) masks padded keys: key j of batch b is attended only when j < k_lens[b].

Every attention layer of the models calls its own :class:`AttentionKernel` submodule (no
parameters, so no checkpoint keys); the backend is recorded there, per module, and set from the
runtime options by :func:`set_attention_backend` (``world_model.runtime.apply_runtime``). There is
no module-global backend. Sequence parallelism replaces a layer's kernel module with one that
attends over the tokens of all ranks (``world_model.parallel``).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "BACKENDS",
    "AttentionKernel",
    "attend",
    "attend_fp8",
    "attention_backends",
    "bound_qk_by_rms_norms",
    "check_attention_backend",
    "fa3_available",
    "flash_attn_available",
    "fp8_heads",
    "head_amax",
    "head_scales",
    "rms_head_bounds",
    "set_attention_backend",
]

_SDPA_BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
# auto: flash-attn when installed (CUDA, half precision, no key mask); on a CPU in bf16 the gemm path below (while its
# scores fit 256 MB); else SDPA's own dispatch;
# sdpa: SDPA's own dispatch; math/flash/efficient/cudnn: one SDPA backend pinned; flash_attn: the package;
# fa3 / fa3_fp8: the FlashAttention-3 forward kernel (the fa3-fwd package, Hopper) in bf16 / in FP8 e4m3
# with one scale per batch element and head (fp8_heads).
# gemm: the scores and the weighted sum as two batched GEMMs in the inputs' dtype with a softmax between (the
# scores rounded to that dtype; on a CPU in bf16 2.3x torch's flash kernel, see _gemm_attention).
BACKENDS = ("auto", "sdpa", *_SDPA_BACKENDS, "gemm", "flash_attn", "fa3", "fa3_fp8")
_FA3 = ("fa3", "fa3_fp8")
_CUDA_ONLY = ("efficient", "cudnn", "flash_attn", *_FA3)  # SDPA on a CPU has the math and flash kernels only
_E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


def _check_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")


@functools.cache
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def fa3_available() -> bool:
    """Whether the FlashAttention-3 forward kernel (the ``fa3-fwd`` wheel: ``fa3_fwd_interface``) imports."""
    try:
        import fa3_fwd_interface  # noqa: F401
    except (ImportError, OSError):  # OSError: its CUDA library does not load here
        return False
    return True


def check_attention_backend(backend: str, device: str | torch.device, dtype: torch.dtype) -> None:
    """Raise ValueError, saying what to do, when ``backend`` cannot run on ``device`` in ``dtype``."""
    _check_name(backend)
    device = torch.device(device)
    if backend in _CUDA_ONLY and device.type != "cuda":
        raise ValueError(
            f"attention backend {backend!r} needs a CUDA device, got {device.type!r}; "
            "on this device use 'auto', 'sdpa', 'math', 'flash' or 'gemm'"
        )
    if backend == "flash_attn":
        if not flash_attn_available():
            raise ValueError(
                "attention backend 'flash_attn' needs the flash-attn package (pip install flash-attn); "
                "or use 'auto' (torch SDPA picks its fastest kernel, cuDNN on Hopper)"
            )
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"attention backend 'flash_attn' runs in float16 or bfloat16, got {dtype}; or use 'auto'")
    if backend in _FA3:
        if not fa3_available():
            raise ValueError(
                f"attention backend {backend!r} needs the FlashAttention-3 forward kernel (pip install fa3-fwd, "
                "a Hopper GPU); or use 'cudnn'"
            )
        if dtype != torch.bfloat16:
            raise ValueError(f"attention backend {backend!r} runs in bfloat16, got {dtype}; or use 'cudnn'")


def _key_mask(k_lens: torch.Tensor, lk: int, device: torch.device) -> torch.Tensor:
    """Boolean mask [B, 1, 1, Lk]: True where a key is attended."""
    ar = torch.arange(lk, device=device)
    return (ar[None, :] < k_lens.to(device)[:, None])[:, None, None, :]


def head_amax(t: torch.Tensor) -> torch.Tensor:
    """[B, N] fp32: the largest magnitude of each batch element's head of ``t`` [B, L, N, D], reduced over each
    token's head features (contiguous) first and over the tokens after: the same values as one reduction over both
    (a maximum is exact in any order), and a reduction that compiled code runs at the copy rate, where the strided
    one over both took 0.19 ms a call at the 5B shape (session 17's profile: 17 ms a chunk, ~0.4 TB/s)."""
    return torch.maximum(t.amax(dim=3).amax(dim=1), -t.amin(dim=3).amin(dim=1)).float()


def head_scales(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 (any shape): the FP8 scale mapping each head's largest magnitude ``amax`` (measured, or a bound) to
    e4m3's 448, or 1 where it is 0, rounded to ``dtype`` (the activations' dtype, which multiplies by it); its
    reciprocal is the head's descale."""
    a = amax.float()
    return torch.where(a > 0, _E4M3_MAX / a, torch.ones_like(a)).to(dtype).float()


def fp8_heads(t: torch.Tensor, bound: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [B, L, N, D] as FP8 e4m3 with one scale per batch element and head: returns ``(t8, descale)``,
    ``t8`` [B, L, N, D] float8_e4m3fn and ``descale`` [B, N] float32 such that ``t8 * descale`` ~ ``t``
    (each head's largest magnitude maps to e4m3's largest finite value, 448; an all-zero head keeps scale 1).
    ``bound`` [N]: a known bound of each head's magnitudes (:func:`rms_head_bounds`) mapped to 448 instead
    of the measured one, which saves a reduction over all of ``t``; values past it are clamped."""
    # without an |t| or float32 copy of t (the eager path reads t three times and writes it twice; compiled
    # code fuses it all): the scale is rounded to t's dtype first and the descale is its exact reciprocal
    if bound is None:
        amax = head_amax(t)  # [B, N]
    else:
        amax = bound.float()[None, :].expand(t.shape[0], -1)
    scale = head_scales(amax, t.dtype)
    t8 = (t * scale.to(t.dtype)[:, None, :, None]).clamp_(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)
    return t8, 1.0 / scale


def rms_head_bounds(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[num_heads]: a bound of |x| per head for x an RMSNorm's output with ``weight`` [N * D] over all N * D
    features, rotated in pairs (RoPE) or not. Each feature of a normalised row is at most sqrt(N * D) in
    magnitude (x_i^2 <= sum_j x_j^2 = N * D * rms^2; the norm's eps only lowers it), a rotated pair's
    features at most sqrt(N * D) times the larger of the pair's weights; 2 % over for the roundings of a
    bfloat16 norm. Used by the FP8 attention for q and k (:attr:`AttentionKernel.qk_rms_weights`): e4m3 keeps
    its relative precision from 2^-6 to 448, so a bound ~50x the typical magnitude loses nothing that counts."""
    w = weight.detach().float().abs().view(num_heads, -1)
    return (weight.numel() ** 0.5 * 1.02) * w.amax(dim=-1)


def _fa3(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fp8: bool,
    qk_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    from fa3_fwd_interface import flash_attn_func

    if not fp8:
        return flash_attn_func(q, k, v)
    qb, kb = qk_bounds or (None, None)
    (q8, qd), (k8, kd), (v8, vd) = fp8_heads(q, qb), fp8_heads(k, kb), fp8_heads(v)
    return attend_fp8(q8, k8, v8, qd, kd, vd, out_dtype=q.dtype)


def attend_fp8(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Attention of FP8 e4m3 inputs [B, L, N, D] that stand for ``t8 * descale`` ([B, N] fp32 each, as
    :func:`fp8_heads` makes them), softmax scale 1/sqrt(D): the FlashAttention-3 kernel on CUDA; elsewhere the
    dequantised inputs through torch's math attention in fp32 (a reference for tests). Returns [B, Lq, N, D]
    in ``out_dtype``."""
    scale = q8.shape[-1] ** -0.5  # of the dequantised inputs: the descales bring q and k back before the softmax
    if q8.is_cuda:
        from fa3_fwd_interface import flash_attn_func

        out = flash_attn_func(
            q8, k8, v8, softmax_scale=scale, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale
        )
        return out.to(out_dtype)
    q, k, v = (t.float() * d.float()[:, None, :, None] for t, d in ((q8, q_descale), (k8, k_descale), (v8, v_descale)))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2).to(out_dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | None = None,
    backend: str = "auto",
    qk_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention (non-causal). Returns [B, Lq, N, D] in q's dtype. ``qk_bounds``
    ([N] each, backend 'fa3_fp8' only): known bounds of q's and k's magnitudes per head (see fp8_heads)."""
    half = q.dtype in (torch.float16, torch.bfloat16)
    if qk_bounds is not None and backend != "fa3_fp8":
        raise ValueError(f"qk_bounds scale FP8 attention inputs: backend 'fa3_fp8' only, got {backend!r}")
    if backend in _FA3:
        if not (q.is_cuda and q.dtype == torch.bfloat16 and k_lens is None):
            raise ValueError(
                f"attention backend {backend!r} takes CUDA bfloat16 inputs without a key mask; got device "
                f"{q.device.type}, {q.dtype}, key mask {k_lens is not None}: use 'auto' here"
            )
        return _fa3(q, k, v, fp8=backend == "fa3_fp8", qk_bounds=qk_bounds)
    if backend == "flash_attn" and not (q.is_cuda and half and k_lens is None):
        raise ValueError(
            "attention backend 'flash_attn' takes CUDA half-precision inputs without a key mask; "
            f"got device {q.device.type}, {q.dtype}, key mask {k_lens is not None}: use 'auto' here"
        )
    if backend in ("auto", "flash_attn") and q.is_cuda and k_lens is None and half:
        if flash_attn_available():
            from flash_attn import flash_attn_func

            return flash_attn_func(q, k, v)
        if backend == "flash_attn":
            raise RuntimeError("attention backend 'flash_attn' needs the flash-attn package: pip install flash-attn")
    mask = None if k_lens is None else _key_mask(k_lens, k.shape[1], q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, L, D]
    if backend == "gemm" or (backend == "auto" and _gemm_by_default(q, k)):
        return _gemm_attention(qt, kt, vt, mask).transpose(1, 2)
    ctx = sdpa_kernel(_SDPA_BACKENDS[backend]) if backend in _SDPA_BACKENDS else contextlib.nullcontext()
    with ctx:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return out.transpose(1, 2)


_AUTO_GEMM_MAX_SCORE_BYTES = 1 << 28  # the largest score tensor 'auto' makes for the two-GEMM path (256 MB)


def _gemm_by_default(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether 'auto' takes the two-GEMM attention: on a CPU in bf16 (2.3x SDPA's flash kernel there, the embedded
    model's frames as close to fp32's: session 33), while its scores [B, N, Lq, Lk] stay within 256 MB."""
    b, lq, n, _ = q.shape
    small = b * n * lq * k.shape[1] * q.element_size() <= _AUTO_GEMM_MAX_SCORE_BYTES
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and small


def _gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for [B, N, L, D] inputs as two batched GEMMs in their dtype (the scores rounded to
    it: in bf16 a relative error of 4e-3 against fp32 for scores of std 1, 1.4e-2 for std 9, where SDPA's flash
    kernel, which keeps them in fp32, gives 2e-3). On the 2-core VM (session 33; 5 heads of 64, 1,216 queries and
    keys) 4.8 ms in bf16 against the CPU flash kernel's 11.2 (fp32: 15.7 against 12.6, so it is no gain there)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class AttentionKernel(nn.Module):
    """The attention operation of one layer: :func:`attend` with this module's ``backend``.

    ``forward(q, k, v, k_lens=None)`` with the layout of the module docstring. No parameters.

    ``qk_rms_weights``: None, or the weights (q's, k's) of the RMSNorms that q and k come out of (over
    all heads' features, rotated by RoPE or not after it), set by :func:`bound_qk_by_rms_norms`. With
    backend 'fa3_fp8' their FP8 scales then come from those weights (:func:`rms_head_bounds`) instead of
    a reduction over q and k at every call. References to the norms' parameters, not copies: always the
    current weights.
    """

    qk_rms_weights: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        _check_name(backend)
        self.backend = backend

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        bounds = self.qk_bounds(q.shape[2])
        if bounds is not None:
            return attend(q, k, v, k_lens=k_lens, backend=self.backend, qk_bounds=bounds)
        return attend(q, k, v, k_lens=k_lens, backend=self.backend)

    def qk_bounds(self, num_heads: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """([num_heads], [num_heads]) bounds of |q| and |k| per head from :attr:`qk_rms_weights` where the
        backend takes them ('fa3_fp8'), else None."""
        if self.backend != "fa3_fp8" or self.qk_rms_weights is None:
            return None
        q_w, k_w = self.qk_rms_weights
        return rms_head_bounds(q_w, num_heads), rms_head_bounds(k_w, num_heads)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def set_attention_backend(model: nn.Module, backend: str) -> int:
    """Record ``backend`` on every :class:`AttentionKernel` of ``model`` (subclasses included, such
    as the sequence-parallel one); returns how many. Raises if ``model`` has none."""
    _check_name(backend)
    kernels = [m for m in model.modules() if isinstance(m, AttentionKernel)]
    if not kernels:
        raise ValueError(f"{type(model).__name__} has no attention modules to set a backend on")
    for kernel in kernels:
        kernel.backend = backend
    return len(kernels)


def bound_qk_by_rms_norms(kernel: AttentionKernel, q_norm: nn.Module, k_norm: nn.Module) -> None:
    """Record on ``kernel`` that its q and k are the outputs of the RMSNorms ``q_norm`` and ``k_norm``
    (modules with a ``weight`` over all heads' features), rotated in pairs or not, and nothing else:
    its FP8 attention then scales them by the bounds those weights give. The caller vouches for that."""
    kernel.qk_rms_weights = (q_norm.weight, k_norm.weight)


def attention_backends(model: nn.Module) -> dict[str, str]:
    """{module name: backend} of every :class:`AttentionKernel` of ``model``."""
    return {name: m.backend for name, m in model.named_modules() if isinstance(m, AttentionKernel)}
