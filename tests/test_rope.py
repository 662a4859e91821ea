"""3-D RoPE with head-wise perturbed base (spec §1.2), against direct float64 computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from world_model.rope import apply_rope, head_thetas, rope_bands, rope_cos_sin, rope_frequencies, rope_table


def _direct_angles(positions, h, w, head_dim, num_heads, sigma, theta=10000.0):
    """Angles [B, T*h*w, N, D/2] float64 from the spec's formulas, one number at a time."""
    c = head_dim // 2
    c_t, c_h = c - 2 * (c // 3), c // 3
    B, T = positions.shape
    out = np.zeros((B, T * h * w, num_heads, c))
    for n in range(num_heads):
        eps = -1.0 + 2.0 * n / (num_heads - 1) if num_heads > 1 else -1.0
        theta_n = theta * (1.0 + sigma * eps)
        for k in range(c):
            if k < c_t:
                band, kk, c_part = 0, k, c_t
            elif k < c_t + c_h:
                band, kk, c_part = 1, k - c_t, c_h
            else:
                band, kk, c_part = 2, k - c_t - c_h, c - c_t - c_h
            omega = math.pow(theta_n, -kk / c_part)
            for b in range(B):
                for t in range(T):
                    for i in range(h):
                        for j in range(w):
                            pos = (int(positions[b, t]), i, j)[band]
                            out[b, (t * h + i) * w + j, n, k] = pos * omega
    return torch.from_numpy(out)


def test_release_bands_and_head_bases():
    assert rope_bands(128) == (22, 21, 21)
    thetas = head_thetas(24, 0.8)
    assert thetas.dtype == torch.float64 and thetas.shape == (24,)
    assert thetas[0].item() == pytest.approx(2000.0) and thetas[-1].item() == pytest.approx(18000.0)
    assert torch.all(thetas.diff() > 0)


def test_sigma_zero_is_plain_wan_rope():
    f_t, f_h, f_w = rope_frequencies(128, 24, 0.0)
    # Wan: per band of 2*c reals, frequency 1 / 10000^(2k / (2c)), identical for every head.
    for f, reals in ((f_t, 44), (f_h, 42), (f_w, 42)):
        want = 1.0 / torch.pow(10000.0, torch.arange(0, reals, 2, dtype=torch.float64) / reals)
        torch.testing.assert_close(f, want.expand(24, -1), rtol=1e-15, atol=0)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_cos_sin_match_direct_float64(sigma):
    positions = torch.tensor([[0, 5, 6, 7], [3, 100, 101, 2047]])
    h, w, D, N = 2, 3, 16, 4
    cos, sin = rope_cos_sin(positions, (h, w), head_dim=D, num_heads=N, sigma_theta=sigma, max_len=2048)
    assert cos.shape == (2, 4 * h * w, N, D // 2) and cos.dtype == torch.float32
    angles = _direct_angles(positions, h, w, D, N, sigma)
    torch.testing.assert_close(cos.double(), angles.cos(), atol=1e-7, rtol=0)
    torch.testing.assert_close(sin.double(), angles.sin(), atol=1e-7, rtol=0)


def test_apply_rope_is_complex_multiplication():
    torch.manual_seed(0)
    positions = torch.tensor([[2, 9, 10]])
    h, w, D, N = 2, 2, 12, 3
    x = torch.randn(1, 3 * h * w, N, D)
    cos, sin = rope_cos_sin(positions, (h, w), head_dim=D, num_heads=N, sigma_theta=0.8, max_len=64)
    got = apply_rope(x, cos, sin)
    angles = _direct_angles(positions, h, w, D, N, 0.8)
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    want = torch.view_as_real(z).flatten(-2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_table_rows_equal_the_per_token_angles():
    D, N, max_len = 16, 4, 32
    table = rope_table(D, N, max_len, 0.8)
    assert table.shape == (N, max_len, D // 2) and table.dtype == torch.float64
    c_t, c_h, _ = rope_bands(D)
    positions = torch.tensor([[4, 31]])
    h, w = 3, 2
    cos, _ = rope_cos_sin(positions, (h, w), head_dim=D, num_heads=N, sigma_theta=0.8, max_len=max_len)
    cos = cos.view(1, 2, h, w, N, D // 2)
    for ti, t in enumerate(positions[0].tolist()):
        for i in range(h):
            for j in range(w):
                want = torch.cat(
                    [table[:, t, :c_t], table[:, i, c_t : c_t + c_h], table[:, j, c_t + c_h :]], dim=-1
                ).cos()
                torch.testing.assert_close(cos[0, ti, i, j].double(), want, atol=1e-7, rtol=0)


def test_scores_depend_only_on_position_differences():
    torch.manual_seed(1)
    h, w, D, N = 2, 2, 16, 2
    q, k = torch.randn(2, 1, 3 * h * w, N, D)

    def scores(pos):
        cos, sin = rope_cos_sin(torch.tensor([pos]), (h, w), head_dim=D, num_heads=N, sigma_theta=0.8, max_len=2048)
        return torch.einsum("blnd,bmnd->bnlm", apply_rope(q, cos, sin), apply_rope(k, cos, sin))

    torch.testing.assert_close(scores([0, 3, 4]), scores([500, 503, 504]), atol=2e-4, rtol=1e-4)
    assert (scores([0, 3, 4]) - scores([0, 1, 4])).abs().max() > 1e-2


def test_bad_positions_are_rejected():
    kw = dict(head_dim=16, num_heads=2, sigma_theta=0.8, max_len=2048)
    with pytest.raises(ValueError, match=r"in \[0, 2048\)"):
        rope_cos_sin(torch.tensor([[0, 2048]]), (2, 2), **kw)
    with pytest.raises(ValueError, match="integer positions"):
        rope_cos_sin(torch.tensor([[0.0, 1.0]]), (2, 2), **kw)
    with pytest.raises(ValueError, match=r"positions \[B, T\]"):
        rope_cos_sin(torch.tensor([0, 1]), (2, 2), **kw)
