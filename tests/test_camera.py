import math

import numpy as np
import pytest
import torch

from world_model.camera import (
    c2w_from_poses,
    camera_rays,
    fold_pixels,
    integrate_poses,
    intrinsics,
    ray_embedding,
    rigid_inverse,
    window_bounds,
    window_plucker,
    window_pose_frames,
    window_relative_poses,
    wrap_degrees,
)
from world_model.config import StreamConfig

CFG = StreamConfig()
F64 = torch.float64


def _actions(keys: list[int], mouse: tuple[float, float], n: int, b: int = 1):
    kb = torch.zeros(b, n, 6)
    for k in keys:
        kb[..., k] = 1.0
    ms = torch.tensor(mouse, dtype=F64).expand(b, n, 2).clone()
    return kb, ms


def _integrate(keys, mouse, n, start=(0.0, 0.0, 0.0, 0.0, 0.0), cfg=CFG):
    kb, ms = _actions(keys, mouse, n)
    return integrate_poses(kb, ms, torch.tensor([start], dtype=F64), cfg)[0]  # [n+1, 5]


# ---------------------------------------------------------------------------------------------
# integration
# ---------------------------------------------------------------------------------------------


def test_straight_moves_12_35_per_frame():
    n = 7
    for keys, axis, sign in (([0], 0, 1), ([1], 0, -1), ([3], 1, 1), ([2], 1, -1)):
        p = _integrate(keys, (0.0, 0.0), n)
        assert p.shape == (n + 1, 5)
        expected = sign * 12.35 * torch.arange(n + 1, dtype=F64)
        torch.testing.assert_close(p[:, axis], expected)
        torch.testing.assert_close(p[:, 1 - axis], torch.zeros(n + 1, dtype=F64))
        assert (p[:, 2:] == 0).all()


def test_diagonal_and_opposite_keys():
    p = _integrate([0, 3], (0.0, 0.0), 4)  # W + D: 8.73 on each axis
    torch.testing.assert_close(p[-1, :2], torch.tensor([4 * 8.73, 4 * 8.73], dtype=F64))
    p = _integrate([0, 1], (0.0, 0.0), 4)  # W + S cancel
    assert (p == 0).all()
    p = _integrate([0, 1, 3], (0.0, 0.0), 4)  # W + S + D: only D is active -> full speed
    torch.testing.assert_close(p[-1, :2], torch.tensor([0.0, 4 * 12.35], dtype=F64))


def test_speeds_come_from_config():
    cfg = StreamConfig(move_speed=2.0, move_speed_diag=1.5, degrees_per_mouse_unit=10.0)
    p = _integrate([0], (0.0, 0.0), 3, cfg=cfg)
    assert p[-1, 0] == pytest.approx(6.0)
    p = _integrate([0, 2], (0.5, 0.0), 2, cfg=cfg)
    assert p[-1, 3] == pytest.approx(10.0)  # pitch 2 * 0.5 * 10
    torch.testing.assert_close(p[-1, :2], torch.tensor([3.0, -3.0], dtype=F64))


def test_null_keyboard_does_not_move():
    kb = torch.full((1, 5, 6), -1.0)
    p = integrate_poses(kb, torch.zeros(1, 5, 2), torch.zeros(1, 5, dtype=F64), CFG)
    assert (p == 0).all()


def test_mouse_deadzone():
    assert _integrate([], (0.019, -0.019), 3)[-1, 3:].abs().max() == 0
    p = _integrate([], (0.02, -0.02), 3)
    torch.testing.assert_close(p[-1, 3:], torch.tensor([0.9, -0.9], dtype=F64))
    p = _integrate([], (-0.1, 0.1), 2)  # pitch is neither wrapped nor clamped
    torch.testing.assert_close(p[:, 3], torch.tensor([0.0, -1.5, -3.0], dtype=F64))


def test_pitch_is_not_wrapped():
    p = _integrate([], (1.0, 0.0), 14)  # 15 deg per frame
    assert p[-1, 3] == pytest.approx(210.0)


