"""The causal 3-D video VAE of the Wan2.2 family (spec §7) with MG3's streaming decode (§7.2).

Tensors are channel-first everywhere: video [B, 3, T, H, W] in [-1, 1] (B batch, T pixel frames,
H/W pixels), latents [B, z, F, h, w] (F latent frames, h/w latent pixels), features [B, C, T, H, W].
For the release (z = 48, 2x2 pixel shuffle, three 2x spatial and two 2x temporal stages) a
704x1280 clip of T = 1 + 4k frames encodes to [B, 48, 1 + k, 44, 80].

Time is causal. A stream of frames is processed in calls of a few frames each; every 3-D convolution
that looks back in time keeps the last input frames of its stream as explicit state, in a list with
one slot per such convolution (``slot`` is fixed when the model is built). The encoder's state lives
only inside :meth:`WanVAE.encode`; the decoder's state is a :class:`DecodeCache` that the caller
keeps between chunks, can index per env and reset per env.

MG3 decode semantics (§7.2): latents are decoded in segments of 4; each time-upsampling layer turns
a latent into 2 frames, and on the very first segment of a stream its first output frame is dropped.
A first chunk of n latents gives 1 + 4(n - 1) frames (15 -> 57), a later chunk 4n frames (10 -> 40).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .checkpoint import CheckpointError, assign_state_dict, check_state_dict, read_torch_file
from .config import VAEConfig

if TYPE_CHECKING:
    from .quant import Int8Conv

__all__ = [
    "WanVAE",
    "DecodeCache",
    "load_vae",
    "infer_pruning_rate",
    "convert_vae_state_dict",
    "decoder_widths",
    "encoder_widths",
    "patchify",
    "unpatchify",
    "to_uint8_frames",
    "channels_last_",
    "VAE_FILES",
    "WAN_VAE_FILE",
    "DEFAULT_SEGMENT",
]

RMS_EPS = 1e-6
DEFAULT_SEGMENT = 4  # latents per decoder call (MG3's WAN_VAE_SEGMENT_SIZE)
WAN_VAE_FILE = "Wan2.2_VAE.pth"
# vae_type -> (decoder file, pruning rate the release forces for it)
VAE_FILES: dict[str, tuple[str, float]] = {
    "wan": (WAN_VAE_FILE, 0.0),
    "mg_lightvae": ("MG-LightVAE.pth", 0.5),
    "mg_lightvae_v2": ("MG-LightVAE_v2.pth", 0.75),
}


# --------------------------------------------------------------------------------------------
# Pixel (un)shuffle and widths
# --------------------------------------------------------------------------------------------


def to_uint8_frames(video: Tensor) -> Tensor:
    """Decoded video [B, 3, T, H, W] in [-1, 1] -> uint8 frames [B, T, H, W, 3] on the CPU, contiguous.

    The channels-last transpose runs on the video's device before the copy: a host-side gather of a
    permuted 704x1280 chunk (what numpy's stack of the env's observation would otherwise do) costs
    ~180 ms of one CPU core, against 35 ms for the contiguous copy.

    From a CUDA device the frames land in page-locked host memory (torch's caching host allocator
    reuses a block once the caller drops the frames): a pageable copy of a 704x1280 chunk of 40 frames
    (108 MB) measured 60 ms on an H200 host, one into pinned memory runs at the link's speed."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 4, 1).contiguous()
    if frames.device.type != "cuda":
        return frames.cpu()
    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    torch.cuda.current_stream(frames.device).synchronize()  # the frames are the caller's once returned
    return host


def patchify(video: Tensor, p: int) -> Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p]; channel (c, w-offset r, h-offset q) as Wan2.2."""
    if p == 1:
        return video
    y = rearrange(video.movedim(1, -1), "b t (h q) (w r) c -> b t h w (c r q)", q=p, r=p)
    return y.movedim(-1, 1)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """Inverse of :func:`patchify`: [B, C*p*p, T, h, w] -> [B, C, T, h*p, w*p]."""
    if p == 1:
        return x
    y = rearrange(x.movedim(1, -1), "b t h w (c r q) -> b t (h q) (w r) c", q=p, r=p)
    return y.movedim(-1, 1)


def encoder_widths(cfg: VAEConfig) -> list[int]:
    """Encoder widths: conv1 output, then each down stage's output (160/160/320/640/640)."""
    return [cfg.encoder_dim * m for m in (1, *cfg.dim_mult)]


