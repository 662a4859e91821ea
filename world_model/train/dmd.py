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

With ``dmd_weight`` 0 the stage is ODE (trajectory) distillation alone: no critic, every step pulls the
student (its whole few-step chain's sample, or its clean estimate at a random exit step: ``regression_target``)
to the teacher's sample from the same noise and history in ``teacher_steps`` steps, which is sharp where the
few-step sample is a blur (session 27's model in 16 steps: 0.456 of the simulator's sharpness, 0.387 in 5), and
which keeps what the teacher takes from memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.config import SamplerConfig
from world_model.sampler import FlowUniPCSampler
from world_model.train.clips import ClipBatch, ClipSampler
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
    # the sampler steps of the teacher's regression target (0: the student's own). Many give the end of the
    # teacher's ODE from the same noise: a sample, a function of the noise and the history, as sharp as the
    # teacher's many-step sampling (session 27's model: 0.456 of the simulator's sharpness in 16 steps, 0.387 in
    # 5), where its few-step sample averages what the model is unsure of. Regressing the few-step student onto it
    # is ODE (trajectory) distillation: Luhman & Luhman 2021, CausVid's initialisation of its DMD student.
    teacher_steps: int = 0
    # memory guidance of the teacher's regression target (1: off; as SamplerConfig.memory_guidance): the teacher's
    # many-step samples invent objects on a return where its few-step ones remembered (session 29: the 16-step
    # sampler's return view 5.8 dB below the 5-step one's); guided by its memory they return to the view they left,
    # and the student learns the guided sample in one call a step
    teacher_memory_guidance: float = 1.0
    # weight of the distribution-matching term; 0: the regression alone (no critic is built or trained, every
    # step updates the student; needs regression_weight > 0)
    dmd_weight: float = 1.0
    # with the regression alone: student steps one batch's teacher target serves (the same noise and history,
    # each step at a new random exit step of the student's schedule); the teacher's sampling in teacher_steps
    # steps costs several student steps
    target_reuse: int = 1
    # with the regression alone, what is pulled to the teacher's sample: "exit" the clean estimate at a random exit
    # step of the student's chain (DMD2's backward simulation; a CPU pilot, batch 4, drew noise-like detail within
    # 24 steps: sharpness 0.79 of the true frames' where the 16-step teacher makes 0.50, chunk 0 -2.2 dB), "chain"
    # the chain's final sample with gradients through all its steps (what sampling gives; ~5x an exit step's cost)
    regression_target: str = "exit"
    p_mask: float = 0.2
    sigma_min: float = 0.02
    sigma_max: float = 0.98
    ema_decay: float = 0.99
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rollout_reuse < 1:
            raise ValueError(f"rollout_reuse must be >= 1, got {self.rollout_reuse}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not self.teacher_memory_guidance >= 1.0:
            raise ValueError(f"teacher_memory_guidance must be >= 1 (1: off), got {self.teacher_memory_guidance}")
        if self.teacher_steps < 0:
            raise ValueError(f"teacher_steps must be >= 0 (0: the student's sampler), got {self.teacher_steps}")
        if self.dmd_weight < 0 or self.regression_weight < 0:
            raise ValueError(
                f"dmd_weight and regression_weight must be >= 0, got {self.dmd_weight}, {self.regression_weight}"
            )
        if self.dmd_weight == 0 and self.regression_weight == 0:
            raise ValueError("dmd_weight and regression_weight are both 0: the student would not learn")
        if self.regression_target not in ("exit", "chain"):
            raise ValueError(f"regression_target must be 'exit' or 'chain', got {self.regression_target!r}")
        if self.target_reuse < 1 or (self.target_reuse > 1 and self.dmd_weight > 0):
            raise ValueError(
                f"target_reuse ({self.target_reuse}) must be >= 1, and 1 unless dmd_weight is 0 (the regression alone)"
            )


class DMDStage:
    """DMD distillation (see the module docstring). ``model`` initialises student, critic and teacher."""

    name = "dmd"

    def __init__(
        self, model: nn.Module, clips: ClipSampler, sampler_cfg: SamplerConfig, opts: DMDOptions, *, evaluator=None
    ) -> None:
        self.opts, self.clips, self.evaluator = opts, clips, evaluator
        self.student = model
        self.critic = copy.deepcopy(model) if opts.dmd_weight > 0 else None  # none for the regression alone
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.sampler = FlowUniPCSampler.from_config(sampler_cfg)
        self.teacher_sampler = (
            FlowUniPCSampler.from_config(sampler_cfg.replace(num_steps=opts.teacher_steps))
            if opts.teacher_steps
            else self.sampler
        )
        self.opt_student = torch.optim.AdamW(self.student.parameters(), lr=opts.lr_student, betas=opts.betas)
        self.opt_critic = (
            torch.optim.AdamW(self.critic.parameters(), lr=opts.lr_critic, betas=opts.betas)
            if self.critic is not None
            else None
        )
        self.ema = EMA(self.student, opts.ema_decay)
        self.generator = torch.Generator().manual_seed(opts.seed)  # host draws: choices, σ, timesteps
        self.noise_generator = torch.Generator(self.device).manual_seed(opts.seed + 2)  # noise, on the device
        self.flow_opts = FlowOptions(logit_mean=0.0, logit_std=1.0, shift=1.0)
        self._target: tuple[int, ClipBatch, torch.Tensor, torch.Tensor] | None = None  # (step, batch, noise, target)
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

    @torch.no_grad()
    def _teacher_sample(self, batch: ClipBatch, noise: torch.Tensor) -> torch.Tensor:
        """The teacher's sample of ``batch``'s new latents from ``noise`` in its own steps (the regression target)."""
        self.teacher.eval()
        with self._autocast():
            return sample_chunk(
                self.teacher, batch, noise, self.teacher_sampler, memory_guidance=self.opts.teacher_memory_guidance
            ).float()

    def _student_update(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimiser step of the student on ``loss`` (and its moving average); returns the gradient norm."""
        self.opt_student.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.opts.grad_clip)
        self.opt_student.step()
        self.ema.update(self.student)
        return gn

    def _regression_step(self, step: int) -> dict[str, torch.Tensor]:
        """The regression alone (dmd_weight 0): the student's sample of a batch (its chain's output, or its clean
        estimate at a random exit step: ``regression_target``) pulled to the teacher's sample from the same noise
        and history."""
        o = self.opts
        if self._target is None or step // o.target_reuse != self._target[0] // o.target_reuse:
            batch = self._batch(step)
            noise = self._noise(batch.latents[:, :, batch.num_context :])
            self._target = (step, batch, noise, self._teacher_sample(batch, noise))
        _, batch, noise, target = self._target
        self.student.train()
        with self._autocast():
            if o.regression_target == "chain":
                x = sample_chunk(self.student, batch, noise, self.sampler, backprop=True).float()
            else:
                exit_step = int(torch.randint(0, self.sampler.num_steps, (), generator=self.generator))
                x = sample_chunk(self.student, batch, noise, self.sampler, grad_step=exit_step).float()
        regression = F.mse_loss(x, target)
        gn = self._student_update(o.regression_weight * regression)
        return {"regression": regression.detach(), "student_grad": gn.detach()}

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        o = self.opts
        if self.critic is None:
            return self._regression_step(step)
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
            loss = o.dmd_weight * 0.5 * F.mse_loss(x, (x - grad).detach())
            if o.regression_weight > 0:
                regression = F.mse_loss(x, self._teacher_sample(batch, noise))
                metrics["regression"] = regression.detach()
                loss = loss + o.regression_weight * regression
            gn = self._student_update(loss)
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
        state = {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_student": self.opt_student.state_dict(),
            "rng": self.generator.get_state(),
        }
        if self.critic is not None:
            state.update(critic=self.critic.state_dict(), opt_critic=self.opt_critic.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        if (self.critic is not None) != ("critic" in state):
            have = "a critic" if "critic" in state else "no critic"
            raise ValueError(f"the checkpoint has {have}: it was trained with another dmd_weight (0: no critic)")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.ema.load_state_dict(state["ema"])
        self.opt_student.load_state_dict(state["opt_student"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.opt_critic.load_state_dict(state["opt_critic"])
        self.generator.set_state(state["rng"])