def test_yaw_wraps_into_closed_interval():
    p = _integrate([], (0.0, 0.1), 3, start=(0, 0, 0, 0, 178.5))
    torch.testing.assert_close(p[:, 4], torch.tensor([178.5, 180.0, -178.5, -177.0], dtype=F64))
    p = _integrate([], (0.0, -0.1), 2, start=(0, 0, 0, 0, -178.5))
    torch.testing.assert_close(p[:, 4], torch.tensor([-178.5, -180.0, 178.5], dtype=F64))
    # exactly +-180 stays where it is: the value depends on the side of approach
    back = _integrate([], (0.0, -0.1), 1, start=(0, 0, 0, 0, -178.5))
    assert back[-1, 4] == -180.0
    w = wrap_degrees(torch.tensor([180.0, -180.0, 181.0, -181.0, 540.0, 541.0, -900.0], dtype=F64))
    torch.testing.assert_close(w, torch.tensor([180.0, -180.0, -179.0, 179.0, 180.0, -179.0, -180.0], dtype=F64))


def test_step_uses_average_yaw():
    p = _integrate([0], (0.0, 1.0), 1)  # yaw 0 -> 15: translation rotated by 7.5 deg
    a = math.radians(7.5)
    torch.testing.assert_close(p[1], torch.tensor([12.35 * math.cos(a), 12.35 * math.sin(a), 0, 0, 15], dtype=F64))
    p = _integrate([3], (0.0, -1.0), 1, start=(1.0, 2.0, 3.0, 0.0, 90.0))  # D at yaw 90 -> 75: mean 82.5
    a = math.radians(82.5)
    torch.testing.assert_close(
        p[1], torch.tensor([1.0 - 12.35 * math.sin(a), 2.0 + 12.35 * math.cos(a), 3.0, 0.0, 75.0], dtype=F64)
    )


def test_average_of_wrapped_yaw_at_the_seam():
    # 179.25 -> 180.75 wraps to -179.25; the release averages the wrapped values: 0 -> moves along +x
    p = _integrate([0], (0.0, 0.1), 1, start=(0, 0, 0, 0, 179.25))
    torch.testing.assert_close(p[1], torch.tensor([12.35, 0.0, 0.0, 0.0, -179.25], dtype=F64))


def _release_rule(keys, mouse, start=(0.0, 0.0, 0.0, 0.0, 0.0), real=np.float32):
    """The release's per-frame pose rule (spec §5.1, §15.1-2), written out independently with numpy
    scalars of type ``real`` for the stored pose and the actions (float32 in the release) and Python
    floats for the trigonometry. ``keys`` [T, 4] (W, S, A, D) bools, ``mouse`` [T, 2]. -> [T + 1, 5]."""
    x, y, z, pitch, yaw = (real(v) for v in start)
    rows = [(x, y, z, pitch, yaw)]
    threshold, per_unit = real(0.02), real(15.0)
    for (w, s, a, d), (m_pitch, m_yaw) in zip(keys, mouse):
        m_pitch, m_yaw = real(m_pitch), real(m_yaw)
        d_pitch = per_unit * m_pitch if abs(m_pitch) >= threshold else real(0.0)
        d_yaw = per_unit * m_yaw if abs(m_yaw) >= threshold else real(0.0)
        new_pitch, new_yaw = real(pitch + d_pitch), real(yaw + d_yaw)
        while new_yaw > 180:
            new_yaw = real(new_yaw - real(360))
        while new_yaw < -180:
            new_yaw = real(new_yaw + real(360))
        forward = 12.35 if (w and not s) else (-12.35 if (s and not w) else 0.0)
        right = 12.35 if (d and not a) else (-12.35 if (a and not d) else 0.0)
        if forward and right:
            forward, right = math.copysign(8.73, forward), math.copysign(8.73, right)
        mean = math.radians(float(real(yaw + new_yaw) / real(2)))
        x = real(float(x) + (math.cos(mean) * forward - math.sin(mean) * right))
        y = real(float(y) + (math.sin(mean) * forward + math.cos(mean) * right))
        pitch, yaw = new_pitch, new_yaw
        rows.append((x, y, z, pitch, yaw))
    return np.array([[float(v) for v in row] for row in rows])