def decoder_widths(cfg: VAEConfig) -> list[int]:
    """Decoder widths after pruning: conv1 output, then each up stage's output.

    The release: 1024/1024/1024/512/256 (p = 0), 512/512/512/256/128 (0.5), 256/256/256/128/64 (0.75).
    """
    d = cfg.pruned_decoder_dim
    return [d * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

_CL3D = torch.channels_last_3d


def _conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride=(1, 1, 1),
    padding=(0, 0, 0),
    int8: Int8Conv | None = None,
    upsample: bool = False,
) -> Tensor:
    """F.conv3d (of x upsampled 2x in space, nearest, if ``upsample``); fp32 on the CPU goes to oneDNN in
    channels_last_3d directly.

    (For batch 1 torch's dispatch picks its reference kernel, 10-15x slower on small 3-D inputs.)
    ``int8``: the layer's int8 weights (``RuntimeOptions(quantize="int8")``, :func:`world_model.quant.quantize_convs`),
    taken outside autograd and compiled code, for finite inputs; else the float weights run.
    """
    if (
        int8 is not None
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.compiler.is_compiling()
        and (y := int8(x, weight, bias, upsample=upsample)) is not None
    ):
        return y
    if upsample:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    cpu_fp32 = x.device.type == "cpu" and x.dtype == torch.float32
    # (compiled code takes F.conv3d: the compiler lowers it itself, and cannot trace the oneDNN call)
    if (
        cpu_fp32
        and not torch.compiler.is_compiling()  # first: dynamo cannot trace the availability check either
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(memory_format=_CL3D), weight, bias, list(padding), list(stride), [1, 1, 1], 1
        )
    return F.conv3d(x, weight, bias, stride, padding)


def _keep(frames: Tensor) -> Tensor:
    """A copy of a slice of frames (a stream's last frames for its cache, a decoder call's segment) in one
    layout whatever the slice's strides (a compiled decoder guards on its inputs' strides: slices passed
    or kept as sliced made a graph per layout)."""
    return frames.clone(memory_format=_CL3D if frames.ndim == 5 else torch.contiguous_format)


def _prepend(prev: Tensor, x: Tensor) -> Tensor:
    """cat([prev, x]) along time, in x's dtype and memory format (a mixed cat drops channels-last)."""
    fmt = _CL3D if x.is_contiguous(memory_format=_CL3D) and not x.is_contiguous() else torch.contiguous_format
    return torch.cat([prev.to(dtype=x.dtype, memory_format=fmt), x], dim=2)


class RMSNorm(nn.Module):
    """Channel RMS norm (dim 1) with scale: x / sqrt(mean_c(x^2) + 1e-6) * gamma (spec §7.1)."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: Tensor) -> Tensor:
        # gamma in the input's dtype: under autocast (training) an fp32 gamma with bf16 activations
        # would leave the fused kernel; with matching dtypes (inference) this is a no-op
        y = F.rms_norm(x.movedim(1, -1), (x.shape[1],), self.gamma.view(-1).to(x.dtype), RMS_EPS)
        return y.movedim(-1, 1)


class CausalConv3d(nn.Conv3d):
    """3-D convolution, causal in time ('same' in space): output frame t sees input frames <= t.

    A kernel of k frames keeps the last k - 1 input frames of its stream in ``states[self.slot]``
    (absent = zeros, the start of a stream). Kernel-1 convolutions keep nothing.
    """

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int]) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        super().__init__(cin, cout, (kt, kh, kw), padding=(0, kh // 2, kw // 2))
        self.cache_frames = kt - 1
        self.slot = -1  # set by _number_slots
        self.int8: Int8Conv | None = None  # set by world_model.quant.quantize_convs

    def forward(self, x: Tensor, states: list[Tensor | None] | None = None) -> Tensor:  # type: ignore[override]
        k = self.cache_frames
        if k > 0:
            prev = None if states is None else states[self.slot]
            x = F.pad(x, (0, 0, 0, 0, k, 0)) if prev is None else _prepend(prev, x)
            if states is not None:
                states[self.slot] = _keep(x[:, :, -k:])
        return _conv3d(x, self.weight, self.bias, self.stride, self.padding, self.int8)


class CausalTimeDown(nn.Conv3d):
    """The encoder's 2x time downsampling: kernel 3, stride 2, no padding (``time_conv``).

    The first frame of a stream passes through unchanged; every later output frame j is computed from
    input frames 2j-2, 2j-1, 2j. State: the last input frame (absent before the first frame).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.cache_frames = 1
        self.slot = -1

    def forward(self, x: Tensor, states: list[Tensor | None] | None = None) -> Tensor:  # type: ignore[override]
        prev = None if states is None else states[self.slot]
        if states is not None:
            states[self.slot] = _keep(x[:, :, -1:])
        if prev is not None:
            return _conv3d(_prepend(prev, x), self.weight, self.bias, self.stride)
        if x.shape[2] == 1:
            return x
        return torch.cat([x[:, :, :1], _conv3d(x, self.weight, self.bias, self.stride)], dim=2)


