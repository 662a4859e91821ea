"""Sequence (context) parallelism of one DiT forward over the ranks of a process group (spec §8).

:class:`SequenceParallelDiT` wraps a built :class:`~world_model.dit.MatrixGameDiT` and has the same
``forward`` contract; every rank passes the same full inputs and gets the same full output. Inside,
the L tokens are padded to a multiple of the P ranks and split into P contiguous chunks of
Lc = ceil(L / P) tokens (rank r holds tokens [r*Lc, (r+1)*Lc)):

- patch tokens, camera tokens and RoPE tables are computed for the frames a rank's chunk touches
  and sliced; the per-frame timestep embeddings are indexed per run of g = gcd(S, Lc) tokens
  (S tokens per frame), so a chunk needs no per-token copy of the modulation;
- self-attention is Ulysses: local q/k/v -> all-to-all (scatter heads, gather tokens) -> attention
  over the L valid tokens (the padded keys are cut off) -> all-to-all back. Heads are zero-padded to
  a multiple of P and trimmed after (24 heads on 7 ranks -> 28);
- cross-attention, camera injection, FFN and the head are per token and stay local;
- the action module sees the whole sequence: all-gather the tokens, run, keep this rank's chunk;
- the head outputs are all-gathered at the end.

The model itself is not modified: the wrapper drives its blocks through their ``attention`` and
``full_sequence`` arguments, so the wrapped model keeps working on its own. Weights are
replicated on every rank. Inference only: the collectives carry no gradients.

Run under ``torch.distributed`` (NCCL on GPUs, gloo on CPU), e.g. ``torchrun --nproc_per_node N``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from world_model.attention import attend
from world_model.config import DiTConfig
from world_model.dit import MatrixGameDiT
from world_model.rope import rope_cos_sin

__all__ = ["SequenceShard", "SequenceParallelDiT", "ulysses_attention", "gather_tokens"]


@dataclass(frozen=True)
class SequenceShard:
    """One rank's part of a frame-major token sequence of ``length`` = T * S tokens.

    The sequence is padded to ``world * chunk`` tokens; rank ``rank`` holds [start, stop).
    """

    length: int  # L: valid tokens
    frame_tokens: int  # S: tokens per latent frame
    rank: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"expected 0 <= rank < world, got rank {self.rank}, world {self.world}")
        if self.frame_tokens < 1 or self.length < 1 or self.length % self.frame_tokens:
            raise ValueError(
                f"expected a positive length that is a multiple of the tokens per frame, "
                f"got length {self.length}, frame_tokens {self.frame_tokens}"
            )

    @property
    def frames(self) -> int:
        """T: latent frames of the whole sequence."""
        return self.length // self.frame_tokens

    @property
    def chunk(self) -> int:
        """Lc: tokens per rank, ceil(L / P)."""
        return -(-self.length // self.world)

    @property
    def padded(self) -> int:
        """P * Lc: the padded sequence length."""
        return self.chunk * self.world

    @property
    def start(self) -> int:
        return self.rank * self.chunk

    @property
    def stop(self) -> int:
        return self.start + self.chunk

    @property
    def valid(self) -> int:
        """Tokens of this chunk that are real (the rest is padding)."""
        return max(0, min(self.stop, self.length) - self.start)

    @property
    def frame_range(self) -> tuple[int, int]:
        """Frames [f0, f1) whose tokens cover this chunk's valid tokens (one frame when none are)."""
        S = self.frame_tokens
        if self.valid == 0:
            return self.frames - 1, self.frames
        return self.start // S, -(-(self.start + self.valid) // S)

    @property
    def run(self) -> int:
        """g = gcd(S, Lc): runs of g tokens of a chunk never cross a frame boundary."""
        return math.gcd(self.frame_tokens, self.chunk)

    def run_frames(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Frame index of each run of ``run`` tokens of this chunk: [Lc / g] int64 (padding: last frame)."""
        first = torch.arange(self.start, self.stop, self.run, device=device)
        return (first // self.frame_tokens).clamp_(max=self.frames - 1)

    def take(self, tokens: torch.Tensor) -> torch.Tensor:
        """This chunk of tokens [B, (f1 - f0) * S, ...] of the frames ``frame_range``: [B, Lc, ...], zero-padded."""
        f0, f1 = self.frame_range
        if tokens.shape[1] != (f1 - f0) * self.frame_tokens:
            raise ValueError(
                f"expected the tokens of frames [{f0}, {f1}) ({(f1 - f0) * self.frame_tokens}), "
                f"got {tokens.shape[1]} along dim 1"
            )
        offset = self.start - f0 * self.frame_tokens
        part = tokens[:, offset : offset + self.valid]
        return _pad_dim1(part, self.chunk)

    def take_full(self, tokens: torch.Tensor) -> torch.Tensor:
        """This chunk of a whole sequence [B, L or P*Lc, ...]: [B, Lc, ...], zero-padded."""
        return _pad_dim1(tokens[:, self.start : self.start + self.valid], self.chunk)


def _pad_dim1(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad x [B, n, ...] to [B, length, ...]."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "sequence parallelism needs torch.distributed: call torch.distributed.init_process_group first "
            "(e.g. launch with torchrun --nproc_per_node N)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Send x[j] to rank j and receive rank j's x[j] into out[j]; x [P, ...]."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def gather_tokens(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather every rank's chunk x [B, Lc, ...] into [B, P * Lc, ...] (rank order)."""
    _, world = _world(group)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=1)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    seq_len: int,
    group: dist.ProcessGroup | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of each rank's queries over the keys of all ranks (Ulysses all-to-all).

    q, k, v [B, Lc, N, Dh]: this rank's chunk of a sequence split in rank order and padded to
    P * Lc >= seq_len tokens; keys from seq_len on are padding and not attended. Returns this
    rank's output [B, Lc, N, Dh]. Between the two all-to-alls each rank holds all tokens of
    ceil(N / P) heads (heads zero-padded to a multiple of P).
    """
    _, P = _world(group)
    B, Lc, N, Dh = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"expected q, k, v of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not 0 < seq_len <= P * Lc:
        raise ValueError(f"expected 0 < seq_len <= {P} ranks * {Lc} tokens, got {seq_len}")
    Np = -(-N // P) * P
    qkv = F.pad(torch.stack([q, k, v]), (0, 0, 0, Np - N))  # [3, B, Lc, Np, Dh]
    # Scatter heads, gather tokens: rank j gets head group j of every rank's chunk.
    sent = rearrange(qkv, "k b l (p n) d -> p k b l n d", p=P)
    got = _all_to_all(sent, group)  # [P (source rank = token chunk), 3, B, Lc, Np/P, Dh]
    qf, kf, vf = rearrange(got, "p k b l n d -> k b (p l) n d")[:, :, :seq_len].unbind(0)  # [B, L, Np/P, Dh]
    out = _pad_dim1(attend(qf, kf, vf, backend=backend), P * Lc)  # [B, P*Lc, Np/P, Dh]
    # Scatter tokens, gather heads: the inverse exchange.
    back = _all_to_all(rearrange(out, "b (p l) n d -> p b l n d", p=P), group)  # [P (head group), B, Lc, Np/P, Dh]
    return rearrange(back, "p b l n d -> b l (p n) d")[:, :, :N]


class SequenceParallelDiT(nn.Module):
    """A :class:`MatrixGameDiT` forward split over the ranks of ``group`` (default: the world group).

    Same ``forward`` arguments and result as the model; all ranks must pass identical inputs (e.g.
    broadcast from rank 0 or drawn with one seed) and all get the full output.
    """

    def __init__(self, model: MatrixGameDiT, group: dist.ProcessGroup | None = None, backend: str | None = None):
        super().__init__()
        if not isinstance(model, MatrixGameDiT):
            raise TypeError(f"expected a MatrixGameDiT, got {type(model).__name__}")
        self.model = model
        self.group = group
        self.backend = backend  # attention backend of the self-attention (None: the package default)
        _world(group)

    @property
    def cfg(self) -> DiTConfig:
        return self.model.cfg

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        plucker: torch.Tensor,
        mouse: torch.Tensor | None,
        keyboard: torch.Tensor | None,
        positions: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow of a window of latents; see :meth:`MatrixGameDiT.forward`.

        Returns v [B, out_dim, F, h, w] fp32 on every rank.
        """
        model, cfg = self.model, self.model.cfg
        rank, world = _world(self.group)
        _, ph, pw = cfg.patch_size
        model._check_inputs(x, t, context, plucker, positions, memory)
        B, _, _, h, w = x.shape
        M = 0 if memory is None else memory.shape[2]
        if memory is not None:
            x = torch.cat([memory.to(x.dtype), x], dim=2)  # [B, C, T, h, w], T = M + F
            t = torch.cat([t.new_zeros(B, M), t], dim=1)  # [B, T]
        grid = (x.shape[2], h // ph, w // pw)  # token grid (T, h', w')
        shard = SequenceShard(math.prod(grid), grid[1] * grid[2], rank, world)
        f0, f1 = shard.frame_range

        wdtype = model.patch_embedding.weight.dtype
        tokens = model.patch_embedding(x[:, :, f0:f1].to(wdtype)).flatten(2).transpose(1, 2)  # [B, (f1-f0)*S, D]
        x_local = shard.take(tokens)  # [B, Lc, D]
        cam = shard.take(model._camera_tokens(plucker[:, :, f0:f1]))  # [B, Lc, D]
        cos, sin = rope_cos_sin(
            positions[:, f0:f1],
            grid[1:],
            head_dim=cfg.head_dim,
            num_heads=cfg.num_heads,
            sigma_theta=cfg.sigma_theta,
            max_len=cfg.rope_max_len,
        )  # [B, (f1-f0)*S, N, Dh/2]
        cos, sin = shard.take(cos), shard.take(sin)  # [B, Lc, N, Dh/2]
        e, e0 = model._time_embedding(t)  # per frame: [B, T, D], [B, T, 6, D]
        runs = shard.run_frames(e.device)  # [Lc / g]: the blocks see e0 per run of g tokens
        e, e0 = e[:, runs], e0[:, runs]
        context = F.pad(context.to(wdtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        context = model.text_embedding(context)  # [B, text_len, D], on every rank

        attention = partial(ulysses_attention, seq_len=shard.length, group=self.group, backend=self.backend)
        full_sequence = partial(self._full_sequence, shard=shard)
        for block in model.blocks:
            x_local = block(
                x_local,
                e0,
                cos,
                sin,
                context,
                cam,
                grid,
                mouse,
                keyboard,
                M,
                attention=attention,
                full_sequence=full_sequence,
            )

        out = model.head(x_local, e)  # [B, Lc, ph * pw * out_dim] fp32
        out = gather_tokens(out, self.group)[:, : shard.length]  # [B, L, ph * pw * out_dim]
        return model.unpatchify(out, grid)[:, :, M:]

    def _full_sequence(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, shard: SequenceShard
    ) -> torch.Tensor:
        """Run fn on the valid tokens of all ranks ([B, L, D]) and keep this rank's chunk [B, Lc, D]."""
        full = gather_tokens(x, self.group)[:, : shard.length]
        return shard.take_full(fn(full))