def test_float32_recurrence_at_the_seam_matches_the_release_rule():
    """W + yaw 0.1 for 217 frames: 15 x float32(0.1) is exactly 1.5 degrees, so frame 120 lands on
    +180.0 and stays there (spec §15.1). A float64 recurrence overshoots to 180.0000027, wraps to
    -179.9999973 and sends the seam frame the other way: 24.7 units apart at frame 120, 0.65 after."""
    n = 217
    keys = np.zeros((n, 4), dtype=bool)
    keys[:, 0] = True
    mouse = np.zeros((n, 2), dtype=np.float32)
    mouse[:, 1] = 0.1
    expected = _release_rule(keys, mouse)
    kb = torch.zeros(1, n, 6)
    kb[..., 0] = 1.0
    p = integrate_poses(kb, torch.from_numpy(mouse)[None], torch.zeros(1, 5, dtype=F64), CFG)[0]
    assert p.dtype == F64
    np.testing.assert_array_equal(p.numpy(), expected)
    assert p[120, 4] == 180.0 and p[121, 4] == -178.5
    assert p[119, 4] == 178.5 and p[217, 4] == -34.5
    # the float64 recurrence (the previous behaviour) differs exactly where the issue says
    widened = _release_rule(keys, mouse.astype(np.float64), real=np.float64)
    assert widened[120, 4] == pytest.approx(-179.9999973, abs=1e-6)
    gap = np.linalg.norm(expected[:, :2] - widened[:, :2], axis=1)
    assert gap[:120].max() < 1e-3
    assert gap[120] == pytest.approx(24.7, abs=0.05)
    np.testing.assert_allclose(gap[121:], 0.6466, atol=2e-3)


def test_dead_zone_edge_is_compared_in_float32():
    """+-0.02 as float32 equals the float32 threshold: it turns 0.3 degrees per frame (spec §15.2)."""
    n = 4
    kb = torch.zeros(1, n, 6)
    for value in (0.02, -0.02):
        for mouse in (torch.full((1, n, 2), value), torch.full((1, n, 2), value, dtype=F64)):
            p = integrate_poses(kb, mouse, torch.zeros(1, 5, dtype=F64), CFG)[0]
            expected = _release_rule(np.zeros((n, 4), dtype=bool), np.full((n, 2), value, dtype=np.float32))
            np.testing.assert_array_equal(p.numpy(), expected)
            assert p[1, 3] == float(np.float32(15.0) * np.float32(value))  # 0.3 in float32
            assert p[-1, 3] == pytest.approx(n * 0.3 * np.sign(value), rel=1e-6)
    below = integrate_poses(kb, torch.full((1, n, 2), 0.0199), torch.zeros(1, 5, dtype=F64), CFG)
    assert (below == 0).all()


def test_random_actions_match_the_release_rule_exactly():
    """Random keys, mouse values around the dead zone and large turns, starts near the seam."""
    rng = np.random.default_rng(0)
    b, n = 6, 120
    keys = rng.random((b, n, 4)) > 0.6
    mouse = rng.choice(np.float32([0.0, 0.02, -0.02, 0.0199, 0.1, -0.1, 0.35, -1.7, 30.0]), size=(b, n, 2))
    starts = np.array([[0, 0, 0, 0, 179.0], [5.5, -3.25, 1.0, 10.0, -179.5], *rng.normal(0, 50, (b - 2, 5))])
    starts = starts.astype(np.float32).astype(np.float64)
    kb = torch.from_numpy(keys.astype(np.float32))
    kb = torch.cat([kb, torch.zeros(b, n, 2)], dim=-1)
    p = integrate_poses(kb, torch.from_numpy(mouse), torch.from_numpy(starts), CFG)
    for i in range(b):
        np.testing.assert_array_equal(p[i].numpy(), _release_rule(keys[i], mouse[i], tuple(starts[i])))