class ResidualBlock(nn.Module):
    """norm, SiLU, conv, norm, SiLU, (dropout), conv; plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # Keys residual.{0,2,3,6} as the checkpoint (1, 4: SiLU; 5: dropout, inactive at inference).
        self.residual = nn.ModuleDict(
            {"0": RMSNorm(cin), "2": CausalConv3d(cin, cout, 3), "3": RMSNorm(cout), "6": CausalConv3d(cout, cout, 3)}
        )
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, states: list[Tensor | None] | None) -> Tensor:
        r = self.residual
        h = r["2"](F.silu(r["0"](x)), states)
        h = r["6"](F.silu(r["3"](h)), states)
        return h + (x if self.shortcut is None else self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity (Wan2.2 init)

    def forward(self, x: Tensor, states: list[Tensor | None] | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).movedim(1, -1).reshape(b * t, 1, h * w, c)  # [(B T), 1, L, C]
        qkv = F.linear(y, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias)
        q, k, v = qkv.chunk(3, dim=-1)
        # Head dim = width (up to 1024): torch SDPA, not attention.attend (flash-attn caps it at 256).
        y = F.scaled_dot_product_attention(q, k, v)
        y = F.linear(y, self.proj.weight.view(c, c), self.proj.bias)
        return x + y.view(b, t, h, w, c).movedim(-1, 1)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of a down stage: space/time-to-channel, then a mean over channel groups.

    The time axis is zero-padded in front to a multiple of ``ft`` (the lone first frame of a stream).
    """

    def __init__(self, cin: int, cout: int, ft: int, fs: int) -> None:
        super().__init__()
        factor = ft * fs * fs
        if (cin * factor) % cout:
            raise ValueError(f"down stage {cin} -> {cout} channels: {cin} * {factor} must be divisible by {cout}")
        self.cout, self.ft, self.fs, self.group = cout, ft, fs, cin * factor // cout

    def forward(self, x: Tensor) -> Tensor:
        pad = (-x.shape[2]) % self.ft
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        y = rearrange(x.movedim(1, -1), "b (t a) (h p) (w q) c -> b t h w (c a p q)", a=self.ft, p=self.fs, q=self.fs)
        y = y.unflatten(-1, (self.cout, self.group)).mean(dim=-1)
        return y.movedim(-1, 1)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of an up stage: repeat channels, then channel-to-space/time.

    On the first segment of a stream the first ``ft - 1`` frames are dropped, as in the main path.
    """

    def __init__(self, cin: int, cout: int, ft: int, fs: int) -> None:
        super().__init__()
        factor = ft * fs * fs
        if (cout * factor) % cin:
            raise ValueError(f"up stage {cin} -> {cout} channels: {cout} * {factor} must be divisible by {cin}")
        self.ft, self.fs, self.repeats = ft, fs, cout * factor // cin

    def forward(self, x: Tensor, drop_first: bool) -> Tensor:
        y = x.movedim(1, -1).repeat_interleave(self.repeats, dim=-1)
        y = rearrange(y, "b t h w (c a p q) -> b (t a) (h p) (w q) c", a=self.ft, p=self.fs, q=self.fs)
        if drop_first:
            y = y[:, self.ft - 1 :]
        return y.movedim(-1, 1)


class Resample(nn.Module):
    """2x spatial down/up-sampling (``resample.1``, a 3x3 Conv2d per frame), optionally with 2x in time.

    Down: zero-pad right/bottom, stride-2 conv; in time, :class:`CausalTimeDown`. Up: nearest 2x,
    conv; in time, a causal conv to 2C channels whose halves become frames 2t and 2t+1.
    """

    def __init__(self, dim: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.up, self.temporal = up, temporal
        # Index 0 of the checkpoint's Sequential is the parameter-free pad / upsample.
        conv = nn.Conv2d(dim, dim, 3, padding=1) if up else nn.Conv2d(dim, dim, 3, stride=2)
        self.resample = nn.ModuleDict({"1": conv})
        if temporal:
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if up else CausalTimeDown(dim)
        self.int8: Int8Conv | None = None  # the up-sampling conv's, set by world_model.quant.quantize_convs

    def _spatial(self, x: Tensor) -> Tensor:
        conv = self.resample["1"]
        if self.up:
            return _conv3d(x, conv.weight.unsqueeze(2), conv.bias, padding=(0, 1, 1), int8=self.int8, upsample=True)
        x = F.pad(x, (0, 1, 0, 1))
        return _conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, 2, 2))

    def forward(self, x: Tensor, states: list[Tensor | None] | None, drop_first: bool = False) -> Tensor:
        if not self.up:
            x = self._spatial(x)
            return self.time_conv(x, states) if self.temporal else x
        if self.temporal:
            y = self.time_conv(x, states)  # [B, 2C, T, H, W]
            y = rearrange(y.movedim(1, -1), "b t h w (two c) -> b (t two) h w c", two=2)
            if drop_first:
                y = y[:, 1:]
            x = y.movedim(-1, 1)  # [B, C, 2T (- 1), H, W]
        return self._spatial(x)


class DownStage(nn.Module):
    """Residual blocks, then an optional :class:`Resample`; plus the averaging shortcut."""

    def __init__(self, cin: int, cout: int, num_res: int, down_t: bool, down_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(cin, cout, 2 if down_t else 1, 2 if down_s else 1)
        blocks: list[nn.Module] = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res)]
        if down_s:
            blocks.append(Resample(cout, up=False, temporal=down_t))
        self.downsamples = nn.ModuleList(blocks)

    def forward(self, x: Tensor, states: list[Tensor | None] | None) -> Tensor:
        h = x
        for block in self.downsamples:
            h = block(h, states)
        return h + self.avg_shortcut(x)


class UpStage(nn.Module):
    """Residual blocks, then an optional :class:`Resample`; plus the duplicating shortcut when resampling."""

    def __init__(self, cin: int, cout: int, num_res: int, up_t: bool, up_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(cin, cout, 2 if up_t else 1, 2) if up_s else None
        blocks: list[nn.Module] = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res)]
        if up_s:
            blocks.append(Resample(cout, up=True, temporal=up_t))
        self.upsamples = nn.ModuleList(blocks)

    def forward(self, x: Tensor, states: list[Tensor | None] | None, drop_first: bool) -> Tensor:
        h = x
        for block in self.upsamples:
            h = block(h, states, drop_first) if isinstance(block, Resample) else block(h, states)
        return h if self.avg_shortcut is None else h + self.avg_shortcut(x, drop_first)


def _number_slots(module: nn.Module) -> int:
    """Give every time-caching layer below ``module`` its state slot; returns the slot count."""
    n = 0
    for m in module.modules():
        if getattr(m, "cache_frames", 0) > 0:
            m.slot = n
            n += 1
    return n


class Encoder(nn.Module):
    """Patchified video [B, 3p^2, T, H, W] -> [B, 2z, F, h, w] (mu and log-variance)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = encoder_widths(cfg)
        n = len(cfg.dim_mult)
        self.conv1 = CausalConv3d(3 * cfg.patch_size**2, dims[0], 3)
        self.downsamples = nn.ModuleList(
            DownStage(
                dims[i],
                dims[i + 1],
                cfg.num_res_blocks,
                down_t=i < n - 1 and cfg.temporal_downsample[i],
                down_s=i < n - 1 and cfg.spatial_downsample[i],
            )
            for i in range(n)
        )
        d = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(d, d), AttentionBlock(d), ResidualBlock(d, d)])
        self.head = nn.ModuleDict({"0": RMSNorm(d), "2": CausalConv3d(d, 2 * cfg.z_dim, 3)})
        self.num_slots = _number_slots(self)

    def forward(self, x: Tensor, states: list[Tensor | None] | None) -> Tensor:
        x = self.conv1(x, states)
        for stage in self.downsamples:
            x = stage(x, states)
        for block in self.middle:
            x = block(x, states)
        return self.head["2"](F.silu(self.head["0"](x)), states)


