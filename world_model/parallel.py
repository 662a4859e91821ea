"""Sequence (context) parallelism of the DiT over the ranks of a process group (spec §8), applied to a built model.

:func:`apply_sequence_parallel` changes a built :class:`~world_model.dit.MatrixGameDiT` in place;
the model keeps its one ``forward`` and its contract: every rank passes the same full inputs and
gets the same full output. What changes is what a block sees: the L tokens are padded to a
multiple of the P ranks and split into P contiguous chunks of Lc = ceil(L / P) tokens (rank r
holds tokens [r*Lc, (r+1)*Lc)). Three kinds of change, no re-implemented forward:

- the self-attention's kernel module is swapped for :class:`UlyssesAttention`: local q/k/v ->
  all-to-all (scatter heads, gather tokens) -> attention over the L valid tokens (the padded keys
  are cut off) -> all-to-all back. Heads are zero-padded to a multiple of P and trimmed after
  (24 heads on 7 ranks -> 28);
- forward pre-hooks on the blocks hand each block this rank's chunk of the tokens, camera tokens
  and RoPE tables, and the timestep projection per run of g = gcd(S, Lc) tokens (S tokens per
  frame; a run never crosses a frame), so a chunk needs no per-token copy of the modulation; the
  head's pre-hook does the same for its timestep embedding;
- hooks around each action module all-gather the tokens before it (it mixes tokens of a frame
  and across frames) and keep this rank's chunk after; a hook on the head all-gathers its output,
  which the model unpatchifies as usual.

Cross-attention, camera injection, FFN and the head are per token and run on the chunk. The
patch, camera and RoPE embeddings are computed for all tokens on every rank (a few GEMMs of one
block's size) before the first block takes its chunk. Weights are replicated on every rank.
Inference only: the collectives carry no gradients. :meth:`SequenceParallel.remove` puts the
model back as it was.

Run under ``torch.distributed`` (NCCL on GPUs, gloo on CPU), e.g. ``torchrun --nproc_per_node N``;
``RuntimeOptions(sequence_parallel=N)`` applies it when a model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch.utils.hooks import RemovableHandle

from world_model.attention import AttentionKernel, attend
from world_model.dit import CameraModulation, MatrixGameDiT

__all__ = [
    "SequenceShard",
    "SequenceParallel",
    "UlyssesAttention",
    "apply_sequence_parallel",
    "ulysses_attention",
    "gather_tokens",
]


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
    qk_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of each rank's queries over the keys of all ranks (Ulysses all-to-all).

    q, k, v [B, Lc, N, Dh]: this rank's chunk of a sequence split in rank order and padded to
    P * Lc >= seq_len tokens; keys from seq_len on are padding and not attended. Returns this
    rank's output [B, Lc, N, Dh]. Between the two all-to-alls each rank holds all tokens of
    ceil(N / P) heads (heads zero-padded to a multiple of P). ``qk_bounds``: bounds of |q| and |k|
    per head ([N] each, :func:`world_model.attention.attend`'s FP8 scales), passed on for the heads
    this rank attends.
    """
    rank, P = _world(group)
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
    if qk_bounds is not None:
        out = attend(qf, kf, vf, backend=backend, qk_bounds=head_group_bounds(qk_bounds, P, rank))
    else:
        out = attend(qf, kf, vf, backend=backend)
    out = _pad_dim1(out, P * Lc)  # [B, P*Lc, Np/P, Dh]
    # Scatter tokens, gather heads: the inverse exchange.
    back = _all_to_all(rearrange(out, "b (p l) n d -> p b l n d", p=P), group)  # [P (head group), B, Lc, Np/P, Dh]
    return rearrange(back, "p b l n d -> b l (p n) d")[:, :, :N]