def test_integration_is_batched():
    torch.manual_seed(0)
    b, n = 4, 30
    kb = (torch.rand(b, n, 6) > 0.6).float()
    ms = (torch.rand(b, n, 2) - 0.5) * 0.4
    start = torch.randn(b, 5, dtype=F64) * 50
    p = integrate_poses(kb, ms, start, CFG)
    for i in range(b):
        torch.testing.assert_close(p[i : i + 1], integrate_poses(kb[i : i + 1], ms[i : i + 1], start[i : i + 1], CFG))
    assert p.dtype == F64 and p.shape == (b, n + 1, 5)


def test_integration_errors_are_readable():
    with pytest.raises(ValueError, match=r"start pose \[B, 5\]"):
        integrate_poses(torch.zeros(1, 3, 6), torch.zeros(1, 3, 2), torch.zeros(1, 4), CFG)
    with pytest.raises(ValueError, match="mouse"):
        integrate_poses(torch.zeros(1, 3, 6), torch.zeros(1, 2, 2), torch.zeros(1, 5), CFG)


# ---------------------------------------------------------------------------------------------
# extrinsics / intrinsics
# ---------------------------------------------------------------------------------------------


def test_c2w_axis_convention():
    c2w = c2w_from_poses(torch.tensor([120.0, -50.0, 300.0, 0.0, 0.0], dtype=F64))
    r = c2w[:3, :3]
    torch.testing.assert_close(r @ torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor([1.0, 0, 0], dtype=F64))
    torch.testing.assert_close(r @ torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([0, 1.0, 0], dtype=F64))
    torch.testing.assert_close(r @ torch.tensor([0, 1.0, 0], dtype=F64), torch.tensor([0, 0, -1.0], dtype=F64))
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([1.2, -0.5, 3.0], dtype=F64))
    torch.testing.assert_close(c2w[3], torch.tensor([0, 0, 0, 1.0], dtype=F64))


def test_c2w_rotations_are_left_handed_and_orthogonal():
    torch.manual_seed(1)
    poses = torch.randn(6, 5, dtype=F64) * 60
    r = c2w_from_poses(poses)[..., :3, :3]
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=F64).expand(6, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), -torch.ones(6, dtype=F64))


def test_yaw_and_pitch_directions():
    fwd = torch.tensor([0, 0, 1.0], dtype=F64)
    r = c2w_from_poses(torch.tensor([0, 0, 0, 0, 90.0], dtype=F64))[:3, :3]
    torch.testing.assert_close(r @ fwd, torch.tensor([0, 1.0, 0], dtype=F64))  # yaw 90: looks along +y (right)
    r = c2w_from_poses(torch.tensor([0, 0, 0, 30.0, 0], dtype=F64))[:3, :3]
    # release convention kept: positive pitch tilts the optical axis towards -Z
    torch.testing.assert_close(r @ fwd, torch.tensor([math.cos(math.radians(30)), 0, -0.5], dtype=F64))


def test_rigid_inverse():
    torch.manual_seed(2)
    c2w = c2w_from_poses(torch.randn(3, 4, 5, dtype=F64) * 100)
    torch.testing.assert_close(rigid_inverse(c2w) @ c2w, torch.eye(4, dtype=F64).expand(3, 4, 4, 4))


def test_intrinsics():
    assert intrinsics(704, 1280) == (640.0, 352.0, 640.0, 352.0)
    k = intrinsics(704, 1280, fov_deg=60.0)
    assert k.fx == pytest.approx(640 / math.tan(math.radians(30)))
    assert k.fy == pytest.approx(352 / math.tan(math.radians(30)))
    with pytest.raises(ValueError, match="field of view"):
        intrinsics(10, 10, fov_deg=180.0)


