"""Pre-encoded latents and the training clips cut from them, in the exact geometry of inference.

A *segment* is ``1 + r*(Fs - 1)`` consecutive frames of one episode (r = 4, the VAE's temporal
stride), encoded as one video: latent 0 is the segment's first frame (the "image latent"),
latent j >= 1 covers frames 4j-3 ... 4j. A segment is a rollout that starts from its first frame,
so its windows are the streaming loop's chunks (spec §6, :mod:`world_model.camera`):

- chunk 0 (I2V): latents 0..14, pixel frames [0, 57), 1 clean context latent;
- chunk k >= 1: latents 10k+1 .. 10k+14, pixel frames [40k+1, 40k+57), 4 clean past latents, plus
  (memory model) 5 memory latents retrieved by camera overlap from frames 1 .. 40k (the sink slot
  fixed to latent 1), with their relative ray embeddings and absolute latent indices for RoPE.

:class:`ClipBatch` holds exactly the tensors :class:`world_model.dit.MatrixGameDiT` takes; the window's
conditioning (camera code, memory selection, positions) comes from
:func:`world_model.window.window_conditioning`, the function the streaming generator calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
from torch import Tensor

from world_model.camera import integrate_poses, window_bounds
from world_model.config import WorldModelConfig
from world_model.train.checkpoints import load_sharded, save_sharded
from world_model.window import frame_latents, window_conditioning

__all__ = ["LatentStore", "ClipBatch", "ClipSampler", "CAMERA_POSES"]

# where a clip's camera code (and its memory retrieval) comes from: "recorded", the poses the engine measured, or
# "integrated", the poses the env integrates from the actions (world_model.camera.integrate_poses) from the segment's
# first recorded pose on, as at inference, where no engine measures anything. In ViZDoom the two differ: the player
# accelerates, glides and stops at walls, the integrator moves at move_speed whenever a key is held (bench/pose_drift.py,
# session 52: over 57-frame windows the end positions differ by 108 map units at the median, of a 194-unit median
# displacement)
CAMERA_POSES = ("recorded", "integrated")


@dataclass
class LatentStore:
    """Latents of all segments plus the per-frame actions/poses and prompt embeddings they need.

    ``latents`` [S, Fs, C, h, w] (normalised, bf16 or fp32); ``seg_start`` [S] first frame of each
    segment in the frame arrays; ``mouse`` [N, 2], ``keyboard`` [N, 6], ``poses`` [N, 5] per frame;
    ``text`` [P, Lt, D] prompt embeddings; ``seg_prompt`` [S] index into ``text``; ``depth`` [S, Fs, h, w] or None:
    each latent's inverse depth at the latent grid (:func:`world_model.train.encode.latent_depth`), the target of
    the flow stages' depth auxiliary.
    """

    latents: Tensor
    seg_start: Tensor
    mouse: Tensor
    keyboard: Tensor
    poses: Tensor
    text: Tensor
    seg_prompt: Tensor
    depth: Tensor | None = None

    def __post_init__(self) -> None:
        if self.latents.ndim != 5:
            raise ValueError(f"expected latents [S, Fs, C, h, w], got {tuple(self.latents.shape)}")
        s = self.latents.shape[0]
        if self.seg_start.shape != (s,) or self.seg_prompt.shape != (s,):
            raise ValueError(
                f"expected seg_start and seg_prompt [{s}], got {self.seg_start.shape}, {self.seg_prompt.shape}"
            )
        if s and int(self.seg_prompt.max()) >= len(self.text):
            raise ValueError(f"seg_prompt refers to prompt {int(self.seg_prompt.max())}, text holds {len(self.text)}")
        lat = self.latents.shape
        if self.depth is not None and self.depth.shape != (lat[0], lat[1], lat[3], lat[4]):
            raise ValueError(f"expected depth [{lat[0]}, {lat[1]}, {lat[3]}, {lat[4]}], got {tuple(self.depth.shape)}")

    @property
    def num_segments(self) -> int:
        return int(self.latents.shape[0])

    @property
    def segment_latents(self) -> int:
        return int(self.latents.shape[1])

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> LatentStore:
        lat = self.latents.to(device=device, dtype=dtype or self.latents.dtype)
        mv = lambda t: t.to(device)  # noqa: E731
        return LatentStore(
            lat,
            *(mv(t) for t in (self.seg_start, self.mouse, self.keyboard, self.poses, self.text, self.seg_prompt)),
            depth=None if self.depth is None else mv(self.depth),
        )

    @classmethod
    def concat(cls, stores: list[LatentStore]) -> LatentStore:
        """The segments of ``stores`` in order, in one store: each store's frame indices (``seg_start``) and prompt
        indices (``seg_prompt``) moved past the stores before it (each keeps its own prompt embeddings)."""
        if not stores:
            raise ValueError("no latent stores to concatenate")
        if len({s.depth is not None for s in stores}) > 1:
            raise ValueError("some of the latent stores to concatenate have depth maps and some have none")
        frames = list(accumulate((len(s.mouse) for s in stores[:-1]), initial=0))
        prompts = list(accumulate((len(s.text) for s in stores[:-1]), initial=0))
        cat = lambda name: torch.cat([getattr(s, name) for s in stores])  # noqa: E731
        return cls(
            latents=cat("latents"),
            seg_start=torch.cat([s.seg_start + f for s, f in zip(stores, frames)]),
            mouse=cat("mouse"),
            keyboard=cat("keyboard"),
            poses=cat("poses"),
            text=cat("text"),
            seg_prompt=torch.cat([s.seg_prompt + p for s, p in zip(stores, prompts)]),
            depth=None if stores[0].depth is None else cat("depth"),
        )

    def save(self, folder: str | Path) -> None:
        names = ("latents", "seg_start", "mouse", "keyboard", "poses", "text", "seg_prompt", "depth")
        save_sharded({k: getattr(self, k) for k in names if getattr(self, k) is not None}, folder)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> LatentStore:
        return cls(**load_sharded(folder, device=device))


@dataclass
class ClipBatch:
    """One batch of DiT training inputs (shapes as in the DiT contract).

    ``latents`` [B, C, F, h, w] clean window latents, the first ``num_context`` of them clean
    context (1 image latent for chunk 0, 4 past latents later); ``memory`` [B, C, M, h, w] or None;
    ``plucker`` [B, 6 s^2, M+F, h, w]; ``mouse`` [B, Nf, 2]; ``keyboard`` [B, Nf, 6]; ``positions``
    [B, M+F] int64; ``context`` [B, Lt, D]; ``chunk`` [B] chunk index (on the host); ``frames`` [B, Nf] absolute
    frame indices of the window (for pixel-space evaluation); ``segments`` [B] the store's segments
    (on the host); ``window_plucker`` [B, 6 s^2, F, h, w] and ``window_positions`` [B, F]: the window's own camera
    code and positions, without the memory frames' (the DiT's conditioning with the memory left out, for memory
    guidance); ``depth`` [B, F, h, w]: the window latents' inverse depth where the store has it (the depth
    auxiliary's target), else None.
    """

    latents: Tensor
    num_context: int
    memory: Tensor | None
    plucker: Tensor
    mouse: Tensor
    keyboard: Tensor
    positions: Tensor
    context: Tensor
    chunk: Tensor
    frames: Tensor
    segments: Tensor | None = None
    window_plucker: Tensor | None = None
    window_positions: Tensor | None = None
    depth: Tensor | None = None


class ClipSampler:
    """Draws :class:`ClipBatch` es from a :class:`LatentStore`.

    Per step (one geometry per batch): with probability ``p_continue`` a continuation chunk
    k ~ U{1..K} per sample (past latents, plus memory when ``use_memory``), otherwise the chunk-0
    I2V window — the release's "past and memory masked" case. ``camera_poses`` (:data:`CAMERA_POSES`): the poses
    the camera code and the memory retrieval are computed from.
    """

    def __init__(
        self,
        store: LatentStore,
        cfg: WorldModelConfig,
        batch_size: int,
        *,
        p_continue: float = 0.8,
        use_memory: bool = False,
        seed: int = 0,
        camera_poses: str = "recorded",
    ) -> None:
        if camera_poses not in CAMERA_POSES:
            raise ValueError(f"camera_poses must be one of {CAMERA_POSES}, got {camera_poses!r}")
        self.store, self.cfg, self.batch_size = store, cfg, batch_size
        self.p_continue, self.use_memory = p_continue, use_memory
        self.r = cfg.vae.temporal_stride
        s = cfg.stream
        fs = store.segment_latents
        if fs < s.first_latents:
            raise ValueError(f"segments hold {fs} latents; chunk 0 needs {s.first_latents}")
        self.k_max = 0  # the last chunk whose window fits in a segment
        while self._last_latent(self.k_max + 1) < fs:
            self.k_max += 1
        if p_continue > 0 and self.k_max < 1:
            raise ValueError(
                f"segments of {fs} latents hold no continuation chunk; use at least {s.first_latents + s.new_latents}"
            )
        self.generator = torch.Generator().manual_seed(seed)
        # index arithmetic runs on the host; only the gathers run where the store lives
        self.seg_start_host = store.seg_start.cpu()
        self.device = store.latents.device
        self.max_elements = 1 << 27 if self.device.type == "cuda" else 1 << 24  # memory retrieval block size
        self.camera_poses = camera_poses
        # [S, frames of a segment, 5] with "integrated" (once: the integration steps frame by frame), else None
        self.segment_poses = self.integrated_poses() if camera_poses == "integrated" else None

    def integrated_poses(self, block: int = 1024) -> Tensor:
        """Every segment's poses [S, 1 + r (Fs - 1), 5] float32 as the env integrates them from the segment's actions,
        starting at its first recorded pose (pose i + 1 from the action of frame i)."""
        st = self.store
        frames = 1 + self.r * (st.segment_latents - 1)
        steps = torch.arange(frames - 1, device=st.seg_start.device)
        out = []
        for i in range(0, st.num_segments, block):  # the gathered actions of all segments at once would be large
            first = st.seg_start[i : i + block]
            idx = first[:, None] + steps  # [b, frames - 1]: the actions that move the camera to frames 1 ...
            start = st.poses[first].float()
            out.append(integrate_poses(st.keyboard[idx], st.mouse[idx], start, self.cfg.stream).float())
        return torch.cat(out).to(self.device)

    def _to_device(self, t: Tensor) -> Tensor:
        return t.to(self.device, non_blocking=True)

    def _last_latent(self, k: int) -> int:
        _, end = window_bounds(k, self.cfg.stream, self.r)
        return int(frame_latents(end - 1, self.r))

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    def sample(self, chunk: int | None = None, segments: Tensor | None = None) -> ClipBatch:
        """A batch; ``chunk``/``segments`` fix the geometry and segments (evaluation), else random."""
        g = self.generator
        b = self.batch_size if segments is None else len(segments)
        if segments is None:
            segments = torch.randint(0, self.store.num_segments, (b,), generator=g)
        if chunk is None:
            cont = self.k_max >= 1 and float(torch.rand((), generator=g)) < self.p_continue
            chunks = torch.randint(1, self.k_max + 1, (b,), generator=g) if cont else torch.zeros(b, dtype=torch.int64)
        else:
            chunks = torch.full((b,), chunk, dtype=torch.int64)
        return self.build(segments.cpu(), chunks)

    def build(self, segments: Tensor, chunks: Tensor, latents: Tensor | None = None) -> ClipBatch:
        """The batch for segments [B] at chunks [B] (all 0, or all >= 1).

        ``latents`` [B, Fs, C, h, w] replaces the stored latents of these segments (a self-rollout's
        generated history); actions, poses and prompts still come from the store.
        """
        st, cfg = self.store, self.cfg
        segments, chunks = segments.cpu(), chunks.cpu()  # host index arithmetic: no device syncs
        _, end = window_bounds(chunks, cfg.stream, self.r)  # [B] pixel frames, relative to the segment
        seg_first = self.seg_start_host[segments]  # [B]
        # poses of all frames from the segment start to the window end -> the window's conditioning,
        # computed by the function the streaming generator calls
        n = int(end.max())
        if self.segment_poses is None:
            poses = st.poses[self._to_device(seg_first[:, None] + torch.arange(n))]  # [B, N]
        else:
            poses = self.segment_poses[self._to_device(segments), :n]
        win = window_conditioning(
            poses,
            chunks,
            cfg,
            memory=self.use_memory,
            device=self.device,
            dtype=torch.float32,
            max_elements=self.max_elements,
        )
        seg_d = self._to_device(segments)
        bidx = torch.arange(len(segments), device=self.device)[:, None]
        src, rows = (st.latents, seg_d[:, None]) if latents is None else (latents, bidx)
        window = src[rows, win.latents]  # [B, F, C, h, w]
        memory = None if win.memory is None else src[rows, win.memory.latents]  # [B, M, C, h, w]
        af = self._to_device(seg_first[:, None] + win.frames)  # [B, Nf] absolute frames of the window
        return ClipBatch(
            latents=window.transpose(1, 2).float(),  # [B, C, F, h, w]
            num_context=win.num_context,
            memory=None if memory is None else memory.transpose(1, 2).float(),  # [B, C, M, h, w]
            plucker=win.plucker,
            mouse=st.mouse[af],
            keyboard=st.keyboard[af],
            positions=win.positions,
            context=st.text[st.seg_prompt[seg_d]],
            chunk=chunks,
            frames=af,
            segments=segments,
            window_plucker=win.window_plucker,
            window_positions=win.latents,
            depth=None if st.depth is None else st.depth[seg_d[:, None], win.latents].float(),
        )
