"""Runtime options: how to run a model, never saved with its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RuntimeOptions", "ATTENTION_BACKENDS", "SELF_ATTN_PROJECTIONS"]

ATTENTION_BACKENDS = ("auto", "sdpa", "math", "flash", "efficient", "cudnn", "flash_attn")
SELF_ATTN_PROJECTIONS = ("dtype", "fp32")


@dataclass(frozen=True)
class RuntimeOptions:
    """Device, dtype and kernel choices for inference.

    ``attention``: ``auto`` uses flash-attn when installed and on CUDA, else torch SDPA with its own
    dispatch; ``sdpa`` lets torch choose; ``math``/``flash``/``efficient``/``cudnn`` pin one SDPA
    backend; ``flash_attn`` requires the flash-attn package.
    ``quantize``: ``None`` or ``"int8"`` (attention projections, spec §9), applied from outside.
    ``self_attn_projections``: the precision of each DiT block's self-attention q/k/v/o linears.
    ``"dtype"`` (default) runs them in ``dtype`` like every other linear: bf16 GEMMs on a GPU, the
    fast path. ``"fp32"`` runs them as full-fp32 GEMMs on the weights cast up, exactly as the
    release's bf16 inference does (spec §15.6), for users who need the release's numbers; it costs
    the release's speed (on one H200 at 5B shapes the release's fp32 GEMMs took 0.84 s of each
    4.74 s chunk). fp32 GEMMs follow torch's float32 matmul precision, "highest" (no TF32) unless
    the program changed it, as in the release. With ``dtype=float32`` both choices are the same.
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attention: str = "auto"
    quantize: str | None = None
    compile: bool = False
    text_device: str | None = None  # where the text encoder runs (None: same as device)
    self_attn_projections: str = "dtype"  # "dtype" (fast) or "fp32" (the release's numbers)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {self.quantize!r}")
        if self.self_attn_projections not in SELF_ATTN_PROJECTIONS:
            raise ValueError(
                f"self_attn_projections must be one of {SELF_ATTN_PROJECTIONS} ('dtype': in the runtime dtype, "
                f"fast; 'fp32': fp32 GEMMs as the release), got {self.self_attn_projections!r}"
            )
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")

    @classmethod
    def for_device(cls, device: str | torch.device | None = None, **kw) -> RuntimeOptions:
        """Sensible defaults: bf16 on CUDA, fp32 on CPU."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(device)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return cls(device=device, dtype=kw.pop("dtype", dtype), **kw)

    @property
    def self_attn_projection_dtype(self) -> torch.dtype | None:
        """The dtype for ``MatrixGameDiT.set_self_attn_projection_dtype`` (None: the weights')."""
        return torch.float32 if self.self_attn_projections == "fp32" else None
