"""Evaluation against the simulator on held-out segments: PSNR of the first generated chunk.

From the segment's true first frame (its image latent) and the true actions, the model samples
chunk 0 (15 latents -> 57 frames); the decoded frames are compared with the simulator's frames
(frames 1..56; frame 0 is given). Baselines: "repeat the first frame" and the VAE's own
reconstruction (the ceiling for any latent model).
"""

from __future__ import annotations

import torch
from torch import nn

from world_model.config import SamplerConfig
from world_model.sampler import FlowUniPCSampler
from world_model.train.autoencoder import psnr
from world_model.train.clips import ClipSampler
from world_model.train.encode import segment_video
from world_model.train.frames import FrameStore
from world_model.train.rollout import sample_chunk

__all__ = ["FirstChunkEval"]


class FirstChunkEval:
    """Callable(model) -> {"psnr_model", "psnr_repeat", "psnr_vae", "gain_db"} on fixed held-out segments."""

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
    ) -> None:
        self.clips, self.frames, self.vae = clips, frames, vae
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
        out = {k: torch.cat(v).mean().item() for k, v in vals.items()}
        out["gain_db"] = out["psnr_model"] - out["psnr_repeat"]
        return out
