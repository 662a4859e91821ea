"""VAE training (full decoder) and the pruned decoder distilled from it (spec §7.3, §12).

Stage ``vae``: the Wan-family causal VAE with the full decoder (``pruning_rate`` 0) learns to
reconstruct clips of ``1 + 4k`` frames: L1 + MSE on pixels, Gaussian noise on the latents (the
decoder must tolerate the DiT's imprecise latents) and a small L2 pull on the latents (keeps their
scale bounded; no KL, no perceptual network — none ships offline). Latents are trained
un-normalised (identity mean/std); the latent stage measures the statistics afterwards.

Stage ``decoder``: the shipped VAE (``cfg.vae``, ``pruning_rate`` p) copies the teacher's encoder
(frozen) and trains its narrower decoder to match the frozen full decoder's outputs on the
teacher's latents, plus a smaller pixel term towards the true frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.config import VAEConfig
from world_model.train.frames import FrameStore

__all__ = ["VAEOptions", "ClipFrames", "identity_stats", "psnr", "load_weights", "VAEStage", "DecoderStage"]


@dataclass(frozen=True)
class VAEOptions:
    batch_size: int = 8
    clip_frames: int = 17  # 1 + 4k pixel frames -> 1 + k latents
    lr: float = 3e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    latent_noise: float = 0.1
    latent_l2: float = 1e-3
    mse_weight: float = 0.5
    pixel_weight: float = 0.5  # decoder stage: weight of the true-frame term
    eval_clips: int = 16
    amp: bool = True
    seed: int = 0


def identity_stats(cfg: VAEConfig) -> VAEConfig:
    """The VAE config with latent mean 0 and std 1 (un-normalised latents)."""
    return cfg.replace(latent_mean=(0.0,) * cfg.z_dim, latent_std=(1.0,) * cfg.z_dim)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB of videos in [-1, 1] per sample: [B, ...] -> [B]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def load_weights(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Copy every parameter of ``state`` whose name and shape match ``model`` (buffers such as the
    latent statistics come from the config, not the state). Returns the parameters left as they were."""
    own = dict(model.named_parameters())
    left = []
    with torch.no_grad():
        for name, p in own.items():
            src = state.get(name)
            if src is not None and src.shape == p.shape:
                p.copy_(src)
            else:
                left.append(name)
    return left


class ClipFrames:
    """Random clips [B, 3, T, H, W] in [-1, 1] from a :class:`FrameStore` (within single episodes)."""

    def __init__(self, store: FrameStore, clip_frames: int, device: torch.device, seed: int = 0) -> None:
        lens = np.diff(store.starts)
        self.episodes = np.flatnonzero(lens >= clip_frames)
        if len(self.episodes) == 0:
            raise ValueError(f"no episode holds {clip_frames} frames (longest: {int(lens.max())})")
        self.store, self.t, self.device = store, clip_frames, device
        self.rng = np.random.default_rng(seed)

    def get(self, episodes: np.ndarray, offsets: np.ndarray) -> Tensor:
        st = self.store
        first = st.starts[episodes] + offsets  # [B]
        idx = first[:, None] + np.arange(self.t)  # [B, T]
        frames = torch.from_numpy(np.ascontiguousarray(st.frames[idx.reshape(-1)]))  # [B*T, H, W, 3]
        frames = frames.to(self.device, non_blocking=True).view(len(first), self.t, *frames.shape[1:])
        return frames.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)  # [B, 3, T, H, W]

    def sample(self, b: int) -> Tensor:
        eps = self.rng.choice(self.episodes, size=b)
        room = np.diff(self.store.starts)[eps] - self.t
        return self.get(eps, (self.rng.random(b) * (room + 1)).astype(np.int64))

    def fixed(self, n: int) -> Tensor:
        """n deterministic clips (first frames of the first episodes, cycling) for evaluation."""
        eps = self.episodes[np.arange(n) % len(self.episodes)]
        return self.get(eps, np.zeros(n, np.int64))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class _Base:
    def __init__(self, trainable: list[nn.Parameter], opts: VAEOptions, device: torch.device) -> None:
        self.opts, self.device = opts, device
        self.optim = torch.optim.AdamW(trainable, lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.params = trainable
        self.generator = torch.Generator(device).manual_seed(opts.seed)

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.opts.amp and self.device.type == "cuda"
        )

    def _step(self, step: int, loss: Tensor) -> float:
        for g in self.optim.param_groups:
            g["lr"] = self.opts.lr * min(1.0, (step + 1) / max(1, self.opts.warmup_steps))
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        return float(torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip))


