"""A geometric oracle for chunk 0: frame 0 moved by the true camera motion and the true depth.

What can any model gain over repeat-first from the one frame it is given? Its visible content, moved exactly as the
camera moves, is the most a model can get without knowing what the level looks like out of view. The oracle builds
frame t from frame 0 with the simulator's depth of frame t and both poses: each pixel of frame t is carried back to
where it lies in frame 0 (Doom's camera: a horizontal view direction, pitch a vertical shear of the picture, depth the
distance along the view); where that point was out of frame 0 or hidden behind something nearer, the pixel keeps
frame 0's value (repeat-first). It knows nothing of lighting (Doom darkens with distance) and invents nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reproject", "camera_axes"]


def camera_axes(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, right) unit vectors in the map's plane of a pose (x, y, z, pitch, yaw) in the package convention
    (world_model.data.doom.doom_to_pose: y and yaw mirrored from Doom's)."""
    yaw = np.radians(pose[4])
    return np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])


def _shear(pose: np.ndarray, fy: float, sign: float) -> float:
    # the picture's vertical shift for the camera's pitch (+ down): Doom renders pitch as a shear, not a rotation
    return sign * fy * float(np.tan(np.radians(pose[3])))


def reproject(
    src: np.ndarray,
    src_depth: np.ndarray,
    src_pose: np.ndarray,
    dst_depth: np.ndarray,
    dst_pose: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    *,
    tolerance: float = 32.0,
    shear_sign: float = -1.0,
    fill: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``src`` as the camera at ``dst_pose`` sees it, where it can.

    ``src`` uint8 [H, W, 3] with depth ``src_depth`` [H, W] (map units) at ``src_pose``; ``dst_depth`` [H, W] the
    depth the destination camera sees; ``intrinsics`` (fx, fy, cx, cy) in pixels. Each destination pixel is
    unprojected with its depth, projected into the source camera and sampled there (bilinear), when it lands in the
    source frame and the source's depth there agrees within ``tolerance`` map units + 5 % (else it was hidden in
    the source); every other pixel keeps ``src``'s own value (repeat-first), or ``fill``'s when given (uint8
    [H, W, 3], e.g. a blurred ``src``: what a model unsure of new content does best in PSNR). Returns (frame uint8 [H, W, 3], the
    mask of pixels moved [H, W] bool).
    """
    h, w = dst_depth.shape
    if src.shape[:2] != (h, w) or src_depth.shape != (h, w):
        raise ValueError(
            f"frames and depths must share one size, got {src.shape}, {src_depth.shape}, {dst_depth.shape}"
        )
    fx, fy, cx, cy = intrinsics
    u = np.arange(w, dtype=np.float64)[None, :] + 0.5
    v = np.arange(h, dtype=np.float64)[:, None] + 0.5
    z = dst_depth.astype(np.float64)
    f1, r1 = camera_axes(dst_pose)
    x_c = (u - cx) * z / fx
    y_c = (cy + _shear(dst_pose, fy, shear_sign) - v) * z / fy
    # the point in the map (x, y) and its height over the destination camera
    px = dst_pose[0] + z * f1[0] + x_c * r1[0]
    py = dst_pose[1] + z * f1[1] + x_c * r1[1]
    pz = dst_pose[2] + y_c
    f0, r0 = camera_axes(src_pose)
    dx, dy, dz = px - src_pose[0], py - src_pose[1], pz - src_pose[2]
    z0 = dx * f0[0] + dy * f0[1]
    x0 = dx * r0[0] + dy * r0[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u0 = cx + fx * x0 / z0
        v0 = cy + _shear(src_pose, fy, shear_sign) - fy * dz / z0
    inside = (z0 > 1.0) & (u0 >= 0.5) & (u0 <= w - 0.5) & (v0 >= 0.5) & (v0 <= h - 0.5)
    # bilinear sampling at pixel centres
    fu = np.clip(np.where(inside, u0, 1.0) - 0.5, 0, w - 1)
    fv = np.clip(np.where(inside, v0, 1.0) - 0.5, 0, h - 1)
    i0, j0 = np.floor(fv).astype(int), np.floor(fu).astype(int)
    i1, j1 = np.minimum(i0 + 1, h - 1), np.minimum(j0 + 1, w - 1)
    a, b = (fv - i0)[..., None], (fu - j0)[..., None]
    s = src.astype(np.float64)
    sampled = (1 - a) * ((1 - b) * s[i0, j0] + b * s[i0, j1]) + a * ((1 - b) * s[i1, j0] + b * s[i1, j1])
    # visible in the source: its depth at the nearest pixel agrees with the point's distance
    near = src_depth[np.rint(fv).astype(int).clip(0, h - 1), np.rint(fu).astype(int).clip(0, w - 1)]
    visible = inside & (np.abs(near - z0) <= tolerance + 0.05 * np.abs(z0))
    rest = s if fill is None else fill.astype(np.float64)
    out = np.where(visible[..., None], sampled, rest)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), visible
