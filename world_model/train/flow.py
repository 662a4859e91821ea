"""DiT training by flow matching (spec §12): the base model and the memory model.

x_σ = (1 − σ)·x0 + σ·ε on the noisy window latents, target v = ε − x0, loss on the noisy latents
only; context latents (the image latent, or 4 past latents) stay clean at timestep 0 apart from
the error buffer's re-injected residuals (:mod:`world_model.train.error_buffer`); memory latents
(memory model) likewise. σ per sample from a shifted logit-normal; the model sees t = 1000·σ.
One stage class serves both models: the memory model is ``use_memory=True`` initialised from the
base model's EMA weights.

The depth auxiliary (``FlowOptions.depth_weight``, training only): a linear :class:`DepthHead` on the DiT's last
hidden states (the tokens its output head reads) predicts the noisy frames' inverse depth at the latent grid (the
clips' ``depth``, from the engine's depth buffer), and its loss is added to the flow loss, so that the DiT's features
carry the geometry a move's parallax depends on (a strafe moves near walls more than far ones). The head is not part of
the model: it is saved in the stage's checkpoints but never exported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.action import NULL_KEYBOARD, NULL_MOUSE
from world_model.dit import unpatchify_tokens
from world_model.train.clips import ClipBatch, ClipSampler
from world_model.train.ema import EMA
from world_model.train.error_buffer import ErrorBuffer, ErrorBufferOptions
from world_model.train.loop import Warmup

__all__ = [
    "FlowOptions",
    "sample_sigmas",
    "add_noise",
    "drop_actions",
    "dit_forward",
    "flow_loss",
    "DepthHead",
    "FlowStage",
]


@dataclass(frozen=True)
class FlowOptions:
    """Optimisation and recipe choices of a flow-matching stage."""

    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_continue: float = 0.8  # release: 4 past + 10 noisy with p = 0.8, else I2V (past/memory masked)
    use_memory: bool = False
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0  # σ' = sσ / (1 + (s − 1)σ): more weight on high noise, where layout is decided
    num_train_timesteps: int = 1000
    error: ErrorBufferOptions = field(default_factory=ErrorBufferOptions)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile each transformer block of the trained model (the EMA copy stays eager)
    # share of continuation batches whose past latents are the model's own chunk k-1 (the model in
    # training, compiled where it is, sampling from the true context with the shipped few-step
    # sampler, no gradients) instead of the stored ones: it trains on the history it will see at
    # inference (costs one sampling of the batch, about a training step)
    p_own_history: float = 0.0
    # action dropout: each sample's window keyboard and mouse become the null actions (the values the
    # release's guidance branch feeds) with this probability, so that the model also learns the
    # action-free prediction that SamplerConfig.action_guidance contrasts with (0.1 is common)
    p_drop_actions: float = 0.0
    # the stage's end (a time.time() value, the loop's deadline) and the seconds before it over which
    # the learning rate decays linearly to cooldown_floor x lr: the decay phase of a warmup-stable-decay
    # schedule, time-based because a GPU session's stages end at deadlines, not step counts (0: off)
    deadline: float | None = None
    cooldown_s: float = 0.0
    cooldown_floor: float = 0.05
    # weight of the depth auxiliary's loss (DepthHead; 0: off): needs clips with depth (LatentStore.depth)
    depth_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_drop_actions < 1.0:
            raise ValueError(f"p_drop_actions must be in [0, 1), got {self.p_drop_actions}")
        if self.cooldown_s < 0 or not 0.0 <= self.cooldown_floor <= 1.0:
            raise ValueError(
                f"cooldown_s must be >= 0 and cooldown_floor in [0, 1], got {self.cooldown_s}, {self.cooldown_floor}"
            )
        if self.cooldown_s > 0 and self.deadline is None:
            raise ValueError("a cooldown needs the stage's deadline (the learning rate decays towards it)")
        if not self.depth_weight >= 0:
            raise ValueError(f"depth_weight must be >= 0, got {self.depth_weight}")


def _eager():
    """Compiled blocks run eager inside: for the occasional no-grad passes (own-history sampling,
    evaluation), whose batch sizes vary and whose graphs would each cost a compile."""
    return torch.compiler.set_stance("force_eager")


def sample_sigmas(n: int, opts: FlowOptions, generator: torch.Generator | None = None) -> Tensor:
    """[n] noise levels σ in (0, 1): shifted logit-normal."""
    u = torch.sigmoid(opts.logit_mean + opts.logit_std * torch.randn(n, generator=generator))
    s = opts.shift
    return (s * u / (1 + (s - 1) * u)).clamp(1e-3, 1 - 1e-3)


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε with σ [B] broadcast over [B, C, F, h, w]."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - s) * x0 + s * noise


def drop_actions(batch: ClipBatch, p: float, generator: torch.Generator) -> Tensor:
    """Action dropout, in place: with probability ``p`` per sample, the sample's window keyboard
    [Nf, K] and mouse [Nf, 2] become :data:`~world_model.action.NULL_KEYBOARD` /
    :data:`~world_model.action.NULL_MOUSE` (both together). The mask is drawn from ``generator``
    where the batch lives (no host sync). Returns the mask [B] bool of dropped samples."""
    keyboard, mouse = batch.keyboard, batch.mouse
    assert keyboard.is_floating_point() and mouse.is_floating_point(), "the null keyboard value is -1"
    drop = torch.rand(keyboard.shape[0], generator=generator, device=keyboard.device) < p  # [B]
    batch.keyboard = torch.where(drop[:, None, None], torch.full_like(keyboard, NULL_KEYBOARD), keyboard)
    batch.mouse = torch.where(drop[:, None, None], torch.full_like(mouse, NULL_MOUSE), mouse)
    return drop


def dit_forward(model: nn.Module, batch: ClipBatch, window: Tensor, t_noisy: Tensor) -> Tensor:
    """Run the DiT on ``window`` [B, C, F, h, w] (context frames first) with the noisy frames at
    model timestep ``t_noisy`` [B] and the context frames at 0. Returns v [B, C, F, h, w] (fp32)."""
    b, _, f = window.shape[:3]
    t = torch.zeros(b, f, device=window.device)
    t[:, batch.num_context :] = t_noisy.to(window.device)[:, None]
    return model(
        window,
        t,
        batch.context,
        batch.plucker,
        batch.mouse,
        batch.keyboard,
        batch.positions,
        memory=batch.memory,
    ).float()


def flow_loss(
    model: nn.Module, batch: ClipBatch, sigma: Tensor, noise: Tensor, num_train_timesteps: int = 1000
) -> tuple[Tensor, Tensor]:
    """Flow-matching loss on the noisy frames of ``batch``; returns (loss, residual x̂0 − x0 [B, C, Fn, h, w])."""
    c = batch.num_context
    x0 = batch.latents[:, :, c:]
    xt = add_noise(x0, noise, sigma)
    window = torch.cat([batch.latents[:, :, :c], xt], dim=2)
    v = dit_forward(model, batch, window, sigma * num_train_timesteps)[:, :, c:]
    loss = F.mse_loss(v, noise - x0)
    s = sigma.view(-1, 1, 1, 1, 1).to(v)
    residual = (xt - s * v).detach() - x0
    return loss, residual


class DepthHead(nn.Module):
    """The depth auxiliary's probe (training only): a normalised linear map of each token of the DiT's last hidden
    states to the inverse depth of its patch's latent pixels. ``forward(tokens [B, T h' w', D], grid (T, h', w'))``
    returns [B, T, h' ph, w' pw] fp32."""

    def __init__(self, dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj = nn.Linear(dim, self.patch[0] * self.patch[1])

    def forward(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        out = self.proj(self.norm(tokens.float()).to(self.proj.weight.dtype)).float()  # [B, L, ph pw]
        return unpatchify_tokens(out, grid, self.patch)[:, 0]  # laid out as the DiT's own head output

    def loss(self, tokens: Tensor, batch: ClipBatch) -> tuple[Tensor, Tensor]:
        """(mean squared error, share of the target's variance explained) on the batch's noisy frames; ``tokens``
        the DiT's last hidden states of this batch's forward (memory frames first)."""
        if batch.depth is None:
            raise ValueError("the depth auxiliary needs clips with depth maps (LatentStore.depth)")
        ph, pw = self.patch
        h, w = batch.latents.shape[-2:]
        fn = batch.latents.shape[2] - batch.num_context
        per_frame = (h // ph) * (w // pw)
        pred = self(tokens[:, -fn * per_frame :], (fn, h // ph, w // pw))  # the noisy frames: the last tokens
        target = batch.depth[:, batch.num_context :].float()
        mse = F.mse_loss(pred, target)
        explained = 1.0 - mse.detach() / target.var().clamp_min(1e-8)
        return mse, explained


class FlowStage:
    """Flow-matching training of :class:`world_model.dit.MatrixGameDiT` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        sampler: ClipSampler,
        opts: FlowOptions,
        *,
        name: str = "base",
        evaluator=None,
    ) -> None:
        self.name = name
        self.model = model
        self.sampler = sampler
        self.opts = opts
        self.evaluator = evaluator  # callable(ema_model) -> dict, or None
        self.device = next(model.parameters()).device
        # the depth auxiliary (see the module docstring): its head, and the DiT's last hidden states of the training
        # forward, taken as its output head's input
        self.depth_head: DepthHead | None = None
        self._tokens: list[Tensor] = []
        if opts.depth_weight > 0:
            if sampler.store.depth is None:
                raise ValueError("depth_weight > 0 needs latents with depth maps (encoded from frames with depth)")
            self.depth_head = DepthHead(model.cfg.dim, tuple(model.cfg.patch_size[1:])).to(self.device)
            model.head.register_forward_pre_hook(self._capture_tokens)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.depth_head is not None:
            params += list(self.depth_head.parameters())
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optim = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opts.lr,
            betas=opts.betas,
        )
        self.ema = EMA(model, opts.ema_decay)
        self.warmup = Warmup(opts.warmup_steps)
        self._rollout_sampler = None  # the shipped few-step sampler, for p_own_history
        self.buffer = ErrorBuffer(opts.error)
        # σ is drawn on the host (B numbers: the error buffer selects by σ without a device sync),
        # the noise where the model is
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(opts.seed + 2)
        self.buffer_generator = torch.Generator(self.device).manual_seed(opts.seed + 1)
        self.action_generator = torch.Generator(self.device).manual_seed(opts.seed + 3)  # action dropout
        if opts.compile:
            # regional: one compiled graph per block class, shared by all blocks (compiles in a
            # fraction of the whole model's time, which a short stage cannot afford)
            blocks = getattr(self.model, "blocks", None)
            for module in blocks if blocks is not None else [self.model]:
                module.compile(dynamic=False)
            # one graph per (block with or without an action module) x (chunk-0 or later window) x
            # (base or memory stage): more than dynamo's default 8 (session 5 hit it). Sampling the
            # own history and evaluating run eager (_eager): compiled, every batch size and the
            # no-grad variant were graphs of their own, ~50 s of compiling each on the H200; session
            # 7 hit the limit of 32 in the base stage and ran the memory stage eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)

    def _capture_tokens(self, _module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():  # the training forward's, not the no-grad passes' (own history, evaluation)
            self._tokens = [args[0]]

    def _lr(self, step: int) -> float:
        return self.opts.lr * self.warmup(step) * self._cooldown()

    def _cooldown(self) -> float:
        """1 until the last ``cooldown_s`` seconds before the deadline, then linearly down to the floor."""
        o = self.opts
        if o.deadline is None or o.cooldown_s <= 0:
            return 1.0
        return min(1.0, max(o.cooldown_floor, (o.deadline - time.time()) / o.cooldown_s))

    def _autocast(self):
        enabled = self.opts.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def perturb(self, batch: ClipBatch) -> ClipBatch:
        """Re-inject stored residuals into past (γ_h) and memory (γ_m) latents; chunk 0's image latent stays clean."""
        if batch.num_context > 1 or bool((batch.chunk > 0).any()):
            c = batch.num_context
            past = self.buffer.perturb(
                batch.latents[:, :, :c], self.opts.error.gamma_history, generator=self.buffer_generator
            )
            batch.latents = torch.cat([past, batch.latents[:, :, c:]], dim=2)
        if batch.memory is not None:
            batch.memory = self.buffer.perturb(
                batch.memory, self.opts.error.gamma_memory, generator=self.buffer_generator
            )
        return batch

    def _own_history(self, batch: ClipBatch) -> ClipBatch:
        from world_model.sampler import FlowUniPCSampler
        from world_model.train.rollout import with_own_history

        if self._rollout_sampler is None:
            self._rollout_sampler = FlowUniPCSampler.from_config(self.sampler.cfg.sampler)
        with self._autocast(), _eager():
            return with_own_history(self.model, self.sampler, batch, self._rollout_sampler, self.generator)

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        lr = self._lr(step)
        for group in self.optim.param_groups:
            group["lr"] = lr
        batch = self.sampler.sample()
        if (
            self.opts.p_own_history > 0
            and bool(batch.chunk[0] > 0)
            and float(torch.rand((), generator=self.generator)) < self.opts.p_own_history
        ):
            batch = self._own_history(batch)
        batch = self.perturb(batch)
        dropped = None
        if self.opts.p_drop_actions > 0:  # after the own history: chunk k-1 is sampled with its true actions
            dropped = drop_actions(batch, self.opts.p_drop_actions, self.action_generator)
        b = batch.latents.shape[0]
        sigma_host = sample_sigmas(b, self.opts, self.generator)  # [B] on the host
        sigma = sigma_host.to(self.device, non_blocking=True)
        x0 = batch.latents[:, :, batch.num_context :]
        noise = torch.randn(x0.shape, generator=self.noise_generator, device=self.device)
        depth_metrics = {}
        with self._autocast():
            loss, residual = flow_loss(self.model, batch, sigma, noise, self.opts.num_train_timesteps)
            total = loss
            if self.depth_head is not None:
                tokens, self._tokens = self._tokens.pop(), []
                depth_loss, explained = self.depth_head.loss(tokens, batch)
                total = loss + self.opts.depth_weight * depth_loss
                depth_metrics = {"depth_loss": depth_loss.detach(), "depth_explained": explained}
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self._trained_parameters(), self.opts.grad_clip)
        self.optim.step()
        self.ema.update(self.model)
        self.buffer.push(residual, sigma_host)
        # device tensors: the loop reads them back only at its log steps
        metrics = {
            "loss": loss.detach(),
            "grad_norm": gnorm.detach(),
            "lr": lr,
            "buffer": float(len(self.buffer)),
            "residual_rms": residual.pow(2).mean().sqrt(),
        }
        if dropped is not None:
            metrics["actions_dropped"] = dropped.float().mean()  # share of the batch trained without actions
        return metrics | depth_metrics

    def _trained_parameters(self) -> list[Tensor]:
        head = [] if self.depth_head is None else list(self.depth_head.parameters())
        return [*self.model.parameters(), *head]

    def evaluate(self) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        with _eager():
            return dict(self.evaluator(self.ema.model))

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optim": self.optim.state_dict(),
            "buffer": self.buffer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": self.generator.get_state(),
            "noise_rng": self.noise_generator.get_state(),
            "action_rng": self.action_generator.get_state(),
        } | ({} if self.depth_head is None else {"depth_head": self.depth_head.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        """A full checkpoint resumes exactly; a slimmed one (the EMA's weights only, from another
        session: :mod:`world_model.train.slim`) continues from those weights, the EMA at its full
        decay, with a fresh optimiser (its learning rate warmed up again), error buffer and data order."""
        if "model" not in state:
            self.warmup.restart()  # a fresh optimiser warms up again from the resumed step
            weights = state["ema"]["model"]
            self.model.load_state_dict(weights)  # cast to the model's dtype (slims are bf16)
            self.ema.load_state_dict({"model": weights, "num_updates": state["ema"].get("num_updates", 10**6)})
            return
        if (self.depth_head is not None) != ("depth_head" in state):
            raise ValueError(
                "a checkpoint of a flow stage with the depth auxiliary resumes only with it, and one without only "
                "without it (the optimiser holds the head's parameters); a slimmed checkpoint continues either way"
            )
        self.model.load_state_dict(state["model"])
        if self.depth_head is not None:
            self.depth_head.load_state_dict(state["depth_head"])
        self.ema.load_state_dict(state["ema"])
        self.optim.load_state_dict(state["optim"])
        self.buffer.load_state_dict(state["buffer"], device=self.device)
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["rng"])
        if "noise_rng" in state:
            self.noise_generator.set_state(state["noise_rng"].cpu())
        if "action_rng" in state:  # checkpoints from before action dropout lack it
            self.action_generator.set_state(state["action_rng"].cpu())
