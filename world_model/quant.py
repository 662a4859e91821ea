"""8-bit linear layers, applied to a built model from outside (the model files know nothing of them).

``quantize="fp8"`` (``RuntimeOptions``) replaces chosen ``nn.Linear`` layers with
:class:`Float8Linear`: FP8 e4m3 weights scaled per output channel (computed once, from the
weights), activations quantised per token (row) at each call, one ``torch._scaled_mm`` GEMM with
row-wise scales and fp32 accumulation (fast accumulation), bf16 output, bias added after.

Why FP8 and not INT8: on Hopper ``torch._int_mm`` ran no faster than the bf16 GEMM (557-772 TOP/s
against 763-783 TFLOP/s at the 5B DiT's shapes), while row-wise FP8 ``_scaled_mm`` ran 1,357-1,429
TFLOP/s (reference/ecosystem.md). The GEMM needs compute capability 8.9 or newer (Ada, Hopper).
One FP8 GEMM's relative error is about 4e-2 (bf16: 2e-3), so which layers to quantise is a choice:
:func:`default_fp8_layers` takes the DiT blocks' attention, FFN and camera linears and leaves the
embeddings, the head and the action modules in bf16.

Off CUDA, :class:`Float8Linear` computes the same quantised product in fp32 (values and scales of
the GEMM, dequantised): a reference for tests, slower than the float layer, so the runtime option
refuses CPUs rather than running it there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.fp8_rows import FP8, FP8_MAX, quantize_rows, quantize_rows_fp8

__all__ = [
    "FP8_MAX",
    "Float8Linear",
    "WeightInfo",
    "default_fp8_layers",
    "fp8_supported",
    "fuse_ffn_activations",
    "quantize_linears",
    "quantize_rows_fp8",
]


def fp8_supported(device: str | torch.device) -> str | None:
    """None when ``device`` runs :class:`Float8Linear`'s GEMM, else the reason it cannot."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 GEMMs (torch._scaled_mm) need a CUDA GPU, got device {device.type!r}"
    if not torch.cuda.is_available():
        return "FP8 GEMMs need a CUDA GPU, and torch sees none"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 GEMMs need compute capability >= 8.9 (Ada, Hopper), this GPU has {major}.{minor}"
    return None


@dataclass(frozen=True)
class WeightInfo:
    """What model code may ask of a quantised layer's ``weight``: its shape and the dtype the layer
    takes and returns (the model casts activations to ``layer.weight.dtype``). Holds no values."""

    shape: torch.Size
    dtype: torch.dtype


class Float8Linear(nn.Module):
    """A linear layer with FP8 e4m3 weights (per output channel) and FP8 activations (per token).

    ``forward(x [..., in_features])`` -> ``[..., out_features]`` in ``dtype`` (bfloat16).
    Buffers: ``weight_fp8`` [out, in] (the e4m3 bytes, stored as uint8 so that ``module.to(dtype)``
    leaves them alone), ``weight_scale`` [out] fp32 (kept fp32 through dtype casts), ``bias``.

    ``input_gelu`` / ``input_bias`` (set by :func:`fuse_ffn_activations`): the layer takes the previous
    layer's output without its bias and applies ``gelu_tanh(x + input_bias)`` itself, in the one pass that
    quantises its input (:func:`world_model.fp8_rows.quantize_rows`).
    """

    input_gelu: bool = False

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.bfloat16, device=None
    ) -> None:
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if n % 16:
                raise ValueError(f"FP8 GEMMs need {name} divisible by 16, got {n}; keep this layer in {dtype}")
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.register_buffer("input_bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> Float8Linear:
        """Quantise ``linear``'s weights (on their device); ``dtype`` defaults to the weights' dtype."""
        w = linear.weight
        dtype = dtype or w.dtype
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype, w.device)
        q, scale = quantize_rows_fp8(w)  # per output channel
        layer.weight_fp8.copy_(q.view(torch.uint8))
        layer.weight_scale.copy_(scale[:, 0])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    @property
    def weight(self) -> WeightInfo:
        return WeightInfo(torch.Size((self.out_features, self.in_features)), self.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """[out, in] fp32: the weights the GEMM multiplies by."""
        return self.weight_fp8.view(FP8).float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected x [..., {self.in_features}], got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.input_gelu or self.input_bias is not None:  # the fused input (fuse_ffn_activations)
            xq, xs = quantize_rows(x2, gelu=self.input_gelu, bias=self.input_bias)
        else:
            xq, xs = quantize_rows_fp8(x2)  # [M, K] e4m3, [M, 1] fp32
        if x.is_cuda:
            out = torch._scaled_mm(
                xq,
                self.weight_fp8.view(FP8).t(),  # [K, N], column-major as the GEMM wants
                scale_a=xs,
                scale_b=self.weight_scale[None, :],  # [1, N]
                out_dtype=self.dtype,
                use_fast_accum=True,
            )
        else:  # the same quantised product, dequantised, in fp32 (a reference; see the module docstring)
            out = F.linear(xq.float() * xs, self.dequantized_weight()).to(self.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        if self.weight_scale.dtype != torch.float32:  # a dtype cast: keep the exact fp32 scales
            self.weight_scale = scale.to(self.weight_scale.device)
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype  # what the call does to a float tensor
        return self

    def extra_repr(self) -> str:
        fused = ", input gelu_tanh(x + bias)" if self.input_gelu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, fp8 e4m3{fused}"


def default_fp8_layers(name: str, layer: nn.Linear) -> bool:
    """The linears ``quantize="fp8"`` takes: inside the DiT blocks (self- and cross-attention q/k/v/o,
    FFN, camera injection), not the action modules, with both sizes divisible by 16."""
    parts = name.split(".")
    in_block = "blocks" in parts and "action_model" not in parts
    return in_block and layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def quantize_linears(
    model: nn.Module,
    mode: str = "fp8",
    include: Callable[[str, nn.Linear], bool] = default_fp8_layers,
) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` for which ``include(name, layer)`` holds with its
    :class:`Float8Linear`, in place; returns the names replaced (raises if none)."""
    if mode != "fp8":
        raise ValueError(f"quantize mode must be 'fp8', got {mode!r}")
    chosen = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and include(n, m)]
    if not chosen:
        raise ValueError(f"no linear layer of {type(model).__name__} was chosen for FP8")
    for name, layer in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Float8Linear.from_linear(layer))
    return [n for n, _ in chosen]


def fuse_ffn_activations(model: nn.Module) -> int:
    """In every ``nn.Sequential(Float8Linear, GELU(approximate="tanh"), Float8Linear)`` of ``model`` (the DiT
    blocks' FFNs once :func:`quantize_linears` ran), move the first layer's bias and the GELU into the second
    layer's input quantisation: one pass over the 14,336-wide hidden rows instead of inductor's bias + GELU +
    two-pass quantisation (see :mod:`world_model.fp8_rows`). The GELU becomes ``nn.Identity``; the function
    stays ``second(gelu(first(x)))``. In place; returns how many FFNs (raises if none)."""
    fused = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 3]:
        first, act, second = seq[0], seq[1], seq[2]
        if not (isinstance(first, Float8Linear) and isinstance(second, Float8Linear)):
            continue
        if not (isinstance(act, nn.GELU) and act.approximate == "tanh") or second.input_gelu:
            continue
        second.input_bias = first.bias
        first.bias = None
        second.input_gelu = True
        seq[1] = nn.Identity()
        fused += 1
    if not fused:
        raise ValueError(f"{type(model).__name__} has no FP8 Linear-GELU(tanh)-Linear FFN to fuse: quantize it first")
    return fused
