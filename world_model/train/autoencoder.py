"""VAE training (full decoder) and the pruned decoder distilled from it (spec §7.3, §12).

Stage ``vae``: the Wan-family causal VAE with the full decoder (``pruning_rate`` 0) learns to
reconstruct clips of ``1 + 4k`` frames: L1 + MSE + (1 - SSIM) on pixels, L1 on 8x8-pooled frames
(each region's colour), Gaussian noise on the
latents (the decoder must tolerate the DiT's imprecise latents) and a small L2 pull on the latents
(keeps their scale bounded; no KL, no perceptual network — none ships offline). Once
reconstruction has converged (``VAEOptions.gan_start``) a patch discriminator joins with a hinge
loss: PSNR alone rewards blur, the structural and adversarial terms are what keep edges and texture.
The adversarial term's weight adapts (as in VQGAN): ``gan_weight`` times the ratio of the
reconstruction loss's gradient norm to the adversarial loss's at the decoder's last layer, so the
discriminator's push stays a fixed fraction of reconstruction's (a fixed weight of 0.05 let it take
over in the GPU session of 2026-12-01: -3 dB, 1.46x the frames' sharpness, grid artefacts, a colour
cast). The discriminator judges every 4th frame from a random offset each step, so every frame
position of a latent's group is judged.
Latents are trained un-normalised (identity mean/std); the latent stage measures the statistics
afterwards.

Stage ``decoder``: the shipped VAE (``cfg.vae``, ``pruning_rate`` p) copies the teacher's encoder
(frozen), starts its narrower decoder from the teacher's first channels (:func:`load_pruned`) and trains it
to match the frozen full decoder's outputs on the teacher's latents, plus smaller pixel and structural terms
towards the true frames, and its own discriminator from its ``gan_start``. With ``distil_weight`` 0 it learns
from the true frames alone (the vae stage's terms) and needs the teacher's encoder only.

Clips come from :class:`ClipFrames`: uint8 frames resident on the training device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.checks import whole
from world_model.config import VAEConfig
from world_model.train.frames import FrameStore
from world_model.train.loop import Warmup

__all__ = [
    "VAEOptions",
    "ClipFrames",
    "PatchDiscriminator",
    "identity_stats",
    "psnr",
    "ssim",
    "sharpness",
    "lowpass_l1",
    "load_weights",
    "load_pruned",
    "VAEStage",
    "DecoderStage",
    "is_decoder_side",
]


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
    ssim_weight: float = 0.5  # weight of (1 - SSIM): the structural term that keeps edges
    # weight of L1 between 8x8-average-pooled frames: anchors each region's colour, which the adversary
    # can otherwise shift (session 5's pruned decoder: green +0.10, blue -0.08 on every frame after the first)
    lowpass_weight: float = 1.0
    pixel_weight: float = 0.5  # decoder stage: weight of the true-frame term
    # decoder stage: weight of the term towards the full decoder's output. 0 trains the pruned decoder on
    # the true frames alone (L1 + MSE + low-pass, as the vae stage) and never runs the teacher's decoder:
    # what a run whose full decoder is lost (a slim made from an export: its vae stage is an encoder) does
    distil_weight: float = 1.0
    gan_start: int = -1  # step from which the patch discriminator trains and the decoder fools it (-1: never)
    gan_weight: float = 0.05
    gan_adaptive: bool = True  # gan_weight scales the gradient-norm ratio at the decoder's last layer
    # steps between measurements of that ratio (two extra gradients through the decoder each); between them the last
    # one is used. 1: every step (VQGAN's rule). On the H200 the adversary's phase ran at 6.2 steps/s against 7.5
    # without it, eager (session 25)
    gan_lambda_every: int = 1
    # steps over which the decoder's adversarial term ramps in linearly from gan_start, while the
    # discriminator trains from gan_start at full rate (a resumed stage's discriminator starts untrained:
    # slim checkpoints keep no discriminator)
    gan_ramp: int = 0
    disc_width: int = 64
    disc_lr: float = 2e-4
    # the discriminator sees each frame shifted by a random whole number of pixels in [-disc_translate,
    # disc_translate] per axis (edges replicated), true and decoded frames alike: its stride-2 convolutions
    # then meet a pattern fixed on the pixel grid at every phase (session 16's 4-pixel screen door sat at the
    # phase of its strides); 0: off. A CPU check (session 16's step-2,000 decoder, 100 steps at batch 2, shift
    # 4; test levels): sharpness / grid share 0.46 / 0.016 and 0.78 / 0.090 at steps 2,050 / 2,100, against
    # 0.49 / 0.020 and 0.55 / 0.031 without: the stage swung more in 50 steps than the option moved it
    disc_translate: int = 0
    # weight of the grid penalty on the decoded frames' error (decoded - true; grid_share with penalty=True): the
    # share of that error's detail that is one pattern on a fixed 2-16 pixel grid, the screen door an adversary can
    # teach a decoder (session 26's VAE: grid share 0.020 at period 2 on the test levels, the shipped one's 0.0025;
    # its DiT's frames 0.036). 0: off
    grid_weight: float = 0.0
    eval_clips: int = 16
    whole_clip: bool = (
        True  # encode/decode a training clip in one call per network (same result as streaming, fewer launches)
    )
    amp: bool = True
    # torch.compile the training step's encode and decode (whole clips: one graph per network and clip shape;
    # evaluation and the adversary stay eager). H200, batch 32 (session 25): 10.4 steps/s against 7.5 eager without
    # the adversary, but 5.0 against 6.2 with it (world_model/train/README.md): off by default
    compile: bool = False
    seed: int = 0

    @property
    def uses_gan(self) -> bool:
        return self.gan_start >= 0

    def __post_init__(self) -> None:
        if self.gan_lambda_every < 1:
            raise ValueError(f"gan_lambda_every must be >= 1 (1: every step), got {self.gan_lambda_every}")
        whole(self.disc_translate, "disc_translate", note="pixels; 0: off")
        if not self.grid_weight >= 0:
            raise ValueError(f"grid_weight must be >= 0 (0: off), got {self.grid_weight!r}")


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
    return _load(model, state, lambda name, src, shape: src if src.shape == shape else None)


# output channels of these tensors come in groups, outermost first: q, k, v of the attention's 1x1 convolution; the
# two frames of the decoder's temporal upsampling ("(two c)")
_GROUPED_OUT = {"to_qkv": 3, "time_conv": 2}


def load_pruned(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """:func:`load_weights` for a narrower model (a pruned decoder from the full VAE's weights): a tensor of
    ``state`` larger than the model's along some dimensions is cut to its first channels there (each group of a
    grouped output, ``_GROUPED_OUT``, cut alike), so that channel i of every residual stream is the full model's
    channel i. Returns the parameters left as they were (no tensor of that name, another rank, or smaller)."""
    return _load(model, state, _first_channels)


def _first_channels(name: str, src: Tensor, shape: torch.Size) -> Tensor | None:
    """``src`` cut to ``shape`` by its first channels along every dimension, or None where it cannot be."""
    if src.dim() != len(shape) or any(a < b for a, b in zip(src.shape, shape, strict=True)):
        return None
    groups = next((g for key, g in _GROUPED_OUT.items() if key in name), 1)
    if src.shape[0] != shape[0]:
        if src.shape[0] % groups or shape[0] % groups:
            return None
        src = src.unflatten(0, (groups, -1))[:, : shape[0] // groups].flatten(0, 1)
    return src[tuple(slice(0, n) for n in shape)]


def _load(model: nn.Module, state: dict[str, Tensor], fit) -> list[str]:
    """Copy ``fit(name, state[name], shape)`` into each parameter of ``model`` where it gives a tensor; returns the
    names of the parameters left as they were."""
    left = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            src = state.get(name)
            src = None if src is None else fit(name, src, p.shape)
            if src is None:
                left.append(name)
            else:
                p.copy_(src)
    return left


class ClipFrames:
    """Random clips [B, 3, T, H, W] in [-1, 1] from episodes of frames held on ``device``.

    The uint8 frames of every episode live in one device tensor; clip indices, the random draws and
    the conversion to [-1, 1] all run there, so a batch costs no host work and no synchronisation.
    ``extend`` appends the episodes of another store (shards recorded while training runs).
    Episodes are drawn in proportion to the clips they hold.
    """

    def __init__(self, store: FrameStore, clip_frames: int, device: torch.device | str, seed: int = 0) -> None:
        self.t, self.device = clip_frames, torch.device(device)
        self.frames = torch.empty((0, *store.frames.shape[1:]), dtype=torch.uint8, device=self.device)
        self.first = torch.empty(0, dtype=torch.int64, device=self.device)  # [E] first frame per episode
        self.room = torch.empty(0, dtype=torch.int64, device=self.device)  # [E] clip start positions
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.extend(store)
        if len(self.first) == 0:
            lens = np.diff(store.starts)
            raise ValueError(f"no episode holds {clip_frames} frames (longest: {int(lens.max()) if len(lens) else 0})")

    def extend(self, store: FrameStore) -> None:
        lens = np.diff(store.starts)
        keep = np.flatnonzero(lens >= self.t)
        offset = len(self.frames)
        with warnings.catch_warnings():  # a read-only (memory-mapped) store: the frames are only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            frames = torch.from_numpy(np.ascontiguousarray(store.frames)).to(self.device)
        self.frames = torch.cat([self.frames, frames]) if offset else frames
        first = torch.as_tensor(store.starts[keep] + offset, dtype=torch.int64, device=self.device)
        room = torch.as_tensor(lens[keep] - self.t + 1, dtype=torch.int64, device=self.device)
        self.first, self.room = torch.cat([self.first, first]), torch.cat([self.room, room])
        self._cum = torch.cumsum(self.room, 0)  # clip starts are drawn uniformly over all of them

    @property
    def num_clips(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    def get(self, first: Tensor) -> Tensor:
        """Clips starting at absolute frames ``first`` [B] (device) -> [B, 3, T, H, W] in [-1, 1]."""
        idx = first[:, None] + torch.arange(self.t, device=self.device)  # [B, T]
        x = self.frames[idx]  # [B, T, H, W, 3] uint8
        return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)

    def sample(self, b: int) -> Tensor:
        total = self._cum[-1]
        u = (torch.rand(b, device=self.device, generator=self.generator, dtype=torch.float64) * total).long()
        ep = torch.searchsorted(self._cum, u, right=True)  # [B]
        start = u - (self._cum[ep] - self.room[ep])
        return self.get(self.first[ep] + start)

    def fixed(self, n: int) -> Tensor:
        """n deterministic clips (first frames of the first episodes, cycling) for evaluation."""
        ep = torch.arange(n, device=self.device) % len(self.first)
        return self.get(self.first[ep])

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """The sampler's random state, when it was saved on the same kind of device: a CUDA generator's
        state does not fit a CPU generator (a GPU session's checkpoint continued on a CPU), whose own seed
        then stays (a warning says so; only the order of the clips differs)."""
        rng = state["rng"]
        if not (isinstance(rng, Tensor) and rng.dtype == torch.uint8):
            return
        if rng.numel() != self.generator.get_state().numel():
            warnings.warn(
                f"clip sampler state of {rng.numel()} bytes is another device's generator's (this one's: "
                f"{self.generator.get_state().numel()}): the clips are drawn from this sampler's own seed",
                stacklevel=2,
            )
            return
        self.generator.set_state(rng.cpu())


def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean structural similarity of images in [-1, 1], a/b [N, C, H, W] (uniform window, per channel)."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2  # (k L)^2 for the dynamic range L = 2
    pool = lambda x: F.avg_pool2d(x, window, stride=1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a.pow(2)
    var_b = pool(b * b) - mu_b.pow(2)
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return s.mean()


def frames_2d(video: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


class PatchDiscriminator(nn.Module):
    """A PatchGAN on single frames: [N, 3, H, W] in [-1, 1] -> realness logits [N, 1, H/8, W/8]."""

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers):
            nxt = width * min(2**i, 8)
            mods += [nn.Conv2d(c, nxt, 4, 2, 1), nn.GroupNorm(8, nxt), nn.LeakyReLU(0.2)]
            c = nxt
        mods += [nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(8, c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def lowpass_l1(video: Tensor, target: Tensor, size: int = 8) -> Tensor:
    """L1 between the ``size`` x ``size`` average-pooled frames of two videos [B, 3, T, H, W]: a
    region's colour and brightness, blind to the detail the structural and adversarial terms shape."""
    return F.l1_loss(F.avg_pool3d(video, (1, size, size)), F.avg_pool3d(target, (1, size, size)))


def sharpness(video: Tensor) -> Tensor:
    """Mean luma gradient magnitude of frames [B, 3, ...] -> scalar (a blur detector): the same measure
    as :func:`mg3_eval.metrics.sharpness` (sqrt(dx^2 + dy^2) of forward luma differences, BT.601), here
    on device tensors at any value scale, so that training and evaluation report comparable ratios."""
    y = 0.299 * video[:, 0] + 0.587 * video[:, 1] + 0.114 * video[:, 2]
    dx = y[..., :-1, 1:] - y[..., :-1, :-1]
    dy = y[..., 1:, :-1] - y[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt().mean()


GRID_PERIODS = (2, 4, 8, 16)  # the decoder's upsampling grid: 16x from a latent to pixels, in steps of 2


def fixed_grid_share(y: Tensor, period: int, *, penalty: bool = False) -> Tensor:
    """How much of the fine detail of luma frames ``y`` [N, H, W] is one pattern repeated on a fixed grid of
    ``period`` pixels (a decoder's upsampling artefact: a screen door over every frame, the same at every
    position and in every frame), 0-1. The frames' high-pass (minus a (period+1)^2 box mean) is averaged over
    all frames and all period x period blocks at the same phase; the share is that mean pattern's energy over
    the high-pass's. Detail of the world itself averages out over positions and frames (~1 / the number of
    blocks); a grid artefact does not. A measure (mg3_eval) and, with ``penalty``, a training penalty whose
    gradient only shrinks the pattern: its denominator (the detail's energy) is held constant, as through it
    the share also falls when noise is added (a CPU check of session 16: weight 10 on the plain share took a
    decoder from 0.94 to 3.2 of the true frames' sharpness in 20 steps, its SSIM from 0.73 to 0.46)."""
    n, h, w = y.shape
    h, w = h // period * period, w // period * period
    y = y[:, :h, :w].float()
    blur = F.avg_pool2d(y[:, None], period + 1, stride=1, padding=period // 2, count_include_pad=False)[:, 0]
    hp = y - blur[:, :h, :w]
    pattern = hp.reshape(n, h // period, period, w // period, period).mean(dim=(0, 1, 3))  # [period, period]
    energy = hp.pow(2).mean().clamp_min(1e-12)
    return pattern.pow(2).mean() / (energy.detach() if penalty else energy)


def grid_share(video: Tensor, periods: tuple[int, ...] = GRID_PERIODS, *, penalty: bool = False) -> Tensor:
    """Sum of :func:`fixed_grid_share` over ``periods`` for a video [B, 3, T, H, W] (any value scale)."""
    y = 0.299 * video[:, 0] + 0.587 * video[:, 1] + 0.114 * video[:, 2]  # [B, T, H, W]
    y = y.flatten(0, 1)
    return torch.stack([fixed_grid_share(y, p, penalty=penalty) for p in periods]).sum()


def translate(frames: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """``frames`` [N, C, H, W] each shifted by its own random whole number of pixels in [-pixels, pixels] along
    each axis, edges replicated; same shape, differentiable. The shifts are drawn on the host ``generator``."""
    n, _, h, w = frames.shape
    dy, dx = (torch.randint(-pixels, pixels + 1, (2, n), generator=generator) + pixels).to(frames.device)
    padded = F.pad(frames, (pixels, pixels, pixels, pixels), mode="replicate")
    rows = (dy[:, None] + torch.arange(h, device=frames.device))[:, None, :, None]  # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=frames.device))[:, None, None, :]  # [N, 1, 1, W]
    idx = torch.arange(n, device=frames.device)[:, None, None, None]
    ch = torch.arange(frames.shape[1], device=frames.device)[None, :, None, None]
    return padded[idx, ch, rows, cols]


class _Adversary:
    """The patch discriminator and its optimiser, with the hinge losses (used once reconstruction
    has converged: ``VAEOptions.gan_start``). It judges every ``frame_stride``-th frame of a clip:
    neighbouring frames add little, and the discriminator would otherwise cost more than the VAE."""

    frame_stride = 4

    def __init__(self, opts: VAEOptions, device: torch.device) -> None:
        self.disc = PatchDiscriminator(opts.disc_width).to(device)
        self.optim = torch.optim.AdamW(self.disc.parameters(), lr=opts.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.opts = opts
        self.offsets = torch.Generator().manual_seed(opts.seed + 7)  # host draws: no device sync

    def _frames(self, video: Tensor) -> Tensor:
        offset = int(torch.randint(0, min(self.frame_stride, video.shape[2]), (), generator=self.offsets))
        frames = frames_2d(video[:, :, offset :: self.frame_stride])
        return translate(frames, self.opts.disc_translate, self.offsets) if self.opts.disc_translate else frames

    def generator_loss(self, fake: Tensor) -> Tensor:
        self.disc.requires_grad_(False)
        loss = -self.disc(self._frames(fake)).float().mean()
        self.disc.requires_grad_(True)
        return loss

    def train_step(self, real: Tensor, fake: Tensor | list[Tensor], autocast) -> Tensor:
        """One hinge step: true frames against decoded ones (``fake``: one video, or several kinds whose
        judged frames count alike)."""
        fakes = [fake] if isinstance(fake, Tensor) else fake
        with autocast():
            lr = self.disc(self._frames(real)).float()
            lf = torch.cat([self.disc(self._frames(f.detach())).float().flatten() for f in fakes])
        loss = F.relu(1 - lr).mean() + F.relu(1 + lf).mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.optim.load_state_dict(state["optim"])


def _compiled(fn):
    """``torch.compile(fn)``, with backward graphs compiled without donated buffers from now on in this process:
    the adaptive GAN weight takes two gradients of the decoded clip with retain_graph before the step's backward
    (``_Base._weighted``); a context around each call was not enough once a graph compiled without the adversary
    was reused with it (bench/train_throughput.py's rows)."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    return torch.compile(fn)


class _Base:
    """What the VAE and decoder stages share: optimiser, warm-up, losses, the adversary."""

    def __init__(
        self, trainable: list[nn.Parameter], opts: VAEOptions, device: torch.device, last_layer: nn.Parameter
    ) -> None:
        self.opts, self.device = opts, device
        self.last_layer = last_layer  # the decoder's output conv: where the adaptive GAN weight is measured
        self.optim = torch.optim.AdamW(trainable, lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.params = trainable
        self.generator = torch.Generator(device).manual_seed(opts.seed)
        self.adversary = _Adversary(opts, device) if opts.uses_gan else None
        self._gan_lambda: Tensor | None = None  # the adaptive weight last measured (gan_lambda_every)
        self.warmup = Warmup(opts.warmup_steps)
        if opts.compile:  # instance attributes over the methods: the training steps' calls compile
            self._encode = _compiled(self._encode)
            self._decode = _compiled(self._decode)

    def _encode(self, vae: nn.Module, x: Tensor) -> Tensor:
        seg = x.shape[2] - 1 if self.opts.whole_clip and x.shape[2] > 1 else None
        return vae.encode(x, segment_frames=seg)

    def _decode(self, vae: nn.Module, z: Tensor, *, clamp: bool = False) -> Tensor:
        seg = z.shape[2] if self.opts.whole_clip else 4
        return vae.decode(z, first_chunk=True, clamp=clamp, segment=seg)[0]

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.opts.amp and self.device.type == "cuda"
        )

    def _step(self, step: int, loss: Tensor) -> Tensor:
        for g in self.optim.param_groups:
            g["lr"] = self.opts.lr * self.warmup(step)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        return torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip)

    def _gan_on(self, step: int) -> bool:
        return self.adversary is not None and step >= self.opts.gan_start

    def _image_losses(self, out: Tensor, x: Tensor, step: int) -> dict[str, Tensor]:
        """Structural term and (once on) the adversarial term of decoded clips ``out`` vs frames ``x``."""
        terms = {"ssim": ssim(frames_2d(out.float()), frames_2d(x))}
        if self.opts.grid_weight > 0:
            terms["grid"] = grid_share(out.float() - x, penalty=True)
        if self._gan_on(step):
            with self._autocast():
                terms["gan_g"] = self.adversary.generator_loss(out)
        return terms

    def _gan_ramp(self, step: int) -> float:
        """The adversarial term's share of ``gan_weight`` at ``step``: 0 -> 1 over ``gan_ramp`` steps."""
        ramp = self.opts.gan_ramp
        return 1.0 if ramp <= 0 else min(1.0, (step - self.opts.gan_start + 1) / ramp)

    def _weighted(self, terms: dict[str, Tensor], rec: Tensor, step: int) -> Tensor:
        """The stage's loss: ``rec`` (its reconstruction terms) + the structural term + (once on) the adversarial
        term, weighted adaptively (times the ramp at ``step``) + the grid penalty (where ``terms`` holds it); the
        adaptive ratio goes into ``terms["gan_lambda"]``."""
        loss = rec + self.opts.ssim_weight * (1 - terms["ssim"])
        if "gan_g" in terms:
            lam = torch.ones((), device=loss.device)
            if self.opts.gan_adaptive:
                if self._gan_lambda is None or (step - self.opts.gan_start) % self.opts.gan_lambda_every == 0:
                    (g_rec,) = torch.autograd.grad(loss, self.last_layer, retain_graph=True)
                    (g_gan,) = torch.autograd.grad(terms["gan_g"], self.last_layer, retain_graph=True)
                    self._gan_lambda = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()
                lam = self._gan_lambda
            terms["gan_lambda"] = lam
            loss = loss + self.opts.gan_weight * self._gan_ramp(step) * lam * terms["gan_g"]
        if "grid" in terms:
            # after the adaptive weight, which balances reconstruction against the adversary (as the sharpen stage
            # adds its own): inside that ratio the penalty's gradient counted as reconstruction's and scaled the
            # adversary's weight with it, and the decoder drifted (CPU, bench/vae_grid.py: PSNR -1.3 dB, sharpness
            # 0.40 -> 0.68 in 40 steps at weight 10, bench/results/vae_grid_penalty_in_gan_ratio_cpu.json; after it,
            # bench/results/vae_grid_cpu.json)
            loss = loss + self.opts.grid_weight * terms["grid"]
        return loss

    def _adversary_step(self, step: int, x: Tensor, out: Tensor | list[Tensor], metrics: dict[str, Tensor]) -> None:
        if self._gan_on(step):
            metrics["gan_d"] = self.adversary.train_step(x, out, self._autocast)

    @torch.no_grad()
    def _round_trip(self, vae: nn.Module, clips: ClipFrames) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``vae``'s encode-decode of the fixed held-out clips of ``clips``: PSNR per clip [N], per batch of
        ``batch_size`` clips the sharpness of the decoded and of the true frames [N / batch_size] each, and the
        grid share of all decoded clips (:func:`grid_share`; a screen door the decoder draws, ~0 for true frames)."""
        vae.eval()
        x = clips.fixed(self.opts.eval_clips)
        vals, sharp_out, sharp_true, outs = [], [], [], []
        for xb in x.split(self.opts.batch_size):
            with self._autocast():
                out, _ = vae.decode(vae.encode(xb), first_chunk=True)
            out = out.float().clamp(-1, 1)
            vals.append(psnr(out, xb))
            sharp_out.append(sharpness(out))
            sharp_true.append(sharpness(xb))
            outs.append(out)
        return torch.cat(vals), torch.stack(sharp_out), torch.stack(sharp_true), grid_share(torch.cat(outs))

    def _base_state(self) -> dict:
        return {"adversary": self.adversary.state_dict()} if self.adversary is not None else {}

    def _load_base_state(self, state: dict) -> None:
        if "optim" not in state:
            # a fresh optimiser warms up again from the resumed step (at the full rate one step drew a screen door
            # over session 26's trained decoder on the CPU: grid share 0.019 -> 0.31, bench/vae_grid.py)
            self.warmup.restart()
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])


class VAEStage(_Base):
    """Train the full VAE (see module docstring). ``vae`` is a WanVAE with ``pruning_rate`` 0."""

    name = "vae"

    feed_every = 100  # steps between looks for newly recorded shards

    def __init__(
        self, vae: nn.Module, train: ClipFrames, held_out: ClipFrames | None, opts: VAEOptions, *, feed=None
    ) -> None:
        """``feed``: a :class:`world_model.train.engine_frames.ShardFeed` whose new shards join ``train``
        while a recorder is still writing them."""
        self.vae, self.train, self.held_out, self.feed = vae, train, held_out, feed
        super().__init__(
            [p for p in vae.parameters() if p.requires_grad],
            opts,
            next(vae.parameters()).device,
            _last_weight(vae),
        )

    def _take_new_shards(self) -> None:
        finished = self.feed.finished  # read before the shards: none written before "done" is missed
        for store in self.feed.new():
            self.train.extend(store)
        if finished:
            self.feed = None

    def train_step(self, step: int) -> dict[str, Tensor]:
        if self.feed is not None and step % self.feed_every == 0:
            self._take_new_shards()
        self.vae.train()
        x = self.train.sample(self.opts.batch_size)
        with self._autocast():
            z = self._encode(self.vae, x)  # [B, C, F, h, w]
            zn = z + self.opts.latent_noise * torch.randn(z.shape, device=z.device, generator=self.generator)
            xr = self._decode(self.vae, zn)
            terms = self._image_losses(xr, x, step)
        xr, z = xr.float(), z.float()
        lowpass = lowpass_l1(xr, x)
        rec = F.l1_loss(xr, x) + self.opts.mse_weight * F.mse_loss(xr, x) + self.opts.lowpass_weight * lowpass
        loss = self._weighted(terms, rec + self.opts.latent_l2 * z.pow(2).mean(), step)
        gnorm = self._step(step, loss)
        self.optim.step()
        metrics = {"loss": loss, "rec": rec, "lowpass": lowpass, "z_rms": z.pow(2).mean().sqrt(), "grad_norm": gnorm}
        metrics.update(terms)
        self._adversary_step(step, x, xr, metrics)
        return {k: v.detach() for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.held_out is None:
            return {}
        vals, sharp_out, sharp_true, grid = self._round_trip(self.vae, self.held_out)
        return {
            "psnr": vals.mean().item(),
            "sharpness_ratio": (sharp_out / sharp_true).mean().item(),
            "grid_share": grid.item(),
        }

    def state_dict(self) -> dict:
        return {
            "vae": self.vae.state_dict(),
            "optim": self.optim.state_dict(),
            "data": self.train.state_dict(),
            **self._base_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """A full checkpoint resumes exactly; a slimmed one (weights only, ``world_model.train.slim``)
        continues training with a fresh optimiser and discriminator."""
        self.vae.load_state_dict(state["vae"])
        if "optim" in state:
            self.optim.load_state_dict(state["optim"])
            self.train.load_state_dict(state["data"])
        self._load_base_state(state)


def _last_weight(vae: nn.Module) -> nn.Parameter:
    """The weight of the decoder's output conv (its head), where the adaptive GAN weight is measured."""
    return [p for name, p in vae.named_parameters() if name.startswith("decoder.head.") and p.ndim > 1][-1]


def is_decoder_side(name: str) -> bool:
    """Weights the decoder stage trains (the pruned decoder and the post-quant conv2); the rest of
    the shipped VAE is the teacher's encoder."""
    return name.startswith(("decoder.", "conv2."))


class DecoderStage(_Base):
    """Distil the pruned decoder of ``student`` from the frozen full ``teacher``, or with ``distil_weight``
    0 train it on the true frames through the teacher's encoder (see module docstring)."""

    name = "decoder"

    def __init__(
        self, teacher: nn.Module, student: nn.Module, train: ClipFrames, held_out: ClipFrames | None, opts: VAEOptions
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.student, self.train, self.held_out = student, train, held_out
        # the encoder as it is, the narrower decoder from the full one's first channels (load_pruned). On the CPU,
        # distilling session 26's VAE (bench/decoder_init.py: batch 2, 9-frame clips, two held-out episodes) it was
        # at 23.7 dB after 100 steps, where the random decoder that only the equal-shape tensors were copied into
        # (the init before) was at 17.4 (the teacher 26.3)
        load_pruned(student, teacher.state_dict())
        # the encoder side (encoder.*, the pre-quant conv1) is the teacher's and stays frozen
        for name, p in student.named_parameters():
            p.requires_grad_(is_decoder_side(name))
        trainable = [p for p in student.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the student VAE has no trainable decoder parameters")
        super().__init__(trainable, opts, next(student.parameters()).device, _last_weight(student))

    def train_step(self, step: int) -> dict[str, Tensor]:
        self.student.train()
        x = self.train.sample(self.opts.batch_size)
        o = self.opts
        with torch.no_grad(), self._autocast():
            z = self._encode(self.teacher, x)
            target = self._decode(self.teacher, z) if o.distil_weight > 0 else None
        with self._autocast():
            out = self._decode(self.student, z)
            terms = self._image_losses(out, x, step)
        out = out.float()
        pixel = F.l1_loss(out, x)
        lowpass = lowpass_l1(out, x)
        metrics = {"pixel": pixel, "lowpass": lowpass}
        if target is not None:
            metrics["distil"] = distil = F.l1_loss(out, target.float())
            rec = o.distil_weight * distil + o.pixel_weight * pixel
        else:  # the true frames alone, weighted as the vae stage weights them
            metrics["mse"] = mse = F.mse_loss(out, x)
            rec = pixel + o.mse_weight * mse
        loss = self._weighted(terms, rec + o.lowpass_weight * lowpass, step)
        gnorm = self._step(step, loss)
        self.optim.step()
        metrics.update(loss=loss, grad_norm=gnorm, **terms)
        self._adversary_step(step, x, out, metrics)
        return {k: v.detach() for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.held_out is None:
            return {}
        self.student.eval()
        x = self.held_out.fixed(self.opts.eval_clips)
        full, pruned, sharp, outs = [], [], [], []
        for xb in x.split(self.opts.batch_size):
            with self._autocast():
                z = self.teacher.encode(xb)
                if self.opts.distil_weight > 0:  # else the teacher's decoder may be untrained (an encoder only)
                    full.append(psnr(self.teacher.decode(z, first_chunk=True)[0].float().clamp(-1, 1), xb))
                out = self.student.decode(z, first_chunk=True)[0].float().clamp(-1, 1)
            pruned.append(psnr(out, xb))
            sharp.append(sharpness(out) / sharpness(xb))
            outs.append(out)
        f = torch.cat(full).mean().item() if full else float("nan")
        p = torch.cat(pruned).mean().item()
        return {
            "psnr_full": f,
            "psnr_pruned": p,
            "psnr_gap": f - p if math.isfinite(f - p) else float("nan"),
            "sharpness_ratio": torch.stack(sharp).mean().item(),
            "grid_share": grid_share(torch.cat(outs)).item(),
        }

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "optim": self.optim.state_dict(),
            "data": self.train.state_dict(),
            **self._base_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """A full checkpoint resumes exactly; a slimmed one continues with a fresh optimiser."""
        # the decoder side only: the encoder stays the teacher's, which may have trained on since the
        # checkpoint (a later session's VAE), and it is what encoded the DiT's latents
        decoder = {k: v for k, v in state["student"].items() if is_decoder_side(k)}
        missing = [k for k in self.student.state_dict() if is_decoder_side(k) and k not in decoder]
        if missing:
            raise KeyError(f"decoder checkpoint lacks {len(missing)} decoder weights, e.g. {missing[:3]}")
        self.student.load_state_dict(decoder, strict=False)
        if "optim" in state:
            self.optim.load_state_dict(state["optim"])
            self.train.load_state_dict(state["data"])
        self._load_base_state(state)
