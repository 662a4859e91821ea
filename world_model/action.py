"""Keyboard/mouse action module of the DiT (spec §4.3), present in blocks ``ActionConfig.blocks``.

Actions come per pixel frame: mouse [B, Nf, 2] (continuous), keyboard [B, Nf, 6] (multi-hot). Each
latent frame sees a sliding window of ``W * r`` pixel frames (W = ``windows_size`` latents, r = VAE
time compression; 12 frames for the release):

- Nf = r*k + 1 (first clip, causal first frame): prepend ``W*r`` copies of frame 0, latent i sees
  frames r*i - W*r ... r*i - 1;
- Nf = r*k (later clips): prepend ``(W-1)*r`` copies, latent i sees frames r*i - (W-1)*r ... r*i + r - 1.

Memory latents (in front of the window) get the null actions (mouse +1, keyboard -1) in every slot.

Mouse branch: per spatial location, self-attention over time of MLP([x, mouse window]).
Keyboard branch: per spatial location, the T queries (from x after the mouse residual) attend to
the T keyboard-window tokens, which are shared by all locations of one batch item.
Both use a 1-D interleaved RoPE over the time index; memory positions 0..M-1 and window positions
0..N-1 each restart at 0 (spec §4.3 step 5).

Dtypes: linears, LayerNorm and attention run in the weight dtype (bf16 for the release), RoPE in
fp32; the residuals are added in the dtype of ``x`` (fp32 in the DiT's residual stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from einops import rearrange, repeat

from world_model.attention import AttentionKernel
from world_model.config import ActionConfig

if TYPE_CHECKING:
    from world_model.dit import CleanTokens

__all__ = ["NULL_MOUSE", "NULL_KEYBOARD", "ActionModule", "num_action_latents", "group_frames"]

NULL_MOUSE = 1.0  # unconditional / memory mouse value (spec §4.1)
NULL_KEYBOARD = -1.0  # unconditional / memory keyboard value (spec §4.1)


def _window_padding(num_frames: int, windows_size: int, ratio: int) -> int:
    """Copies of frame 0 prepended before grouping (12 or 8 for the release)."""
    if ratio > 1 and num_frames % ratio == 1:
        return windows_size * ratio
    if num_frames > 0 and num_frames % ratio == 0:
        return (windows_size - 1) * ratio
    raise ValueError(
        f"expected the number of action frames to be {ratio}k+1 (first clip) or a multiple of {ratio} "
        f"(later clips), got {num_frames}"
    )


def num_action_latents(num_frames: int, windows_size: int = 3, ratio: int = 4) -> int:
    """Latent frames covered by ``num_frames`` per-pixel-frame actions (57 -> 15, 56 -> 14)."""
    pad = _window_padding(num_frames, windows_size, ratio)
    return (num_frames + pad - windows_size * ratio) // ratio + 1


def group_frames(actions: torch.Tensor, windows_size: int = 3, ratio: int = 4) -> torch.Tensor:
    """Sliding action windows per latent: [B, Nf, C] -> [B, N, W*r, C] (frame 0 repeated in front)."""
    if actions.ndim != 3:
        raise ValueError(f"expected actions [B, Nf, C], got shape {tuple(actions.shape)}")
    pad = _window_padding(actions.shape[1], windows_size, ratio)
    padded = torch.cat([actions[:, :1].expand(-1, pad, -1), actions], dim=1)  # [B, pad + Nf, C]
    windows = padded.unfold(1, windows_size * ratio, ratio)  # [B, N, C, W*r]
    return windows.transpose(2, 3)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 (the release); fp64 stays fp64 (reference checks)."""
    return torch.promote_types(dtype, torch.float32)


