"""How much of the scene's depth a DiT's features hold: a linear probe of inverse depth on its last hidden states.

Issue 13's mouse target is missed on strafes: every model since session 27 slides a strafe by about the training
average whatever the room's depth (bench/strafe_pathways.py), and the flow stages' depth auxiliary
(``--depth-weight``) is the lever proposed for it. This measures, before spending GPU time on it, how much depth the
model's features hold already. It records chunk-0 windows (57 frames) with the engine's depth buffer from random
points of the chosen levels, encodes them with the model's VAE, runs its DiT once per noise level on the window
(the first latent clean, the rest noised to sigma), and fits ridge regressions from the tokens the output head reads
(layer-normed, the :class:`world_model.train.flow.DepthHead`'s input) to each patch's inverse depth on half of the
windows, scored on the other half as R^2 (the share of the held-out inverse depth's variance explained). References
frame it: the same probe on the patch's position in the view alone (one-hot row and column: a floor's depth is mostly
its row's), on the clean latents' patches with and without it (what the frames themselves show linearly), and on the
noisy latents' patches (what the DiT reads as its input).

    python bench/depth_probe.py --model default --split test --windows 24 --json bench/results/depth_probe_test_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def ridge_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, lam: float) -> float:
    """R^2 on (x_test, y_test) of the ridge regression (with intercept, features standardised on the fit set) of
    ``y_fit`` [N, K] on ``x_fit`` [N, D]."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    a, b = (x_fit - mu) / sd, (x_test - mu) / sd
    ym = y_fit.mean(0)
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ (y_fit - ym))
    pred = b @ w + ym
    return float(1.0 - ((pred - y_test) ** 2).sum() / ((y_test - y_test.mean(0)) ** 2).sum())


def patches(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """[B, C, F, h, w] -> [B, F, h/ph, w/pw, C ph pw]: each patch's values, as the DiT's tokens are laid out."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // ph, ph, w // pw, pw).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, f, h // ph, w // pw, c * ph * pw)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions
    from world_model.train.clips import ClipSampler
    from world_model.train.encode import encode_store
    from world_model.train.engine_frames import record_whole_episodes
    from world_model.train.flow import add_noise, dit_forward

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help='a registry name or model folder ("default": the embedded one)')
    p.add_argument("--variant", default="distilled", choices=("distilled", "base"), help="few- or many-step DiT")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--windows", type=int, default=24, help="chunk-0 windows recorded (half fit, half scored)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.9, 0.6, 0.3], help="noise levels of the window")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge penalty per sample, on standardised features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.windows < 4:
        p.error("--windows must be >= 4 (half of them fit the probe, half score it)")
    if not all(0.0 < s <= 1.0 for s in a.sigmas):
        p.error("--sigmas must lie in (0, 1]")
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    model = load_world_model(
        a.model, RuntimeOptions(device="cpu", dtype=torch.float32, quantize=None), variant=a.variant
    )
    cfg, dit, vae = model.config, model.dit, model.vae
    stride, (_, ph, pw) = cfg.vae.spatial_stride, cfg.dit.patch_size
    size = (cfg.stream.height, cfg.stream.width)
    frames = record_whole_episodes(a.split, a.windows, 57, size, seed=a.seed, depth_stride=stride)
    lat = encode_store(vae, frames, cfg.stream.first_latents, model.text_encoder, progress=False)
    sampler = ClipSampler(lat, cfg, 1, p_continue=0.0)
    batch = sampler.sample(chunk=0, segments=torch.arange(lat.num_segments))
    c = batch.num_context
    x0 = batch.latents[:, :, c:]
    target = batch.depth[:, c:]  # [B, Fn, h, w]
    b, fn = target.shape[:2]
    hp, wp = target.shape[2] // ph, target.shape[3] // pw
    y = patches(target[:, None], ph, pw).reshape(b, -1, ph * pw).numpy()  # [B, Fn hp wp, ph pw]
    half = b // 2

    def score(features: torch.Tensor) -> float:  # [B, Fn hp wp, D]
        f = features.float().numpy()
        fit, test = f[:half].reshape(-1, f.shape[-1]), f[half:].reshape(-1, f.shape[-1])
        return ridge_r2(fit, y[:half].reshape(-1, ph * pw), test, y[half:].reshape(-1, ph * pw), a.ridge)

    tokens: list[torch.Tensor] = []
    hook = dit.head.register_forward_pre_hook(lambda _m, args: tokens.append(args[0]))
    # where a patch is in the view: a floor's inverse depth is mostly a function of the row (and the pitch), so this
    # is the baseline the DiT's features must beat to show that they hold the scene's depth, not the view's average
    where = torch.cat([torch.eye(hp)[:, None].expand(hp, wp, hp), torch.eye(wp)[None].expand(hp, wp, wp)], dim=-1)
    where = where.reshape(1, 1, hp * wp, hp + wp).expand(b, fn, -1, -1).reshape(b, fn * hp * wp, hp + wp)
    clean = patches(x0, ph, pw).reshape(b, fn * hp * wp, -1)
    rows = {
        "position in the view alone": score(where),
        "clean latents' patches": score(clean),
        "clean latents' patches and position": score(torch.cat([clean, where], dim=-1)),
    }
    generator = torch.Generator().manual_seed(a.seed)
    for sigma in a.sigmas:
        noise = torch.randn(x0.shape, generator=generator)
        xt = add_noise(x0, noise, torch.full((b,), sigma))
        window = torch.cat([batch.latents[:, :, :c], xt], dim=2)
        tokens.clear()
        dit_forward(dit, batch, window, torch.full((b,), sigma * 1000.0))
        hidden = torch.nn.functional.layer_norm(tokens[0].float(), tokens[0].shape[-1:])[:, -fn * hp * wp :]
        rows[f"noisy latents' patches, sigma {sigma}"] = score(patches(xt, ph, pw).reshape(b, fn * hp * wp, -1))
        rows[f"DiT's last hidden states, sigma {sigma}"] = score(hidden)
    hook.remove()
    print(f"\nR^2 of a linear probe of inverse depth ({half} windows fit, {b - half} scored; {a.split} levels)")
    for name, r2 in rows.items():
        print(f"  {name:45s} {r2:6.3f}")
    out = {
        "model": a.model,
        "variant": a.variant,
        "split": a.split,
        "windows": b,
        "sigmas": a.sigmas,
        "ridge": a.ridge,
        "target_mean": float(target.mean()),
        "target_std": float(target.std()),
        "r2": rows,
        "seconds": time.perf_counter() - t0,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