# ---------------------------------------------------------------------------------------------
# rays
# ---------------------------------------------------------------------------------------------


def test_centre_ray_points_forward():
    rays = camera_rays(5, 7, dtype=F64)  # odd size: pixel (2, 3) is the centre
    torch.testing.assert_close(rays[:, 2, 3], torch.tensor([0, 0, 1.0], dtype=F64))
    torch.testing.assert_close(rays.norm(dim=0), torch.ones(5, 7, dtype=F64))
    # corner pixel centre of a 90 degree camera: ((0.5 - 3.5) / 3.5, (0.5 - 2.5) / 2.5, 1)
    corner = torch.tensor([-3 / 3.5, -2 / 2.5, 1.0], dtype=F64)
    torch.testing.assert_close(rays[:, 0, 0], corner / corner.norm())
    c2w = c2w_from_poses(torch.tensor([[[100.0, 0, 0, 0, 0]]], dtype=F64))
    emb = ray_embedding(c2w, 5, 7, stride=1)  # [1, 6, 1, 5, 7]
    torch.testing.assert_close(emb[0, 3:, 0, 2, 3], torch.tensor([1.0, 0, 0], dtype=F64))  # world +x
    assert (emb[0, 0, 0] == 1.0).all() and (emb[0, 1:3] == 0).all()  # origin = translation in metres


def test_fold_order_channel_dy_dx():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(1, 2, 1, 4, 6)  # [B, C, F, H, W]
    y = fold_pixels(x, 2)
    assert y.shape == (1, 8, 1, 2, 3)
    # latent pixel (1, 2), channel 1, dy 1, dx 0 -> pixel (3, 4) of channel 1
    assert y[0, 1 * 4 + 1 * 2 + 0, 0, 1, 2] == x[0, 1, 0, 3, 4]
    assert y[0, :4, 0, 0, 0].tolist() == [0.0, 1.0, 6.0, 7.0]  # channel 0, (dy, dx) = 00, 01, 10, 11
    with pytest.raises(ValueError, match="divisible"):
        fold_pixels(x, 4)