def _rope_cos_sin(
    positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved-real RoPE tables [T, dim] (each pair's angle repeated twice), built in fp64."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
    freqs = theta**-exponents  # [dim/2]: theta^(-2j/dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]  # [T, dim/2]
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``r = cos.shape[-1]`` dims of x [..., D] in cos's dtype; the rest see position 0.

    cos/sin must broadcast against x[..., :r] (e.g. [T, 1, r] for x [B, T, N, D]). Pair (2j, 2j+1)
    becomes (a cos - b sin, b cos + a sin).
    """
    r = cos.shape[-1]
    head, tail = x[..., :r].to(cos.dtype), x[..., r:]
    pairs = rearrange(head, "... (p two) -> ... p two", two=2)
    rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "... p two -> ... (p two)")
    return torch.cat([(head * cos + rotated * sin).to(x.dtype), tail], dim=-1)


def xavier_init(module: nn.Module, norms: tuple[type[nn.Module], ...]) -> None:
    """The release's training init of ``module``'s linears and norms, in ``modules()`` order: Xavier-uniform
    weights and zero biases for each ``nn.Linear``, unit weights and zero biases for each module of a ``norms``
    type."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, norms):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class _HeadRMSNorm(nn.Module):
    """RMSNorm over the head dim. The release ignores ``weight`` (spec §13.2) unless ``apply_weight``."""

    def __init__(self, dim: int, eps: float, apply_weight: bool) -> None:
        super().__init__()
        self.eps = eps
        self.apply_weight = apply_weight
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.apply_weight:  # release S1: normalise only, in the input dtype
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        dtype = _at_least_fp32(x.dtype)
        xf = x.to(dtype)
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(dtype)
        return out.to(x.dtype)


class ActionModule(nn.Module):
    """Mouse and keyboard conditioning of one DiT block. Parameter names are the checkpoint's (§2.2)."""

    def __init__(self, cfg: ActionConfig, eps: float = 1e-6) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg
        win = c.frames_per_window
        bias = c.qkv_bias
        if c.enable_mouse:
            self._check_rope(c.mouse_qk_dim_list, c.mouse_hidden_dim, "mouse_qk_dim_list", "mouse_hidden_dim")
            self.mouse_mlp = nn.Sequential(
                nn.Linear(c.mouse_dim_in * win + c.img_hidden_size, c.mouse_hidden_dim),
                nn.GELU(approximate="tanh"),
                nn.Linear(c.mouse_hidden_dim, c.mouse_hidden_dim),
                nn.LayerNorm(c.mouse_hidden_dim, eps=1e-5),
            )
            self.t_qkv = nn.Linear(c.mouse_hidden_dim, 3 * c.mouse_hidden_dim, bias=bias)
            if c.qk_norm:
                dm = c.mouse_hidden_dim // c.heads_num
                self.img_attn_q_norm = _HeadRMSNorm(dm, eps, c.apply_qk_norm_weight)
                self.img_attn_k_norm = _HeadRMSNorm(dm, eps, c.apply_qk_norm_weight)
            self.proj_mouse = nn.Linear(c.mouse_hidden_dim, c.img_hidden_size, bias=bias)
            self.mouse_attn = AttentionKernel()  # the attention operation (no parameters)
        if c.enable_keyboard:
            self._check_rope(c.rope_dim_list, c.keyboard_hidden_dim, "rope_dim_list", "keyboard_hidden_dim")
            self.keyboard_embed = nn.Sequential(
                nn.Linear(c.keyboard_dim_in, c.hidden_size),
                nn.SiLU(),
                nn.Linear(c.hidden_size, c.hidden_size),
            )
            self.mouse_attn_q = nn.Linear(c.img_hidden_size, c.keyboard_hidden_dim, bias=bias)
            self.keyboard_attn_kv = nn.Linear(c.hidden_size * win, 2 * c.keyboard_hidden_dim, bias=bias)
            if c.qk_norm:
                dk = c.keyboard_hidden_dim // c.heads_num
                self.key_attn_q_norm = _HeadRMSNorm(dk, eps, c.apply_qk_norm_weight)
                self.key_attn_k_norm = _HeadRMSNorm(dk, eps, c.apply_qk_norm_weight)
            self.proj_keyboard = nn.Linear(c.keyboard_hidden_dim, c.img_hidden_size, bias=bias)
            self.keyboard_attn = AttentionKernel()  # the attention operation (no parameters)
        self.reset_parameters()

    def _check_rope(self, dims: tuple[int, ...], hidden: int, name: str, hidden_name: str) -> None:
        head_dim = hidden // self.cfg.heads_num
        if sum(dims) != head_dim or dims[0] % 2:
            raise ValueError(
                f"action {name} {dims} must sum to the head dim {head_dim} ({hidden_name} / heads_num) "
                f"and have an even time part"
            )

    def reset_parameters(self) -> None:
        """Training init (spec §2.2): Xavier-uniform linears, zero biases, zero output projections."""
        xavier_init(self, (nn.LayerNorm, _HeadRMSNorm))
        for name in ("proj_mouse", "proj_keyboard"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)

    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int, int],
        mouse: torch.Tensor | None,
        keyboard: torch.Tensor | None,
        num_memory: int,
        clean: CleanTokens | None = None,
    ) -> torch.Tensor:
        """Add the mouse and keyboard residuals to x.

        x [B, L, D]: valid tokens, frame-major, L = T*h*w with grid = (T, h, w) and the M = num_memory
        memory frames first. mouse [B, Nf, mouse_dim_in], keyboard [B, Nf, keyboard_dim_in]: the
        window's per-pixel-frame actions, covering the T - M window latents. Returns [B, L, D].

        ``clean`` (the DiT's context cache, :class:`world_model.dit.CleanTokens`): at a window's first step the mouse
        branch's keys and values of the clean frames (the first ``clean.n`` tokens) are kept; at its later steps x
        holds the last frames' tokens alone (the noisy ones), their queries attend to the kept keys before their own,
        and only their residuals are computed (the keyboard branch's queries are per token, its keys the actions').
        """
        c = self.cfg
        T = grid[0]
        if not 0 <= num_memory < T:
            raise ValueError(f"expected 0 <= num_memory < T = {T} latent frames, got num_memory={num_memory}")
        n = T - num_memory
        mouse_w = self._windows(mouse, "mouse", c.mouse_dim_in, NULL_MOUSE, x, n, num_memory, c.enable_mouse)
        keyboard_w = self._windows(
            keyboard, "keyboard", c.keyboard_dim_in, NULL_KEYBOARD, x, n, num_memory, c.enable_keyboard
        )
        # RoPE time positions: memory 0..M-1, window 0..N-1 (both restart at 0).
        # (made on x's device: a copy from host memory would wait for the GPU's queue, once per block)
        positions = torch.cat([torch.arange(num_memory, device=x.device), torch.arange(n, device=x.device)])
        return self.forward_windows(x, grid, mouse_w, keyboard_w, positions, clean)

    def _windows(
        self,
        actions: torch.Tensor | None,
        name: str,
        channels: int,
        null: float,
        x: torch.Tensor,
        n: int,
        num_memory: int,
        enabled: bool,
    ) -> torch.Tensor | None:
        """Per-latent action windows with null memory windows in front: [B, M + N, W*r, C]."""
        if not enabled:
            return None
        if actions is None:
            raise ValueError(f"{name} actions are required (enable_{name} is set), got None")
        B = x.shape[0]
        if actions.ndim != 3 or actions.shape[0] != B or actions.shape[2] != channels:
            raise ValueError(f"expected {name} actions [B={B}, Nf, {channels}], got shape {tuple(actions.shape)}")
        c = self.cfg
        got = num_action_latents(actions.shape[1], c.windows_size, c.vae_time_compression_ratio)
        if got != n:
            raise ValueError(
                f"{name} actions cover {got} latent frames ({actions.shape[1]} pixel frames), but the token grid "
                f"has {n} window latents (T={n + num_memory} minus num_memory={num_memory})"
            )
        windows = group_frames(actions, c.windows_size, c.vae_time_compression_ratio)  # [B, N, W*r, C]
        memory = windows.new_full((B, num_memory, *windows.shape[2:]), null)  # [B, M, W*r, C]
        return torch.cat([memory, windows], dim=1)

    def forward_windows(
        self,
        x: torch.Tensor,
        grid: tuple[int, int, int],
        mouse_windows: torch.Tensor | None,
        keyboard_windows: torch.Tensor | None,
        positions: torch.Tensor,
        clean: CleanTokens | None = None,
    ) -> torch.Tensor:
        """The module on already-grouped actions: mouse/keyboard windows [B, T, W*r, C], positions [T].

        ``forward`` builds the windows (memory null windows first) and the restarting positions; ``clean`` as there
        (at a cached step x holds the last T - clean.n / (h*w) frames' tokens).
        """
        c = self.cfg
        T, h, w = grid
        S = h * w
        frames = T if clean is None or clean.recording else T - clean.n // S  # the frames x holds: the last ones
        if x.ndim != 3 or x.shape[1] != frames * S or x.shape[2] != c.img_hidden_size:
            raise ValueError(
                f"expected x [B, L={frames}*{h}*{w}={frames * S}, {c.img_hidden_size}] for grid {tuple(grid)}"
                f"{'' if frames == T else f' with {T - frames} frames kept'}, got shape {tuple(x.shape)}"
            )
        if positions.shape != (T,):
            raise ValueError(f"expected positions [T={T}], got shape {tuple(positions.shape)}")
        if c.enable_mouse:
            x = x + self._mouse(x, mouse_windows, T, S, positions, clean).to(x.dtype)
        if c.enable_keyboard:
            x = x + self._keyboard(x, keyboard_windows, T, S, positions).to(x.dtype)
        return x

    def _mouse(
        self, x: torch.Tensor, windows: torch.Tensor, T: int, S: int, positions: torch.Tensor, clean: CleanTokens | None
    ) -> torch.Tensor:
        c = self.cfg
        dtype = self.t_qkv.weight.dtype
        Tq = x.shape[1] // S  # the frames whose residuals are computed: the last Tq of the T (all but a cache's)
        xs = rearrange(x.to(dtype), "b (t s) d -> (b s) t d", t=Tq)  # [B*S, Tq, D]
        m = repeat(windows[:, T - Tq :].to(dtype), "b t f c -> (b s) t (f c)", s=S)  # [B*S, Tq, W*r*C]
        hidden = self.mouse_mlp(torch.cat([xs, m], dim=-1))  # [B*S, Tq, mouse_hidden]
        q, k, v = rearrange(self.t_qkv(hidden), "bs t (k n d) -> k bs t n d", k=3, n=c.heads_num)
        if c.qk_norm:
            q, k = self.img_attn_q_norm(q), self.img_attn_k_norm(k)
        cos, sin = _rope_cos_sin(positions[T - Tq :], c.mouse_qk_dim_list[0], c.rope_theta, _at_least_fp32(dtype))
        cos, sin = cos[:, None], sin[:, None]  # [Tq, 1, r] against [B*S, Tq, N, Dh]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if clean is not None:  # kept: the clean frames' keys and values, before these frames' own
            k, v = clean.mouse_keys_values(k, v, clean.n // S)
        out = self.mouse_attn(q, k, v)  # [B*S, Tq, N, Dh]
        out = rearrange(out, "(b s) t n d -> b (t s) (n d)", s=S)
        return self.proj_mouse(out)

    def _keyboard(
        self, x: torch.Tensor, windows: torch.Tensor, T: int, S: int, positions: torch.Tensor
    ) -> torch.Tensor:
        c = self.cfg
        dtype = self.keyboard_attn_kv.weight.dtype
        Tq = x.shape[1] // S  # the last Tq frames' queries (each token's own); the keys are all T frames' actions
        emb = self.keyboard_embed(windows.to(dtype))  # [B, T, W*r, hidden]
        kv = self.keyboard_attn_kv(rearrange(emb, "b t f c -> b t (f c)"))  # [B, T, 2*kb_hidden]
        k, v = rearrange(kv, "b t (k n d) -> k b t n d", k=2, n=c.heads_num)  # [B, T, N, Dh]
        q = rearrange(self.mouse_attn_q(x.to(dtype)), "b (t s) (n d) -> b t s n d", t=Tq, n=c.heads_num)
        if c.qk_norm:
            q, k = self.key_attn_q_norm(q), self.key_attn_k_norm(k)
        cos, sin = _rope_cos_sin(positions, c.rope_dim_list[0], c.rope_theta, _at_least_fp32(dtype))  # [T, r]
        k = _apply_rope(k, cos[:, None], sin[:, None])  # [B, T, N, Dh]
        q = _apply_rope(q, cos[T - Tq :, None, None], sin[T - Tq :, None, None])  # [B, Tq, S, N, Dh]
        q = rearrange(q, "b t s n d -> b (t s) n d")
        # Every spatial location shares its batch item's T keyboard keys, so the S*T queries of one
        # item attend to that item's keys directly: the release's per-location tiling (correct for
        # B = 1 only, spec §13.11) without materialising B*S copies.
        out = self.keyboard_attn(q, k, v)  # [B, T*S, N, Dh]
        return self.proj_keyboard(rearrange(out, "b l n d -> b l (n d)"))
