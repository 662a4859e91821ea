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

# Cap on the elements of one [B, Q, n, G, 3] block of transformed points (candidates go in blocks).
_MAX_ELEMENTS = 1 << 24


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


def _overlap_rays(
    c2w_query: torch.Tensor, c2w_cand: torch.Tensor, cfg: StreamConfig, max_elements: int
) -> torch.Tensor:
    """:func:`frustum_overlap` by rays: per (query, candidate, ray) one interval of depths."""
    dtype, device = c2w_query.dtype, c2w_query.device
    b, q = c2w_query.shape[:2]
    n = c2w_cand.shape[1]
    grid, near, far = cfg.memory_grid, cfg.memory_near, cfg.memory_far
    xy = torch.linspace(-1.0, 1.0, grid, dtype=torch.float32 if dtype == torch.float64 else dtype, device=device)
    step = (far - near) / (grid - 1)
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    w2c = rigid_inverse(c2w_cand.to(dtype))  # [B, N, 4, 4]
    counts = torch.zeros(b, q, n, dtype=torch.int64, device=device)
    block = max(1, max_elements // max(1, b * q * grid * grid * 6))
    for lo in range(0, n, block):
        # query camera -> candidate camera: cam = A p + c with p = z * (x, y, 1); [B, Q, n, 4, 4]
        rel = w2c[:, None, lo : lo + block] @ c2w_query[:, :, None]
        a, c = rel[..., :3, :3], rel[..., :3, 3]
        # the query frustum's 8 corners in the candidate camera: if all fail one test, nothing is seen
        corners = _frustum_corners(near, far, dtype, device)  # [8, 3]
        cam = torch.einsum("bqnij,kj->bqnki", a, corners) + c[..., None, :]  # [B, Q, n, 8, 3]
        x, y, z = cam.unbind(-1)
        culled = ((z <= near).all(-1) | (z >= far).all(-1) | (x > z).all(-1) | (-x > z).all(-1) | (y > z).all(-1)) | (
            -y > z
        ).all(-1)
        keep = (~culled).nonzero(as_tuple=True)
        if keep[0].numel() == 0:
            continue
        # the interval arithmetic in float32 at most (roots need ~1e-6; the transforms stay exact)
        work = torch.float32 if dtype == torch.float64 else dtype
        a, c = a[keep].to(work), c[keep].to(work)  # [P, 3, 3], [P, 3]
        # ray directions d = A (x, y, 1): [P, G(x) * G(y), 3]
        d = (a[:, None, None, :, 0] * xy[:, None, None] + a[:, None, None, :, 1] * xy[None, :, None]).flatten(1, 2)
        d = d + a[:, None, :, 2]
        dx, dy, dz = d.unbind(-1)
        cx, cy, cz = (v[:, None] for v in c.unbind(-1))
        # each test s * z + t >= 0 bounds z from below (s > 0) or above (s < 0), or holds for all
        # or no z (s = 0); tests: Z > near, Z < far, -Z <= X <= Z, -Z <= Y <= Z
        slope = torch.stack([dz, -dz, dz - dx, dz + dx, dz - dy, dz + dy], dim=-1)  # [P, R, 6]
        offset = torch.stack([cz - near, far - cz, cz - cx, cz + cx, cz - cy, cz + cy], dim=-1).expand_as(slope)
        root = -offset / slope
        low = torch.where(slope > 0, root, -inf.to(work)).amax(dim=-1)  # [P, R]
        high = torch.where(slope < 0, root, inf.to(work)).amin(dim=-1)
        never = ((slope == 0) & (offset < 0)).any(dim=-1)
        # grid depths z_k = near + k * step strictly inside (low, high)
        k_first = torch.floor((low - near) / step).clamp_(-1, grid - 1) + 1
        k_last = torch.ceil((high - near) / step).clamp_(0, grid) - 1
        per_ray = (k_last - k_first + 1).clamp_(min=0).masked_fill_(never, 0)
        counts[keep[0], keep[1], keep[2] + lo] = per_ray.sum(dim=-1).to(torch.int64)
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
