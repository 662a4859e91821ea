"""Sharpen the shipped decoder on the DiT's own latents (stage ``sharpen``, after DMD, before export): the
pruned one of the decoder stage, or with ``PipelineOptions.sharpen_decoder`` "full" the vae stage's full decoder
(shipped since session 30; the class below trains whichever VAE it is given).

The decoder stages learn to decode the *encoder's* latents, yet what a user sees is the decoding of the
*DiT's* latents: a few-step sample is smoother than an encoding (the test levels, session 12: the shipped
VAE reconstructs at 0.50 of the simulator's sharpness, generated frames are at 0.36). Here the decoder
learns to turn generated latents into frames a patch discriminator cannot tell from the simulator's:

* a pool of generated chunks: the trained DiT (DMD student, else the memory / base model) samples chunk k
  of training segments from their true history, as the streaming generator does; refreshed every
  ``refresh_every`` steps with a new k (chunk 0 with probability ``p_first``);
* each step decodes a crop of ``crop_latents`` generated latents after a cache primed (without gradient) on
  the two latents before it, the streaming decoder's situation, and takes
  - the adversarial term on those frames (hinge, weighted adaptively as in the decoder stages),
  - an anchor: L1 between their 8x8-pooled frames and the frozen starting decoder's (the content and the
    colours of each region stay the DiT's; only detail is free),
* plus the decoder stage's terms on true clips (L1 + MSE + low-pass + SSIM towards the true frames, and the
  adversarial term), so that the reset frame and encoded memory stay faithful.

The discriminator sees true frames against both kinds of decoded frames. The stage's checkpoint holds the
shipped VAE as ``student`` (as the decoder stage's), which export and the next session's slim take.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.sampler import FlowUniPCSampler
from world_model.train.autoencoder import (
    ClipFrames,
    VAEOptions,
    _Base,
    _last_weight,
    frames_2d,
    grid_share,
    is_decoder_side,
    lowpass_l1,
    sharpness,
    ssim,
)
from world_model.train.clips import ClipSampler
from world_model.train.ema import EMA
from world_model.train.rollout import sample_into, stored_latents

__all__ = ["SharpenOptions", "GeneratedChunks", "SharpenStage"]


@dataclass(frozen=True)
class SharpenOptions:
    pool_size: int = 64  # generated chunks held at once
    refresh_every: int = 25  # steps between pool refreshes (each draws a new chunk index)
    p_first: float = 0.2  # probability that a refresh generates chunk 0 (the image-to-video chunk)
    gen_batch: int = 8  # generated crops per step
    crop_latents: int = 4  # latents per crop (x 4 frames)
    anchor_weight: float = 1.0  # weight of the low-pass anchor to the frozen starting decoder
    # weight of the grid penalty: the share of the detail this stage adds to the generated frames (their decode
    # minus the starting decoder's) that is one pattern on a fixed 2/4/8/16-pixel grid (autoencoder.grid_share).
    # Session 16's stage without it drew a 4-pixel screen door over every frame by step 2,000 (8.9 % of the
    # detail on the test levels; the simulator 0.01 %), which the discriminator took for texture and the
    # sharpness ratio for detail. Off by default: continuing that decoder on the CPU (batch 2, 100 steps from
    # step 2,000, held-out generated crops' grid share after: no penalty 0.062), the penalty on the decoded
    # frames at weight 0.005 ended at 0.174, at 10 and 0.02 it swamped the other terms under the gradient clip
    # (sharpness 3.2x, SSIM 0.46), and on the added detail at 0.05 its share rose 0.31 -> 0.99 in 20 steps.
    # Unproven at the GPU's batch; the stage's snapshots (every 500 steps) let a session pick along its curve.
    # Not for want of a discriminator that sees the grid: a CPU check of session 17 (synthetic frames with detail
    # at every phase, 64x64, batch 16) had the patch discriminator tell frames with a fixed 4-pixel screen door
    # of 4 % of their detail from frames without perfectly in 150 steps; at step 4,000 of session 17's stage it
    # told every generated frame apart (gan_d 0.15): the decoder draws the grid while it fails to invent detail
    # the DiT's latents lack. Session 17's means and blends of snapshots (export decoder --decoder ... --blend): the
    # model card's "The curve" section.
    grid_weight: float = 0.0
    # the decoder the stage hands on (export, slim, snapshots, its evaluation) is an exponential moving average of
    # the one it trains, with this decay (0: the trained one itself). Session 17 (test levels): each snapshot drew
    # its own screen door (grid share 0.03-0.07 at 0.86-1.19 of the simulator's sharpness), and the mean of eight
    # snapshots 500 steps apart kept the sharpness with a fraction of the grid; 0.999 averages over ~1,000 steps.
    # No warm-up ramp: the starting decoder keeps the share 0.999^n (0.61 at step 500, 0.02 at 4,000), so that an
    # early snapshot is a blend from it, which session 17 also found to lower the grid (0.3 of the way to its
    # step 1,500: sharpness 0.43, grid share 0.009)
    ema_decay: float = 0.999
    eval_chunks: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.gen_batch < 1 or self.refresh_every < 1 or self.crop_latents < 1:
            raise ValueError(f"pool_size, gen_batch, refresh_every and crop_latents must be >= 1: {self}")
        if not 0.0 <= self.p_first <= 1.0:
            raise ValueError(f"p_first must be in [0, 1], got {self.p_first}")
        if self.grid_weight < 0 or self.anchor_weight < 0:
            raise ValueError(f"grid_weight and anchor_weight must be >= 0: {self}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")


class GeneratedChunks:
    """Chunks the DiT generated from true histories: segment latents [N, Fs, C, h, w] with chunk k's latents
    replaced by generated ones, and where they sit (all rows the same chunk, so the same indices)."""

    def __init__(
        self, model: nn.Module, clips: ClipSampler, sampler: FlowUniPCSampler, opts: SharpenOptions, *, amp: bool
    ) -> None:
        self.model, self.clips, self.sampler, self.opts, self.amp = model.eval(), clips, sampler, opts, amp
        self.device = clips.device
        self.generator = torch.Generator().manual_seed(opts.seed + 11)  # host draws: k, segments, crops
        self.noise = torch.Generator(self.device).manual_seed(opts.seed + 12)
        self.latents: Tensor | None = None
        self.segments: Tensor | None = None  # [N] the segments the rows are from
        self.first = 0  # index of the chunk's first generated latent in the segment
        self.end = 0  # one past its last
        self.refreshes = 0

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    @torch.no_grad()
    def refresh(self, chunk: int | None = None) -> None:
        """Generate ``pool_size`` chunks ``chunk`` (None: drawn) of random training segments."""
        clips, n = self.clips, self.opts.pool_size
        if chunk is None:
            first = clips.k_max < 1 or self._rand() < self.opts.p_first
            chunk = 0 if first else int(torch.randint(1, clips.k_max + 1, (), generator=self.generator))
        segments = torch.randint(0, clips.store.num_segments, (n,), generator=self.generator)
        lat = stored_latents(clips, segments)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda"):
            idx = sample_into(
                self.model,
                clips,
                segments,
                torch.full((n,), chunk, dtype=torch.int64),
                lat,
                self.sampler,
                self._noise_source(),
            )
        first, end = idx[0].min().item(), idx[0].max().item() + 1
        self.latents, self.segments, self.first, self.end = lat, segments, int(first), int(end)
        self.refreshes += 1

    def _noise_source(self) -> torch.Generator:
        # sample_into draws its noise on the host generator it is given; one per refresh, seeded from ours
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=self.generator)))

    def crops(self, b: int) -> tuple[Tensor, Tensor]:
        """``b`` random rows: (prefix [b, C, P, h, w], crop [b, C, L, h, w]) — the ``crop_latents`` generated
        latents of a random crop of the chunk and the (up to two) latents before it (P = 1 when the crop
        starts right after the image latent)."""
        if self.latents is None:
            raise RuntimeError("GeneratedChunks.crops before refresh")
        length = min(self.opts.crop_latents, self.end - self.first)
        start = self.first + int(torch.randint(0, self.end - self.first - length + 1, (), generator=self.generator))
        rows = torch.randint(0, len(self.latents), (b,), generator=self.generator).to(self.device)
        pre = max(0, start - 2)
        seq = self.latents[rows, pre : start + length].transpose(1, 2).float()  # [b, C, P + L, h, w]
        return seq[:, :, : start - pre], seq[:, :, start - pre :]


def decode_after(vae: nn.Module, prefix: Tensor, crop: Tensor, *, clamp: bool = False) -> Tensor:
    """Frames of ``crop`` decoded with the decoder's cache primed (without gradient) on ``prefix``, as the
    streaming decoder decodes a chunk after the last: [b, 3, 4L, H, W]."""
    with torch.no_grad():
        _, cache = vae.decode(prefix, first_chunk=True, segment=prefix.shape[2], clamp=False)
    return vae.decode(crop, cache, first_chunk=False, segment=crop.shape[2], clamp=clamp)[0]


class SharpenStage(_Base):
    """See the module docstring. ``vae``: the shipped VAE (normalised latents in and out) whose decoder side
    trains; ``pool``: the generated chunks; ``train`` / ``held_out``: true clips."""

    name = "sharpen"

    def __init__(
        self,
        vae: nn.Module,
        pool: GeneratedChunks,
        train: ClipFrames,
        held_out: ClipFrames | None,
        opts: VAEOptions,
        sopts: SharpenOptions,
        *,
        held_pool: GeneratedChunks | None = None,
    ) -> None:
        if not opts.uses_gan:
            raise ValueError("the sharpen stage is adversarial: VAEOptions.gan_start must be >= 0")
        self.vae, self.pool, self.train, self.held_out, self.sopts = vae, pool, train, held_out, sopts
        self.reference = copy.deepcopy(vae).eval().requires_grad_(False)  # the decoder as it started
        for name, p in vae.named_parameters():
            p.requires_grad_(is_decoder_side(name))
        trainable = [p for p in vae.parameters() if p.requires_grad]
        super().__init__(trainable, opts, next(vae.parameters()).device, _last_weight(vae))
        self.held_pool = held_pool
        self._held: tuple[Tensor, Tensor] | None = None
        self.ema = EMA(vae, sopts.ema_decay, ramp=False) if sopts.ema_decay else None

    @property
    def shipped(self) -> nn.Module:
        """The VAE whose decoder the stage hands on: the moving average (SharpenOptions.ema_decay), else the
        trained one."""
        return self.ema.model if self.ema is not None else self.vae

    def _generator_loss(self, videos: list[Tensor]) -> Tensor:
        return torch.stack([self.adversary.generator_loss(v) for v in videos]).mean()

    def train_step(self, step: int) -> dict[str, Tensor]:
        o, s = self.opts, self.sopts
        if self.pool.latents is None or step % s.refresh_every == 0:
            self.pool.refresh()
        self.vae.train()
        x = self.train.sample(o.batch_size)
        prefix, crop = self.pool.crops(s.gen_batch)
        with torch.no_grad(), self._autocast():
            z = self._encode(self.vae, x)
            anchor_to = decode_after(self.reference, prefix, crop)
        with self._autocast():
            out = self._decode(self.vae, z)
            gen = decode_after(self.vae, prefix, crop)
        out, gen = out.float(), gen.float()
        pixel, mse, lowpass = F.l1_loss(out, x), F.mse_loss(out, x), lowpass_l1(out, x)
        anchor = lowpass_l1(gen, anchor_to.float())
        # a fixed-grid pattern in the detail this stage adds to the generated frames (their decode minus the starting
        # decoder's: the world's own content cancels, what is left is the decoder's; its gradient shrinks the
        # pattern, it does not reward noise)
        with torch.enable_grad() if s.grid_weight else torch.no_grad():  # off: a metric only, no graph
            grid = grid_share(gen - anchor_to.float(), penalty=True)
        terms = {"ssim": ssim(frames_2d(out), frames_2d(x))}
        if o.grid_weight > 0:  # the decoder stages' penalty on the true clips' error (--vae-grid), as in session 28
            terms["grid_true"] = grid_share(out - x, penalty=True)
        if self._gan_on(step):
            with self._autocast():
                terms["gan_g"] = self._generator_loss([gen, out])
        rec = pixel + o.mse_weight * mse + o.lowpass_weight * lowpass + s.anchor_weight * anchor
        # the grid penalty after the adversarial term's adaptive weight, which it would otherwise inflate (its
        # gradient at the last layer dwarfs reconstruction's while a grid is there: a CPU check's loss went to ~10)
        loss = self._weighted(terms, rec, step) + s.grid_weight * grid
        if "grid_true" in terms:  # after the adaptive weight too (autoencoder._Base._weighted says why)
            loss = loss + o.grid_weight * terms["grid_true"]
        gnorm = self._step(step, loss)
        self.optim.step()
        if self.ema is not None:
            self.ema.update(self.vae)
        metrics = {
            "loss": loss,
            "pixel": pixel,
            "lowpass": lowpass,
            "anchor": anchor,
            "grid": grid,
            "grad_norm": gnorm,
            "gen_sharpness_ratio": sharpness(gen.detach()) / sharpness(x),
            **terms,
        }
        self._adversary_step(step, x, [gen, out], metrics)  # true frames against both kinds of decoded ones
        return {k: v.detach() for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.held_out is None:
            return {}
        vals, sharp_out, sharp_true, grid = self._round_trip(self.shipped, self.held_out)
        real = sharp_true.mean()
        result = {
            "psnr_decoder": vals.mean().item(),
            "sharpness_ratio": (sharp_out.mean() / real).item(),
            "grid_share": grid.item(),
        }
        if self.held_pool is not None:
            if self._held is None:  # one fixed set of generated crops, made by the DiT once
                self.held_pool.refresh(chunk=min(1, self.held_pool.clips.k_max))
                self._held = self.held_pool.crops(self.sopts.eval_chunks)
            prefix, crop = self._held
            with self._autocast():
                gen = decode_after(self.shipped, prefix, crop, clamp=True).float()
                ref = decode_after(self.reference, prefix, crop, clamp=True).float()
            result["gen_sharpness_ratio"] = (sharpness(gen) / real).item()
            result["gen_sharpness_ratio_start"] = (sharpness(ref) / real).item()
            result["gen_anchor_l1"] = lowpass_l1(gen, ref).item()
            result["gen_grid_share"] = grid_share(gen).item()
            result["gen_grid_share_start"] = grid_share(ref).item()
        return result

    def snapshot(self) -> dict[str, Tensor]:
        """The decoder as it is now (its side of the VAE's weights: the encoder never changes here), in bfloat16
        as exported (1.3 MB for the embedded model's), for ``python -m world_model.train.export decoder``."""
        return {
            k: v.to(torch.bfloat16) if v.is_floating_point() else v
            for k, v in self.shipped.state_dict().items()
            if is_decoder_side(k)
        }

    def state_dict(self) -> dict:
        """``student``: the decoder handed on (export and slim read it); with the moving average, ``live`` the
        trained one and ``ema_updates``, so that a resumed stage goes on exactly."""
        live = {"live": self.vae.state_dict(), "ema_updates": self.ema.num_updates} if self.ema is not None else {}
        return {
            "student": self.shipped.state_dict(),
            **live,
            "reference": {k: v for k, v in self.reference.state_dict().items() if is_decoder_side(k)},
            "optim": self.optim.state_dict(),
            "data": self.train.state_dict(),
            **self._base_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """A full checkpoint resumes exactly (its reference decoder too); a slimmed one continues."""
        decoder = {k: v for k, v in state["student"].items() if is_decoder_side(k)}
        mine = self.vae.state_dict()
        if any(k in mine and v.shape != mine[k].shape for k, v in decoder.items()):
            full = self.vae.cfg.pruning_rate == 0.0
            raise RuntimeError(
                f"the checkpoint holds the {'pruned' if full else 'full'} decoder; this stage trains the "
                f"{'full' if full else 'pruned'} one (a run's sharpen stage goes on with the decoder it began with)"
            )
        self.vae.load_state_dict(
            {k: v for k, v in state.get("live", decoder).items() if is_decoder_side(k)}, strict=False
        )
        if self.ema is not None:  # a slim (no live weights) starts the average at the decoder it carries
            self.ema.model.load_state_dict(decoder, strict=False)
            self.ema.num_updates = int(state.get("ema_updates", 0))
        if "reference" in state:
            self.reference.load_state_dict(state["reference"], strict=False)
        if "optim" in state:
            self.optim.load_state_dict(state["optim"])
            self.train.load_state_dict(state["data"])
        self._load_base_state(state)
