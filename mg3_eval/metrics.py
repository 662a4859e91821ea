"""Measures on frames: PSNR, the repeat-first-frame baseline, luma and image statistics, sharpness,
and the image motion between frames (pan, tilt, expansion, frame-to-frame change).

Every function takes uint8 frames [..., H, W, 3] (or luma [..., H, W] where it says so) as numpy
arrays and knows nothing of models or simulators. Motion signs follow the package's pose
convention: a positive pan is content moving left (the view turned right, positive yaw), a
positive tilt is content moving up (the view tilted down, positive pitch), a positive expansion is
content growing from the centre (the camera moved forward).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PSNR_CAP_DB",
    "psnr",
    "psnr_pooled",
    "repeat_first_psnr",
    "luma",
    "frame_stats",
    "relative_change",
    "sharpness",
    "sharpness_ratio",
    "grid_share",
    "image_shift",
    "image_scale",
    "frame_change",
    "motion_measures",
]


PSNR_CAP_DB = 100.0  # PSNR of identical frames (an infinite value would poison every mean)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames [..., H, W, 3] (peak 255), capped at :data:`PSNR_CAP_DB`.

    The leading axes broadcast (e.g. [T, 1, H, W, 3] against [1, R, H, W, 3] gives [T, R]).
    """
    if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"expected frames [..., H, W, 3] of one size, got shapes {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP_DB)


def psnr_pooled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of the mean squared error over whole videos: uint8 frames [..., T, H, W, 3] -> [...].

    Beside the mean of :func:`psnr` over frames: a frame identical to its reference scores the cap there
    (:data:`PSNR_CAP_DB`), so the mean of a video with a few unchanged frames depends on the cap (the simulator's
    first frames, repeated, match it exactly when the player has not moved yet); pooled, each frame counts by its
    error and none by a constant. Identical videos score the cap.
    """
    if a.ndim < 4 or b.ndim < 4 or a.shape[-4:] != b.shape[-4:]:
        raise ValueError(f"expected videos [..., T, H, W, 3] of one shape, got {a.shape} and {b.shape}")
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-4, -3, -2, -1))
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(255.0**2 / mse), PSNR_CAP_DB)


def repeat_first_psnr(frames: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """PSNR of "repeat the first frame" against each frame: frames [T, H, W, 3] -> [T].

    ``first`` defaults to ``frames[0]``.
    """
    first = frames[0] if first is None else first
    return psnr(first, frames)


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float64 luma [..., H, W] in [0, 255] (BT.601 weights)."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def frame_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame image statistics of uint8 frames [T, H, W, 3] -> each [T].

    ``brightness``: mean luma; ``contrast``: standard deviation of luma; ``sharpness``: mean
    absolute 4-neighbour Laplacian of luma (inner pixels), which falls when frames blur.
    """
    y = luma(frames)
    lap = 4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]
    return {
        "brightness": y.mean(axis=(-2, -1)),
        "contrast": y.std(axis=(-2, -1)),
        "sharpness": np.abs(lap).mean(axis=(-2, -1)),
    }


def relative_change(start: float, end: float) -> float:
    """|end - start| / |start| (inf when start is 0 and end is not)."""
    if start == 0:
        return 0.0 if end == 0 else math.inf
    return abs(end - start) / abs(start)


def _gradient(y: np.ndarray) -> np.ndarray:
    """Mean over pixels of sqrt(dx^2 + dy^2), forward differences of an image [..., H, W] -> [...]."""
    dx = y[..., :-1, 1:] - y[..., :-1, :-1]
    dy = y[..., 1:, :-1] - y[..., :-1, :-1]
    return np.sqrt(dx**2 + dy**2).mean(axis=(-2, -1))