class Decoder(nn.Module):
    """Latents [B, z, F, h, w] -> patchified video [B, 3p^2, T, H, W] (widths scaled by 1 - p)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = decoder_widths(cfg)
        n = len(cfg.dim_mult)
        up_t = tuple(reversed(cfg.temporal_downsample))
        up_s = tuple(reversed(cfg.spatial_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])]
        )
        self.upsamples = nn.ModuleList(
            UpStage(
                dims[i],
                dims[i + 1],
                cfg.num_res_blocks + 1,
                up_t=i < n - 1 and up_t[i],
                up_s=i < n - 1 and up_s[i],
            )
            for i in range(n)
        )
        self.head = nn.ModuleDict({"0": RMSNorm(dims[-1]), "2": CausalConv3d(dims[-1], 3 * cfg.patch_size**2, 3)})
        self.num_slots = _number_slots(self)

    def forward(self, x: Tensor, states: list[Tensor | None] | None, drop_first: bool) -> Tensor:
        x = self.conv1(x, states)
        for block in self.middle:
            x = block(x, states)
        for stage in self.upsamples:
            x = stage(x, states, drop_first)
        return self.head["2"](F.silu(self.head["0"](x)), states)


# --------------------------------------------------------------------------------------------
# Decode cache
# --------------------------------------------------------------------------------------------


def _as_index(idx: Tensor | Sequence[int] | Sequence[bool], batch: int) -> Tensor:
    """A boolean mask [B] or integer indices -> CPU int64 indices, checked against ``batch``."""
    t = torch.as_tensor(idx, device="cpu")
    if t.dtype == torch.bool:
        if t.shape != (batch,):
            raise ValueError(f"expected a boolean mask of shape ({batch},), got shape {tuple(t.shape)}")
        return t.nonzero().view(-1)
    t = t.long().view(-1)
    if t.numel() and (t.min() < 0 or t.max() >= batch):
        raise IndexError(f"indices {t.tolist()} out of range for a cache of batch size {batch}")
    return t


@dataclass(eq=False)
class DecodeCache:
    """Streaming state of the decoder for a batch of streams (one per env).

    ``states[i]`` holds the last input frames of the decoder's i-th time-caching convolution,
    [B, C_i, k_i, h_i, w_i]; ``None`` until the first decode (all zeros). ``fresh`` [B] (bool, always
    on the CPU) marks streams whose next decode is a first chunk. Methods ending in ``_`` change this
    cache in place by rebinding its state tensors: nothing writes into a state tensor, so
    :meth:`copy` (shared tensors) is a snapshot. At 704x1280 the 5B pruned decoder's states are
    0.75 GiB per stream in bf16: a snapshot, an :meth:`index` of every stream and an :meth:`update_`
    of every stream copy none of it.
    """

    fresh: Tensor
    states: list[Tensor] | None = None

    @classmethod
    def new(cls, batch_size: int) -> DecodeCache:
        """A cache for ``batch_size`` fresh streams."""
        return cls(fresh=torch.ones(batch_size, dtype=torch.bool, device="cpu"))

    @property
    def batch_size(self) -> int:
        return int(self.fresh.shape[0])

    def _every(self, ix: Tensor) -> bool:
        """Whether the indices ``ix`` are every stream in order (the whole batch)."""
        return ix.numel() == self.batch_size and bool((ix == torch.arange(self.batch_size)).all())

    def _zeroed(self, ix: Tensor) -> None:
        if self.states is not None and ix.numel():
            ix = ix.to(self.states[0].device)  # once, not per slot: a host-to-device copy waits for the queue
            self.states = [s.index_fill(0, ix.to(s.device), 0) for s in self.states]

    def reset_(self, mask: Tensor | Sequence[bool]) -> DecodeCache:
        """Restart the streams where ``mask`` [B] is True: zero their state; next decode is a first chunk."""
        ix = _as_index(torch.as_tensor(mask, dtype=torch.bool, device="cpu"), self.batch_size)
        self.fresh[ix] = True
        self._zeroed(ix)
        return self

    def index(self, idx: Tensor | Sequence[int] | Sequence[bool]) -> DecodeCache:
        """A new cache of the streams ``idx`` (indices or a boolean mask); for every stream in order
        it shares this cache's state tensors (see the class docstring), else it holds copies."""
        ix = _as_index(idx, self.batch_size)
        if self.states is None:
            states = None
        elif self._every(ix):
            states = list(self.states)
        else:
            ixd = ix.to(self.states[0].device)  # once, not per slot (see _zeroed)
            states = [s.index_select(0, ixd.to(s.device)) for s in self.states]
        return DecodeCache(fresh=self.fresh[ix].clone(), states=states)

    def update_(self, idx: Tensor | Sequence[int] | Sequence[bool], other: DecodeCache) -> DecodeCache:
        """Write ``other`` (a cache of len(idx) streams, e.g. from :meth:`index`) back into streams ``idx``."""
        ix = _as_index(idx, self.batch_size)
        if ix.numel() != other.batch_size:
            raise ValueError(f"update_ got {ix.numel()} indices but a cache of batch size {other.batch_size}")
        if other.states is not None and self.states is not None and len(self.states) != len(other.states):
            raise ValueError(f"caches of different decoders: {len(self.states)} vs {len(other.states)} slots")
        self.fresh[ix] = other.fresh
        if other.states is None:
            self._zeroed(ix)
            return self
        if self._every(ix):  # the whole batch: take other's tensors (in this cache's device and dtype)
            like = other.states if self.states is None else self.states
            self.states = [o.to(device=s.device, dtype=s.dtype) for s, o in zip(like, other.states)]
        else:
            if self.states is None:
                self.states = [s.new_zeros((self.batch_size, *s.shape[1:])) for s in other.states]
            ixd = ix.to(self.states[0].device)  # once, not per slot (see _zeroed)
            self.states = [
                s.index_copy(0, ixd.to(s.device), o.to(device=s.device, dtype=s.dtype))
                for s, o in zip(self.states, other.states)
            ]
        return self

    def copy(self) -> DecodeCache:
        """A snapshot: its own ``fresh`` flags, the same state tensors (never written in place)."""
        return DecodeCache(fresh=self.fresh.clone(), states=None if self.states is None else list(self.states))

    def clone(self) -> DecodeCache:
        """A deep copy (state tensors copied)."""
        states = None if self.states is None else [s.clone() for s in self.states]
        return DecodeCache(fresh=self.fresh.clone(), states=states)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DecodeCache:
        """A cache with the states moved/cast (``fresh`` stays on the CPU)."""
        states = None if self.states is None else [s.to(device=device, dtype=dtype) for s in self.states]
        return DecodeCache(fresh=self.fresh.clone(), states=states)


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------


