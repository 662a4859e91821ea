"""One attention function for the whole package, with backend dispatch.

Layout everywhere: q [B, Lq, N, D], k/v [B, Lk, N, D] (B batch, L tokens, N heads, D head dim).
``k_lens`` ([B] ints) masks padded keys: key j of batch b is attended only when j < k_lens[b].
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["attend", "flash_attn_available", "set_default_backend", "default_backend"]

_SDPA_BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

_default_backend = "auto"


def set_default_backend(name: str) -> None:
    """Set the backend used when ``attend`` is called without one (see RuntimeOptions.attention)."""
    global _default_backend
    if name not in ("auto", "sdpa", "flash_attn", *_SDPA_BACKENDS):
        raise ValueError(f"unknown attention backend {name!r}")
    _default_backend = name


def default_backend() -> str:
    return _default_backend


@functools.cache
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _key_mask(k_lens: torch.Tensor, lk: int, device: torch.device) -> torch.Tensor:
    """Boolean mask [B, 1, 1, Lk]: True where a key is attended."""
    ar = torch.arange(lk, device=device)
    return (ar[None, :] < k_lens.to(device)[:, None])[:, None, None, :]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention (non-causal). Returns [B, Lq, N, D] in q's dtype."""
    backend = backend or _default_backend
    if (
        backend in ("auto", "flash_attn")
        and q.is_cuda
        and k_lens is None
        and q.dtype in (torch.float16, torch.bfloat16)
    ):
        if flash_attn_available():
            from flash_attn import flash_attn_func

            return flash_attn_func(q, k, v)
        if backend == "flash_attn":
            raise RuntimeError("attention backend 'flash_attn' needs the flash-attn package: pip install flash-attn")
    mask = None if k_lens is None else _key_mask(k_lens, k.shape[1], q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, L, D]
    ctx = sdpa_kernel(_SDPA_BACKENDS[backend]) if backend in _SDPA_BACKENDS else contextlib.nullcontext()
    with ctx:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return out.transpose(1, 2)
