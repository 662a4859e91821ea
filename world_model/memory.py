"""Camera-aware memory retrieval (spec §5.4) and the memory camera code (§5.5).

Pure, batched torch functions on the device of their inputs; no Python loop over candidates.
Poses come as camera-to-world matrices (:func:`world_model.camera.c2w_from_poses`) of every pixel
frame of a rollout, padded to a common length when envs of a batch are at different chunks.

Retrieval for chunk k >= 1 (window [start, end), see :func:`world_model.camera.window_bounds`):

1. queries: pixel frames ``end - o`` for o in ``cfg.memory_query_offsets`` (end-1, end-9, ...);
2. candidates: every pixel frame 1 ... start-1;
3. score: how many of the grid^3 points sampled in the query's view frustum (x, y in
   linspace(-1, 1), depth z in linspace(near, far); camera point (x*z, y*z, z)) land in a candidate's
   view: 0.1 < depth < 30 and the projection inside [0, 1280] x [0, 720] of the selection camera
   (fx = 640, fy = 360, so a 90 degree field of view on both axes; spec §13.7: this camera is
   720 high while the frames are 704);
4. per query, the best candidate, the first (lowest frame) on ties; no de-duplication;
5. the last slot is overridden by the sink latent (``cfg.sink_latent``, frame 4 -> latent 1);
6. memory latent index = (frame - 1) // r + 1 (r = VAE temporal stride, 4).

The score of step 3 is computed per ray rather than per point (``method="rays"``, the default):
the frustum points lie on grid^2 rays from the query camera, p = z * (x, y, 1); in a candidate
camera a ray is c + z * d, and every test of step 3 is linear in z (depth: near < Z < far; inside
the view: -Z <= X <= Z and -Z <= Y <= Z, which is 0 <= u <= 1280 and 0 <= v <= 720 for the
selection camera's fx = cx, fy = cy). Each ray's tests give one interval of z, and the count is
the number of the grid's depths inside it: grid^2 interval computations instead of grid^3 point
projections, the same counts (``method="points"`` projects every point, the reference; the two
differ only for a point within rounding of a view boundary).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from world_model.camera import ray_embedding, rigid_inverse, window_bounds
from world_model.config import StreamConfig

__all__ = [
    "SELECTION_CAMERA_HW",
    "MemorySelection",
    "frustum_points",
    "frustum_overlap",
    "select_memory",
    "memory_relative_poses",
    "memory_plucker",
]

# (height, width) of the camera model used for scoring; fx = width / 2, fy = height / 2 (spec §5.4).
SELECTION_CAMERA_HW = (720, 1280)

# Cap on the elements of one block of work: [B, Q, n, G, 3] transformed points (``method="points"``),
# [pairs, 12, rays] bounds (``"rays"``; sized to stay in a CPU core's cache).
_MAX_ELEMENTS = 1 << 19
_TINY = 1e-30
_MIN_OFFSET = 1e-9


class MemorySelection(NamedTuple):
    """Result of :func:`select_memory`; every field is [B, M] int64 on the device of the poses."""

    query_frames: torch.Tensor  # pixel frames whose poses query (slot order)
    frames: torch.Tensor  # selected pixel frames; the last slot is the sink's last pixel frame
    latents: torch.Tensor  # memory latent indices: (frame - 1) // r + 1


def frustum_points(
    grid: int, near: float, far: float, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Points [grid^3, 3] sampled in a camera's frustum: (x*z, y*z, z), x, y in [-1, 1], z in [near, far]."""
    xy = torch.linspace(-1.0, 1.0, grid, dtype=dtype, device=device)
    z = torch.linspace(near, far, grid, dtype=dtype, device=device)
    gx, gy, gz = torch.meshgrid(xy, xy, z, indexing="ij")
    return torch.stack([gx * gz, gy * gz, gz], dim=-1).reshape(-1, 3)


