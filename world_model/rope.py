"""3-D rotary position embedding of the DiT self-attention, with a head-wise perturbed base (spec §1.2).

The head dim D is read as D/2 complex pairs of adjacent elements (2i, 2i+1), split into three bands:
c_t = c - 2*floor(c/3) pairs for the latent time index, then c_h = c_w = floor(c/3) pairs for the
token row and column (c = D/2; 22/21/21 for D = 128). Head n uses the base
theta_n = theta * (1 + sigma * eps_n) with eps = linspace(-1, 1, N); within a band of c_part pairs,
pair k turns at omega = theta_n ** (-k / c_part) radians per position. sigma = 0 is plain Wan RoPE.

Angles are position * omega in float64; the rotation runs in fp32. The release keeps a table of
``max_len`` positions (2048 with memory); :func:`rope_table` builds it. The model computes the same
float64 products directly from the positions it needs (a few thousand numbers per forward, shared
by all blocks) instead of holding the table as a buffer: a buffer would follow ``model.to(bf16)``
into bf16 and would stay unmaterialised after building on the meta device and assigning a
checkpoint. ``max_len`` remains the bound on the time positions, as in the release.
"""

from __future__ import annotations

import torch

__all__ = ["rope_bands", "head_thetas", "rope_frequencies", "rope_table", "rope_cos_sin", "apply_rope"]


def rope_bands(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per band (time, height, width): (22, 21, 21) for head_dim 128."""
    if head_dim % 2:
        raise ValueError(f"expected an even head dim for RoPE, got {head_dim}")
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def head_thetas(num_heads: int, sigma_theta: float, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Per-head RoPE bases [N] float64: theta * (1 + sigma * linspace(-1, 1, N))."""
    eps = torch.linspace(-1.0, 1.0, num_heads, dtype=torch.float64, device=device)
    return theta * (1.0 + sigma_theta * eps)


def rope_frequencies(
    head_dim: int, num_heads: int, sigma_theta: float, theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Angular frequencies per band, float64: (time [N, c_t], height [N, c_h], width [N, c_w])."""
    thetas = head_thetas(num_heads, sigma_theta, theta, device)[:, None]  # [N, 1]
    out = []
    for c_part in rope_bands(head_dim):
        k = torch.arange(c_part, dtype=torch.float64, device=device)
        out.append(1.0 / thetas ** (k / c_part))  # [N, c_part]
    return out[0], out[1], out[2]


def rope_table(
    head_dim: int, num_heads: int, max_len: int, sigma_theta: float, theta: float = 10000.0, device=None
) -> torch.Tensor:
    """The release's angle table [N, max_len, D/2] float64: row p holds p * omega for every band.

    Token (t, i, j) uses the time columns of row t, the height columns of row i and the width
    columns of row j.
    """
    pos = torch.arange(max_len, dtype=torch.float64, device=device)[None, :, None]  # [1, max_len, 1]
    bands = rope_frequencies(head_dim, num_heads, sigma_theta, theta, device)
    return torch.cat([pos * f[:, None, :] for f in bands], dim=-1)


def rope_cos_sin(
    positions: torch.Tensor,
    grid_hw: tuple[int, int],
    *,
    head_dim: int,
    num_heads: int,
    sigma_theta: float,
    max_len: int,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rotation for a frame-major token grid: cos, sin [B, L, N, D/2] fp32.

    positions [B, T] int: absolute latent time index of each frame (memory frames first);
    grid_hw = (h, w) token rows and columns, whose positions are 0..h-1 and 0..w-1. L = T*h*w.
    """
    if positions.ndim != 2:
        raise ValueError(f"expected positions [B, T], got shape {tuple(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype.is_complex:
        raise ValueError(f"expected integer positions, got {positions.dtype}")
    h, w = grid_hw
    if positions.numel() and positions.device.type == "cpu":
        if int(positions.min()) < 0 or int(positions.max()) >= max_len:
            raise ValueError(
                f"expected RoPE time positions in [0, {max_len}), got min {int(positions.min())}, "
                f"max {int(positions.max())}"
            )
    elif positions.numel():  # checked on the device: reading the values back would stall the host
        torch._assert_async(
            ((positions >= 0) & (positions < max_len)).all(), f"RoPE time positions outside [0, {max_len})"
        )
    if max(h, w) > max_len:
        raise ValueError(f"expected a token grid of at most {max_len} rows/columns, got {h}x{w}")
    B, T = positions.shape
    device = positions.device
    f_t, f_h, f_w = rope_frequencies(head_dim, num_heads, sigma_theta, theta, device)
    ang_t = positions.to(torch.float64)[:, :, None, None, None, None] * f_t  # [B, T, 1, 1, N, c_t]
    ang_h = torch.arange(h, dtype=torch.float64, device=device)[:, None, None, None] * f_h  # [h, 1, N, c_h]
    ang_w = torch.arange(w, dtype=torch.float64, device=device)[:, None, None] * f_w  # [w, N, c_w]
    shape = (B, T, h, w, num_heads)

    def table(fn) -> torch.Tensor:  # per band in float64, then fp32 [B, L, N, D/2]
        bands = [fn(a).float() for a in (ang_t, ang_h, ang_w)]
        return torch.cat([b.expand(*shape, b.shape[-1]) for b in bands], dim=-1).flatten(1, 3)

    return table(torch.cos), table(torch.sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, L, N, D] by cos/sin [B, L, N, D/2] in fp32; returns fp32.

    Pair (a, b) becomes (a cos - b sin, a sin + b cos), i.e. (a + ib) * e^(i angle).
    """
    if x.shape[:-1] != cos.shape[:-1] or x.shape[-1] != 2 * cos.shape[-1]:
        raise ValueError(
            f"expected x [B, L, N, 2*{cos.shape[-1]}] matching cos {tuple(cos.shape)}, got {tuple(x.shape)}"
        )
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, N, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