def sharpness(frames: np.ndarray, *, pooled: bool = False) -> np.ndarray:
    """Mean luma gradient magnitude of uint8 frames [..., H, W, 3] -> [...]: the mean over pixels of
    sqrt(dx^2 + dy^2) with forward differences of luma (0-255). Blur lowers it; a flat frame has 0.

    ``pooled``: on the 2x2 mean of the luma (half resolution). A decoder's checkerboard or 2-pixel
    grid, which the full-resolution gradient counts as sharpness, averages out there; edges and
    texture coarser than 2 pixels remain."""
    y = luma(frames)
    if pooled:
        h, w = y.shape[-2] // 2 * 2, y.shape[-1] // 2 * 2
        y = y[..., :h, :w].reshape(*y.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
    return _gradient(y)


def sharpness_ratio(frames: np.ndarray, reference: np.ndarray, *, pooled: bool = False) -> float | None:
    """Mean :func:`sharpness` of ``frames`` over that of ``reference`` (any numbers of uint8 frames
    [..., H, W, 3]); 1 for equally sharp frames, < 1 for blurrier ones; None for a flat reference."""
    ref = float(sharpness(reference, pooled=pooled).mean())
    return float(sharpness(frames, pooled=pooled).mean()) / ref if ref > 0 else None


def grid_share(frames: np.ndarray, period: int) -> float:
    """Share (0-1) of the fine detail of uint8 frames [..., H, W, 3] that is one pattern repeated on a fixed
    ``period``-pixel grid, the same in every frame (a decoder's upsampling artefact; see
    :func:`world_model.train.autoencoder.fixed_grid_share`). Sharpness counts such a screen door as detail:
    this tells the two apart. The world's own detail averages out (~1e-4 for a few hundred frames)."""
    from world_model.train.autoencoder import fixed_grid_share

    y = torch.from_numpy(np.ascontiguousarray(luma(frames))).reshape(-1, *frames.shape[-3:-1])
    return float(fixed_grid_share(y, period))


def _refine(errs: np.ndarray) -> np.ndarray:
    """Position of the minimum of errors sampled on a uniform grid (last axis) -> [...] in grid steps:
    the argmin refined by the vertex of the parabola through its neighbours (within half a step; no
    refinement at the ends of the grid)."""
    i = np.argmin(errs, axis=-1)
    inner = np.clip(i, 1, errs.shape[-1] - 2)
    take = lambda k: np.take_along_axis(errs, (inner + k)[..., None], -1)[..., 0]  # noqa: E731
    lo, mid, hi = take(-1), take(0), take(1)
    curv = lo - 2 * mid + hi
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(curv > 0, np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5), 0.0)
    return np.where((i == inner), i + off, i).astype(np.float64)


def _shift_errors(a: np.ndarray, b: np.ndarray, m: int, dys, dxs) -> np.ndarray:
    """Mean squared difference between a moved by (dy, dx) and b over b's central part (``m``
    pixels off each side): luma [..., H, W] -> [..., len(dys), len(dxs)]."""
    h, w = a.shape[-2:]
    ref = b[..., m : h - m, m : w - m]
    return np.stack(
        [
            np.stack(
                [np.mean((a[..., m + dy : h - m + dy, m + dx : w - m + dx] - ref) ** 2, (-2, -1)) for dx in dxs], -1
            )
            for dy in dys
        ],
        -2,
    )


