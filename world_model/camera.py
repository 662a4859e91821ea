"""Camera poses from actions, camera-to-world matrices and [origin, direction] ray embeddings.

Pure, batched torch functions (spec §5.1-5.3, §6); they run on the device and in the float dtype of
their inputs (use float64 for poses of long rollouts), except :func:`integrate_poses`, which runs the
release's float32 recurrence and returns its values in the start pose's dtype.

Conventions of the release:

- A pose is (x, y, z, pitch, yaw): position in release units (centimetres), angles in degrees.
  The world is left-handed, Unreal style: X forward, Y right, Z up.
- Camera axes are OpenCV style (x right, y down, z forward). ``c2w = [R | t]`` with
  ``R = Rz(yaw) @ Ry(pitch) @ Rx(0) @ A``, ``A = [[0, 0, 1], [1, 0, 0], [0, -1, 0]]`` (det -1) and
  ``t = position * 0.01`` (metres). With this Ry a positive pitch tilts the optical axis towards
  -Z; that is the release's convention and is kept as is (spec §5.1 caveat).
- Streaming geometry (spec §6, r = VAE temporal stride, defaults r = 4, 15 first latents, 4 past +
  10 new latents): chunk 0 covers pixel frames [0, 57); chunk k >= 1 covers [40k + 1, 40k + 57).
  Latent j >= 1 covers pixel frames 4j - 3 ... 4j; latent 0 is frame 0. A latent's pose is the pose
  of its last pixel frame, 4j.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange

from world_model.config import StreamConfig

__all__ = [
    "AXIS_CHANGE",
    "Intrinsics",
    "integrate_poses",
    "wrap_degrees",
    "c2w_from_poses",
    "rigid_inverse",
    "intrinsics",
    "camera_rays",
    "fold_pixels",
    "ray_embedding",
    "window_bounds",
    "window_pose_frames",
    "window_relative_poses",
    "window_plucker",
]

# Camera axes -> world axes: camera x -> world y, camera y -> world -z, camera z -> world x.
AXIS_CHANGE = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0))

_CM_TO_M = 0.01


# --------------------------------------------------------------------------------------------
# Poses from actions (spec §5.1)
# --------------------------------------------------------------------------------------------


def wrap_degrees(angle: torch.Tensor) -> torch.Tensor:
    """Wrap angles into [-180, 180] the way the release does: values inside stay untouched.

    The interval is closed, so +180 and -180 both stay as they are; a value above 180 is shifted
    down by 360 (enough times to land in (-180, 180]), a value below -180 up by 360.
    """
    above = torch.ceil((angle - 180.0) / 360.0)
    below = torch.ceil((-180.0 - angle) / 360.0)
    angle = torch.where(angle > 180.0, angle - 360.0 * above, angle)
    return torch.where(angle < -180.0, angle + 360.0 * below, angle)


def _wrap_float32(angle: torch.Tensor) -> torch.Tensor:
    """The release's yaw wrap on float32 values: subtract (add) 360 while above 180 (below -180).

    Each subtraction is one float32 operation, as in the release's ``while`` loops.
    """
    for sign in (1.0, -1.0):
        while bool((sign * angle > 180.0).any()):
            wrapped = torch.where(sign * angle > 180.0, angle - sign * 360.0, angle)
            if torch.equal(wrapped, angle):  # |angle| so large that float32 cannot step it by 360
                raise ValueError(f"yaw {float(angle.abs().max()):g} degrees is too large to wrap in float32")
            angle = wrapped
    return angle


def integrate_poses(
    keyboard: torch.Tensor, mouse: torch.Tensor, start: torch.Tensor, cfg: StreamConfig
) -> torch.Tensor:
    """Integrate per-frame actions into poses; pose i + 1 is pose i moved by action i.

    Args:
        keyboard: [B, T, K] multi-hot keys, K >= 4 (0 W/forward, 1 S/back, 2 A/left, 3 D/right;
            a key counts as pressed when > 0.5, so the null value -1 is "not pressed").
        mouse: [B, T, 2] (pitch, yaw) in mouse units; |v| < ``cfg.mouse_deadzone`` is ignored,
            otherwise the angle changes by ``v * cfg.degrees_per_mouse_unit`` degrees.
        start: [B, 5] (x, y, z, pitch, yaw) pose before the first action; its float dtype is the
            dtype of the result.
        cfg: ``move_speed`` per frame along one axis (W xor S, D xor A), ``move_speed_diag`` on
            each axis when both are active.

    Returns:
        [B, T + 1, 5] poses in ``start``'s dtype; ``[:, 0]`` is ``start`` rounded to float32.

    The recurrence is the release's, rounding included (spec §5.1, §15.1-2): the release keeps its
    pose array and its actions in float32, so

    - the mouse value is taken as float32 and compared with the dead zone in float32 (so +-0.02
      turns: float32(0.02) equals the float32 threshold), and the angle step is the float32
      product ``float32(v) * 15``;
    - pitch and yaw are updated in float32; yaw is wrapped into [-180, 180] by subtracting or
      adding 360 while it is outside (float32), so an exact +180 (e.g. 120 x 1.5 degrees) stays
      +180; pitch is neither wrapped nor clamped, z never changes;
    - the planar step is rotated by the average of the old and new *wrapped* yaw, summed in
      float32 and halved, then widened to float64 for the trigonometry; the step itself
      (``cos * forward - sin * right``) and the new position ``x + dx`` are float64, and the
      position is stored rounded to float32.

    The returned values are those float32 numbers widened to ``start``'s dtype (float64 in the
    generator). Across the +-180 seam the average yaw points the opposite way
    (179.25 -> -179.25 averages to 0, so "forward" moves along +x for that one frame), as in the
    release; the float32 arithmetic decides on which frame that happens.
    """
    if start.ndim != 2 or start.shape[-1] != 5:
        raise ValueError(f"expected start pose [B, 5] (x, y, z, pitch, yaw), got {tuple(start.shape)}")
    if not start.is_floating_point():
        raise ValueError(f"expected a floating-point start pose, got {start.dtype}")
    b = start.shape[0]
    if keyboard.ndim != 3 or keyboard.shape[0] != b or keyboard.shape[-1] < 4:
        raise ValueError(f"expected keyboard [B={b}, T, K>=4], got {tuple(keyboard.shape)}")
    t = keyboard.shape[1]
    if tuple(mouse.shape) != (b, t, 2):
        raise ValueError(f"expected mouse [B={b}, T={t}, 2] to match keyboard, got {tuple(mouse.shape)}")
    if not (torch.isfinite(mouse).all() and torch.isfinite(start).all()):
        raise ValueError("expected finite mouse values and start pose, got NaN or infinity")
    f32, f64 = torch.float32, torch.float64
    dtype, device = start.dtype, start.device
    keys = (keyboard[..., :4] > 0.5).to(device=device, dtype=f64)  # [B, T, 4]
    fwd = keys[..., 0] - keys[..., 1]  # +1 W only, -1 S only, 0 neither or both
    right = keys[..., 3] - keys[..., 2]
    both = (fwd != 0) & (right != 0)
    speed = torch.where(both, torch.full_like(fwd, cfg.move_speed_diag), torch.full_like(fwd, cfg.move_speed))  # [B, T]
    fwd, right = fwd * speed, right * speed  # float64, like the release's Python floats

    m = mouse.to(device=device, dtype=f32)
    threshold = torch.tensor(cfg.mouse_deadzone, dtype=f32, device=device)
    per_unit = torch.tensor(cfg.degrees_per_mouse_unit, dtype=f32, device=device)
    turn = torch.where(m.abs() >= threshold, m * per_unit, torch.zeros_like(m))  # [B, T, 2] float32 degrees

    pose = start.to(f32)  # [B, 5]
    poses = [pose]
    for i in range(t):
        x, y, z, pitch, yaw = pose.unbind(-1)
        new_pitch = pitch + turn[:, i, 0]
        new_yaw = _wrap_float32(yaw + turn[:, i, 1])
        mean_yaw = torch.deg2rad(((yaw + new_yaw) / 2).to(f64))  # [B]
        cos, sin = torch.cos(mean_yaw), torch.sin(mean_yaw)
        new_x = (x.to(f64) + (cos * fwd[:, i] - sin * right[:, i])).to(f32)
        new_y = (y.to(f64) + (sin * fwd[:, i] + cos * right[:, i])).to(f32)
        pose = torch.stack([new_x, new_y, z, new_pitch, new_yaw], dim=-1)
        poses.append(pose)
    return torch.stack(poses, dim=1).to(dtype)


# --------------------------------------------------------------------------------------------
# Extrinsics and intrinsics (spec §5.1-5.2)
# --------------------------------------------------------------------------------------------


def c2w_from_poses(poses: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrices [..., 4, 4] from poses [..., 5] (x, y, z, pitch, yaw).

    ``R = Rz(yaw) @ Ry(pitch) @ A`` (det -1, see the module docstring), translation in metres.
    """
    if poses.shape[-1] != 5 or not poses.is_floating_point():
        raise ValueError(f"expected float poses [..., 5] (x, y, z, pitch, yaw), got {tuple(poses.shape)} {poses.dtype}")
    pitch, yaw = torch.deg2rad(poses[..., 3]), torch.deg2rad(poses[..., 4])
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    rz = torch.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], dim=-1).unflatten(-1, (3, 3))
    ry = torch.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], dim=-1).unflatten(-1, (3, 3))
    axes = torch.tensor(AXIS_CHANGE, dtype=poses.dtype, device=poses.device)
    c2w = torch.zeros(*poses.shape[:-1], 4, 4, dtype=poses.dtype, device=poses.device)
    c2w[..., :3, :3] = rz @ ry @ axes
    c2w[..., :3, 3] = poses[..., :3] * _CM_TO_M
    c2w[..., 3, 3] = 1.0
    return c2w