def _check_cfg(cfg: VAEConfig) -> None:
    for i, (t, s) in enumerate(zip(cfg.temporal_downsample, cfg.spatial_downsample)):
        if t and not s:
            raise ValueError(
                f"VAEConfig stage {i}: temporal_downsample without spatial_downsample is not a Wan2.2 layout; "
                "set spatial_downsample[i] = True or temporal_downsample[i] = False"
            )


class WanVAE(nn.Module):
    """Wan2.2 VAE: full encoder, decoder with widths scaled by ``1 - cfg.pruning_rate`` (MG-LightVAE).

    State-dict keys are the Wan-native names of ``Wan2.2_VAE.pth`` (``encoder.*``, ``conv1.*``,
    ``conv2.*``, ``decoder.*``); 196 tensors for the release config.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        _check_cfg(cfg)
        self.cfg = cfg
        z = cfg.z_dim
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # on [mu, log_var]
        self.conv2 = CausalConv3d(z, z, 1)  # before the decoder
        self.decoder = Decoder(cfg)
        self.init_latent_stats_()

    def init_latent_stats_(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """(Re)create the latent normalisation constants (buffers, not in the state dict)."""
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.latent_mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.cfg.latent_std, dtype=torch.float32, device=device).view(shape)
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("latent_mean", mean.to(dtype), persistent=False)
        self.register_buffer("latent_inv_std", (1.0 / std).to(dtype), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    # -- encode ----------------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        r, s = self.cfg.temporal_stride, self.cfg.spatial_stride
        t, h, w = video.shape[2:]
        if (t - 1) % r:
            raise ValueError(f"expected T = 1 + {r}k frames (e.g. 1, {1 + r}, {1 + 2 * r}), got T = {t}")
        if h % s or w % s:
            raise ValueError(f"expected H and W divisible by {s} (the spatial stride), got {h}x{w}")

    def encode_moments(self, video: Tensor, *, segment_frames: int | None = None) -> tuple[Tensor, Tensor]:
        """Raw (unnormalised) ``mu, log_var`` [B, z, F, h, w] of video [B, 3, T, H, W], T = 1 + r*k.

        The first frame is encoded alone, then ``segment_frames`` frames per call (default r = 4,
        as Wan2.2; any multiple of r gives the same result up to rounding).
        """
        self._check_video(video)
        r = self.cfg.temporal_stride
        seg = segment_frames or r
        if seg % r:
            raise ValueError(f"segment_frames must be a multiple of the temporal stride {r}, got {seg}")
        x = patchify(video.to(self.dtype), self.cfg.patch_size)  # [B, 3p^2, T, H/p, W/p], channels-last
        states: list[Tensor | None] = [None] * self.encoder.num_slots
        outs = [self.encoder(x[:, :, :1], states)]
        outs += [self.encoder(x[:, :, s : s + seg], states) for s in range(1, x.shape[2], seg)]
        h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        mu, log_var = self.conv1(h).chunk(2, dim=1)
        return mu, log_var

    def encode(self, video: Tensor, *, segment_frames: int | None = None) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k -> normalised latents [B, z, 1 + k, H/16, W/16].

        A single image (T = 1) gives one latent. Latents are (mu - mean) / std (spec §7.1).
        """
        mu, _ = self.encode_moments(video, segment_frames=segment_frames)
        return (mu - self.latent_mean) * self.latent_inv_std

    # -- decode ----------------------------------------------------------------------------------

    def new_cache(self, batch_size: int) -> DecodeCache:
        return DecodeCache.new(batch_size)

    def decode(
        self,
        z: Tensor,
        cache: DecodeCache | None = None,
        first_chunk: bool | None = None,
        *,
        segment: int = DEFAULT_SEGMENT,
        clamp: bool = True,
    ) -> tuple[Tensor, DecodeCache]:
        """Decode normalised latents [B, z, F, h, w] of a chunk -> (video [B, 3, T, H, W], new cache).

        T = 1 + 4(F - 1) for a first chunk (fresh streams), 4F afterwards. ``first_chunk`` defaults to
        whether the cache is fresh (all streams must agree; decode fresh and continuing streams in
        separate calls, see :meth:`DecodeCache.index`). ``cache=None`` starts fresh streams. The input
        cache is not modified. ``segment``: latents per decoder call (MG3: 4; any value gives the
        same result up to rounding). Output in the model dtype, clamped to [-1, 1] unless ``clamp=False``.
        """
        cfg = self.cfg
        if z.ndim != 5 or z.shape[1] != cfg.z_dim or z.shape[2] < 1:
            raise ValueError(f"expected latents [B, {cfg.z_dim}, F >= 1, h, w], got shape {tuple(z.shape)}")
        if segment < 1:
            raise ValueError(f"segment must be >= 1, got {segment}")
        cache = DecodeCache.new(z.shape[0]) if cache is None else cache
        if cache.batch_size != z.shape[0]:
            raise ValueError(f"latents have batch {z.shape[0]} but the cache holds {cache.batch_size} streams")
        first = self._first_chunk(cache, first_chunk)
        if cache.states is not None and len(cache.states) != self.decoder.num_slots:
            raise ValueError(f"cache has {len(cache.states)} slots, this decoder needs {self.decoder.num_slots}")

        x = z.to(self.dtype) / self.latent_inv_std + self.latent_mean
        x = self.conv2(x.contiguous(memory_format=_CL3D))  # activations stay channels-last throughout
        # fresh streams start from absent states whether or not a reset left zeros in the cache: the same
        # values (every decoder slot is a CausalConv3d, absent = zero padding), and a compiled decoder
        # runs a reset stream's first chunk on the graph of the very first one instead of a new compile
        fresh = first or cache.states is None
        states: list[Tensor | None] = [None] * self.decoder.num_slots if fresh else list(cache.states)
        outs = [
            self.decoder(
                _keep(x[:, :, s : s + segment]) if segment < x.shape[2] else x, states, drop_first=first and s == 0
            )
            for s in range(0, x.shape[2], segment)
        ]
        video = unpatchify(outs[0] if len(outs) == 1 else torch.cat(outs, dim=2), cfg.patch_size)
        if clamp:
            video = video.clamp(-1.0, 1.0) if torch.is_grad_enabled() else video.clamp_(-1.0, 1.0)
        new = DecodeCache(fresh=torch.zeros_like(cache.fresh), states=states)  # type: ignore[arg-type]
        return video, new

    @staticmethod
    def _first_chunk(cache: DecodeCache, first_chunk: bool | None) -> bool:
        fresh = cache.fresh
        if first_chunk is None:
            if fresh.all():
                return True
            if not fresh.any():
                return False
            raise ValueError(
                f"streams {fresh.nonzero().view(-1).tolist()} are fresh (first chunk) and the others are not; "
                "decode them in separate calls (DecodeCache.index / update_)"
            )
        if first_chunk and not fresh.all():
            bad = (~fresh).nonzero().view(-1).tolist()
            raise ValueError(f"first_chunk=True but streams {bad} are mid-stream; reset them first (cache.reset_)")
        if not first_chunk and fresh.any():
            bad = fresh.nonzero().view(-1).tolist()
            raise ValueError(f"first_chunk=False but streams {bad} are fresh; their next decode must be a first chunk")
        return bool(first_chunk)

    def forward(self, video: Tensor) -> Tensor:
        """Reconstruct a clip [B, 3, 1 + 4k, H, W] (encode, then decode as one first chunk)."""
        return self.decode(self.encode(video))[0]


