"""Training clips with the chunk structure of the streaming model (spec §5.3-5.4, §6).

Latent j of an episode covers pixel frames {0} for j = 0 and [4j - 3, 4j] for j >= 1 (temporal
stride 4), so its pose is the pose of frame 4j (its last frame).

- A *first* clip is frames [0, 1 + 4 (first_latents - 1)): the image latent plus the generated ones.
- A *later* clip starts at latent l >= 2 and covers frames [4l - 3, 4l - 3 + 4 (past + new)): the
  first ``past_latents`` latents are clean context, the rest are to be generated. Its memory
  candidates are the earlier latents 1 .. l - 1 (latent 0 is the first image), given by latent index,
  last pixel frame and c2w; ``memory_frames`` holds their 4 pixel frames each when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from world_model.data.format import Episode

__all__ = ["ClipSpec", "Clip", "ClipSampler"]


@dataclass(frozen=True)
class ClipSpec:
    past_latents: int = 4
    new_latents: int = 10
    first_latents: int = 15
    temporal_stride: int = 4
    max_memory_candidates: int = 32  # a random subset (sorted) when an episode has more
    first_clip_prob: float = 0.1
    with_memory_frames: bool = True

    def __post_init__(self) -> None:
        if self.past_latents < 1 or self.new_latents < 1 or self.first_latents < 2:
            raise ValueError("past_latents, new_latents must be >= 1 and first_latents >= 2")
        if not 0.0 <= self.first_clip_prob <= 1.0:
            raise ValueError(f"first_clip_prob must be in [0, 1], got {self.first_clip_prob}")

    @property
    def first_frames(self) -> int:
        return 1 + self.temporal_stride * (self.first_latents - 1)

    @property
    def later_frames(self) -> int:
        return self.temporal_stride * (self.past_latents + self.new_latents)


@dataclass
class Clip:
    """T frames of one episode plus memory candidates (K of them)."""

    episode: int
    start: int  # first pixel frame
    first: bool  # a first clip (starts at frame 0, no past latents, no memory)
    prompt: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    keyboard: np.ndarray  # float32 [T, 6]
    mouse: np.ndarray  # float32 [T, 2]
    poses: np.ndarray  # float32 [T, 5]
    c2w: np.ndarray  # float32 [T, 4, 4]
    memory_latents: np.ndarray  # int64 [K] latent indices in the episode
    memory_c2w: np.ndarray  # float32 [K, 4, 4] at each latent's last frame
    memory_frames: np.ndarray | None  # uint8 [K, 4, H, W, 3]


class ClipSampler:
    """Sample clips from loaded episodes (e.g. ``list(reader.iter_episodes(split="train"))``)."""

    def __init__(self, episodes: Sequence[Episode], spec: ClipSpec = ClipSpec(), *, seed: int = 0):
        self.spec = spec
        self.episodes = [e for e in episodes if e.frames is not None and len(e) >= spec.first_frames]
        if not self.episodes:
            raise ValueError(
                f"no episode has {spec.first_frames} frames with video loaded; got {len(episodes)} episodes"
            )
        self.rng = np.random.default_rng(seed)

    def latest_start_latent(self, length: int) -> int:
        """The last latent a later clip can start at in an episode of ``length`` frames (< 2: none)."""
        s = self.spec
        return (length - s.later_frames + 3) // s.temporal_stride

    def sample(self) -> Clip:
        s = self.spec
        ep = self.episodes[int(self.rng.integers(len(self.episodes)))]
        last = self.latest_start_latent(len(ep))
        if last < 2 or self.rng.random() < s.first_clip_prob:
            return self.clip(ep, first=True)
        return self.clip(ep, start_latent=int(self.rng.integers(2, last + 1)))

    def clip(self, ep: Episode, *, first: bool = False, start_latent: int = 0) -> Clip:
        """The first clip of ``ep``, or the later clip starting at latent ``start_latent`` (>= 2)."""
        s, r = self.spec, self.spec.temporal_stride
        if first:
            start, n, mem = 0, s.first_frames, np.zeros(0, np.int64)
        else:
            if not 2 <= start_latent <= self.latest_start_latent(len(ep)):
                raise ValueError(
                    f"start_latent must be in [2, {self.latest_start_latent(len(ep))}] for episode "
                    f"{ep.info.index} of {len(ep)} frames, got {start_latent}"
                )
            start, n = r * start_latent - (r - 1), s.later_frames
            mem = np.arange(1, start_latent, dtype=np.int64)
            if len(mem) > s.max_memory_candidates:
                mem = np.sort(self.rng.choice(mem, s.max_memory_candidates, replace=False))
        sl = slice(start, start + n)
        last_frames = r * mem
        memory_frames = None
        if s.with_memory_frames:
            idx = last_frames[:, None] - np.arange(r - 1, -1, -1)[None]  # [K, 4] frames 4j-3 .. 4j
            memory_frames = ep.frames[idx]
        return Clip(
            episode=ep.info.index,
            start=start,
            first=first,
            prompt=ep.prompt,
            frames=ep.frames[sl],
            keyboard=ep.keyboard[sl],
            mouse=ep.mouse[sl],
            poses=ep.poses[sl],
            c2w=ep.c2w[sl],
            memory_latents=mem,
            memory_c2w=ep.c2w[last_frames],
            memory_frames=memory_frames,
        )
