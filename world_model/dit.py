"""The Matrix-Game 3.0 diffusion transformer (spec §3): Wan2.2-TI2V-5B plus camera, action and memory.

One forward predicts the flow v (about eps - x0) of a window of latent frames. Memory latents are
prepended as extra frames at timestep 0 and their outputs dropped. Tokens are the (1, 2, 2)
patches of the latent frames, frame-major (frame, row, column); each block runs

    self-attention (3-D RoPE, modulated by the timestep)  -> x + attn * g1
    camera injection                                      -> (1 + scale(h)) * x + shift(h)
    cross-attention to the text (release quirk, §13.1)    -> x = LN3(x); x + cross(x)
    action module (blocks in action_config.blocks)        -> x + mouse + keyboard residuals
    FFN (modulated)                                       -> x + ffn * g2

Parameter names are the checkpoint's keys (spec §2.2), so a release state dict loads as is.

Dtypes follow the release (spec §3): with bf16 weights the linears run in bf16 and attention in
bf16, while the timestep embedding, the modulation, the LayerNorms, the gated residual adds and the
output head run in fp32 (the release wraps them in fp32 autocast regions). The residual stream is
fp32 from the first gated add on (or bf16 between the blocks' steps after :meth:`MatrixGameDiT.set_residual_dtype`,
``RuntimeOptions.residual``: fewer bytes for the memory-bound passes, each step still computed in fp32). With fp32 weights everything is fp32. The release also runs each
block's self-attention q/k/v/o projections as fp32 GEMMs (spec §15.6); here they run in the weights'
dtype by default (faster), or in fp32 like the release after
:meth:`MatrixGameDiT.set_self_attn_projection_dtype` (``RuntimeOptions.self_attn_projections``).

Timesteps: the caller passes the values the model must see. The release fills its timestep map in
bf16, so the 3-step schedule 999/908/713 reaches the model as 1000/908/712 (spec §13.3).

Padding: the release zero-pads the token sequence to 17600 (and the camera tokens and timesteps
with it) and masks the padded keys in self-attention. Every other operation is per token, so the
valid tokens' outputs do not depend on the padding; this implementation does not pad.

The modulation depends on the timestep only, which is constant over a frame, so the timestep
embedding is computed per frame ([B, T, ...]) and broadcast over the frame's tokens.

Across the sampler steps of one window only the noisy latents and the timesteps change: the text
embedding, the camera tokens, RoPE and each block's camera modulation depend on (context, plucker,
positions) alone. Inside :func:`reuse_conditioning` a DiT with ``camera_cache`` on computes them
once per window and reuses them for every later step that passes the same tensors (exact: the
same operations on the same inputs). At 5B shapes that saves two of three camera branches per chunk
(4 GEMMs of [L, D] x [D, D] per block) for 2 x L x D cached values per block.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from world_model.action import ActionModule, xavier_init
from world_model.attention import AttentionKernel
from world_model.checks import whole, whole_or_none
from world_model.config import DiTConfig
from world_model.rope import apply_rope, rope_cos_sin

__all__ = [
    "MatrixGameDiT",
    "unpatchify_tokens",
    "DiTBlock",
    "CameraModulation",
    "CleanTokens",
    "QKVAttention",
    "reuse_conditioning",
    "timestep_sinusoid",
]


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep features [..., dim] fp32: cos half first, then sin (float64 inside).

    Frequency k of dim/2 is 10000 ** (-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)  # [dim/2]
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer in fp32 whatever its weight dtype (the release's fp32 autocast regions)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def _layer_norm(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """LayerNorm over the last dim in fp32 (affine when ``norm`` is given); returns x's dtype.

    Like the release, the first block's input (the bf16 patch embedding) is normalised back to
    bf16; later blocks see the fp32 residual stream.
    """
    weight = bias = None
    if norm is not None:
        weight, bias = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps).to(x.dtype)


def _tokens_from(cam: torch.Tensor | CameraModulation, skip: int) -> torch.Tensor | CameraModulation:
    """A block's camera input (tokens [B, L, D] or its modulation) without its first ``skip`` tokens."""
    if not skip:
        return cam
    if isinstance(cam, CameraModulation):
        return CameraModulation(cam.scale[:, skip:], cam.shift[:, skip:])
    return cam[:, skip:]


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """View tokens [B, L, D] as [B, T, S, D] (S = L / T tokens per frame)."""
    return x.unflatten(1, (frames, -1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift in fp32, with x [B, L, D] and per-frame shift/scale [B, T, D]."""
    T = shift.shape[1]
    out = _per_frame(x.float(), T) * (1 + scale[:, :, None]) + shift[:, :, None]
    return out.flatten(1, 2)


def _gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate in fp32, with x, y [B, L, D] and a per-frame gate [B, T, D]."""
    T = gate.shape[1]
    return x.float() + (_per_frame(y, T) * gate[:, :, None]).flatten(1, 2)


class RMSNorm(nn.Module):
    """RMSNorm with a learned weight: normalise in fp32, cast back, then scale (q/k norms)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class QKVAttention(nn.Module):
    """q, k, v, o projections with optional q/k RMSNorm over the full dim (names of spec §2.2), and
    ``attn``, the attention operation (no parameters; its backend is set from the runtime options)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attn = AttentionKernel()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, D] -> [B, L, N, Dh]


def _project(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``layer(x)`` in the weight dtype (``dtype`` None), else one GEMM in ``dtype`` on the weights cast to it."""
    if dtype is None or dtype == layer.weight.dtype:
        return layer(x.to(layer.weight.dtype))
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


class SelfAttention(QKVAttention):
    """Self-attention. ``projection_dtype`` (None: the weights' dtype) is the dtype of the q/k/v/o
    GEMMs; :meth:`MatrixGameDiT.set_self_attn_projection_dtype` sets it from the runtime options.
    With bf16 weights, ``torch.float32`` computes them as the release's bf16 inference does (an fp32
    autocast region around the self-attention, spec §15.6): fp32 GEMMs on the weights cast up, then
    q/k/v cast back to bf16 for the attention kernel, and an fp32 output projection."""

    projection_dtype: torch.dtype | None = None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, clean: CleanTokens | None = None
    ) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; cos/sin [B, L, N, Dh/2] rotate q and k (fp32), attention in weight dtype.
        ``clean`` (the context cache, :class:`CleanTokens`): keep the first ``clean.n`` tokens' keys and values, or
        attend to the kept ones before x's own (x then holds the noisy tokens alone)."""
        dtype, kernel_dtype = self.projection_dtype, self.q.weight.dtype
        q = apply_rope(self._heads(self.norm_q(_project(self.q, x, dtype))), cos, sin)  # [B, L, N, Dh] fp32
        k = apply_rope(self._heads(self.norm_k(_project(self.k, x, dtype))), cos, sin).to(kernel_dtype)
        v = self._heads(_project(self.v, x, dtype)).to(kernel_dtype)
        if clean is not None:
            k, v = clean.keys_values(k, v)
        out = self.attn(q.to(kernel_dtype), k, v)  # [B, L, N, Dh]
        return _project(self.o, out.flatten(2), dtype)


class CrossAttention(QKVAttention):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] attends to every row of context [B, Lt, D] (no key mask, like the release)."""
        x = x.to(self.q.weight.dtype)
        q = self._heads(self.norm_q(self.q(x)))  # [B, L, N, Dh]
        k = self._heads(self.norm_k(self.k(context)))  # [B, Lt, N, Dh]
        v = self._heads(self.v(context))
        return self.o(self.attn(q, k, v).flatten(2))


class CameraModulation(NamedTuple):
    """A block's camera injection ``x -> x * scale + shift``: scale = 1 + cam_scale_layer(h), shift =
    cam_shift_layer(h), both [B, L, D] in the weights' dtype (h: the injector's output)."""

    scale: torch.Tensor
    shift: torch.Tensor


class CleanTokens:
    """One block's share of the context cache (``RuntimeOptions.context_cache``): the keys and values of a window's
    clean tokens (memory and context frames, timestep 0; the first ``n`` tokens) in its self-attention and, in a
    block with an action module, its mouse branch's keys and values of their frames, kept at the window's first
    sampler step (``recording``) and used in place of recomputing them at its later steps, when the block sees the
    noisy tokens alone."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.recording = True
        self.calls = 0  # forwards run with this record (the window's sampler steps of its branch)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.mouse_k: torch.Tensor | None = None
        self.mouse_v: torch.Tensor | None = None

    def begin_step(self, refresh: int) -> None:
        """Before a forward: record at the first step and, with ``refresh`` r > 0, at every r-th one after it."""
        self.recording = self.calls == 0 or (refresh > 0 and self.calls % refresh == 0)

    def end_step(self) -> None:
        self.calls += 1

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recording: keep the clean tokens' k, v [B, n, N, Dh] and return k, v; later: the kept ones before k, v."""
        if self.recording:
            self.k, self.v = k[:, : self.n].clone(), v[:, : self.n].clone()  # eager: not views (compiled: compact())
            return k, v
        return torch.cat([self.k, k], dim=1), torch.cat([self.v, v], dim=1)

    def mouse_keys_values(self, k: torch.Tensor, v: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The action module's mouse branch (attention over time per spatial location, k, v [B*S, T, N, Dh]):
        recording, keep the first ``frames`` (the clean ones) and return k, v; later, the kept ones before k, v."""
        if self.recording:
            self.mouse_k, self.mouse_v = k[:, :frames].clone(), v[:, :frames].clone()
            return k, v
        return torch.cat([self.mouse_k, k], dim=1), torch.cat([self.mouse_v, v], dim=1)

    def compact(self) -> None:
        """After the block's forward, outside its compiled graph: the kept tensors in storage of their own. A compiled
        block drops the ``clone`` of a leading slice (inductor removes a copy whose output has its input's sizes and
        strides) and returns a view of the whole window's keys and values, which then stay alive: on the 5B 2.1x the
        kept bytes (8.6 GiB where 4.1 were kept, session 48). Eager, a no-op."""
        if not self.recording:
            return
        for name in ("k", "v", "mouse_k", "mouse_v"):
            t = getattr(self, name)
            if t is not None and t.untyped_storage().nbytes() > t.numel() * t.element_size():
                setattr(self, name, t.clone())


class DiTBlock(nn.Module):
    """One transformer block (spec §3 step 6). ``has_action`` adds ``action_model``.

    ``residual_dtype`` (None: fp32, the release's) is the dtype the residual stream is stored in between the
    block's steps; :meth:`MatrixGameDiT.set_residual_dtype` sets it from ``RuntimeOptions.residual``. Each step
    still computes in fp32 and rounds its result once: bf16 halves the bytes that the memory-bound passes
    (norms, modulation, gated adds, camera injection) read and write."""

    residual_dtype: torch.dtype | None = None

    def __init__(self, cfg: DiTConfig, has_action: bool) -> None:
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.replace_residual_with_norm3 = cfg.use_memory
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.empty(1, 6, d))
        self.cam_injector_layer1 = nn.Linear(d, d)
        self.cam_injector_layer2 = nn.Linear(d, d)
        self.cam_scale_layer = nn.Linear(d, d)
        self.cam_shift_layer = nn.Linear(d, d)
        self.action_model = ActionModule(cfg.action_config, eps=cfg.eps) if has_action else None

    def _norm3(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm3 is None else _layer_norm(x, self.eps, self.norm3)

    def camera_modulation(self, cam: torch.Tensor) -> CameraModulation:
        """The camera injection of embedded camera tokens cam [B, L, D] (a function of the camera alone)."""
        h = self.cam_injector_layer2(F.silu(self.cam_injector_layer1(cam))) + cam
        return CameraModulation(1 + self.cam_scale_layer(h), self.cam_shift_layer(h))

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: torch.Tensor,
        cam: torch.Tensor | CameraModulation,
        grid: tuple[int, int, int],
        mouse: torch.Tensor | None,
        keyboard: torch.Tensor | None,
        num_memory: int,
        clean: CleanTokens | None = None,
    ) -> torch.Tensor:
        """x [B, L, D] (fp32 after the first block), e0 [B, T, 6, D] fp32 per-frame timestep
        projection, context [B, Lt, D] embedded text, cam [B, L, D] embedded camera tokens, or this
        block's :meth:`camera_modulation` of them computed before (the same result).

        e0 may also hold one row per run of consecutive tokens that share a timestep (runs of equal
        length): sequence parallelism (world_model.parallel) hands a block one rank's tokens, and
        e0 per run of them, through hooks.

        ``clean`` (the context cache): at a window's first step, keep the clean tokens' keys and values (and the
        action module's mouse branch's); at its later steps x, e0, cos, sin and cam hold the noisy frames' tokens
        alone (grid stays the whole window's: the action module's windows and positions cover all its frames).
        """
        mod = self.modulation.float() + e0  # [B, T, 6, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)

        y = self.self_attn(_modulate(_layer_norm(x, self.eps), shift1, scale1), cos, sin, clean)
        x = _gated_add(x, y, gate1)

        scale, shift = cam if isinstance(cam, CameraModulation) else self.camera_modulation(cam)
        x = self._residual(x * scale + shift)  # fp32 x: the product and sum in fp32, rounded once

        if self.replace_residual_with_norm3:  # release quirk (spec §13.1): the residual is LN3(x)
            x = self._norm3(x)
            x = x + self.cross_attn(x, context)
        else:  # standard Wan: x + CrossAttn(LN3(x))
            x = x + self.cross_attn(self._norm3(x), context)

        if self.action_model is not None:  # with a cache's later step, on the noisy tokens and the kept mouse keys
            x = self.action_model(x, grid, mouse, keyboard, num_memory, clean)

        y = self.ffn(_modulate(_layer_norm(x, self.eps), shift2, scale2).to(self.ffn[0].weight.dtype))
        return self._residual(_gated_add(x, y, gate2))

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        """x (computed in fp32) stored as the residual stream is: as it is, or rounded to ``residual_dtype``."""
        return x if self.residual_dtype is None else x.to(self.residual_dtype)


class Head(nn.Module):
    """Output head: per-frame (shift, scale) = modulation + e, non-affine LN, linear; all in fp32."""

    def __init__(self, dim: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_channels)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], e [B, T, D] fp32 (un-projected timestep embedding) -> [B, L, out_channels] fp32."""
        shift, scale = (self.modulation.float() + e[:, :, None]).unbind(2)  # [B, T, D] each
        return _linear_fp32(self.head, _modulate(_layer_norm(x.float(), self.eps), shift, scale))


class _Conditioning:
    """What one forward computes from (context, plucker, positions) alone, for the tensors in ``key``:
    the embedded text [B, text_len, D], the camera tokens [B, L, D], RoPE cos/sin [B, L, N, Dh/2] and,
    when ``per_block``, each block's :class:`CameraModulation` the first time it is asked for."""

    def __init__(self, key, context, cam, cos, sin, per_block: bool) -> None:
        self.key = key
        self.versions = tuple(t._version for t in key)
        self.context, self.cam, self.cos, self.sin = context, cam, cos, sin
        self.modulations: dict[int, CameraModulation] | None = {} if per_block else None
        self.clean: list[tuple[tuple, list[CleanTokens]]] = []  # the context cache: per (mouse, keyboard, memory)

    def clean_tokens(self, inputs: tuple, n: int, num_blocks: int) -> list[CleanTokens]:
        """The context cache's per-block records for the forwards with these (mouse, keyboard, memory) tensors (the
        same objects: a guidance branch with other actions or no memory has its own), new ones (recording) at the
        first."""
        for key, blocks in self.clean:
            if all(a is b for a, b in zip(key, inputs)):
                return blocks
        blocks = [CleanTokens(n) for _ in range(num_blocks)]
        self.clean.append((inputs, blocks))
        return blocks

    def matches(self, key: tuple[torch.Tensor, ...]) -> bool:
        """The same tensor objects, unchanged in place since (the entry holds them, so ids stay unique)."""
        return all(a is b for a, b in zip(key, self.key)) and self.versions == tuple(t._version for t in key)

    def camera(self, i: int, block: DiTBlock, modulation=None) -> torch.Tensor | CameraModulation:
        """What block ``i`` gets as its camera input: the tokens, or its cached modulation, computed by
        ``modulation(block, cam)`` (default :meth:`DiTBlock.camera_modulation`)."""
        if self.modulations is None:
            return self.cam
        if i not in self.modulations:
            self.modulations[i] = (modulation or DiTBlock.camera_modulation)(block, self.cam)
        return self.modulations[i]


def unpatchify_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Tokens [B, L, ph * pw * C] of the token grid (T, h', w'), each patch's values ordered (ph, pw, C) as the DiT's
    head writes them -> [B, C, T, h' ph, w' pw]."""
    (T, h, w), (ph, pw) = grid, patch
    return rearrange(tokens, "b (t h w) (ph pw c) -> b c t (h ph) (w pw)", t=T, h=h, w=w, ph=ph, pw=pw)


class MatrixGameDiT(nn.Module):
    """The Matrix-Game 3.0 DiT. State-dict keys are exactly the release checkpoint's (spec §2.2).

    ``camera_cache``: inside :func:`reuse_conditioning`, compute the conditioning of a window once
    and reuse it for the window's later sampler steps (set from ``RuntimeOptions.camera_cache``).
    ``camera_modulation_fn(block, cam)``: how a cached window computes each block's camera modulation
    (:meth:`DiTBlock.camera_modulation`; the runtime's ``compile`` puts a compiled one here, as the
    cached modulation runs outside the blocks' compiled forwards). A plain function of the block, so
    that a copy of the DiT runs it on its own weights.
    """

    camera_cache: bool = True
    context_cache: bool = False  # RuntimeOptions.context_cache (an approximation; off: the release's computation)
    camera_modulation_fn = None  # None: DiTBlock.camera_modulation

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, patch = cfg.dim, tuple(cfg.patch_size)
        if patch[0] != 1:
            raise ValueError(f"expected a temporal patch size of 1 (one token frame per latent frame), got {patch}")
        if tuple(cfg.window_size) != (-1, -1):
            raise ValueError(f"expected window_size (-1, -1) (global attention, the release), got {cfg.window_size}")
        patch_volume = math.prod(patch)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=patch, stride=patch)
        self.patch_embedding_wancamctrl = nn.Linear(cfg.plucker_channels * patch_volume, d)
        self.c2ws_hidden_states_layer1 = nn.Linear(d, d)
        self.c2ws_hidden_states_layer2 = nn.Linear(d, d)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        action_blocks = set(cfg.action_config.blocks) if cfg.action_config is not None else set()
        self.blocks = nn.ModuleList(DiTBlock(cfg, i in action_blocks) for i in range(cfg.num_layers))
        self.head = Head(d, cfg.out_dim * patch_volume, cfg.eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Training init (spec §2.2): Xavier-uniform linears and patch embedding, zero biases,
        normal(0.02) text/time embeddings, zero head and camera scale/shift, randn/sqrt(dim)
        modulations; action modules use their own init. Works on the meta device."""
        xavier_init(self, (nn.LayerNorm, RMSNorm))
        w = self.patch_embedding.weight  # Xavier on the [out, in * patch] view
        bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
        nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        nn.init.zeros_(self.head.head.bias)
        std = self.cfg.dim**-0.5
        nn.init.normal_(self.head.modulation, std=std)
        for block in self.blocks:
            nn.init.normal_(block.modulation, std=std)
            for layer in (block.cam_scale_layer, block.cam_shift_layer):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            if block.action_model is not None:
                block.action_model.reset_parameters()

    def set_self_attn_projection_dtype(self, dtype: torch.dtype | None) -> None:
        """Compute every block's self-attention q/k/v/o projections in ``dtype`` (None: the weights'
        dtype, the fast default). ``torch.float32`` on a bf16 model reproduces the release's bf16
        numbers (spec §15.6); on an fp32 model it changes nothing. Set from
        ``RuntimeOptions.self_attn_projections`` when a model is loaded."""
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"expected None or a float dtype for the self-attention projections, got {dtype}")
        for block in self.blocks:
            block.self_attn.projection_dtype = dtype

    def set_residual_dtype(self, dtype: torch.dtype | None) -> None:
        """Store every block's residual stream in ``dtype`` (None: fp32, the release's; see :class:`DiTBlock`).
        Set from ``RuntimeOptions.residual`` when a model is loaded."""
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"expected None (fp32) or a 16-bit float dtype for the residual stream, got {dtype}")
        for block in self.blocks:
            block.residual_dtype = dtype

    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        plucker: torch.Tensor,
        mouse: torch.Tensor | None,
        keyboard: torch.Tensor | None,
        positions: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow of a window of latents.

        x [B, in_dim, F, h, w]: window latents (clean context frames and noisy frames).
        t [B, F]: timestep value of each window frame as the model must see it (context frames 0).
        context [B, Lt, text_dim]: text features, Lt <= text_len (zero-padded to text_len here).
        plucker [B, plucker_channels, M + F, h, w]: camera embedding, memory frames first.
        mouse [B, Nf, mouse_dim_in], keyboard [B, Nf, keyboard_dim_in]: the window's per-pixel-frame
        actions (ignored without an action module).
        positions [B, M + F] int: absolute latent time index of each frame for RoPE, memory first.
        memory [B, in_dim, M, h, w] or None: memory latents, seen at timestep 0.
        Returns v [B, out_dim, F, h, w] fp32 (memory frames dropped).
        """
        cfg = self.cfg
        _, ph, pw = cfg.patch_size
        self._check_inputs(x, t, context, plucker, positions, memory)
        B = x.shape[0]
        M = 0 if memory is None else memory.shape[2]
        if memory is not None:
            x = torch.cat([memory.to(x.dtype), x], dim=2)  # [B, C, T, h, w], T = M + F
            t = torch.cat([t.new_zeros(B, M), t], dim=1)  # [B, T]
        wdtype = self.patch_embedding.weight.dtype
        grid = (x.shape[2], x.shape[3] // ph, x.shape[4] // pw)  # token grid (T, h', w')
        cond = self._conditioning(context, plucker, positions, grid)
        clean = self._clean_tokens(cond, mouse, keyboard, memory, M, grid)
        skip = kept = 0  # tokens and frames (memory first) the blocks skip: a context cache's later steps keep them
        if clean is not None:
            for record in clean:
                record.begin_step(_scope.context_cache_refresh)
        if clean is not None and not clean[0].recording:
            skip = clean[0].n
            kept = skip // (grid[1] * grid[2])
            x, t = x[:, :, kept:], t[:, kept:]
        # [B, L, D], L = T * h' * w', frame-major; contiguous, as every block's output is: the compiled
        # blocks then share one graph per shape (a transposed first input was a graph of its own)
        x = self.patch_embedding(x.to(wdtype)).flatten(2).transpose(1, 2).contiguous()

        e, e0 = self._time_embedding(t)
        cos, sin = (cond.cos[:, skip:], cond.sin[:, skip:]) if skip else (cond.cos, cond.sin)
        for i, block in enumerate(self.blocks):
            cam = _tokens_from(cond.camera(i, block, self.camera_modulation_fn), skip)
            args = (x, e0, cos, sin, cond.context, cam, grid, mouse, keyboard, M)
            # the ten positional arguments sequence parallelism's hooks expect, the kept tokens only when cached
            if clean is None:
                x = block(*args)
            else:
                x = block(*args, clean[i])
                clean[i].compact()  # before the next block: each block's whole-window buffers freed in turn
        if clean is not None:
            for record in clean:
                record.end_step()

        out = self.head(x, e)  # [B, L, ph * pw * out_dim] fp32
        if skip:  # the clean window frames' flow is not computed: zeros (samplers step the noisy frames alone)
            v = self.unpatchify(out, (grid[0] - kept, grid[1], grid[2]))
            return torch.cat([v.new_zeros(v.shape[0], v.shape[1], kept - M, *v.shape[3:]), v], dim=2)
        return self.unpatchify(out, grid)[:, :, M:]

    def _clean_tokens(
        self, cond: _Conditioning, mouse, keyboard, memory, num_memory: int, grid: tuple[int, int, int]
    ) -> list[CleanTokens] | None:
        """The context cache's records for this forward (see :class:`CleanTokens`), or None where it is off: the
        DiT's ``context_cache`` off, no cached conditioning (no scope open, or gradients on), or a scope opened
        without ``context_frames``."""
        frames = getattr(_scope, "context_frames", None)
        if not self.context_cache or frames is None or cond.modulations is None:  # modulations: a scope's cache
            return None
        if num_memory + frames == 0:  # nothing clean to keep
            return None
        if not 0 < num_memory + frames < grid[0]:
            raise ValueError(
                f"context_frames={frames} of a window of {grid[0] - num_memory} frames: no noisy frame left"
            )
        n = (num_memory + frames) * grid[1] * grid[2]
        return cond.clean_tokens((mouse, keyboard, memory), n, len(self.blocks))

    def _conditioning(
        self, context: torch.Tensor, plucker: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int, int]
    ) -> _Conditioning:
        """Text embedding, camera tokens and RoPE of one forward: the cached ones when this window
        computed them already (see :func:`reuse_conditioning`), else new ones (cached when a cache is open)."""
        caches = getattr(_scope, "caches", None)  # this thread's open reuse_conditioning scope
        cache = (
            caches.get(id(self)) if caches is not None and self.camera_cache and not torch.is_grad_enabled() else None
        )
        key = (context, plucker, positions)
        if cache is not None:
            for entry in cache:
                if entry.matches(key):
                    return entry
        cfg = self.cfg
        # Text: zero-pad to text_len rows, then embed. [B, text_len, D]
        text = F.pad(context.to(self.patch_embedding.weight.dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        cos, sin = rope_cos_sin(
            positions,
            grid[1:],
            head_dim=cfg.head_dim,
            num_heads=cfg.num_heads,
            sigma_theta=cfg.sigma_theta,
            max_len=cfg.rope_max_len,
        )  # [B, L, N, Dh/2] each
        entry = _Conditioning(
            key, self.text_embedding(text), self._camera_tokens(plucker), cos, sin, per_block=cache is not None
        )
        if cache is not None:
            cache.append(entry)
        return entry

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output tokens [B, L, ph * pw * out_dim] of the token grid (T, h', w') -> [B, out_dim, T, h, w]."""
        return unpatchify_tokens(tokens, grid, tuple(self.cfg.patch_size[1:]))

    def _time_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps t [B, T] -> e [B, T, D] and e0 [B, T, 6, D], all in fp32."""
        emb, proj = self.time_embedding, self.time_projection
        e = timestep_sinusoid(t, self.cfg.freq_dim)  # [B, T, freq_dim]
        e = _linear_fp32(emb[2], F.silu(_linear_fp32(emb[0], e)))
        e0 = _linear_fp32(proj[1], F.silu(e)).unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def _camera_tokens(self, plucker: torch.Tensor) -> torch.Tensor:
        """plucker [B, Cp, T, h, w] -> [B, L, D]; each patch vector is ordered (channel, ph, pw)."""
        _, ph, pw = self.cfg.patch_size
        w_dtype = self.patch_embedding_wancamctrl.weight.dtype
        p = rearrange(plucker.to(w_dtype), "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=ph, pw=pw)
        p = self.patch_embedding_wancamctrl(p)
        return p + self.c2ws_hidden_states_layer2(F.silu(self.c2ws_hidden_states_layer1(p)))

    def _check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        plucker: torch.Tensor,
        positions: torch.Tensor,
        memory: torch.Tensor | None,
    ) -> None:
        cfg = self.cfg
        _, ph, pw = cfg.patch_size
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"expected x [B, {cfg.in_dim}, F, h, w], got shape {tuple(x.shape)}")
        B, _, F_win, h, w = x.shape
        if h % ph or w % pw:
            raise ValueError(f"expected x height/width divisible by the patch {(ph, pw)}, got {h}x{w}")
        M = 0
        if memory is not None:
            M = memory.shape[2] if memory.ndim == 5 else -1
            if memory.shape != (B, cfg.in_dim, M, h, w):
                raise ValueError(f"expected memory [B={B}, {cfg.in_dim}, M, {h}, {w}], got shape {tuple(memory.shape)}")
        if t.shape != (B, F_win):
            raise ValueError(
                f"expected t [B={B}, F={F_win}] (one timestep per window frame), got shape {tuple(t.shape)}"
            )
        if (
            context.ndim != 3
            or context.shape[0] != B
            or context.shape[2] != cfg.text_dim
            or context.shape[1] > cfg.text_len
        ):
            raise ValueError(
                f"expected context [B={B}, Lt <= {cfg.text_len}, {cfg.text_dim}], got shape {tuple(context.shape)}"
            )
        want = (B, cfg.plucker_channels, M + F_win, h, w)
        if tuple(plucker.shape) != want:
            raise ValueError(f"expected plucker {list(want)} (memory frames first), got shape {tuple(plucker.shape)}")
        if tuple(positions.shape) != (B, M + F_win):
            raise ValueError(
                f"expected positions [B={B}, M+F={M + F_win}] (memory first), got shape {tuple(positions.shape)}"
            )


_scope = threading.local()  # per thread: {id(model): [_Conditioning]} of the open reuse_conditioning scope


@contextmanager
def reuse_conditioning(
    dit: nn.Module, context_frames: int | None = None, context_cache_refresh: int = 0
) -> Iterator[None]:
    """Scope of one window's sampling: inside it every :class:`MatrixGameDiT` in ``dit`` (itself, or
    the experts of a MoE) with ``camera_cache`` on computes the text embedding, camera tokens, RoPE
    and per-block camera modulation once per distinct (context, plucker, positions) tensors and
    reuses them (exact), while gradients are off. Caches are dropped on exit. A scope belongs to its
    thread (threads sharing a model, e.g. device groups of a vector env, each have their own); in
    one thread scopes do not nest.

    ``context_frames`` (c): the window's first c frames are clean context (timestep 0), the same latents at every
    call in the scope (``window.sample_window``'s contract; not checked, which would wait for the device). A DiT with
    ``context_cache`` on (``RuntimeOptions.context_cache``) then computes the clean tokens (memory and context) at
    the first call for each (mouse, keyboard, memory) tensors only, keeps each block's keys and values of them
    (:class:`CleanTokens`), and at the later calls runs its blocks on the noisy frames' tokens alone, attending to the
    kept ones: the clean tokens' hidden states frozen at the first step (an approximation: the release recomputes
    them at every step, where they attend to the partly denoised frames). The clean frames' flow is then returned as
    zeros. ``context_cache_refresh`` (r > 0, ``RuntimeOptions.context_cache_refresh``): they are recomputed and kept
    again at every r-th call of a record (0: the first call only)."""
    if getattr(_scope, "caches", None) is not None:
        raise RuntimeError("reuse_conditioning scopes do not nest: one window at a time per thread")
    whole_or_none(context_frames, "context_frames", note="None: all")
    whole(context_cache_refresh, "context_cache_refresh", note="0: the first call only")
    _scope.caches = {id(m): [] for m in dit.modules() if isinstance(m, MatrixGameDiT)}
    _scope.context_frames = context_frames
    _scope.context_cache_refresh = context_cache_refresh
    try:
        yield
    finally:
        _scope.caches = None
        _scope.context_frames = None
        _scope.context_cache_refresh = 0