def channels_last_(module: nn.Module) -> nn.Module:
    """Put 5-D (Conv3d) weights in channels_last_3d and 4-D (Conv2d) weights in channels_last, in place."""
    for name, p in module.named_parameters():
        if not name.endswith("weight"):
            continue
        if p.ndim == 5:
            p.data = p.data.contiguous(memory_format=_CL3D)
        elif p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return module


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

# Diffusers-style names of the MG-LightVAE files -> Wan-native names (spec §2.3), applied in order.
# {down} / {up} are the index of the resample layer after the residual blocks of a stage.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^quant_conv\.", "conv1."),
    (r"^post_quant_conv\.", "conv2."),
    (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
    (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."),
    (r"\.mid_block\.resnets\.0\.", ".middle.0."),
    (r"\.mid_block\.attentions\.0\.", ".middle.1."),
    (r"\.mid_block\.resnets\.1\.", ".middle.2."),
    (r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".downsamples.\1.downsamples.\2."),
    (r"\.down_blocks\.(\d+)\.downsampler\.", r".downsamples.\1.downsamples.{down}."),
    (r"\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r".upsamples.\1.upsamples.\2."),
    (r"\.up_blocks\.(\d+)\.upsampler\.", r".upsamples.\1.upsamples.{up}."),
    # inside residual blocks (after the renames above)
    (r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)\.norm1\.", r"\1.residual.0."),
    (r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)\.conv1\.", r"\1.residual.2."),
    (r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)\.norm2\.", r"\1.residual.3."),
    (r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)\.conv2\.", r"\1.residual.6."),
    (r"(\.middle\.[02]|samples\.\d+\.(?:down|up)samples\.\d+)\.conv_shortcut\.", r"\1.shortcut."),
)
_TRAINING_ONLY = ("dynamic_feature_projection_heads.",)


def convert_vae_state_dict(state: Mapping[str, Tensor], cfg: VAEConfig | None = None) -> dict[str, Tensor]:
    """Wan-native names for a VAE state dict in either key style; training-only keys dropped.

    Wan-native names pass through unchanged. ``cfg`` sets the resample index of a stage (release: 2
    in the encoder, 3 in the decoder).
    """
    cfg = cfg or VAEConfig()
    table = [
        (re.compile(p), r.replace("{down}", str(cfg.num_res_blocks)).replace("{up}", str(cfg.num_res_blocks + 1)))
        for p, r in _RENAMES
    ]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_TRAINING_ONLY):
            continue
        new = key
        for pattern, repl in table:
            new = pattern.sub(repl, new)
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (one of them is {key!r})")
        out[new] = value
    return out


def infer_pruning_rate(state: Mapping[str, Tensor], cfg: VAEConfig | None = None) -> float:
    """Decoder pruning rate of a checkpoint: 1 - decoder.conv1 out channels / full width (1024)."""
    cfg = cfg or VAEConfig()
    for key in ("decoder.conv1.weight", "decoder.conv_in.weight"):
        if key in state:
            full = cfg.decoder_dim * cfg.dim_mult[-1]
            return round(1.0 - state[key].shape[0] / full, 6)
    raise CheckpointError("cannot infer the pruning rate: no decoder.conv1.weight / decoder.conv_in.weight key")


def _expected(cfg: VAEConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in WanVAE(cfg).state_dict().items()}


def load_vae(
    root: str | Path,
    vae_type: str = "mg_lightvae_v2",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cfg: VAEConfig | None = None,
) -> WanVAE:
    """Load the release VAE from a checkpoint folder (spec §2.1).

    The encoder (and ``conv1``) always come from ``Wan2.2_VAE.pth``; the decoder (and ``conv2``) from
    the file of ``vae_type``: ``wan`` (full), ``mg_lightvae`` (``MG-LightVAE.pth``, p = 0.5) or
    ``mg_lightvae_v2`` (``MG-LightVAE_v2.pth``, p = 0.75, the release default). Both key styles load;
    keys and shapes are checked strictly. ``cfg`` (default: the release) sets the architecture; its
    pruning rate is replaced by the one of ``vae_type``. Returns an eval-mode model without gradients.
    """
    if vae_type not in VAE_FILES:
        raise ValueError(f"vae_type must be one of {sorted(VAE_FILES)}, got {vae_type!r}")
    root = Path(root)
    fname, rate = VAE_FILES[vae_type]
    cfg = (cfg or VAEConfig()).replace(pruning_rate=rate)

    wan_path = root / WAN_VAE_FILE
    wan = convert_vae_state_dict(read_torch_file(wan_path), cfg)
    check_state_dict(_expected(cfg.replace(pruning_rate=0.0)), wan, wan_path)
    if vae_type == "wan":
        state, source = wan, str(wan_path)
    else:
        light_path = root / fname
        light = convert_vae_state_dict(read_torch_file(light_path, inner=("state_dict", "gen_model")), cfg)
        found = infer_pruning_rate(light, cfg)
        if abs(found - rate) > 1e-6:
            raise CheckpointError(
                f"{light_path} has a decoder pruned by {found:g}, but vae_type {vae_type!r} expects {rate:g}; "
                "is the file renamed or swapped?"
            )
        expected = _expected(cfg)
        decoder_keys = {k for k in expected if k.startswith(("decoder.", "conv2."))}
        # The file also holds the student's own (pruned, unused) encoder: its names must be the
        # encoder's; its shapes are not checked.
        unknown = sorted(k for k in light if k not in expected)
        check_state_dict(
            {k: expected[k] for k in decoder_keys},
            {k: v for k, v in light.items() if k in decoder_keys or k in unknown},
            light_path,
        )
        state = {k: v for k, v in wan.items() if k not in decoder_keys} | {k: light[k] for k in decoder_keys}
        source = f"{wan_path} + {light_path}"

    with torch.device("meta"):
        model = WanVAE(cfg)
    state = {k: v.to(device) for k, v in state.items()}
    assign_state_dict(model, state, source, dtype=dtype, device=device)
    model.init_latent_stats_(device, dtype)
    if torch.device(device).type == "cuda":
        channels_last_(model)
    return model.eval().requires_grad_(False)