class VAEStage(_Base):
    """Train the full VAE (see module docstring). ``vae`` is a WanVAE with ``pruning_rate`` 0."""

    name = "vae"

    def __init__(self, vae: nn.Module, train: ClipFrames, held_out: ClipFrames | None, opts: VAEOptions) -> None:
        self.vae, self.train, self.held_out = vae, train, held_out
        super().__init__([p for p in vae.parameters() if p.requires_grad], opts, next(vae.parameters()).device)

    def train_step(self, step: int) -> dict[str, float]:
        self.vae.train()
        x = self.train.sample(self.opts.batch_size)
        with self._autocast():
            z = self.vae.encode(x)  # [B, C, F, h, w]
            zn = z + self.opts.latent_noise * torch.randn(z.shape, device=z.device, generator=self.generator)
            xr, _ = self.vae.decode(zn, first_chunk=True, clamp=False)
        xr, z = xr.float(), z.float()
        rec = F.l1_loss(xr, x) + self.opts.mse_weight * F.mse_loss(xr, x)
        loss = rec + self.opts.latent_l2 * z.pow(2).mean()
        gnorm = self._step(step, loss)
        self.optim.step()
        return {"loss": loss.item(), "rec": rec.item(), "z_rms": z.pow(2).mean().sqrt().item(), "grad_norm": gnorm}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.held_out is None:
            return {}
        self.vae.eval()
        x = self.held_out.fixed(self.opts.eval_clips)
        vals = []
        for xb in x.split(self.opts.batch_size):
            with self._autocast():
                xr, _ = self.vae.decode(self.vae.encode(xb), first_chunk=True)
            vals.append(psnr(xr.clamp(-1, 1), xb))
        return {"psnr": torch.cat(vals).mean().item()}

    def state_dict(self) -> dict:
        return {"vae": self.vae.state_dict(), "optim": self.optim.state_dict(), "data": self.train.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.optim.load_state_dict(state["optim"])
        self.train.load_state_dict(state["data"])


class DecoderStage(_Base):
    """Distil the pruned decoder of ``student`` from the frozen full ``teacher`` (see module docstring)."""

    name = "decoder"

    def __init__(
        self, teacher: nn.Module, student: nn.Module, train: ClipFrames, held_out: ClipFrames | None, opts: VAEOptions
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.student, self.train, self.held_out = student, train, held_out
        load_weights(student, teacher.state_dict())
        # the encoder side (encoder.*, the pre-quant conv1) is the teacher's and stays frozen
        for name, p in student.named_parameters():
            p.requires_grad_(name.startswith(("decoder.", "conv2.")))
        trainable = [p for p in student.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the student VAE has no trainable decoder parameters")
        super().__init__(trainable, opts, next(student.parameters()).device)

    def train_step(self, step: int) -> dict[str, float]:
        self.student.train()
        x = self.train.sample(self.opts.batch_size)
        with torch.no_grad(), self._autocast():
            z = self.teacher.encode(x)
            target, _ = self.teacher.decode(z, first_chunk=True, clamp=False)
        with self._autocast():
            out, _ = self.student.decode(z, first_chunk=True, clamp=False)
        out, target = out.float(), target.float()
        distil = F.l1_loss(out, target)
        pixel = F.l1_loss(out, x)
        loss = distil + self.opts.pixel_weight * pixel
        gnorm = self._step(step, loss)
        self.optim.step()
        return {"loss": loss.item(), "distil": distil.item(), "pixel": pixel.item(), "grad_norm": gnorm}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.held_out is None:
            return {}
        self.student.eval()
        x = self.held_out.fixed(self.opts.eval_clips)
        full, pruned = [], []
        for xb in x.split(self.opts.batch_size):
            with self._autocast():
                z = self.teacher.encode(xb)
                full.append(psnr(self.teacher.decode(z, first_chunk=True)[0].clamp(-1, 1), xb))
                pruned.append(psnr(self.student.decode(z, first_chunk=True)[0].clamp(-1, 1), xb))
        f, p = torch.cat(full).mean().item(), torch.cat(pruned).mean().item()
        return {"psnr_full": f, "psnr_pruned": p, "psnr_gap": f - p if math.isfinite(f - p) else float("nan")}

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "optim": self.optim.state_dict(), "data": self.train.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optim.load_state_dict(state["optim"])
        self.train.load_state_dict(state["data"])
