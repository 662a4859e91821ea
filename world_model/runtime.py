"""Runtime options: how to run a model, never saved with its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RuntimeOptions", "ATTENTION_BACKENDS"]

ATTENTION_BACKENDS = ("auto", "sdpa", "math", "flash", "efficient", "cudnn", "flash_attn")


@dataclass(frozen=True)
class RuntimeOptions:
    """Device, dtype and kernel choices for inference.

    ``attention``: ``auto`` uses flash-attn when installed and on CUDA, else torch SDPA with its own
    dispatch; ``sdpa`` lets torch choose; ``math``/``flash``/``efficient``/``cudnn`` pin one SDPA
    backend; ``flash_attn`` requires the flash-attn package.
    ``quantize``: ``None`` or ``"int8"`` (attention projections, spec §9), applied from outside.
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    attention: str = "auto"
    quantize: str | None = None
    compile: bool = False
    text_device: str | None = None  # where the text encoder runs (None: same as device)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {self.quantize!r}")
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