def frustum_overlap(
    c2w_query: torch.Tensor,
    c2w_cand: torch.Tensor,
    cfg: StreamConfig,
    *,
    max_elements: int = _MAX_ELEMENTS,
    method: str = "rays",
) -> torch.Tensor:
    """Count the query-frustum points each candidate camera sees.

    Args:
        c2w_query: [B, Q, 4, 4] query cameras.
        c2w_cand: [B, N, 4, 4] candidate cameras.
        cfg: ``memory_grid``, ``memory_near``, ``memory_far``.
        method: ``"rays"`` (one depth interval per frustum ray; the default) or ``"points"``
            (project every point; the reference).

    Returns:
        [B, Q, N] int64 counts out of ``memory_grid ** 3`` (the release's score is count / grid^3).
    """
    if c2w_query.ndim != 4 or c2w_query.shape[-2:] != (4, 4):
        raise ValueError(f"expected query c2w [B, Q, 4, 4], got {tuple(c2w_query.shape)}")
    if c2w_cand.ndim != 4 or c2w_cand.shape[-2:] != (4, 4) or c2w_cand.shape[0] != c2w_query.shape[0]:
        raise ValueError(f"expected candidate c2w [B={c2w_query.shape[0]}, N, 4, 4], got {tuple(c2w_cand.shape)}")
    if method == "rays":
        return _overlap_rays(c2w_query, c2w_cand, cfg, max_elements)
    if method != "points":
        raise ValueError(f"method must be 'rays' or 'points', got {method!r}")
    dtype, device = c2w_query.dtype, c2w_query.device
    b, q = c2w_query.shape[:2]
    n = c2w_cand.shape[1]
    height, width = SELECTION_CAMERA_HW
    fx, fy, cx, cy = width / 2, height / 2, width / 2, height / 2

    pts = frustum_points(cfg.memory_grid, cfg.memory_near, cfg.memory_far, dtype=dtype, device=device)  # [G, 3]
    g = pts.shape[0]
    # query camera -> world: [B, Q, G, 3]
    world = torch.einsum("bqij,gj->bqgi", c2w_query[..., :3, :3], pts) + c2w_query[:, :, None, :3, 3]
    w2c = rigid_inverse(c2w_cand.to(dtype))  # [B, N, 4, 4]

    counts = torch.empty(b, q, n, dtype=torch.int64, device=device)
    block = max(1, max_elements // max(1, b * q * g * 3))
    for lo in range(0, n, block):
        rot, trans = w2c[:, lo : lo + block, :3, :3], w2c[:, lo : lo + block, :3, 3]
        # world -> candidate camera: [B, Q, n, G, 3]
        cam = torch.einsum("bnij,bqgj->bqngi", rot, world) + trans[:, None, :, None, :]
        x, y, z = cam.unbind(-1)
        u = fx * x / z + cx
        v = fy * y / z + cy
        seen = (z > cfg.memory_near) & (z < cfg.memory_far) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
        counts[:, :, lo : lo + block] = seen.sum(dim=-1)
    return counts


# The six view tests as rows over a candidate-camera point (X, Y, Z): Z > near, Z < far (offsets
# -near and +far), -Z <= X <= Z, -Z <= Y <= Z; a test holds where row . (X, Y, Z) + offset >= 0.
_TESTS = ((0, 0, 1), (0, 0, -1), (-1, 0, 1), (1, 0, 1), (0, -1, 1), (0, 1, 1))
_NO_BOUND = 1e30  # a bound on 1 / depth that bounds nothing (finite: 0 * it stays 0)


def _overlap_rays(
    c2w_query: torch.Tensor, c2w_cand: torch.Tensor, cfg: StreamConfig, max_elements: int
) -> torch.Tensor:
    """:func:`frustum_overlap` by rays: per (query, candidate, ray) one interval of depths.

    A ray p = z (x, y, 1) of the query frustum is c + z d in a candidate camera, and each view test
    is s z + t >= 0 with s linear in (x, y) and t fixed per (query, candidate) pair. In v = 1 / z
    (z > 0) it reads t v >= -s: a lower bound on v where t > 0, an upper one where t < 0 -- which
    side depends on the pair only, not on the ray, so every bound is one row of coefficients over
    (x, y, 1), sorted into a lower and an upper set per pair, and the rays of a block of pairs are
    a single matrix product followed by a max and a min (no per-ray branches, which cost more on a
    CPU than the arithmetic). Pairs whose query frustum lies wholly outside one of the candidate's
    planes (its 8 corners all fail one test) are skipped. The transforms are float64, the tests'
    slopes, offsets and the per-ray arithmetic float32 at most (the bounds need ~1e-6).
    """
    dtype, device = c2w_query.dtype, c2w_query.device
    b, q = c2w_query.shape[:2]
    n = c2w_cand.shape[1]
    grid, near, far = cfg.memory_grid, cfg.memory_near, cfg.memory_far
    work = torch.float32 if dtype == torch.float64 else dtype
    step = (far - near) / max(1, grid - 1)
    xy = torch.linspace(-1.0, 1.0, grid, dtype=work, device=device)
    ones = torch.ones(grid * grid, dtype=work, device=device)
    rays = torch.stack([xy.repeat_interleave(grid), xy.repeat(grid), ones, ones])  # [4, R]: (x, y, 1, 1)
    r = rays.shape[1]
    tests = torch.tensor(_TESTS, dtype=work, device=device)  # [6, 3]
    shift = torch.tensor([-near, far, 0.0, 0.0, 0.0, 0.0], dtype=work, device=device)
    no_lower = torch.tensor([0.0, 0.0, 0.0, -_NO_BOUND], dtype=work, device=device)
    no_upper = -no_lower

    w2c = rigid_inverse(c2w_cand.to(dtype))[:, :, :3]  # [B, N, 3, 4]
    cq = c2w_query.to(dtype)
    # the query frustums' corners in world coordinates, homogeneous: [B, 4, Q * 8]
    corners = cq[..., :3, :3] @ _frustum_corners(near, far, dtype, device).T + cq[..., :3, 3:]  # [B, Q, 3, 8]
    corners = torch.cat([corners, torch.ones_like(corners[:, :, :1])], 2).transpose(1, 2).reshape(b, 4, q * 8)
    # query camera -> candidate camera, p -> A p + c, as products of a per-candidate and a per-query factor
    query_rot = cq[..., :3, :3].transpose(1, 2).reshape(b, 3, q * 3)  # [B, 3, Q * 3]
    query_pos = cq[..., :3, 3].transpose(1, 2)  # [B, 3, Q]

    counts = torch.zeros(b, q, n, dtype=torch.int64, device=device)
    per_block = max(1, max_elements // (b * q * 24))  # candidates per block of pair geometry
    pairs_per_block = max(1, max_elements // (12 * r))  # pairs per block of rays
    for lo in range(0, n, per_block):
        k = min(n, lo + per_block) - lo
        block = w2c[:, lo : lo + k]  # [B, k, 3, 4]
        # cull: the query frustum's 8 corners in each candidate camera, all outside one plane
        x, y, z = (block.reshape(b, k * 3, 4) @ corners).view(b, k, 3, q, 8).unbind(2)  # [B, k, Q, 8]
        culled = (z.amax(-1) <= near) | (z.amin(-1) >= far)
        for side in (x - z, -x - z, y - z, -y - z):
            culled |= side.amin(-1) > 0  # all 8 corners beyond one side plane (X > Z, -X > Z, ...)
        sample, cand, query = (~culled).nonzero(as_tuple=True)  # one sync per block
        if cand.numel() == 0:
            continue
        rot = block[..., :3].reshape(b, k * 3, 3)
        a = (rot @ query_rot).view(b, k, 3, q, 3)[sample, cand, :, query].to(work)  # [P, 3, 3]
        c = ((rot @ query_pos).view(b, k, 3, q) + block[..., 3:])[sample, cand, :, query].to(work)  # [P, 3]
        # each test: slope s = row . A (x, y, 1) along a ray, offset t = row . c + shift
        slope = tests @ a  # [P, 6, 3]
        offset = c @ tests.T + shift  # [P, 6]
        # |t| < 1e-9 (a query camera on a candidate's plane: rounding decides): +-1e-9 keeping its
        # sign, 0 -> +, so that 1 / t stays finite; the test then holds exactly where s >= 0
        # (a zero slope with t < 0 kills the ray), as for s z + t >= 0 with both rounded to zero
        offset = torch.where(offset.abs() < _MIN_OFFSET, torch.where(offset < 0, -_MIN_OFFSET, _MIN_OFFSET), offset)
        bound = torch.cat([slope, torch.zeros_like(slope[..., :1])], -1) * (-1.0 / offset)[..., None]  # [P, 6, 4]
        lower = torch.where(offset[..., None] > 0, bound, no_lower)
        upper = torch.where(offset[..., None] < 0, bound, no_upper)
        bounds = torch.cat([lower, upper], 1)  # [P, 12, 4]
        found = torch.empty(bounds.shape[0], dtype=torch.int64, device=device)
        for s0 in range(0, bounds.shape[0], pairs_per_block):
            v = (bounds[s0 : s0 + pairs_per_block].reshape(-1, 4) @ rays).view(-1, 12, r)
            # 1/z >= low and 1/z <= high: grid depths z_k = near + k step strictly inside (1/high, 1/low)
            low = v[:, :6].amax(1).clamp_(min=_TINY)
            high = v[:, 6:].amin(1).clamp_(min=_TINY)
            k_last = low.reciprocal_().sub_(near).div_(step).ceil_().clamp_(0, grid)  # last k + 1
            k_first = high.reciprocal_().sub_(near).div_(step).floor_().clamp_(-1, grid - 1)  # first k - 1
            found[s0 : s0 + pairs_per_block] = (k_last - k_first - 1).clamp_(min=0).sum(-1)
        counts[sample, query, cand + lo] = found
    return counts


def _frustum_corners(near: float, far: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 8 corners of the query frustum (x, y in [-z, z], z in [near, far]): [8, 3]."""
    z = torch.tensor([near] * 4 + [far] * 4, dtype=dtype, device=device)
    sx = torch.tensor([-1.0, 1.0, -1.0, 1.0] * 2, dtype=dtype, device=device)
    sy = torch.tensor([-1.0, -1.0, 1.0, 1.0] * 2, dtype=dtype, device=device)
    return torch.stack([sx * z, sy * z, z], dim=-1)


def _take(c2w: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """c2w [B, N, 4, 4] at frames [B, K] -> [B, K, 4, 4]."""
    batch = torch.arange(c2w.shape[0], device=c2w.device)[:, None]
    return c2w[batch, frames]


def select_memory(
    c2w: torch.Tensor,
    chunk: int | torch.Tensor,
    cfg: StreamConfig,
    temporal_stride: int = 4,
    *,
    max_elements: int = _MAX_ELEMENTS,
    method: str = "rays",
) -> MemorySelection:
    """Pick ``cfg.num_memory`` memory latents per sample for chunk(s) ``chunk`` >= 1.

    Args:
        c2w: [B, N, 4, 4] camera-to-world of pixel frames 0 ... N-1; N must reach the window's end
            (the queries are poses of the window being generated). Frames past a sample's window
            end are padding and never read.
        chunk: chunk index, an int or [B] int64 (samples may be at different chunks).
        cfg: stream geometry and retrieval constants.
        temporal_stride: pixel frames per latent (the VAE's, 4).
        method: how the scores are counted (see :func:`frustum_overlap`).

    Returns:
        :class:`MemorySelection` with [B, M] query frames, selected frames and latent indices.
    """
    if c2w.ndim != 4 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"expected c2w [B, N, 4, 4], got {tuple(c2w.shape)}")
    b, n = c2w.shape[:2]
    device = c2w.device
    # the window geometry is index arithmetic: done on the host (free when ``chunk`` is an int or a
    # CPU tensor), so retrieval on a GPU never waits for the device
    chunk = torch.as_tensor(chunk, dtype=torch.int64).cpu().expand(b)
    if (chunk < 1).any():
        raise ValueError(f"memory is retrieved from chunk 1 on; got chunk indices {chunk.tolist()}")
    start, end = window_bounds(chunk, cfg, temporal_stride)  # [B]
    if n < int(end.max()):
        raise ValueError(f"expected poses for at least {int(end.max())} frames (the window end), got {n}")
    m = cfg.num_memory
    offsets = torch.tensor(cfg.memory_query_offsets[:m], dtype=torch.int64)
    query_frames = end[:, None] - offsets  # [B, M]
    if (query_frames < start[:, None]).any():
        raise ValueError(f"memory_query_offsets {cfg.memory_query_offsets[:m]} reach before the window start")
    if m == 0:
        empty = query_frames.new_empty(b, 0).to(device)
        return MemorySelection(empty, empty, empty)

    num_cand = int(start.max())  # candidates are frames 1 ... start-1, per sample
    query_frames, start = query_frames.to(device, non_blocking=True), start.to(device, non_blocking=True)
    counts = frustum_overlap(_take(c2w, query_frames), c2w[:, :num_cand], cfg, max_elements=max_elements, method=method)
    frame = torch.arange(num_cand, device=device)
    valid = (frame >= 1) & (frame < start[:, None])  # [B, N_cand]
    counts = counts.masked_fill(~valid[:, None, :], -1)
    frames = counts.argmax(dim=-1)  # first maximum on ties -> the lowest frame index
    frames[:, -1] = temporal_stride * cfg.sink_latent
    latents = torch.div(frames - 1, temporal_stride, rounding_mode="floor") + 1
    return MemorySelection(query_frames, frames, latents)


def memory_relative_poses(c2w_memory: torch.Tensor, c2w_query: torch.Tensor) -> torch.Tensor:
    """Memory poses relative to their queries, ``inv(query) @ memory``, translation scaled to unit norm.

    Both [..., 4, 4]; a zero translation stays zero. Returns [..., 4, 4].
    """
    if c2w_memory.shape != c2w_query.shape or c2w_memory.shape[-2:] != (4, 4):
        raise ValueError(
            f"expected memory and query c2w of the same shape [..., 4, 4], got "
            f"{tuple(c2w_memory.shape)} and {tuple(c2w_query.shape)}"
        )
    rel = rigid_inverse(c2w_query) @ c2w_memory
    norm = torch.linalg.vector_norm(rel[..., :3, 3], dim=-1, keepdim=True)
    rel[..., :3, 3] = rel[..., :3, 3] / torch.where(norm > 0, norm, torch.ones_like(norm))
    return rel


def memory_plucker(
    c2w: torch.Tensor,
    selection: MemorySelection,
    height: int,
    width: int,
    stride: int,
    fov_deg: float = 90.0,
    temporal_stride: int = 4,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Memory camera code: one [origin, direction] frame per memory latent.

    A memory latent's pose is that of its last pixel frame (r * latent index), made relative to its
    slot's query pose (:func:`memory_relative_poses`). ``c2w`` [B, N, 4, 4] as for
    :func:`select_memory`; returns [B, 6*s*s, M, H/s, W/s] (memory frames in slot order) in
    ``dtype`` (default: that of ``c2w``).
    """
    mem = _take(c2w, temporal_stride * selection.latents)
    query = _take(c2w, selection.query_frames)
    return ray_embedding(memory_relative_poses(mem, query), height, width, stride, fov_deg, dtype=dtype)
