"""Does the grid penalty (``VAEOptions.grid_weight``, pipeline ``--vae-grid``) take the 2-pixel screen door off a
trained VAE's decoder without costing its reconstruction? Each arm continues one VAE stage checkpoint's full decoder
(encoder frozen, as a session that keeps the DiT's latents would; a fresh optimiser, as from a slim) with the
adversary on, on the same clips of freshly recorded episodes (ViZDoom) and the same seed, at one grid weight; every
``--every`` steps the held-out PSNR, sharpness ratio and grid share of the decoded frames. CPU-sized by default.

Measured (2-core CPU, session 26's step-7,917 checkpoint with its discriminator, batch 2): 50 steps at grid weight 0
and 10 end at 26.45 / 26.35 dB, sharpness 0.37 / 0.39, grid share 0.018 / 0.014 (the held-out grid share swings
0.007-0.031 from one evaluation to the next at this size: the GPU session's evaluations measure the effect;
bench/results/vae_grid_cpu.json). With the penalty inside the adaptive adversarial weight's ratio (before the fix) the
weighted arms drifted to -1.2 / -1.7 dB (vae_grid_penalty_in_gan_ratio_cpu.json). Without a fresh optimiser's
warm-up (``--warmup 1``) one step took the grid share from 0.019 to 0.31 (vae_grid_no_warmup_cpu.json, 2 clips).

    python bench/vae_grid.py --vae-tar bench/gpu/state/vae_s26_step7917_bf16.tar --weights 0,2 --steps 60 \\
        --json bench/results/vae_grid_cpu.json

A tar whose checkpoint holds the discriminator (a full stage checkpoint) continues it; a weights-only one starts a
fresh discriminator, its term ramped in over ``--gan-ramp`` steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _autoencoder_bench import add_options, clips, episodes, vae_checkpoint


def run(weight: float, state: dict, vcfg, train_eps, held_eps, args) -> list[dict]:
    from world_model.train.autoencoder import VAEOptions, VAEStage, is_decoder_side
    from world_model.vae import WanVAE

    start = int(state.get("step", 0))
    opts = VAEOptions(
        batch_size=args.batch,
        clip_frames=args.clip_frames,
        eval_clips=args.eval_clips,
        amp=False,
        gan_start=start,
        gan_ramp=0 if "adversary" in state["stage"] else args.gan_ramp,
        gan_weight=args.gan_weight,
        gan_lambda_every=4,
        grid_weight=weight,
        warmup_steps=args.warmup,
        seed=args.seed,
    )

    torch.manual_seed(args.seed)
    vae = WanVAE(vcfg)
    for name, p in vae.named_parameters():
        p.requires_grad_(is_decoder_side(name))
    stage = VAEStage(vae, clips(train_eps, opts.clip_frames, args.seed), clips(held_eps, opts.clip_frames, 0), opts)
    # as the pipeline resumes a slim: the weights, a fresh optimiser (which warms up again), the adversary if kept
    weights = {"vae": {k: v.float() for k, v in state["stage"]["vae"].items()}}
    stage.load_state_dict(weights | {k: state["stage"][k] for k in ("adversary",) if k in state["stage"]})
    rows, t0 = [{"step": 0, **stage.evaluate()}], time.perf_counter()
    print(f"grid {weight}", rows[-1], flush=True)
    for i in range(1, args.steps + 1):
        m = stage.train_step(start + i)
        if i % args.every == 0 or i == args.steps:
            terms = {k: float(m[k]) for k in ("grid", "gan_lambda", "gan_g") if k in m}
            rows.append({"step": i, **terms, **stage.evaluate()})
            rows[-1]["seconds"] = time.perf_counter() - t0
            print(f"grid {weight}", rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(p, steps=60, every=20)
    p.add_argument("--weights", default="0,2", help="grid weights, one arm each")
    p.add_argument("--gan-weight", type=float, default=0.3, help="as the GPU sessions (plan_session.py)")
    p.add_argument("--gan-ramp", type=int, default=20, help="for a fresh discriminator only")
    p.add_argument("--warmup", type=int, default=200, help="the fresh optimiser's warm-up steps (1: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from world_model.train.autoencoder import identity_stats
    from world_model.train.pipeline import PipelineOptions, preset_config

    vcfg = identity_stats(preset_config(PipelineOptions()).vae).replace(pruning_rate=0.0)
    state = vae_checkpoint(args.vae_tar)
    train_eps, held_eps = episodes(args.episodes)
    weights = [float(w) for w in args.weights.split(",")]
    curves = {str(w): run(w, state, vcfg, train_eps, held_eps, args) for w in weights}
    print(f"{'step':>6} " + " ".join(f"{'grid ' + w + ': PSNR / sharp / grid':>34}" for w in curves))
    for i, row in enumerate(next(iter(curves.values()))):
        cells = [
            f"{c[i]['psnr']:.2f} / {c[i]['sharpness_ratio']:.3f} / {c[i]['grid_share']:.4f}" for c in curves.values()
        ]
        print(f"{row['step']:>6} " + " ".join(f"{cell:>34}" for cell in cells))
    if args.json:
        out = {"benchmark": "vae_grid", **vars(args), "checkpoint_step": state.get("step"), "curves": curves}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