def test_ray_embedding_equals_folded_full_resolution():
    torch.manual_seed(3)
    b, f, h, w, s = 2, 3, 16, 24, 4
    c2w = c2w_from_poses(torch.randn(b, f, 5, dtype=F64) * 80)
    rays = camera_rays(h, w, dtype=F64)  # [3, H, W]
    dirs = torch.einsum("bfij,jhw->bifhw", c2w[..., :3, :3], rays)
    origins = c2w[..., :3, 3].permute(0, 2, 1)[..., None, None].expand(b, 3, f, h, w)
    full = torch.cat([origins, dirs], dim=1)  # [B, 6, F, H, W]
    emb = ray_embedding(c2w, h, w, stride=s)
    assert emb.shape == (b, 6 * s * s, f, h // s, w // s)
    torch.testing.assert_close(emb, fold_pixels(full, s))


# ---------------------------------------------------------------------------------------------
# window geometry and pose encoding
# ---------------------------------------------------------------------------------------------


def test_window_frames_match_the_streaming_table():
    assert [int(v) for v in window_bounds(0, CFG)] == [0, 57]
    assert [int(v) for v in window_bounds(1, CFG)] == [41, 97]
    assert [int(v) for v in window_bounds(2, CFG)] == [81, 137]
    assert window_pose_frames(0, CFG).tolist() == list(range(0, 57, 4))
    assert window_pose_frames(1, CFG).tolist() == list(range(44, 97, 4))  # latents 11..24 -> 4 * latent
    k = 3
    fr = window_pose_frames(torch.tensor([1, k]), CFG)
    assert fr.shape == (2, 14)
    assert fr[1].tolist() == [4 * j for j in range(10 * k + 1, 10 * k + 15)]
    start, end = window_bounds(torch.tensor([1, k]), CFG)
    assert (fr[:, 0] == start + 3).all() and (fr[:, -1] == end - 1).all()
    with pytest.raises(ValueError, match="mix"):
        window_pose_frames(torch.tensor([0, 1]), CFG)


def test_window_deltas_straight_walk():
    p = _integrate([0], (0.0, 0.0), 56)
    c2w = c2w_from_poses(p[window_pose_frames(0, CFG)])[None]  # [1, 15, 4, 4]
    d = window_relative_poses(c2w)
    eye = torch.eye(4, dtype=F64)
    torch.testing.assert_close(d[0, 0], eye)
    torch.testing.assert_close(d[0, 1:, :3, :3], eye[:3, :3].expand(14, 3, 3))
    # constant speed: every delta is one unit along the camera's optical axis (+z), up to the float32
    # rounding of the positions (the release stores poses in float32, spec §15.1)
    torch.testing.assert_close(d[0, 1:, :3, 3], torch.tensor([0, 0, 1.0], dtype=F64).expand(14, 3), rtol=0, atol=1e-5)


def test_window_deltas_turn_and_normalisation():
    kb, ms = _actions([0], (0.0, 0.1), 56)
    kb[:, 30:, 0] = 0  # stop walking halfway, keep turning
    kb[:, :8, 0] = 0
    kb[:, :8, 3] = 1  # strafe right at first
    p = integrate_poses(kb, ms, torch.zeros(1, 5, dtype=F64), CFG)
    d = window_relative_poses(c2w_from_poses(p[:, window_pose_frames(0, CFG)]))
    norms = d[0, :, :3, 3].norm(dim=-1)
    assert norms.max() == pytest.approx(1.0)
    assert norms[0] == 0 and norms[-1] == 0  # the identity, and standing still at the end
    # turning right by 6 deg per latent: the new optical axis, seen from the old camera
    a = math.radians(6.0)
    torch.testing.assert_close(
        d[0, -1, :3, :3] @ torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor([math.sin(a), 0, math.cos(a)], dtype=F64)
    )


def test_window_deltas_without_motion_stay_finite():
    c2w = c2w_from_poses(torch.zeros(2, 5, 5, dtype=F64))
    d = window_relative_poses(c2w)
    torch.testing.assert_close(d, torch.eye(4, dtype=F64).expand(2, 5, 4, 4))


def test_window_plucker_shape_and_content():
    p = _integrate([0], (0.0, 0.1), 56)
    c2w = c2w_from_poses(p[window_pose_frames(0, CFG)])[None].float()
    emb = window_plucker(c2w, 32, 48, stride=8)
    assert emb.shape == (1, 6 * 64, 15, 4, 6) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, ray_embedding(window_relative_poses(c2w), 32, 48, 8))
    assert (emb[0, : 3 * 64, 0] == 0).all()  # first latent: identity -> zero origin


def test_ray_embedding_output_dtype():
    p = _integrate([0], (0.0, 0.3), 56)
    c2w = c2w_from_poses(p[window_pose_frames(0, CFG)])[None]  # float64 poses
    emb = window_plucker(c2w, 16, 16, stride=8, dtype=torch.float32)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, window_plucker(c2w, 16, 16, stride=8).float())


def test_integration_rejects_values_it_cannot_wrap():
    kb = torch.zeros(1, 2, 6)
    with pytest.raises(ValueError, match="finite"):
        integrate_poses(kb, torch.tensor([[[0.0, float("inf")], [0.0, 0.0]]]), torch.zeros(1, 5, dtype=F64), CFG)
    with pytest.raises(ValueError, match="too large to wrap"):
        integrate_poses(kb, torch.tensor([[[0.0, 1e12], [0.0, 0.0]]]), torch.zeros(1, 5, dtype=F64), CFG)
    p = integrate_poses(kb, torch.tensor([[[0.0, 100.0], [0.0, -100.0]]]), torch.zeros(1, 5, dtype=F64), CFG)
    assert p[0, :, 4].tolist() == [0.0, 60.0, 0.0]  # +-1500 degrees a frame: wrapped by four turns