def rigid_inverse(c2w: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [..., 4, 4] ([R | t] with orthogonal R): [R^T | -R^T t]."""
    rot_t = c2w[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ c2w[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


class Intrinsics(NamedTuple):
    """Pinhole intrinsics in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float


def intrinsics(height: int, width: int, fov_deg: float = 90.0) -> Intrinsics:
    """Intrinsics with the same field of view on both axes (anisotropic pixels, spec §5.2).

    At 90 degrees fx = W / 2 and fy = H / 2 exactly (704x1280 -> fx 640, fy 352); principal point
    at the image centre.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"expected a field of view in (0, 180) degrees, got {fov_deg}")
    # tan(45 deg) is 1, but math.tan(math.pi / 4) is 0.9999999999999999; keep 90 degrees exact.
    tan_half = 1.0 if fov_deg == 90.0 else math.tan(math.radians(fov_deg) / 2)
    return Intrinsics(fx=width / 2 / tan_half, fy=height / 2 / tan_half, cx=width / 2, cy=height / 2)


# --------------------------------------------------------------------------------------------
# Ray embeddings (spec §5.2)
# --------------------------------------------------------------------------------------------


def camera_rays(
    height: int,
    width: int,
    fov_deg: float = 90.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unit ray directions [3, H, W] in camera axes through the pixel centres (u + 0.5, v + 0.5)."""
    k = intrinsics(height, width, fov_deg)
    u = (torch.arange(width, dtype=dtype, device=device) + 0.5 - k.cx) / k.fx  # [W]
    v = (torch.arange(height, dtype=dtype, device=device) + 0.5 - k.cy) / k.fy  # [H]
    rays = torch.stack(
        [
            u.expand(height, width),
            v[:, None].expand(height, width),
            torch.ones(height, width, dtype=dtype, device=device),
        ]
    )  # [3, H, W]
    return rays / torch.linalg.vector_norm(rays, dim=0, keepdim=True)


def fold_pixels(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Fold s x s pixel blocks into channels: [B, C, F, H, W] -> [B, C*s*s, F, H/s, W/s].

    Output channel ``c * s * s + dy * s + dx`` of latent pixel (i, j) is pixel (i*s + dy, j*s + dx).
    """
    _, _, _, h, w = x.shape
    if h % stride or w % stride:
        raise ValueError(f"expected H and W divisible by the stride {stride}, got {h}x{w}")
    return rearrange(x, "b c f (h dy) (w dx) -> b (c dy dx) f h w", dy=stride, dx=stride)


def ray_embedding(
    c2w: torch.Tensor,
    height: int,
    width: int,
    stride: int,
    fov_deg: float = 90.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[origin, direction] ray embedding at pixel resolution, folded to latent pixels.

    Args:
        c2w: [B, F, 4, 4] camera-to-world (or relative) rigid transforms.
        height, width: pixel size of the frames; both divisible by ``stride``.
        stride: pixels per latent pixel (the VAE's spatial stride).

        dtype: dtype of the result (default: that of ``c2w``). The embedding is as large as a
            6-channel video; pass float32 (or bf16) with float64 poses to halve its memory.

    Returns:
        [B, 6*s*s, F, H/s, W/s]; channels ordered (channel, dy, dx) with
        channel = (o_x, o_y, o_z, d_x, d_y, d_z), i.e. ``fold_pixels`` of the full-resolution
        [B, 6, F, H, W] embedding, computed directly in the folded layout.
    """
    if c2w.ndim != 4 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected c2w [B, F, 4, 4], got {tuple(c2w.shape)}")
    if height % stride or width % stride:
        raise ValueError(f"expected the frame size {height}x{width} to be divisible by the stride {stride}")
    b, f = c2w.shape[:2]
    h, w = height // stride, width // stride
    dtype = c2w.dtype if dtype is None else dtype
    c2w = c2w.to(dtype)
    rays = camera_rays(height, width, fov_deg, dtype=dtype, device=c2w.device)
    rays = rearrange(rays, "c (h dy) (w dx) -> c dy dx h w", dy=stride, dx=stride)  # [3, s, s, h, w]
    out = c2w.new_empty(b, 6, stride, stride, f, h, w)
    out[:, :3] = rearrange(c2w[..., :3, 3], "b f c -> b c 1 1 f 1 1")  # origins, broadcast over pixels
    out[:, 3:] = torch.einsum("bfij,jyxhw->biyxfhw", c2w[..., :3, :3], rays)  # world directions
    return out.view(b, 6 * stride * stride, f, h, w)


# --------------------------------------------------------------------------------------------
# Window pose encoding (spec §5.3, §6)
# --------------------------------------------------------------------------------------------


def _as_chunk_tensor(chunk: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    c = torch.as_tensor(chunk, dtype=torch.int64, device=device)
    if (c < 0).any():
        raise ValueError(f"expected chunk indices >= 0, got {c.tolist()}")
    return c


def window_bounds(
    chunk: int | torch.Tensor, cfg: StreamConfig, temporal_stride: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-frame window [start, end) of chunk ``chunk`` (an int or [B] int64), as int64 tensors.

    Chunk 0: [0, 1 + r*(first_latents - 1)) = [0, 57). Chunk k >= 1 ends r*new_latents*k frames
    later and spans r*(past_latents + new_latents) frames: [40k + 1, 40k + 57) with the defaults.
    """
    r = temporal_stride
    c = _as_chunk_tensor(chunk)
    first_end = 1 + r * (cfg.first_latents - 1)
    end = first_end + r * cfg.new_latents * c
    start = torch.where(c == 0, torch.zeros_like(end), end - r * (cfg.past_latents + cfg.new_latents))
    return start, end


def window_pose_frames(chunk: int | torch.Tensor, cfg: StreamConfig, temporal_stride: int = 4) -> torch.Tensor:
    """Pixel frames whose poses encode the window's latents (each latent's last pixel frame).

    Chunk 0: 0, 4, ..., 56 (15 latents). Chunk k >= 1: start + 3, start + 7, ..., end - 1
    (14 latents: 4 past + 10 new), i.e. 4 * (latent index) for latents 10k + 1 ... 10k + 14.
    ``chunk`` an int gives [F]; a [B] tensor gives [B, F] (all zero or all >= 1, since the two cases
    have different F).
    """
    r = temporal_stride
    c = _as_chunk_tensor(chunk)
    if c.ndim == 1 and c.numel() > 0 and (c == 0).any() and (c > 0).any():
        raise ValueError(
            f"chunk 0 has {cfg.first_latents} window latents and later chunks "
            f"{cfg.past_latents + cfg.new_latents}; got a mix {c.tolist()}, call once per group"
        )
    first = bool((c == 0).all())
    n = cfg.first_latents if first else cfg.past_latents + cfg.new_latents
    _, end = window_bounds(c, cfg, r)
    steps = torch.arange(n, dtype=torch.int64, device=c.device)
    # last frame of window latent i: end - 1 - r * (n - 1 - i); for chunk 0 that is r * i
    return end[..., None] - 1 - r * (n - 1 - steps)


def window_relative_poses(c2w: torch.Tensor) -> torch.Tensor:
    """Frame-wise relative poses of a window, translations scaled to a largest norm of 1.

    ``c2w`` [B, F, 4, 4] are the poses of the window's latents. They are made relative to the
    first (``inv(c2w_0) @ c2w_k``), then turned into deltas (first = identity, k-th =
    ``inv(rel_{k-1}) @ rel_k``); all delta translations of a sample are divided by that sample's
    largest delta-translation norm, unless it is 0. Returns [B, F, 4, 4].
    """
    if c2w.ndim != 4 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected c2w [B, F, 4, 4], got {tuple(c2w.shape)}")
    rel = rigid_inverse(c2w[:, :1]) @ c2w
    delta = torch.empty_like(rel)
    delta[:, 0] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    delta[:, 1:] = rigid_inverse(rel[:, :-1]) @ rel[:, 1:]
    norm = torch.linalg.vector_norm(delta[..., :3, 3], dim=-1).amax(dim=1)  # [B]
    scale = torch.where(norm > 0, norm, torch.ones_like(norm))
    delta[..., :3, 3] = delta[..., :3, 3] / scale[:, None, None]
    return delta


def window_plucker(
    c2w: torch.Tensor,
    height: int,
    width: int,
    stride: int,
    fov_deg: float = 90.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Window camera code: :func:`ray_embedding` of :func:`window_relative_poses`.

    ``c2w`` [B, F, 4, 4] at :func:`window_pose_frames` (poses are composed in its dtype, rays
    built in ``dtype``); returns [B, 6*s*s, F, H/s, W/s].
    """
    return ray_embedding(window_relative_poses(c2w), height, width, stride, fov_deg, dtype=dtype)
