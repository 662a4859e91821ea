"""Distribution matching distillation to the few-step sampler (spec §12; DMD/DMD2).

Three copies of the memory model: the frozen teacher (real score), the critic (fake score, trained
by flow matching on the student's samples) and the student (the shipped few-step model).

One ``train_step``: the student generates the final chunk of a batch — during the cold start one
chunk with ground-truth past and memory; afterwards a self-rollout of k ~ U{1..K} chunks from the
segment's first frame, past and memory taken from its own output (memory retrieved by camera from
the rollout), and the final chunk generated; with probability ``p_mask`` the final chunk is chunk 0
(past and memory masked). The critic takes one flow-matching step on that sample; every
``critic_steps``-th step the student is also updated (two time-scale rule): its sample is made with
gradients at a random exit step of the UniPC schedule, noised to a random σ, and pulled along
(x̂0_fake − x̂0_real) / mean|x̂ − x̂0_real|. The release's numbers (cold start 600 steps,
K = 6, 5 then 3 critic steps per student step, lr 5e-7/1e-7 for a 5B model) are scaled in
:class:`DMDOptions` for a small model trained from scratch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.config import SamplerConfig
from world_model.sampler import FlowUniPCSampler
from world_model.train.clips import ClipSampler
from world_model.train.ema import EMA
from world_model.train.flow import FlowOptions, add_noise, dit_forward, flow_loss, sample_sigmas
from world_model.train.rollout import sample_chunk, self_rollout

__all__ = ["DMDOptions", "DMDStage"]


@dataclass(frozen=True)
class DMDOptions:
    batch_size: int = 4
    lr_student: float = 2e-6
    lr_critic: float = 4e-6
    betas: tuple[float, float] = (0.0, 0.99)
    grad_clip: float = 1.0
    critic_steps: int = 5  # critic updates per student update
    cold_start_steps: int = 600
    max_rollout_chunks: int = 6  # K
    # steps one self-rollout's history serves (1: a new rollout every step). The student changes only at
    # its update steps, so with ``critic_steps`` every rollout is made by the student as it is now and
    # serves the critic steps up to and including the next student update, each with a new final chunk:
    # the rollout (k <= K chunks of sampling) was most of an eager step's time (session 12: 1.3 steps/s)
    rollout_reuse: int = 1
    # weight of DMD's first paper's regression term on the student's update: the squared distance of its
    # sample to the teacher's, sampled from the same noise and history (no gradient through the teacher).
    # An anchor to what the teacher makes of the same conditions (its memory, its layout) against the
    # distribution-matching term's drift; 0: off (sessions 11-12 lost most of the memory without it)
    regression_weight: float = 0.0
    p_mask: float = 0.2
    sigma_min: float = 0.02
    sigma_max: float = 0.98
    ema_decay: float = 0.99
    amp: bool = True
    seed: int = 0


class DMDStage:
    """DMD distillation (see the module docstring). ``model`` initialises student, critic and teacher."""

    name = "dmd"

    def __init__(
        self, model: nn.Module, clips: ClipSampler, sampler_cfg: SamplerConfig, opts: DMDOptions, *, evaluator=None
    ) -> None:
        self.opts, self.clips, self.evaluator = opts, clips, evaluator
        self.student = model
        self.critic = copy.deepcopy(model)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.sampler = FlowUniPCSampler.from_config(sampler_cfg)
        self.opt_student = torch.optim.AdamW(self.student.parameters(), lr=opts.lr_student, betas=opts.betas)
        self.opt_critic = torch.optim.AdamW(self.critic.parameters(), lr=opts.lr_critic, betas=opts.betas)
        self.ema = EMA(self.student, opts.ema_decay)
        self.generator = torch.Generator().manual_seed(opts.seed)  # host draws: choices, σ, timesteps
        self.noise_generator = torch.Generator(self.device).manual_seed(opts.seed + 2)  # noise, on the device
        self.flow_opts = FlowOptions(logit_mean=0.0, logit_std=1.0, shift=1.0)
        if opts.rollout_reuse < 1:
            raise ValueError(f"rollout_reuse must be >= 1, got {opts.rollout_reuse}")
        self._rollout: tuple[int, torch.Tensor, int, torch.Tensor] | None = None  # (step, segments, k, latents)
        self.rollouts = 0  # self-rollouts made (each reused for up to rollout_reuse steps)

    @torch.no_grad()
    def start_student_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Start the student (and its EMA) from an earlier session's student, carried as weights; the
        teacher and the critic stay the model this stage was built from (the critic learns the carried
        student's samples from the first step on). Before the first step only."""
        self.student.load_state_dict(weights)
        self.ema.model.load_state_dict(weights)

    def _autocast(self):
        enabled = self.opts.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _batch(self, step: int):
        """The final chunk's batch (history from a self-rollout after the cold start)."""
        o, clips = self.opts, self.clips
        b = o.batch_size
        segments = torch.randint(0, clips.store.num_segments, (b,), generator=self.generator)
        if self._rand() < o.p_mask or clips.k_max < 1:
            return clips.build(segments, torch.zeros(b, dtype=torch.int64))
        k_hi = min(o.max_rollout_chunks, clips.k_max)
        k = int(torch.randint(1, k_hi + 1, (), generator=self.generator))
        if step < o.cold_start_steps:
            return clips.build(segments, torch.full((b,), k, dtype=torch.int64))  # ground-truth past/memory
        cached = self._rollout
        # a rollout is made on the first step after a student update (step % critic_steps == 1 with
        # reuse == critic_steps) and serves until the next update, inclusive
        if cached is None or (step - 1) // o.rollout_reuse != (cached[0] - 1) // o.rollout_reuse:
            self.student.eval()
            with self._autocast():
                lat = self_rollout(self.student, clips, segments, k, self.sampler, self.generator)
            self._rollout = cached = (step, segments, k, lat)
            self.rollouts += 1
        _, segments, k, lat = cached
        return clips.build(segments, torch.full((b,), k, dtype=torch.int64), latents=lat)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.noise_generator, device=self.device)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        o = self.opts
        batch = self._batch(step)
        c = batch.num_context
        noise = self._noise(batch.latents[:, :, c:])
        update_student = step % o.critic_steps == 0
        metrics: dict[str, torch.Tensor] = {}  # device tensors, read back at the loop's log steps
        if update_student:
            self.student.train()
            exit_step = int(torch.randint(0, self.sampler.num_steps, (), generator=self.generator))
            with self._autocast():
                x = sample_chunk(self.student, batch, noise, self.sampler, grad_step=exit_step).float()
            sigma = (o.sigma_min + (o.sigma_max - o.sigma_min) * torch.rand(len(x), generator=self.generator)).to(
                x.device, non_blocking=True
            )
            xt = add_noise(x.detach(), self._noise(x), sigma)
            window = torch.cat([batch.latents[:, :, :c], xt], dim=2)
            s = sigma.view(-1, 1, 1, 1, 1)
            with torch.no_grad(), self._autocast():
                x0_real = xt - s * dit_forward(self.teacher, batch, window, sigma * 1000)[:, :, c:]
                x0_fake = xt - s * dit_forward(self.critic, batch, window, sigma * 1000)[:, :, c:]
            norm = (x.detach() - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
            grad = (x0_fake - x0_real) / norm
            loss = 0.5 * F.mse_loss(x, (x - grad).detach())
            if o.regression_weight > 0:
                self.teacher.eval()
                with self._autocast():
                    target = sample_chunk(self.teacher, batch, noise, self.sampler).float()
                regression = F.mse_loss(x, target)
                metrics["regression"] = regression.detach()
                loss = loss + o.regression_weight * regression
            self.opt_student.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.student.parameters(), o.grad_clip)
            self.opt_student.step()
            self.ema.update(self.student)
            sample = x.detach()
            metrics.update(dmd=loss.detach(), student_grad=gn.detach())
        else:
            self.student.eval()
            with self._autocast():
                sample = sample_chunk(self.student, batch, noise, self.sampler).float()
        # critic: flow matching on the student's sample
        self.critic.train()
        batch.latents = torch.cat([batch.latents[:, :, :c], sample], dim=2)
        sigma = sample_sigmas(len(sample), self.flow_opts, self.generator).to(sample.device)
        with self._autocast():
            closs, _ = flow_loss(self.critic, batch, sigma, self._noise(sample))
        self.opt_critic.zero_grad(set_to_none=True)
        closs.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), o.grad_clip)
        self.opt_critic.step()
        metrics["critic"] = closs.detach()
        return metrics

    def evaluate(self) -> dict[str, float]:
        return dict(self.evaluator(self.ema.model)) if self.evaluator is not None else {}

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "critic": self.critic.state_dict(),
            "teacher": self.teacher.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_student": self.opt_student.state_dict(),
            "opt_critic": self.opt_critic.state_dict(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.critic.load_state_dict(state["critic"])
        self.teacher.load_state_dict(state["teacher"])
        self.ema.load_state_dict(state["ema"])
        self.opt_student.load_state_dict(state["opt_student"])
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.generator.set_state(state["rng"])
