import math

import pytest
import torch

from world_model.camera import c2w_from_poses, integrate_poses, ray_embedding, rigid_inverse, window_bounds
from world_model.config import StreamConfig
from world_model.memory import (
    MemorySelection,
    frustum_overlap,
    frustum_points,
    memory_plucker,
    memory_relative_poses,
    select_memory,
)

CFG = StreamConfig()
F64 = torch.float64
STEP_M = CFG.move_speed * 0.01  # metres per frame walking straight


def _walk(n_frames: int, keys=(0,), mouse=(0.0, 0.0), start=(0.0, 0.0, 0.0, 0.0, 0.0)) -> torch.Tensor:
    """c2w [1, n_frames, 4, 4] of n_frames - 1 identical actions."""
    kb = torch.zeros(1, n_frames - 1, 6)
    for k in keys:
        kb[..., k] = 1.0
    ms = torch.tensor(mouse, dtype=F64).expand(1, n_frames - 1, 2)
    return c2w_from_poses(integrate_poses(kb, ms, torch.tensor([start], dtype=F64), CFG))


def _random_rollout(seed: int, n_frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = n_frames - 1
    # 12-frame segments of one action each, like the release's benchmark generator
    seg_keys = (torch.rand(n // 12 + 1, 4, generator=g) > 0.6).float()
    seg_mouse = (torch.randint(-1, 2, (n // 12 + 1, 2), generator=g) * 0.1).to(F64)
    seg_mouse[:, 0] = 0
    kb = torch.zeros(1, n, 6)
    kb[0, :, :4] = seg_keys.repeat_interleave(12, 0)[:n]
    ms = seg_mouse.repeat_interleave(12, 0)[:n][None]
    return c2w_from_poses(integrate_poses(kb, ms, torch.zeros(1, 5, dtype=F64), CFG))


def test_frustum_points_grid():
    pts = frustum_points(10, 0.1, 30.0, dtype=F64)
    assert pts.shape == (1000, 3)
    assert pts[:, 2].min() == pytest.approx(0.1) and pts[:, 2].max() == pytest.approx(30.0)
    torch.testing.assert_close((pts[:, 0] / pts[:, 2]).abs().max(), torch.tensor(1.0, dtype=F64))


def test_frustum_overlap_hand_cases():
    def cam(x_m: float, yaw: float) -> torch.Tensor:
        return c2w_from_poses(torch.tensor([x_m * 100, 0, 0, 0, yaw], dtype=F64))

    query = cam(0.0, 0.0)[None, None]
    cands = torch.stack([cam(-1.0, 0.0), cam(-31.0, 0.0), cam(0.0, 180.0), cam(5.0, 0.0)])[None]
    counts = frustum_overlap(query, cands, CFG)
    assert counts.shape == (1, 1, 4) and counts.dtype == torch.int64
    # 1 m behind: the 9 depth levels with z + 1 < 30 are inside, all 100 lateral points each
    assert counts[0, 0, 0] == 900
    assert counts[0, 0, 1] == 0  # 31 m behind: everything beyond the far plane
    assert counts[0, 0, 2] == 0  # facing the other way: everything behind the camera
    # 5 m ahead: only points deeper than 5 m can be in front; near ones fall outside the view
    assert 0 < counts[0, 0, 3] < 700


def test_walking_straight_picks_the_first_of_the_best_recent_frames():
    chunk = 2
    start, end = (int(v) for v in window_bounds(chunk, CFG))
    c2w = _walk(end)
    sel = select_memory(c2w, chunk, CFG)
    depths = torch.linspace(0.1, 30.0, 10, dtype=F64).tolist()

    def count(q: int, f: int) -> int:  # candidate f is (q - f) frames straight behind query q
        d = (q - f) * STEP_M
        return 100 * sum(z + d < 30.0 for z in depths)

    for slot, q in enumerate([end - 1, end - 9, end - 17, end - 25]):
        scores = [count(q, f) for f in range(1, start)]
        expected = 1 + scores.index(max(scores))
        assert sel.frames[0, slot] == expected
        assert expected > start - 40  # one of the recent frames
    assert sel.query_frames[0].tolist() == [end - 1, end - 9, end - 17, end - 25, end - 33]


def test_turn_away_and_come_back_retrieves_the_frames_facing_the_same_way():
    chunk = 2
    start, end = (int(v) for v in window_bounds(chunk, CFG))  # 81, 137
    yaw = torch.zeros(end, dtype=F64)
    yaw[1:21] = 90.0  # looking right
    yaw[21:41] = 0.0  # looking ahead (the view the window comes back to)
    yaw[41:start] = 180.0  # turned away
    poses = torch.zeros(end, 5, dtype=F64)
    poses[:, 4] = yaw
    poses[:, 0] = torch.where(yaw == 0, 0.0, 50.0)  # half a metre away when not looking ahead
    sel = select_memory(c2w_from_poses(poses)[None], chunk, CFG)
    assert sel.frames[0, :4].tolist() == [21, 21, 21, 21]  # first of the identical best frames
    assert sel.latents[0, :4].tolist() == [6, 6, 6, 6]  # (21 - 1) // 4 + 1


def test_sink_slot_is_latent_one_and_latent_indices():
    c2w = _random_rollout(0, 177)
    sel = select_memory(c2w, 3, CFG)
    assert isinstance(sel, MemorySelection)
    assert sel.frames.shape == sel.latents.shape == sel.query_frames.shape == (1, 5)
    assert sel.frames[0, -1] == 4 and sel.latents[0, -1] == 1
    torch.testing.assert_close(sel.latents, (sel.frames - 1) // 4 + 1)
    start, _ = window_bounds(3, CFG)
    assert ((sel.frames >= 1) & (sel.frames < start)).all()


def test_selection_is_the_argmax_of_the_scores():
    c2w = _random_rollout(1, 137)
    sel = select_memory(c2w, 2, CFG)
    counts = frustum_overlap(c2w[:, sel.query_frames[0]], c2w[:, 1:81], CFG)  # candidates 1..80
    best = counts.max(dim=-1).values
    for slot in range(4):
        f = int(sel.frames[0, slot])
        assert counts[0, slot, f - 1] == best[0, slot]
        assert (counts[0, slot, : f - 1] < best[0, slot]).all()  # first maximum


def test_batched_equals_per_sample():
    chunks = [1, 3, 2]
    rolls = [_random_rollout(10 + i, int(window_bounds(k, CFG)[1])) for i, k in enumerate(chunks)]
    n = max(r.shape[1] for r in rolls)
    batch = torch.full((len(rolls), n, 4, 4), float("nan"), dtype=F64)  # padding must never be read
    for i, r in enumerate(rolls):
        batch[i, : r.shape[1]] = r[0]
    sel = select_memory(batch, torch.tensor(chunks), CFG)
    emb = memory_plucker(batch, sel, 16, 32, stride=8)
    assert emb.shape == (3, 6 * 64, 5, 2, 4) and torch.isfinite(emb).all()
    for i, (r, k) in enumerate(zip(rolls, chunks)):
        one = select_memory(r, k, CFG)
        for a, b in zip(sel, one):
            assert torch.equal(a[i : i + 1], b)
        torch.testing.assert_close(emb[i : i + 1], memory_plucker(r, one, 16, 32, stride=8))


def test_float32_and_float64_agree():
    for seed, chunk in ((20, 2), (21, 4)):
        c2w = _random_rollout(seed, int(window_bounds(chunk, CFG)[1]))
        a = select_memory(c2w, chunk, CFG)
        b = select_memory(c2w.float(), chunk, CFG)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_candidate_blocks_do_not_change_the_result():
    c2w = _random_rollout(30, 137)
    a = select_memory(c2w, 2, CFG)
    b = select_memory(c2w, 2, CFG, max_elements=5 * 1000 * 3 * 7)  # 7 candidates per block
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_memory_relative_poses():
    q = c2w_from_poses(torch.tensor([[100.0, 200.0, 0.0, 0.0, 30.0]], dtype=F64))
    torch.testing.assert_close(memory_relative_poses(q, q), torch.eye(4, dtype=F64)[None])
    m = c2w_from_poses(torch.tensor([[100.0, 500.0, 0.0, 0.0, 120.0]], dtype=F64))  # 3 m along +y, turned 90
    rel = memory_relative_poses(m, q)
    assert rel[0, :3, 3].norm() == pytest.approx(1.0)
    torch.testing.assert_close(rel[0, :3, :3], (rigid_inverse(q) @ m)[0, :3, :3])
    # +y in the world is 60 deg right of the query's heading (yaw 30): camera (sin 60, 0, cos 60)
    a = math.radians(60.0)
    torch.testing.assert_close(rel[0, :3, 3], torch.tensor([math.sin(a), 0.0, math.cos(a)], dtype=F64))


def test_memory_plucker_uses_latent_poses_relative_to_queries():
    c2w = _random_rollout(40, 137)
    sel = select_memory(c2w, 2, CFG)
    emb = memory_plucker(c2w, sel, 16, 16, stride=8)
    rel = memory_relative_poses(c2w[:, 4 * sel.latents[0]], c2w[:, sel.query_frames[0]])
    torch.testing.assert_close(emb, ray_embedding(rel, 16, 16, 8))


def test_errors_are_readable():
    c2w = _walk(97)
    with pytest.raises(ValueError, match="from chunk 1 on"):
        select_memory(c2w, 0, CFG)
    with pytest.raises(ValueError, match="at least 137 frames"):
        select_memory(c2w, 2, CFG)
    with pytest.raises(ValueError, match="c2w"):
        select_memory(c2w[0], 1, CFG)


def test_no_memory_slots():
    sel = select_memory(_walk(97), 1, StreamConfig(num_memory=0))
    assert all(t.shape == (1, 0) for t in sel)


def test_rays_and_points_select_the_same_memory():
    """The per-ray counting (default) selects what projecting every point selects, and counts the
    same except where a frustum ray lies on a view boundary (cameras turned alike: rounding decides)."""
    for seed, chunk in ((40, 1), (41, 3), (42, 7), (43, 12)):
        c2w = _random_rollout(seed, int(window_bounds(chunk, CFG)[1]))
        a = select_memory(c2w, chunk, CFG)
        b = select_memory(c2w, chunk, CFG, method="points")
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        start = int(window_bounds(chunk, CFG)[0])
        q = c2w[:, a.query_frames[0]]
        rays = frustum_overlap(q, c2w[:, 1:start], CFG)
        points = frustum_overlap(q, c2w[:, 1:start], CFG, method="points")
        differ = rays != points
        assert differ.float().mean() < 0.01 and (rays - points).abs().max() <= 3 * CFG.memory_grid
    with pytest.raises(ValueError, match="rays"):
        frustum_overlap(q, c2w[:, 1:start], CFG, method="grid")


@pytest.mark.gpu
def test_retrieval_on_the_gpu_selects_what_the_cpu_selects():
    """One block, one device sync for the whole batch: the same memory on CUDA as on the CPU."""
    chunk = 12
    c2w = torch.cat([_random_rollout(seed, int(window_bounds(chunk, CFG)[1])) for seed in (50, 51, 52, 53)])
    cpu = select_memory(c2w, chunk, CFG)
    gpu = select_memory(c2w.cuda(), chunk, CFG, max_elements=1 << 27)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    start = int(window_bounds(chunk, CFG)[0])
    q = c2w[:, cpu.query_frames[0]]
    counts = frustum_overlap(q, c2w[:, 1:start], CFG)
    assert (frustum_overlap(q.cuda(), c2w[:, 1:start].cuda(), CFG).cpu() != counts).float().mean() < 0.01
