"""Camera convention of the dataset, in numpy (spec §5.1-5.2).

Poses are (x, y, z, pitch, yaw) per frame in a left-handed world: X forward, Y right, Z up;
pitch and yaw in degrees, positive yaw = turn right, positive pitch tilts the optical axis
towards -Z (down), exactly as the release's ``get_extrinsics`` does. c2w is
``Rz(yaw) @ Ry(pitch) @ A`` with the axis change ``A`` (camera x -> world y, camera y -> world -z,
camera z -> world x) and translation ``position * 0.01``.

This is the numpy twin of :mod:`world_model.camera` for torch-free code (data engine, recorder);
``tests/test_data_format.py`` checks that both agree.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AXIS_CHANGE", "TRANSLATION_SCALE", "c2w_from_poses", "intrinsics_matrix", "wrap_degrees"]

# camera axes (OpenCV: x right, y down, z forward) -> world axes (X forward, Y right, Z up)
AXIS_CHANGE = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
TRANSLATION_SCALE = 0.01  # pose units -> c2w translation units (release: centimetres -> metres)


def wrap_degrees(a: np.ndarray | float) -> np.ndarray:
    """Wrap angles in degrees to [-180, 180)."""
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def c2w_from_poses(poses: np.ndarray) -> np.ndarray:
    """Poses [..., 5] (x, y, z, pitch, yaw) -> camera-to-world matrices [..., 4, 4] (float64)."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.shape[-1] != 5:
        raise ValueError(f"expected poses [..., 5] (x, y, z, pitch, yaw), got shape {poses.shape}")
    pitch = np.deg2rad(poses[..., 3])
    yaw = np.deg2rad(poses[..., 4])
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(cp), np.ones_like(cp)
    rz = np.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).reshape(*cp.shape, 3, 3)
    ry = np.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).reshape(*cp.shape, 3, 3)
    out = np.zeros((*cp.shape, 4, 4))
    out[..., :3, :3] = rz @ ry @ AXIS_CHANGE
    out[..., :3, 3] = poses[..., :3] * TRANSLATION_SCALE
    out[..., 3, 3] = 1.0
    return out


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """A 3x3 pinhole matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
