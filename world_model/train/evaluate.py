"""Evaluation against the simulator on held-out segments: PSNR of generated chunks.

From the segment's true first frame (its image latent) and the true actions, the model samples
chunk 0 (15 latents -> 57 frames); the decoded frames are compared with the simulator's frames
(frames 1..56; frame 0 is given). Baselines: "repeat the first frame" and the VAE's own
reconstruction (the ceiling for any latent model).

Continuation (``continuation=True``, when the segments hold chunk 1): chunk 1 sampled twice, after
the true chunk 0 (``psnr_next``: the window the model trains on) and after the chunk 0 the model
generated itself (``psnr_next_rollout``: what a user gets), against the simulator's frames of the
chunk; baseline: its last context frame repeated (``psnr_next_repeat``). ``psnr_next - psnr_next_rollout``
is not the exposure gap alone: a chunk 0 that invented what the simulator shows differently leaves chunk 1 that far
from the truth however well the model continues it. So each continuation is also measured against its own
history's last decoded frame held still (``gain_next_held_db``, ``gain_next_rollout_held_db``: what the chunk adds
over freezing where its history left off, against the simulator's chunk) and by its blur (``sharpness_next``,
``sharpness_next_rollout``: its new frames' luma gradient over the simulator's). A model that continues true
context but not its own shows it there: a rollout gain or sharpness below the true history's.

Blur, which PSNR rewards: ``sharpness_model`` and ``sharpness_vae``, the mean luma gradient of the
generated chunk 0 and of the VAE's reconstruction over the simulator's (frames 1..56; 1 as sharp,
below 1 blurrier; :func:`world_model.train.autoencoder.sharpness`, the measure of ``mg3 eval``'s
sharpness part, whose test-level ratios the model card reports).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from world_model.config import SamplerConfig
from world_model.sampler import FlowUniPCSampler
from world_model.train.autoencoder import psnr, sharpness
from world_model.train.clips import ClipSampler
from world_model.train.encode import segment_video
from world_model.train.frames import FrameStore
from world_model.train.rollout import sample_chunk, sample_into, self_rollout, stored_latents

__all__ = ["FirstChunkEval"]


class FirstChunkEval:
    """Callable(model) -> {"psnr_model", "psnr_repeat", "psnr_vae", "gain_db", "sharpness_model",
    "sharpness_vae"} on fixed held-out segments, plus {"psnr_next", "psnr_next_rollout",
    "psnr_next_repeat", "gain_next_db", "gain_next_rollout_db", "gain_next_held_db", "gain_next_rollout_held_db",
    "sharpness_next", "sharpness_next_rollout"} with ``continuation`` (module docstring)."""

    def __init__(
        self,
        clips: ClipSampler,
        frames: FrameStore,
        vae: nn.Module,
        sampler_cfg: SamplerConfig,
        *,
        num_segments: int = 8,
        batch_size: int = 4,
        seed: int = 1234,
        continuation: bool = True,
    ) -> None:
        self.clips, self.frames, self.vae = clips, frames, vae
        self.continuation = continuation and clips.k_max >= 1
        self.sampler = FlowUniPCSampler.from_config(sampler_cfg)
        n = min(num_segments, clips.store.num_segments)
        self.segments = torch.linspace(0, clips.store.num_segments - 1, n).round().long()
        self.batch_size, self.seed = batch_size, seed

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        g = torch.Generator().manual_seed(self.seed)
        dev = next(model.parameters()).device
        vals: dict[str, list[torch.Tensor]] = {"psnr_model": [], "psnr_repeat": [], "psnr_vae": []}
        for segs in self.segments.split(self.batch_size):
            batch = self.clips.build(segs, torch.zeros(len(segs), dtype=torch.int64))
            c = batch.num_context
            noise = torch.randn(batch.latents[:, :, c:].shape, generator=g).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                x = sample_chunk(model, batch, noise, self.sampler)
                gen, _ = self.vae.decode(
                    torch.cat([batch.latents[:, :, :c], x], 2).to(self.vae.dtype), first_chunk=True
                )
                rec, _ = self.vae.decode(batch.latents.to(self.vae.dtype), first_chunk=True)
            starts = self.clips.store.seg_start[segs.to(self.clips.store.seg_start.device)].cpu().numpy()
            truth = segment_video(self.frames, starts, gen.shape[2], dev)  # [b, 3, T, H, W]
            later = slice(1, None)
            vals["psnr_model"].append(psnr(gen[:, :, later].float(), truth[:, :, later]))
            vals["psnr_vae"].append(psnr(rec[:, :, later].float(), truth[:, :, later]))
            repeat = truth[:, :, :1].expand_as(truth[:, :, later])
            vals["psnr_repeat"].append(psnr(repeat, truth[:, :, later]))
            for key, video in (("model", gen), ("vae", rec), ("truth", truth)):  # per segment, ratios at the end
                grads = [sharpness(v[None, :, later].float()) for v in video]
                vals.setdefault(f"grad_{key}", []).append(torch.stack(grads))
            if self.continuation:
                for key, value in self._next_chunk(model, segs, g, dev).items():
                    vals.setdefault(key, []).append(value)
        out = {k: torch.cat(v).mean().item() for k, v in vals.items()}
        out["gain_db"] = out["psnr_model"] - out["psnr_repeat"]
        truth_grad = out.pop("grad_truth")
        for key in ("model", "vae"):
            grad = out.pop(f"grad_{key}")
            out[f"sharpness_{key}"] = grad / truth_grad if truth_grad > 0 else float("nan")
        if self.continuation:
            out["gain_next_db"] = out["psnr_next"] - out["psnr_next_repeat"]
            out["gain_next_rollout_db"] = out["psnr_next_rollout"] - out["psnr_next_repeat"]
            truth_grad = out.pop("grad_next_truth")
            for key in ("next", "next_rollout"):
                # what chunk 1 adds over holding its own history's last frame still
                out[f"gain_{key}_held_db"] = out[f"psnr_{key}"] - out.pop(f"psnr_{key}_held")
                grad = out.pop(f"grad_{key}")
                out[f"sharpness_{key}"] = grad / truth_grad if truth_grad > 0 else float("nan")
        return out

    def _next_chunk(self, model: nn.Module, segs: Tensor, g: torch.Generator, dev) -> dict[str, Tensor]:
        """Chunk 1 after the true chunk 0 and after the model's own (see the module docstring); each
        history with its chunk 1 is decoded from latent 0, as the streaming decoder sees it."""
        store = self.clips.store
        n_new = self.clips.r * self.clips.cfg.stream.new_latents  # the chunk's new frames (40)
        ones = torch.ones(len(segs), dtype=torch.int64)
        starts = store.seg_start[segs.to(store.seg_start.device)].cpu().numpy()
        out: dict[str, Tensor] = {}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            rolled = self_rollout(model, self.clips, segs, 1, self.sampler, g)  # chunk 0 generated
            for key, lat in (("next", stored_latents(self.clips, segs)), ("next_rollout", rolled)):
                idx = sample_into(model, self.clips, segs, ones, lat, self.sampler, g)
                video, _ = self.vae.decode(lat[:, : int(idx.max()) + 1].transpose(1, 2).to(self.vae.dtype))
                video = video.float().clamp(-1, 1)
                truth = segment_video(self.frames, starts, video.shape[2], dev)
                new = video[:, :, -n_new:]
                out[f"psnr_{key}"] = psnr(new, truth[:, :, -n_new:])
                # the chunk's own last context frame held still: the baseline it continues from (for the
                # rollout its own chunk 0's last frame, which the true chunk 1 never shows)
                held = video[:, :, -n_new - 1 : -n_new].expand_as(new)
                out[f"psnr_{key}_held"] = psnr(held, truth[:, :, -n_new:])
                out[f"grad_{key}"] = torch.stack([sharpness(v[None]) for v in new])
        repeat = truth[:, :, -n_new - 1 : -n_new].expand_as(truth[:, :, -n_new:])
        out["psnr_next_repeat"] = psnr(repeat, truth[:, :, -n_new:])
        out["grad_next_truth"] = torch.stack([sharpness(v[None, :, -n_new:]) for v in truth])
        return out
