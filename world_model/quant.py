"""8-bit linear layers and convolutions, applied to a built model from outside (the model files know nothing of
them but an empty slot on each decoder convolution, :func:`quantize_convs` fills it).

``quantize="fp8"`` (``RuntimeOptions``, CUDA) replaces chosen ``nn.Linear`` layers with
:class:`Float8Linear`: FP8 e4m3 weights scaled per output channel (computed once, from the
weights), activations quantised per token (row) at each call, one ``torch._scaled_mm`` GEMM with
row-wise scales and fp32 accumulation (fast accumulation), bf16 output, bias added after.

``quantize="int8"`` (``RuntimeOptions``, CPU) replaces them with :class:`Int8Linear`: the same scheme in
int8 (symmetric, weights per output channel, activations per token at each call), one ``torch._int_mm``
GEMM with int32 accumulation, dequantised in fp32, bias added, output in the model's dtype. On the
2-core test VM (AMD EPYC, AVX-512 VNNI; session 32, 2 threads, ``bench/int8_linear.py``) at the embedded DiT's
shapes ([1216, 320] tokens into 320 and 1024 outputs, and 1024 -> 320) the parts of a call take 0.1-0.3 ms
(quantisation), 0.3-1.0 ms (``torch._int_mm``: 0.83-0.87 TOP/s, where fp32's GEMM reaches ~0.19 TFLOP/s) and
0.07-0.4 ms (dequantisation) against fp32's 1.3-5.3 ms and bf16's 0.6-2.5 ms per layer; a whole call swings between 0.7 and
3.3 ms from run to run (each output-sized temporary is a fresh allocation, and the VM's page faults then
dominate). One layer's relative error is about 1e-2 (bf16: 3e-3). In the embedded model the fp32 chunk took
2.7-3.0 s with int8 against 3.4-3.7 s without (``bench/embedded_speed.py --dtype both --quantize both``), its
frames 54-56 dB from fp32's, as bf16's; in bf16 int8 did not pay.

``quantize="int8"`` also gives each convolution of the VAE decoder an :class:`Int8Conv` (:func:`quantize_convs`):
oneDNN's u8 x s8 convolution with int32 accumulation, the input quantised per tensor at each call
(:func:`uint8_tensor`), the up-sampling convolutions' input upsampled in uint8 after its quantisation (a quarter
of the work). On the 2-core VM (session 33, ``bench/int8_conv.py``) the embedded decoder's convolutions ran at
1.1-1.9 TOP/s in int8 against 0.27-0.52 TFLOP/s in fp32, and its whole decode of a 40-frame chunk 0.23 s against
0.41-0.47 (bf16: 0.27), frames 56 dB from fp32's, sharpness 0.995 of fp32's.

Why FP8 and not INT8 on a GPU: on Hopper ``torch._int_mm`` ran no faster than the bf16 GEMM (557-772 TOP/s
against 763-783 TFLOP/s at the 5B DiT's shapes), while row-wise FP8 ``_scaled_mm`` ran 1,357-1,429
TFLOP/s (reference/ecosystem.md). The GEMM needs compute capability 8.9 or newer (Ada, Hopper).
One FP8 GEMM's relative error is about 4e-2 (bf16: 2e-3), so which layers to quantise is a choice:
:func:`default_fp8_layers` takes the DiT blocks' attention, FFN and camera linears and leaves the
embeddings, the head and the action modules in bf16; INT8 takes the same layers.

Off CUDA, :class:`Float8Linear` computes the same quantised product in fp32 (values and scales of
the GEMM, dequantised): a reference for tests, slower than the float layer, so the runtime option
refuses CPUs rather than running it there.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.fp8_rows import FP8, FP8_MAX, quantize_rows, quantize_rows_fp8

__all__ = [
    "FP8_MAX",
    "Float8Linear",
    "Int8Conv",
    "Int8Linear",
    "WeightInfo",
    "default_fp8_layers",
    "fp8_supported",
    "fuse_ffn_activations",
    "int8_supported",
    "int8_convolution_available",
    "quantize_convs",
    "quantize_linears",
    "quantize_rows_fp8",
    "int8_rows",
    "uint8_tensor",
]

INT8_MAX = 127
_MIN_ROW_MAX = 1e-12  # an all-zero row keeps a finite scale


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


def int8_supported(device: str | torch.device) -> str | None:
    """None when ``device`` runs :class:`Int8Linear` fast, else the reason it is not offered there."""
    device = torch.device(device)
    if device.type != "cpu":
        return (
            f"INT8 GEMMs are offered on the CPU only (got device {device.type!r}): on Hopper torch._int_mm measured "
            "no faster than bf16"
        )
    if not int8_convolution_available():
        return (
            "the VAE decoder's int8 convolutions need oneDNN's (x86 builds of torch with mkldnn), and this torch "
            f"on {platform.machine() or 'this machine'} has none"
        )
    return None


def int8_convolution_available() -> bool:
    """Whether this torch has oneDNN's int8 convolution (``torch.ops.onednn.qconv_pointwise``) on an x86 CPU."""
    machine = platform.machine().lower()
    return (
        machine in ("x86_64", "amd64", "i686", "x86")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qconv_pointwise")
        and hasattr(torch.ops.onednn, "qconv_prepack")
    )


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: x [M, K] -> (q [M, K] int8 in [-127, 127], scale [M, 1] fp32), x ~ q * scale
    (the activations' quantisation; ``world_model.weights.quantize_rows_int8`` is the storage format's, with
    float16 scales: weights stored so come back through this as the same integers). Passes over x: its rows'
    largest and smallest values (two reductions: no temporary of |x|), the scaling, the rounding in place, the cast
    (|x| * 127 / max rounds to at most 127: no clamp). (``torch.linalg.vector_norm(ord=inf)`` for the maximum ran
    15x slower on the CPU.)"""
    xf = x.float()
    amax = torch.maximum(xf.amax(dim=-1, keepdim=True), xf.amin(dim=-1, keepdim=True).neg_()).clamp_(min=_MIN_ROW_MAX)
    q = torch.mul(xf, INT8_MAX / amax).round_().to(torch.int8)
    return q, amax / INT8_MAX


@dataclass(frozen=True)
class WeightInfo:
    """What model code may ask of a quantised layer's ``weight``: its shape and the dtype the layer
    takes and returns (the model casts activations to ``layer.weight.dtype``). Holds no values."""

    shape: torch.Size
    dtype: torch.dtype


class _RowScaledLinear(nn.Module):
    """What :class:`Float8Linear` and :class:`Int8Linear` share: 8-bit weights [out, in] with an fp32 scale per
    output channel (kept fp32 through dtype casts of the model), a bias and an output in ``dtype``; a subclass
    computes the layer on 2-D inputs (:meth:`_affine`) and says how its weights dequantise."""

    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @property
    def weight(self) -> WeightInfo:
        return WeightInfo(torch.Size((self.out_features, self.in_features)), self.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """[out, in] fp32: the weights the GEMM multiplies by."""
        raise NotImplementedError

    def _affine(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 [M, in] -> x2 @ W^T + bias [M, out], in fp32 or ``dtype``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected x [..., {self.in_features}], got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        return self._affine(x.reshape(-1, self.in_features)).to(self.dtype).reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        if self.weight_scale.dtype != torch.float32:  # a dtype cast: keep the exact fp32 scales
            self.weight_scale = scale.to(self.weight_scale.device)
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype  # what the call does to a float tensor
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, {self.kind}"


class Float8Linear(_RowScaledLinear):
    """A linear layer with FP8 e4m3 weights (per output channel) and FP8 activations (per token).

    ``forward(x [..., in_features])`` -> ``[..., out_features]`` in ``dtype`` (bfloat16).
    Buffers: ``weight_fp8`` [out, in] (the e4m3 bytes, stored as uint8 so that ``module.to(dtype)``
    leaves them alone), ``weight_scale`` [out] fp32 (kept fp32 through dtype casts), ``bias``.

    ``input_gelu`` / ``input_bias`` (set by :func:`fuse_ffn_activations`): the layer takes the previous
    layer's output without its bias and applies ``gelu_tanh(x + input_bias)`` itself, in the one pass that
    quantises its input (:func:`world_model.fp8_rows.quantize_rows`).
    """

    kind = "fp8 e4m3"
    input_gelu: bool = False

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.bfloat16, device=None
    ) -> None:
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if n % 16:
                raise ValueError(f"FP8 GEMMs need {name} divisible by 16, got {n}; keep this layer in {dtype}")
        super().__init__(in_features, out_features, bias, dtype, device)
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
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

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_fp8.view(FP8).float() * self.weight_scale[:, None]

    def _affine(self, x2: torch.Tensor) -> torch.Tensor:
        out = self._product(x2)
        return out if self.bias is None else out + self.bias

    def _product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.input_gelu or self.input_bias is not None:  # the fused input (fuse_ffn_activations)
            xq, xs = quantize_rows(x2, gelu=self.input_gelu, bias=self.input_bias)
        else:
            xq, xs = quantize_rows_fp8(x2)  # [M, K] e4m3, [M, 1] fp32
        if x2.is_cuda:
            return torch._scaled_mm(
                xq,
                self.weight_fp8.view(FP8).t(),  # [K, N], column-major as the GEMM wants
                scale_a=xs,
                scale_b=self.weight_scale[None, :],  # [1, N]
                out_dtype=self.dtype,
                use_fast_accum=True,
            )
        # the same quantised product, dequantised, in fp32 (a reference; see the module docstring)
        return F.linear(xq.float() * xs, self.dequantized_weight()).to(self.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", input gelu_tanh(x + bias)" if self.input_gelu else "")


class Int8Linear(_RowScaledLinear):
    """A linear layer with int8 weights (per output channel) and int8 activations (per token), for the CPU.

    ``forward(x [..., in_features])`` -> ``[..., out_features]`` in ``dtype`` (the model's: fp32 or bf16): the
    input quantised per row (:func:`int8_rows`), one ``torch._int_mm`` GEMM (int32 accumulation, exact),
    the product scaled by the row and channel scales in fp32, the bias added, cast to ``dtype``.
    Buffers: ``weight_int8_t`` [in, out] (the GEMM's right operand, stored transposed and contiguous), ``weight_scale``
    [out] fp32 (kept fp32 through dtype casts), ``bias``.
    """

    kind = "int8"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.float32, device=None
    ) -> None:
        super().__init__(in_features, out_features, bias, dtype, device)
        self.register_buffer("weight_int8_t", torch.zeros(in_features, out_features, dtype=torch.int8, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> Int8Linear:
        """Quantise ``linear``'s weights (on their device); ``dtype`` defaults to the weights' dtype. Weights stored
        in int8 with a scale per row (the embedded model's files) come back as the same integers."""
        w = linear.weight
        dtype = dtype or w.dtype
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype, w.device)
        q, scale = int8_rows(w)
        layer.weight_int8_t.copy_(q.t())
        layer.weight_scale.copy_(scale[:, 0])
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8_t.t().float() * self.weight_scale[:, None]

    def _affine(self, x2: torch.Tensor) -> torch.Tensor:
        xq, xs = int8_rows(x2)
        # int32 x fp32 promotes to fp32 in the one pass; then the channel scale and the bias in place (each
        # temporary of the size of the output costs a fresh allocation: on the CPU, page faults)
        out = torch.mul(torch._int_mm(xq, self.weight_int8_t), xs).mul_(self.weight_scale)
        return out if self.bias is None else out.add_(self.bias)


UINT8_LEVELS = 254  # the range's steps: one short of uint8's 255, so that the rounding needs no clamp (below)
_PIECE = 1 << 20  # values quantised per pass of uint8_tensor


def uint8_tensor(x: torch.Tensor) -> tuple[torch.Tensor, float, int] | None:
    """Asymmetric uint8 with one scale and zero point for the whole tensor: x -> (q, scale, zero_point), x ~ (q -
    zero_point) * scale, q in x's memory layout (contiguous or channels_last_3d); None when x holds a NaN or an
    infinity (nothing to scale by: the caller runs its float path, which carries it on).

    The range [min, max] of x, widened to hold 0 (zero padding is then exact), in 254 steps: x / scale + zero_point
    then lies in [-0.5, 254.5], so + 0.5 and the cast's truncation round it to [0, 255] with no clamp. Two passes
    over x: one reduction for both ends (on the layout's flat view: a reduction over a channels-last tensor's
    logical dims ran 30x slower), one fused scale-and-offset and the cast, a piece at a time."""
    cl = x.ndim == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
    flat = (x.permute(0, 2, 3, 4, 1) if cl else x.contiguous()).reshape(-1)
    lo, hi = torch.aminmax(flat)
    lo, hi = min(lo.item(), 0.0), max(hi.item(), 0.0)
    if not (abs(lo) < float("inf") and hi < float("inf")):  # NaN compares False too
        return None
    scale = (hi - lo) / UINT8_LEVELS if hi > lo else 1.0
    zero_point = round(-lo / scale)
    offset = torch.tensor(zero_point + 0.5, dtype=torch.float32)
    q = torch.empty(flat.shape, dtype=torch.uint8)
    # in pieces through one small fp32 buffer: a whole-tensor temporary is a fresh allocation each call, and the
    # page faults of touching it cost 5x the arithmetic (16.6 against 3.0 ms for 13.8M values, session 33)
    buffer = torch.empty(min(flat.numel(), _PIECE))
    for i in range(0, flat.numel(), _PIECE):
        piece = flat[i : i + _PIECE]
        scaled = buffer[: piece.numel()]
        torch.add(offset, piece.float(), alpha=1.0 / scale, out=scaled)  # .float(): in bf16 the levels would round
        q[i : i + _PIECE].copy_(scaled)
    if cl:
        n, c, t, h, w = x.shape
        return q.view(n, t, h, w, c).permute(0, 4, 1, 2, 3), scale, zero_point
    return q.view(x.shape), scale, zero_point


class Int8Conv:
    """A 3-D convolution's weights in int8 for the CPU: oneDNN's int8 convolution (u8 activations, s8 weights,
    int32 accumulation, exact) in place of the float one.

    Weights symmetric per output channel (scale = the channel's largest magnitude / 127), prepacked once for
    ``stride`` and ``padding``; the input quantised per tensor at each call (:func:`uint8_tensor`); the output
    dequantised and the bias added inside the kernel, in the input's dtype, channels-last. Calling it with the
    weight it was made from: where that tensor changed since (``load_state_dict``, a cast), it quantises again,
    so it never runs stale weights. Returns None for an input with a NaN or an infinity (run the float
    convolution). Not differentiable: the model code takes it only outside autograd (see ``world_model.vae``).

    On the 2-core test VM (AMD EPYC, AVX-512 VNNI; session 33, ``bench/int8_conv.py``) the embedded decoder's
    largest convolution (80 -> 80 channels, 3x3x3, 40 frames of 64x64) ran 43 ms in int8 against 136 ms in fp32
    (1.3 against 0.42 TOP/s), plus ~20 ms to quantise its input."""

    def __init__(self, weight: torch.Tensor, stride=(1, 1, 1), padding=(0, 0, 0)) -> None:
        if weight.ndim != 5:
            raise ValueError(f"expected a 3-D convolution's weight [out, in, kt, kh, kw], got {tuple(weight.shape)}")
        if weight.device.type != "cpu":
            raise ValueError(f"int8 convolutions run on the CPU, the weight is on {weight.device}")
        if not int8_convolution_available():
            raise RuntimeError("this torch has no oneDNN int8 convolution (x86 builds with mkldnn)")
        self.stride, self.padding = [int(v) for v in stride], [int(v) for v in padding]
        self._pack(weight)

    @torch.no_grad()
    def _pack(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        q, scale = int8_rows(w.reshape(w.shape[0], -1))  # one row per output channel, as the linears' weights
        q = q.view(w.shape).contiguous(memory_format=torch.channels_last_3d)
        self.weight_int8, self.scale = q, scale[:, 0].contiguous()
        self.zero_points = torch.zeros(w.shape[0], dtype=torch.int32)
        self.packed = torch.ops.onednn.qconv_prepack(
            q, self.scale, 1.0, 0, self.stride, self.padding, [1, 1, 1], 1, None
        )
        self._source = (weight.data_ptr(), weight._version, weight.dtype)

    def __deepcopy__(self, memo: dict) -> Int8Conv:
        """A copy for a copied model (``WorldModel.replicate``): oneDNN's packing is opaque and is not copied; the
        copy packs its own weight (another tensor) at its first call."""
        new = Int8Conv.__new__(Int8Conv)
        new.stride, new.padding = list(self.stride), list(self.padding)
        new.weight_int8, new.scale, new.zero_points = self.weight_int8.clone(), self.scale.clone(), self.zero_points
        new.packed, new._source = None, None
        return new

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this convolution multiplies by, in fp32 (for tests and error measurements)."""
        return self.weight_int8.float() * self.scale.view(-1, 1, 1, 1, 1)

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, upsample: bool = False
    ) -> torch.Tensor | None:
        """The convolution of x (``upsample``: of x upsampled 2x in space, nearest, first: done on the uint8 tensor,
        which is the same values in a quarter of the bytes, and quantised before, a quarter of the work)."""
        if (weight.data_ptr(), weight._version, weight.dtype) != self._source:
            self._pack(weight)
        quantised = uint8_tensor(x)
        if quantised is None:
            return None
        q, x_scale, x_zero = quantised
        if upsample:
            q = F.interpolate(q, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return torch.ops.onednn.qconv_pointwise(
            q, x_scale, x_zero, self.packed, self.scale, self.zero_points, bias,
            self.stride, self.padding, [1, 1, 1], 1, 1.0, 0, x.dtype, "none", [], "",
        )  # fmt: skip


def quantize_convs(module: nn.Module) -> list[str]:
    """Give every convolution of a VAE decoder (``module``) an :class:`Int8Conv` of its weights, in place (the
    modules keep their float weights, which autograd and the compiled decoder use); returns their names (raises
    if none). Idempotent: a convolution that has one keeps it."""
    from world_model.vae import CausalConv3d, Resample

    names = []
    for name, m in module.named_modules():
        if isinstance(m, CausalConv3d):
            weight, stride, padding = m.weight, m.stride, m.padding
        elif isinstance(m, Resample) and m.up:
            weight, stride, padding = m.resample["1"].weight.unsqueeze(2), (1, 1, 1), (0, 1, 1)
        else:
            continue
        if m.int8 is None:
            m.int8 = Int8Conv(weight, stride, padding)
        names.append(name)
    if not names:
        raise ValueError(f"{type(module).__name__} has no convolution to quantise (expected a VAE decoder)")
    return names


def default_fp8_layers(name: str, layer: nn.Linear) -> bool:
    """The linears ``quantize="fp8"`` and ``"int8"`` take: inside the DiT blocks (self- and cross-attention
    q/k/v/o, FFN, camera injection), not the action modules, with both sizes divisible by 16."""
    parts = name.split(".")
    in_block = "blocks" in parts and "action_model" not in parts
    return in_block and layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def quantize_linears(
    model: nn.Module,
    mode: str = "fp8",
    include: Callable[[str, nn.Linear], bool] = default_fp8_layers,
) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` for which ``include(name, layer)`` holds with its
    :class:`Float8Linear` (``mode="fp8"``) or :class:`Int8Linear` (``"int8"``), in place; returns the names
    replaced (raises if none)."""
    layers = {"fp8": Float8Linear, "int8": Int8Linear}
    if mode not in layers:
        raise ValueError(f"quantize mode must be 'fp8' or 'int8', got {mode!r}")
    chosen = [n for n, m in model.named_modules() if type(m) is nn.Linear and include(n, m)]
    if not chosen:
        raise ValueError(f"no linear layer of {type(model).__name__} was chosen for {mode}")
    for name in chosen:  # by name: each float layer is freed once replaced (the 5B's bf16 linears are 9.3 GiB)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layers[mode].from_linear(getattr(parent, child)))
    return chosen


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