def image_shift(a: np.ndarray, b: np.ndarray, max_shift: int | None = None) -> np.ndarray:
    """How far the content moved from luma ``a`` to luma ``b`` (each [..., H, W]), in pixels ->
    [..., 2] as (pan, tilt): pan positive when the content moved left, tilt positive when it moved up.

    The shift (dx, dy) minimising mean (a[y + dy, x + dx] - b[y, x])^2 over the central part
    (``max_shift`` pixels off each side; default a quarter of the shorter side, at most 16): a full
    search on 2x-downsampled luma, then the integer shifts around its answer at full resolution,
    then sub-pixel by a parabola through the errors on each side of the best one. Both axes are
    searched together, so a pan does not read as a tilt. A plain error search, unlike phase
    correlation, survives blurry frames.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"expected luma frames [..., H, W] of one size, got shapes {a.shape} and {b.shape}")
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    m = min(16, min(h, w) // 4) if max_shift is None else int(max_shift)
    if not 1 <= m < min(h, w) // 2:
        raise ValueError(f"max_shift must be in [1, {min(h, w) // 2 - 1}] for {h}x{w} frames, got {m}")
    a = np.asarray(a, np.float32).reshape(-1, h, w)
    b = np.asarray(b, np.float32).reshape(-1, h, w)
    f = 2 if m >= 4 else 1
    if f == 1:
        centre = np.zeros((len(a), 2), int)
    else:  # coarse: every shift on 2x-downsampled luma
        ac, bc = (x[:, : h // 2 * 2, : w // 2 * 2].reshape(len(x), h // 2, 2, w // 2, 2).mean((2, 4)) for x in (a, b))
        mc = m // 2
        errs = _shift_errors(ac, bc, mc, range(-mc, mc + 1), range(-mc, mc + 1)).reshape(len(a), -1)
        centre = 2 * (np.stack(np.unravel_index(errs.argmin(1), (2 * mc + 1, 2 * mc + 1)), 1) - mc)  # (dy, dx)
    out = np.zeros((len(a), 2))
    for n, (cy, cx) in enumerate(centre):  # fine: the shifts around the coarse answer, at full resolution
        dys = np.arange(max(-m, cy - f - 1), min(m, cy + f + 1) + 1)
        dxs = np.arange(max(-m, cx - f - 1), min(m, cx + f + 1) + 1)
        errs = _shift_errors(a[n], b[n], m, dys, dxs).astype(np.float64)  # [len(dys), len(dxs)]
        iy, ix = np.unravel_index(errs.argmin(), errs.shape)
        out[n] = dxs[0] + _refine(errs[iy]), dys[0] + _refine(errs[:, ix])
    return out.reshape(*lead, 2)


_SCALES = np.round(np.arange(0.85, 1.2001, 0.01), 4)  # per-frame zoom factors searched by image_scale


def image_scale(
    a: np.ndarray, b: np.ndarray, shift: np.ndarray | None = None, scales: np.ndarray = _SCALES
) -> np.ndarray:
    """The zoom about the centre that best turns luma ``a`` into luma ``b`` (each [..., H, W]) ->
    [...]: the s of the uniform grid ``scales`` minimising the mean squared difference between b
    and a magnified s times (bilinear) and moved by ``shift`` ([..., 2] pixels as (pan, tilt) from
    :func:`image_shift`; default none), over the central region that stays inside the frame,
    refined by a parabola. > 1: content grew (the camera moved forward); < 1: it shrank. With the
    shift given, a pan or tilt does not read as a zoom."""
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"expected luma frames [..., H, W] of one size, got shapes {a.shape} and {b.shape}")
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    n, k = math.prod(lead), len(scales)
    shift = np.zeros((n, 2)) if shift is None else np.asarray(shift, np.float64).reshape(n, 2)
    t = torch.as_tensor(shift * [2 / (w - 1), 2 / (h - 1)], dtype=torch.float32)  # [N, 2] in grid units
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [H, W, 2] as (x, y)
    grids = grid / torch.as_tensor(scales, dtype=torch.float32)[:, None, None, None]  # [S, H, W, 2]
    grids = grids[None] + t[:, None, None, None]  # [N, S, H, W, 2]
    # the output pixels whose source stays inside the frame at every scale
    bound = 0.95 * float(scales.min()) * (1 - t.abs())  # [N, 2]
    keep = (xs.abs()[None, None] <= bound[:, None, None, 0]) & (ys.abs()[None, :, None] <= bound[:, None, None, 1])
    src = torch.as_tensor(np.asarray(a, np.float32)).reshape(n, 1, 1, h, w).expand(n, k, 1, h, w)
    warped = F.grid_sample(src.reshape(n * k, 1, h, w), grids.reshape(n * k, h, w, 2), align_corners=True)
    target = torch.as_tensor(np.asarray(b, np.float32)).reshape(n, 1, h, w)
    sq = (warped.reshape(n, k, h, w) - target) ** 2 * keep[:, None]  # [N, S, H, W]
    errs = (sq.sum((-2, -1)) / keep.sum((-2, -1))[:, None].clamp(min=1)).double().numpy()  # [N, S]
    step = float(scales[1] - scales[0]) if k > 1 else 0.0
    return (float(scales[0]) + step * _refine(errs)).reshape(lead)


def frame_change(frames: np.ndarray) -> float:
    """Mean absolute luma difference between consecutive frames of uint8 [T, H, W, 3] (0-255): how
    much the picture changes per frame; 0 for a still video."""
    if len(frames) < 2:
        raise ValueError(f"expected at least 2 frames, got {len(frames)}")
    return float(np.abs(np.diff(luma(frames), axis=0)).mean())


def _area_downsample(y: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Luma [T, H, W] averaged over f x f blocks, f the smallest integer that brings the longer side
    to at most ``size`` (the remainder rows and columns dropped) -> (luma, f)."""
    f = math.ceil(max(y.shape[-2:]) / size)
    if f <= 1:
        return y, 1
    t, h, w = y.shape[0], y.shape[1] // f, y.shape[2] // f
    return y[:, : h * f, : w * f].reshape(t, h, f, w, f).mean(axis=(2, 4)), f


def motion_measures(frames: np.ndarray, moving_pairs: int | None = None) -> dict[str, float]:
    """Image motion of uint8 frames [T, H, W, 3] per moving frame: ``pan`` and ``tilt`` (pixels,
    :func:`image_shift`), ``expansion`` (:func:`image_scale` - 1, the shift compensated) and
    ``change`` (:func:`frame_change`).

    Pan, tilt and expansion are summed over all consecutive pairs and divided by ``moving_pairs``
    (default T - 1): a motion held for the first n pairs and then stopped reads the same whether the
    video follows it at once or a few frames late. ``change`` is the mean over all pairs.
    """
    n = len(frames) - 1 if moving_pairs is None else int(moving_pairs)
    if len(frames) < 2 or not 1 <= n <= len(frames) - 1:
        raise ValueError(f"expected >= 2 frames and 1 <= moving_pairs <= {len(frames) - 1}, got {len(frames)}, {n}")
    y = luma(frames)
    shift = image_shift(y[:-1], y[1:])  # [T - 1, 2]
    small, f = _area_downsample(y, 64)  # a zoom is a ratio: a quarter of the pixels measure it as well
    zoom = image_scale(small[:-1], small[1:], shift / f)
    return {
        "pan": float(shift[:, 0].sum()) / n,
        "tilt": float(shift[:, 1].sum()) / n,
        "expansion": float((zoom - 1.0).sum()) / n,
        "change": frame_change(frames),
    }