def head_group_bounds(
    bounds: tuple[torch.Tensor, torch.Tensor], world: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-head bounds ([N] each) of the heads that :func:`ulysses_attention` gives ``rank`` of
    ``world``: its group of ceil(N / world) heads, the zero heads that pad N to a multiple of ``world``
    bounded by 1 (any positive bound scales zeros to zeros)."""
    n = bounds[0].shape[0]
    per = -(-n // world)
    padded = (F.pad(b, (0, per * world - n), value=1.0) for b in bounds)
    q, k = (b[rank * per : (rank + 1) * per] for b in padded)
    return q, k


class _ForwardState:
    """What the hooks of one model share during one forward (reset by the model's pre-hook)."""

    def __init__(self) -> None:
        self.shard: SequenceShard | None = None
        self.runs: torch.Tensor | None = None  # [Lc / g] frame of each run of g tokens
        self.block_inputs: tuple[torch.Tensor, ...] | None = None  # this rank's (e0, cos, sin, cam)

    def reset(self) -> None:
        self.shard = self.runs = self.block_inputs = None

    def current(self) -> SequenceShard:
        if self.shard is None:
            raise RuntimeError("sequence-parallel modules run inside the forward of the model they were applied to")
        return self.shard


class UlyssesAttention(AttentionKernel):
    """The self-attention kernel under sequence parallelism: :func:`ulysses_attention` over the
    ranks of ``group``, with the sequence length of the current forward. Its ``backend`` is the
    kernel's backend between the two all-to-alls."""

    def __init__(self, state: _ForwardState, group: dist.ProcessGroup | None, backend: str = "auto") -> None:
        super().__init__(backend)
        self._state = state
        self.group = group

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if k_lens is not None:
            raise ValueError("sequence-parallel attention takes no key mask (the padded keys are cut off inside)")
        seq_len = self._state.current().length
        bounds = self.qk_bounds(q.shape[2])
        return ulysses_attention(q, k, v, seq_len=seq_len, group=self.group, backend=self.backend, qk_bounds=bounds)


class SequenceParallel:
    """The changes :func:`apply_sequence_parallel` made to one model; :meth:`remove` undoes them."""

    def __init__(self, model: MatrixGameDiT, group: dist.ProcessGroup | None) -> None:
        self.model = model
        self.group = group
        self.rank, self.world = _world(group)
        self._state = _ForwardState()
        self._handles: list[RemovableHandle] = []
        self._kernels: list[tuple[torch.nn.Module, AttentionKernel]] = []

        hook = self._handles.append
        hook(model.register_forward_pre_hook(lambda module, args: self._state.reset()))
        for block in model.blocks:
            attn = block.self_attn.attn
            self._kernels.append((block.self_attn, attn))
            block.self_attn.attn = UlyssesAttention(self._state, group, attn.backend)
            block.self_attn.attn.qk_rms_weights = attn.qk_rms_weights  # its q, k still come out of those norms
            hook(block.register_forward_pre_hook(self._block_inputs))
            if block.action_model is not None:
                hook(block.action_model.register_forward_pre_hook(self._gather_action_input))
                hook(block.action_model.register_forward_hook(self._take_action_output))
        hook(model.head.register_forward_pre_hook(self._head_input))
        hook(model.head.register_forward_hook(self._gather_head_output))

    def remove(self) -> None:
        """Put the model back as it was: its own attention kernels, no hooks."""
        for handle in self._handles:
            handle.remove()
        for attention, kernel in self._kernels:
            kernel.backend = attention.attn.backend  # keep a backend (and q/k bounds) set while applied
            kernel.qk_rms_weights = attention.attn.qk_rms_weights
            attention.attn = kernel
        self._handles, self._kernels = [], []
        self._state.reset()

    # Hooks. The DiT calls its blocks as block(x, e0, cos, sin, context, cam, grid, mouse, keyboard,
    # num_memory), its action modules as action_model(x, grid, ...) and its head as head(x, e).

    def _block_inputs(self, block: torch.nn.Module, args: tuple) -> tuple:
        assert len(args) == 10, "DiT blocks are called with positional arguments"
        x, e0, cos, sin, context, cam, grid, *rest = args
        state = self._state
        if state.block_inputs is None:  # first block of this forward: take this rank's chunk
            T, h, w = grid
            shard = SequenceShard(T * h * w, h * w, self.rank, self.world)
            state.shard, state.runs = shard, shard.run_frames(e0.device)
            x = shard.take_full(x)  # [B, Lc, D]
            state.block_inputs = (e0[:, state.runs], shard.take_full(cos), shard.take_full(sin), None)
        e0, cos, sin, cam_shard = state.block_inputs
        if isinstance(cam, CameraModulation):  # a cached per-block modulation: this block's own chunk of it
            cam_shard = CameraModulation(*(state.shard.take_full(part) for part in cam))
        elif cam_shard is None:  # camera tokens, the same for every block: shard them once per forward
            cam_shard = state.shard.take_full(cam)
            state.block_inputs = (e0, cos, sin, cam_shard)
        return (x, e0, cos, sin, context, cam_shard, grid, *rest)

    def _gather_action_input(self, module: torch.nn.Module, args: tuple) -> tuple:
        """The action module sees the valid tokens of all ranks: [B, L, D]."""
        x, *rest = args
        return (gather_tokens(x, self.group)[:, : self._state.current().length], *rest)

    def _take_action_output(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self._state.current().take_full(out)  # [B, Lc, D]

    def _head_input(self, module: torch.nn.Module, args: tuple) -> tuple:
        x, e = args  # e [B, T, D] per frame -> per run of this rank's chunk
        self._state.current()
        return (x, e[:, self._state.runs])

    def _gather_head_output(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return gather_tokens(out, self.group)[:, : self._state.current().length]  # [B, L, C]


def apply_sequence_parallel(model: MatrixGameDiT, group: dist.ProcessGroup | None = None) -> SequenceParallel:
    """Run ``model``'s forward split over the ranks of ``group`` (default: the world group), in place.

    All ranks must then call the model with identical inputs (e.g. broadcast from rank 0 or drawn
    with one seed); all get the full output. Returns the handle whose ``remove()`` undoes it.
    """
    if not isinstance(model, MatrixGameDiT):
        raise TypeError(f"expected a MatrixGameDiT, got {type(model).__name__}")
    _world(group)
    if any(isinstance(m, UlyssesAttention) for m in model.modules()):
        raise ValueError("sequence parallelism is already applied to this model")
    return SequenceParallel(model, group)
